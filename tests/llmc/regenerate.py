"""Rebuild the LLMC_* constants of the tests from llm.c's own C.

    python tests/llmc/regenerate.py                    # git clone karpathy/llm.c at the pinned commit
    python tests/llmc/regenerate.py --llmc ~/llm.c     # an llm.c checkout you already have
    python tests/llmc/regenerate.py --llmc ~/llm.c --check   # exit 1 unless they equal the committed ones

Two harnesses, each compiled with gcc -O2 (no OpenMP) against the llm.c checkout and run:
tests/llmc/llmc_constants.c on llm.c's train_gpt2.c, for tests/test_llmc_compat.py (it writes the
tiny model, its batch and three shards with that test module's own helpers into a temporary
directory first), and tests/llmc/llmc_schedulers.c on llmc/schedulers.h, for tests/test_optim.py. And, read from
test_gpt2.cu's text (CUDA: not compiled here), its gradient thresholds for reduced precision and the
relative part of its check_tensor, which llmnb-test --precision tf32 uses (llmnb.parity).
Prints the constants as the test files hold them. llm.c is never copied into this repository.
Needs git (without --llmc), gcc and llmnb.
"""
import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path[:0] = [TESTS, os.path.join(os.path.dirname(TESTS), "src")]

import test_llmc_compat as compat  # noqa: E402  (the model, batch and shards the constants are of)
import test_optim  # noqa: E402  (the learning rate schedules' constants)
from llmnb import parity  # noqa: E402  (test_gpt2.cu's gradient thresholds)
from llmnb.formats import write_checkpoint  # noqa: E402

LLMC_URL = "https://github.com/karpathy/llm.c.git"
LLMC_COMMIT = "f1e2ace651495b74ae22d45d1723443fd00ecd3a"  # master of 2025-05-10; README's `f1e2ace`
HARNESS = os.path.join(HERE, "llmc_constants.c")
SCHEDULERS_HARNESS = os.path.join(HERE, "llmc_schedulers.c")


def fail(message):
    print(f"tests/llmc/regenerate.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        fail(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.strip()[-2000:]}")
    return r.stdout


def clone_llmc(dest, url, commit):
    """llm.c at `commit` in dest (a shallow fetch of that one commit from url)."""
    run(["git", "init", "-q", dest])
    run(["git", "-C", dest, "fetch", "-q", "--depth", "1", url, commit])
    run(["git", "-C", dest, "checkout", "-q", "FETCH_HEAD"])
    return dest


def write_inputs(d):
    """tiny.bin, batch.bin (int32 inputs then targets) and shard_*.bin; returns their paths."""
    params, x, y = compat.tiny_model_and_batch()
    write_checkpoint(os.path.join(d, "tiny.bin"), compat.CONFIG, params)
    np.concatenate([x.ravel(), y.ravel()]).astype("<i4").tofile(os.path.join(d, "batch.bin"))
    pattern = compat.llmc_shuffle_shards(Path(d))
    return os.path.join(d, "tiny.bin"), os.path.join(d, "batch.bin"), pattern


def build_and_run(llmc, workdir, harness, args=()):
    """The `NAME = value` lines printed by `harness` built against the llm.c checkout `llmc`."""
    exe = os.path.join(workdir, os.path.splitext(os.path.basename(harness))[0])
    run(["gcc", "-O2", "-I", llmc, "-o", exe, harness, "-lm"])
    return run([exe, *args], cwd=workdir)


def constants(llmc, workdir):
    """({name: value}, {name: its text}, {name: the test module that holds it}) printed by both
    harnesses built against the llm.c checkout `llmc`."""
    if not os.path.isfile(os.path.join(llmc, "train_gpt2.c")):
        fail(f"{llmc}: no train_gpt2.c here, not an llm.c checkout")
    found, owner = {}, {}
    for module, out in ((compat, build_and_run(llmc, workdir, HARNESS, write_inputs(workdir))),
                        (test_optim, build_and_run(llmc, workdir, SCHEDULERS_HARNESS))):
        for name, text in re.findall(r"^(LLMC_\w+) = (.+)$", out, re.M):
            found[name], owner[name] = text, module
    return {name: ast.literal_eval(text) for name, text in found.items()}, found, owner


def cu_thresholds(llmc):
    """test_gpt2.cu's grad_thresholds (one per parameter tensor, in memory order) and check_tensor's
    epsilon (the part relative to the reference), read from its source -> (list, float)."""
    with open(os.path.join(llmc, "test_gpt2.cu")) as f:
        text = f.read()
    thresholds = re.search(r"float grad_thresholds\[NUM_PARAMETER_TENSORS\] = \{([^}]*)\}", text)
    epsilon = re.search(r"float epsilon = ([\d.eE+-]+)f?;", text)
    if not thresholds or not epsilon:
        fail(f"{llmc}/test_gpt2.cu: its grad_thresholds or check_tensor's epsilon not found")
    return [float(v.strip().rstrip("f")) for v in thresholds.group(1).split(",")], float(epsilon.group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llmc", help="an llm.c checkout (default: git clone it at --commit)")
    ap.add_argument("--commit", default=LLMC_COMMIT, help="llm.c commit to clone (default: %(default)s)")
    ap.add_argument("--url", default=LLMC_URL, help="where to clone llm.c from (default: %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="compare with the constants the test files hold; exit 1 if any differs")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmc-constants-") as tmp:
        llmc = args.llmc or clone_llmc(os.path.join(tmp, "llm.c"), args.url, args.commit)
        if args.llmc is None:
            print(f"llm.c {args.commit} cloned from {args.url}", file=sys.stderr)
        values, texts, owner = constants(llmc, tmp)
        thresholds, epsilon = cu_thresholds(llmc)
    for module in (compat, test_optim):
        print(f"# tests/{module.__name__}.py")
        for name, text in texts.items():
            if owner[name] is module:
                print(f"{name} = {text}")
    ours = list(parity.LLMC_CU_GRAD_TOL.values())
    print(f"# src/llmnb/parity.py: test_gpt2.cu's grad_thresholds {thresholds}, epsilon {epsilon}")
    if args.check:
        cu_differ = ours != thresholds or parity.LLMC_CU_REL != epsilon
        if cu_differ:
            print(f"differs: llmnb.parity.LLMC_CU_GRAD_TOL / LLMC_CU_REL: committed {ours} / {parity.LLMC_CU_REL}, "
                  f"test_gpt2.cu has {thresholds} / {epsilon}", file=sys.stderr)
        differ = [n for n, v in values.items() if getattr(owner[n], n, None) != v]
        missing = [f"{m.__name__}.{n}" for m in (compat, test_optim) for n in dir(m)
                   if n.startswith("LLMC_") and n not in values]
        for n in differ:
            print(f"differs: {owner[n].__name__}.{n}: committed {getattr(owner[n], n, None)}, llm.c gives "
                  f"{values[n]}", file=sys.stderr)
        for n in missing:
            print(f"not printed by the harnesses: {n}", file=sys.stderr)
        if differ or missing or cu_differ:
            return 1
        print(f"all {len(values)} constants equal tests/test_llmc_compat.py's and tests/test_optim.py's",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
