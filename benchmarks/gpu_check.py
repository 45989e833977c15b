"""The GPU check: everything the CUDA path must show on a real card, in one command, under 8 minutes.

    python benchmarks/gpu_check.py                # on a GPU machine: writes gpu_check_out/
    python benchmarks/gpu_check.py --out DIR --budget 420
    python benchmarks/gpu_check.py --dry-run      # anywhere: checks the plan, the inputs and the folder

Runs from a bare checkout (it puts the checkout's src/ first on PYTHONPATH for every command, so
it needs no install and no network; an installed `llmnb[cuda]` works the same). In order:
  env       the card, driver, CUDA runtime, Python, numba, numba-cuda and torch versions, fp32 peak
  tests     pytest tests/cuda on the device (LLMNB_TEST_CUDA_DEVICE=1: no simulator), in the
            background while `parity` runs
  parity    llmnb-reference (PyTorch, CPU, GPT-2 124M, B=4 T=64) + llmnb-test --device cuda, then
            again with --precision tf32 (the matmuls on tensor cores; parity.TOLERANCES["tf32"]) and
            --precision bf16 (train_gpt2.cu's mixed precision; test_gpt2.cu's bf16 tolerances)
  bench     llmnb's step on the card (median of 10 after 2 warm-up steps) and the time of every
            kernel in one step (CUDA events), then PyTorch eager fp32 (F.scaled_dot_product_attention,
            as nanoGPT) with TF32 off and on and with bf16 autocast, on the same model and batch, then
            llmnb's step with --precision tf32 and with --precision bf16, each shape in its own process
  lab       dev/cuda_gemm.py's TF32 versions (LAB_TF32_GEMMS, v8t: the package's --precision tf32 kernel
            and its variants) checked against float64 and timed, then its BF16 versions (LAB_BF16_GEMMS,
            v9b: matmul_bf16.py's) beside cuBLAS's bf16 and tf32 matmuls (appended to bench.txt)
  launch    at B=4 T=64: the launches of one step, the host's time to issue them, the same launches
            replayed as recorded (cuda.core's launch alone: what a cheaper launch path could reach),
            the same launches as one CUDA graph (cuda.core), a cProfile of the host's side, the cost
            of a device-array view, then the step with LLMNB_CUDA_VIEW_CACHE=0 (numba's views, to
            compare with the cached views of the bench phase) (appended to bench.txt)
  bench     llmnb's step again with each matmul kernel of UNTIMED_GEMMS (LLMNB_CUDA_GEMM: not yet
            timed on a card)
  lab       dev/cuda_attention.py: the attention versions (the package's v2, its default, v3, and v4t,
            tf32 on tensor cores; the lab's v1) checked and timed at both shapes (appended to bench.txt)
  train     llmnb-train --device cuda -e d12 -x 20 -v 0 -s 0 at each shape, with its JSONL log
  lab       dev/cuda_gemm.py: the matmul versions of LAB_GEMMS checked and timed beside the
            package's (appended to bench.txt)
summary.txt ends with `compare` lines read from bench.txt: per shape llmnb's median step with each matmul
kernel against PyTorch's (TF32 off), llmnb's with --precision tf32 against PyTorch's with TF32 on, and
each attention version's time per layer, the fastest named; and a `parity` line per precision read
from parity.txt.
Shapes: B=4 T=64 (llm.c's CPU demo) and B=8 T=1024 (GPT-2's context). Every phase has a timeout,
and the whole run a budget (--budget seconds): a phase that runs out is killed and marked so, and
the rest still run within what is left. The output folder holds at most these 8 files:
  summary.txt env.txt tests.txt parity.txt bench.txt train.txt train_B4_T64.jsonl train_B8_T1024.jsonl
"""
import argparse
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
# the one place that runs the checkout's src/ rather than the installed llmnb: a GPU machine is lent
# bare (no install, no network) for minutes, so this script and its children put src/ first
if SRC not in sys.path:
    sys.path.insert(0, SRC)

SHAPES = ((4, 64), (8, 1024))
# the package's matmul kernels (llmnb/cuda/launch.py, LLMNB_CUDA_GEMM) not yet timed on a card
UNTIMED_GEMMS = ("v6s", "v7s")
# the kernel lab's matmul versions not yet timed on a card, timed last beside the package's
LAB_GEMMS = ("v6s-128x128-bk8", "v6s-128x128-bk8-r128", "v6s-128x128-bk16", "v6s-128x64-bk8", "v7s-128x128-bk8",
             "v7s-128x64-bk16")
# the TF32 (tensor-core) versions of the kernel lab, checked against float64 and timed on the card
# (timed at B*T = 8192 only: the budget)
LAB_TF32_GEMMS = ("v8t-128x128-bk16", "v8t-128x128-bk16-ldsm", "v8t-128x128-bk16-trunc", "v8t-128x128-bk16-w64x64")
# the BF16 versions (v9b: the first the package's --precision bf16 matmul), timed beside cuBLAS's bf16
# and tf32 matmuls (torch) on the same shapes
LAB_BF16_GEMMS = ("v9b-128x128-bk32", "v9b-128x64-bk32", "v9b-64x64-bk32")
TRAIN_STEPS = 20
OUT_FILES = ("summary.txt", "env.txt", "tests.txt", "parity.txt", "bench.txt", "train.txt") + \
    tuple(f"train_B{B}_T{T}.jsonl" for B, T in SHAPES)
# AdamW of llm.c's train_gpt2.c
LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-4, 0.9, 0.999, 1e-8, 0.0


# ------------------------------------------------------------------------------------------------
# the plan: each phase is a list of commands, each with its own timeout and output file

class Cmd:
    def __init__(self, argv, out, timeout, env=None, background=False, label=None):
        self.argv, self.out, self.timeout, self.env = argv, out, timeout, env or {}
        self.background, self.label = background, label or " ".join(argv[1:4])


def plan(work):
    """[(phase, [Cmd])] in the order they run. `work` is a scratch folder (inputs, checkpoints)."""
    py = sys.executable
    me = os.path.abspath(__file__)
    ref = os.path.join(work, "ref")
    data = os.path.join(work, "data")
    phases = [
        ("env", [Cmd([py, me, "--env"], "env.txt", 60)]),
        ("tests", [Cmd([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-v", "-rf", "--durations=5",
                        os.path.join(ROOT, "tests", "cuda")], "tests.txt", 200,
                       env={"LLMNB_TEST_CUDA_DEVICE": "1"}, background=True)]),
        ("parity", [
            Cmd([py, "-m", "llmnb.reference_torch", "--out", ref, "--threads", "8"], "parity.txt", 120),
            Cmd([py, "-m", "llmnb.parity", "--device", "cuda", "--model", os.path.join(ref, "model.bin"),
                 "--state", os.path.join(ref, "debug_state.bin"),
                 "--losses", os.path.join(ref, "expected_losses.json")], "parity.txt", 150),
            Cmd([py, "-m", "llmnb.parity", "--device", "cuda", "--precision", "tf32",
                 "--model", os.path.join(ref, "model.bin"), "--state", os.path.join(ref, "debug_state.bin"),
                 "--losses", os.path.join(ref, "expected_losses.json")], "parity.txt", 150,
                label="llmnb-test --device cuda --precision tf32"),
            Cmd([py, "-m", "llmnb.parity", "--device", "cuda", "--precision", "bf16",
                 "--model", os.path.join(ref, "model.bin"), "--state", os.path.join(ref, "debug_state.bin"),
                 "--losses", os.path.join(ref, "expected_losses.json")], "parity.txt", 150,
                label="llmnb-test --device cuda --precision bf16")]),
        ("bench", [Cmd([py, me, "--bench", system, f"{B}x{T}"], "bench.txt", 150)
                   for B, T in SHAPES for system in ("llmnb", "torch", "llmnb-tf32", "llmnb-bf16")]),
        # the tensor-core matmuls' first check against float64 and timing beside the package's fp32 kernel
        ("lab", [Cmd([py, "-m", "dev.cuda_gemm", "--versions", ",".join(LAB_TF32_GEMMS), "--ntok", "8192"],
                     "bench.txt", 90, label="dev.cuda_gemm: the TF32 tensor-core versions (v8t)"),
                 Cmd([py, "-m", "dev.cuda_gemm", "--versions", ",".join(LAB_BF16_GEMMS), "--ntok", "8192,256",
                      "--cublas"], "bench.txt", 120,
                     label="dev.cuda_gemm: the BF16 tensor-core versions (v9b) beside cuBLAS bf16 and tf32")]),
        # where the host's time goes at the launch-bound shape: launches, their host cost, the same
        # launches replayed as recorded, a profile (issue 24's step 4)
        ("launch", [Cmd([py, me, "--launch", "4x64"], "bench.txt", 60, label="launch profile B=4 T=64"),
                    Cmd([py, me, "--bench", "llmnb", "4x64"], "bench.txt", 60, env={"LLMNB_CUDA_VIEW_CACHE": "0"},
                        label="llmnb B=4 T=64 with LLMNB_CUDA_VIEW_CACHE=0 (numba's views)")]),
        # the step again with each matmul kernel not yet timed on a card (launch.py)
        ("bench", [Cmd([py, me, "--bench", "llmnb", f"{B}x{T}"], "bench.txt", 150, env={"LLMNB_CUDA_GEMM": g},
                       label=f"llmnb B={B} T={T} with LLMNB_CUDA_GEMM={g}")
                   for g in UNTIMED_GEMMS for B, T in SHAPES]),
        # the attention versions before train: the only timing of v3 against v2 (dev/cuda_attention.py)
        ("lab", [Cmd([py, "-m", "dev.cuda_attention"], "bench.txt", 110,
                     label="dev.cuda_attention: attention versions (v2 the default, v3 LLMNB_CUDA_ATTENTION=v3, v4t tf32)")]),
        ("train", [Cmd([py, "-m", "llmnb.train", "--device", "cuda", "-e", "d12", "-x", str(TRAIN_STEPS),
                        "-v", "0", "-s", "0", "-b", str(B), "-t", str(T),
                        "-i", os.path.join(data, "train.bin"), "-j", os.path.join(data, "val.bin"),
                        "--data-dir", data, "-o", os.path.join(work, f"run_B{B}_T{T}")],
                       "train.txt", 150, label=f"llmnb-train B={B} T={T}") for B, T in SHAPES]),
        ("lab", [Cmd([py, "-m", "dev.cuda_gemm", "--versions", ",".join(LAB_GEMMS), "--ntok", "8192,256"],
                     "bench.txt", 150, label="dev.cuda_gemm: matmul versions against the package's")]),
    ]
    return phases


def prepare_inputs(work):
    """Train/val shards and a tokenizer file for llmnb-train, without network: tinyshakespeare's
    tokens when the checkout has them (data/tinyshakespeare), else a token stream with a period of
    3001 (a model can learn it, so the loss falls). -> a line saying which."""
    import numpy as np
    from llmnb.formats import read_shard, write_shard, write_tokenizer
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    ts = os.path.join(ROOT, "data", "tinyshakespeare")
    train_src = os.path.join(ts, "tiny_shakespeare_train.bin")
    val_src = os.path.join(ts, "tiny_shakespeare_val.bin")
    if os.path.exists(train_src) and os.path.exists(val_src):
        write_shard(os.path.join(data, "train.bin"), np.asarray(read_shard(train_src)))
        write_shard(os.path.join(data, "val.bin"), np.asarray(read_shard(val_src)))
        how = f"data: tinyshakespeare tokens from {ts}"
    else:
        rng = np.random.default_rng(0)
        period = rng.integers(0, 50257, 3001)
        tokens = np.tile(period, 100)  # 300,100 tokens
        write_shard(os.path.join(data, "train.bin"), tokens)
        write_shard(os.path.join(data, "val.bin"), tokens[:20000])
        how = "data: a synthetic token stream of period 3001 (no tinyshakespeare in the checkout)"
    # llm.c's tokenizer file from the checkout's data/, else a decode-only stand-in, so that
    # llmnb-train does not reach for tiktoken's files (no network)
    tok = os.path.join(ROOT, "data", "gpt2_tokenizer.bin")
    if os.path.exists(tok):
        shutil.copyfile(tok, os.path.join(data, "gpt2_tokenizer.bin"))
    else:
        write_tokenizer(os.path.join(data, "gpt2_tokenizer.bin"),
                        [f"<{i}>".encode() for i in range(50257)], 50256)
    return how


# ------------------------------------------------------------------------------------------------
# running the plan

def child_env(extra):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env.pop("LLMNB_CUDA_GEOMETRY", None)
    env.pop("LLMNB_CUDA_GEMM", None)   # the package's default matmul kernel unless a command names one
    env["PYTHONPATH"] = os.pathsep.join([SRC] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start(cmd, out_dir):
    f = open(os.path.join(out_dir, cmd.out), "a")
    f.write(f"\n$ {' '.join(cmd.argv)}\n")
    f.flush()
    proc = subprocess.Popen(cmd.argv, cwd=ROOT, env=child_env(cmd.env), stdout=f, stderr=subprocess.STDOUT)
    return proc, f, time.perf_counter()


def finish(proc, f, t0, timeout):
    """Wait up to `timeout` s; kill on expiry. -> (status text, seconds)."""
    try:
        rc = proc.wait(timeout=max(timeout, 1))
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = f"TIMED OUT after {timeout:.0f} s (killed)"
    secs = time.perf_counter() - t0
    f.write(f"[{status}, {secs:.1f} s]\n")
    f.close()
    return status, secs


def join(background, deadline, note):
    while background:
        phase, cmd, proc, f, t0 = background.pop(0)
        left = deadline - time.perf_counter()
        status, secs = finish(proc, f, t0, min(cmd.timeout - (time.perf_counter() - t0), left))
        note(f"{phase:7s} {cmd.label}: {status} in {secs:.0f} s -> {cmd.out}")


def run_plan(out_dir, work, budget):
    deadline = time.perf_counter() + budget
    summary = open(os.path.join(out_dir, "summary.txt"), "a")

    def note(line):
        print(line, flush=True)
        summary.write(line + "\n")
        summary.flush()
    note(f"gpu_check: {time.strftime('%Y-%m-%d %H:%M:%S')}, budget {budget:.0f} s, checkout {ROOT}")
    note(prepare_inputs(work))
    background = []
    for phase, cmds in plan(work):
        for cmd in cmds:
            left = deadline - time.perf_counter()
            if left < 5:
                note(f"{phase:7s} {cmd.label}: SKIPPED (budget spent)")
                continue
            proc, f, t0 = start(cmd, out_dir)
            if cmd.background:
                background.append((phase, cmd, proc, f, t0))
                note(f"{phase:7s} {cmd.label}: started in the background")
                continue
            status, secs = finish(proc, f, t0, min(cmd.timeout, left))
            note(f"{phase:7s} {cmd.label}: {status} in {secs:.0f} s -> {cmd.out}")
        if phase == "parity":  # the background tests end before anything is timed
            join(background, deadline, note)
    join(background, deadline, note)
    for B, T in SHAPES:  # the training logs
        log = os.path.join(work, f"run_B{B}_T{T}", "log.jsonl")
        if os.path.exists(log):
            shutil.copyfile(log, os.path.join(out_dir, f"train_B{B}_T{T}.jsonl"))
    bench = os.path.join(out_dir, "bench.txt")
    if os.path.exists(bench):
        with open(bench) as f:
            for line in compare(f.read()):
                note(line)
    parity = os.path.join(out_dir, "parity.txt")
    if os.path.exists(parity):
        with open(parity) as f:
            for line in parity_lines(f.read()):
                note(line)
    note(f"done in {budget - (deadline - time.perf_counter()):.0f} s")
    summary.close()


STEP_LINE = re.compile(r"^llmnb\s+B=(\d+) T=(\d+) \(matmul (\w+)\): step ms min/median/max \S+ ([\d.]+)", re.M)
TORCH_LINE = re.compile(r"^PyTorch B=(\d+) T=(\d+) TF32 off: step ms min/median/max \S+ ([\d.]+)", re.M)
UNCACHED_LINE = re.compile(r"^llmnb\s+B=(\d+) T=(\d+) \(matmul (\w+), views uncached\): step ms min/median/max \S+ "
                           r"([\d.]+)", re.M)
TF32_LINE = re.compile(r"^llmnb\s+B=(\d+) T=(\d+) \(precision tf32\): step ms min/median/max \S+ ([\d.]+)", re.M)
BF16_LINE = re.compile(r"^llmnb\s+B=(\d+) T=(\d+) \(precision bf16\): step ms min/median/max \S+ ([\d.]+)", re.M)
TORCH_BF16_LINE = re.compile(r"^PyTorch B=(\d+) T=(\d+) bf16 autocast: step ms min/median/max \S+ ([\d.]+)", re.M)
TORCH_TF32_LINE = re.compile(r"^PyTorch B=(\d+) T=(\d+) TF32 on : step ms min/median/max \S+ ([\d.]+)", re.M)
ATTENTION_LINE = re.compile(r"^(v\d+\w*)\s+B=(\d+) T=(\d+) NH=\d+ hs=\d+\s+([\d.]+)\s+\S+\s+([\d.]+)", re.M)
FAILED_CHECK = re.compile(r"^BAD (v\d+[\w-]*) ", re.M)   # dev.cuda_attention's or dev.cuda_gemm's check of a version
GEMM_TOTAL_LINE = re.compile(r"^  B\*T=\s*(\d+) (\S+)\s+([\d.]+)$", re.M)   # dev.cuda_gemm's sums


def compare(bench):
    """Lines for summary.txt from bench.txt's text: per shape, llmnb's median step with each matmul
    kernel against PyTorch's (TF32 off), the lab's tensor-core GEMMs (the 15 matmuls of a layer set)
    against cuBLAS's in the same precision, and each attention version's forward + backward per layer,
    the fastest of each named: what decides the package's defaults (launch.GEMM_KERNEL, launch.ATTENTION_KERNEL).
    An attention version that failed its check is listed as such, never as the fastest."""
    steps, torch_ms, attention = {}, {}, {}
    for B, T, kernel, ms in STEP_LINE.findall(bench):
        steps.setdefault((int(B), int(T)), {})[kernel] = float(ms)
    for B, T, ms in TORCH_LINE.findall(bench):
        torch_ms[(int(B), int(T))] = float(ms)
    failed = set(FAILED_CHECK.findall(bench))
    for version, B, T, fwd, bwd in ATTENTION_LINE.findall(bench):
        attention.setdefault((int(B), int(T)), {})[version] = float(fwd) + float(bwd)
    lines = []
    for (B, T), by_kernel in sorted(steps.items()):
        best = min(by_kernel, key=by_kernel.get)
        text = ", ".join(f"{k} {ms:.1f}" for k, ms in by_kernel.items())
        ref = torch_ms.get((B, T))
        vs = f"; PyTorch fp32 {ref:.1f}: {by_kernel[best] / ref:.2f}x its time" if ref else ""
        lines.append(f"compare llmnb B={B} T={T} step ms by matmul kernel: {text} (fastest {best}){vs}")
    for B, T, kernel, ms in UNCACHED_LINE.findall(bench):   # the view cache's share of the step
        cached = steps.get((int(B), int(T)), {}).get(kernel)
        if cached:
            lines.append(f"compare views B={B} T={T} matmul {kernel}: step ms {cached:.1f} with the view cache, "
                         f"{float(ms):.1f} without ({float(ms) - cached:+.1f} ms)")
    tf32 = {(int(B), int(T)): float(ms) for B, T, ms in TF32_LINE.findall(bench)}
    torch_tf32 = {(int(B), int(T)): float(ms) for B, T, ms in TORCH_TF32_LINE.findall(bench)}
    for (B, T), ms in sorted(tf32.items()):
        ref = torch_tf32.get((B, T))
        vs = f"; PyTorch TF32 on {ref:.1f}: {ms / ref:.2f}x its time" if ref else ""
        fp32 = steps.get((B, T))
        own = f"; llmnb fp32 {min(fp32.values()):.1f}: {min(fp32.values()) / ms:.2f}x tf32's time" if fp32 else ""
        lines.append(f"compare tf32 llmnb B={B} T={T} step ms {ms:.1f}{vs}{own}")
    torch_bf16 = {(int(B), int(T)): float(ms) for B, T, ms in TORCH_BF16_LINE.findall(bench)}
    for B, T, ms in BF16_LINE.findall(bench):
        ref = torch_bf16.get((int(B), int(T)))
        vs = f"; PyTorch bf16 autocast {ref:.1f}: {float(ms) / ref:.2f}x its time" if ref else ""
        lines.append(f"compare bf16 llmnb B={B} T={T} step ms {float(ms):.1f}{vs}")
    gemms = {}
    for ntok, version, ms in GEMM_TOTAL_LINE.findall(bench):
        gemms.setdefault(int(ntok), {})[version] = float(ms)
    for ntok, by_version in sorted(gemms.items()):   # the lab's tensor-core GEMMs against cuBLAS
        ours = {v: ms for v, ms in by_version.items() if v.startswith(("v8t", "v9b")) and v not in failed}
        text = ", ".join(f"{v} {ms:.2f}" for v, ms in by_version.items())
        vs = "".join(f"; fastest {p} {min(o, key=o.get)}: {o[min(o, key=o.get)] / by_version[ref]:.2f}x {ref}'s time"
                     for p, ref in (("v9b", "cublas-bf16"), ("v8t", "cublas-tf32"))
                     for o in [{v: ms for v, ms in ours.items() if v.startswith(p)}] if o and ref in by_version)
        lines.append(f"compare gemm B*T={ntok} the 15 matmuls of a 124M layer set, ms: {text}{vs}")
    for (B, T), by_version in sorted(attention.items()):
        ok = [v for v in by_version if v not in failed]
        best = f"fastest {min(ok, key=by_version.get)}" if ok else "every version failed its check"
        text = ", ".join(f"{v} {ms:.3f}{' (FAILED its check)' if v in failed else ''}" for v, ms in by_version.items())
        lines.append(f"compare attention B={B} T={T} forward + backward ms per layer: {text} ({best})")
    return lines


def parity_lines(text):
    """A line per llmnb-test run in parity.txt: its precision, overall okay, the logits' max
    difference and the steps' largest loss difference (tf32 and bf16 print them) or how many steps were OK."""
    lines = []
    for run in text.split("\n$ ")[1:]:
        head = run.splitlines()[0]
        if "llmnb.parity" not in head:
            continue
        m = re.search(r"--precision (\w+)", head)
        precision = m.group(1) if m else "fp32"
        ok = re.search(r"overall okay: (\d)", run)
        logits = re.search(r"\(LOGITS\), max_diff = (\S+)", run)
        bad = run.count("TENSOR NOT OK")
        losses = [float(d) for d in re.findall(r"OK = \d \(diff (\S+)\)", run)]
        steps = f", steps' largest loss diff {max(losses):.2e}" if losses else \
            f", {len(re.findall(r'OK = 1', run))} steps OK"
        lines.append(f"parity {precision}: overall okay {ok.group(1) if ok else '? (no result)'}, logits max diff "
                     f"{logits.group(1) if logits else '?'}, {bad} gradient tensor(s) NOT OK{steps}")
    return lines


def dry_run(out_dir, work):
    """Everything but the GPU: the inputs, the commands' argument parsing, the folder's files."""
    with open(os.path.join(out_dir, "summary.txt"), "w") as s:
        s.write("gpu_check --dry-run: the commands a GPU run would start\n")
        s.write(prepare_inputs(work) + "\n")
        for phase, cmds in plan(work):
            for cmd in cmds:
                env = "".join(f"{k}={v} " for k, v in cmd.env.items())
                s.write(f"{phase:7s} [{cmd.timeout:4d} s{' bg' if cmd.background else ''}] "
                        f"{env}{' '.join(cmd.argv)} > {cmd.out}\n")
                if cmd.out not in OUT_FILES:
                    raise SystemExit(f"gpu_check: {cmd.out} is not one of the planned output files")
                if "-m" in cmd.argv and "pytest" not in cmd.argv:  # the CLIs parse their arguments
                    i = cmd.argv.index("-m")
                    mod = cmd.argv[i + 1]
                    r = subprocess.run([sys.executable, "-c",
                                        f"import sys, {mod} as m; a = sys.argv[1:]; "
                                        f"m.build_parser().parse_args(a) if hasattr(m, 'build_parser') "
                                        f"else m.parse_args(a)",
                                        *cmd.argv[i + 2:]],
                                       cwd=ROOT, env=child_env(cmd.env), capture_output=True, text=True)
                    if r.returncode != 0:
                        raise SystemExit(f"gpu_check: {mod} rejects its arguments: {r.stderr.strip()[-300:]}")
        s.write("arguments parse: ok\n")
    print(open(os.path.join(out_dir, "summary.txt")).read(), end="")


# ------------------------------------------------------------------------------------------------
# phases that run inside this file (each in its own process)

def env_report():
    import platform
    print(f"python {platform.python_version()} on {platform.platform()}")
    for mod in ("numpy", "numba", "numba_cuda", "torch", "llvmlite"):
        try:
            m = __import__(mod)
            print(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError as e:
            print(f"{mod}: not importable ({e})")
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                        "clocks.max.mem,power.limit", "--format=csv"], check=False)
    from numba import cuda
    print(f"numba.cuda available: {cuda.is_available()}")
    cuda.detect()
    try:
        from numba.cuda.cudadrv import driver, runtime
        print(f"CUDA runtime {runtime.runtime.get_version()}, driver {driver.driver.get_version()}")
    except Exception as e:  # versions differ across numba-cuda releases
        print(f"CUDA versions: {e}")
    from llmnb.mfu import gpu_peak_flops
    peak, how = gpu_peak_flops()
    print(f"fp32 peak (CUDA cores) {peak / 1e12:.1f} TFLOP/s = {how}")
    for precision in ("tf32", "bf16"):
        peak, how = gpu_peak_flops(precision)
        print(f"{precision} peak (tensor cores, dense) {peak / 1e12:.1f} TFLOP/s = {how}")
    try:
        import torch
        print(f"torch CUDA {torch.version.cuda}, device {torch.cuda.get_device_name(0)}")
    except Exception as e:
        print(f"torch: {e}")


def bench_config():
    """GPT-2 124M; $LLMNB_GPU_CHECK_TINY=1 takes a tiny model instead (the simulator's test of this file)."""
    from llmnb.config import GPT2Config
    if os.environ.get("LLMNB_GPU_CHECK_TINY") == "1":
        return GPT2Config(max_seq_len=16, vocab_size=60, padded_vocab_size=128, num_layers=1, num_heads=2,
                          channels=32)
    return GPT2Config()


def make_batch(config, B, T, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=B * T + 1).astype(np.int32)
    return tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)


class EventTimer:
    """Wraps every kernel of a CUDA backend between two CUDA events; -> {name: [calls, ms, flops]}."""

    def __init__(self, backend, names):
        self.backend, self.names = backend, names
        self.events = []

    def __enter__(self):
        from numba import cuda
        self.originals = {n: getattr(self.backend, n) for n in self.names}
        for n, fn in self.originals.items():
            def timed(*args, _n=n, _fn=fn):
                e0, e1 = cuda.event(), cuda.event()
                e0.record()
                _fn(*args)
                e1.record()
                self.events.append((_n, e0, e1, kernel_flops(_n, args)))
            setattr(self.backend, n, timed)
        return self

    def __exit__(self, *exc):
        for n, fn in self.originals.items():
            setattr(self.backend, n, fn)

    def table(self):
        out = {}
        for n, e0, e1, fl in self.events:
            e1.synchronize()
            rec = out.setdefault(n, [0, 0.0, 0.0])
            rec[0] += 1
            rec[1] += e0.elapsed_time(e1)
            rec[2] += fl
        return out


def kernel_flops(name, args):
    if name == "matmul_forward":
        inp, weight = args[1], args[2]
        return 2.0 * (inp.size // inp.shape[len(inp.shape) - 1]) * weight.shape[0] * weight.shape[1]
    if name == "matmul_backward":
        inp, weight = args[4], args[5]
        return 4.0 * (inp.size // inp.shape[len(inp.shape) - 1]) * weight.shape[0] * weight.shape[1]
    return 0.0


def peak_shares(flops_per_s, tensor="tf32"):
    """'x% of fp32 peak', and where the card's tensor-core peak of `tensor` (tf32 or bf16) is known
    ', y% of tf32 peak' (the MFU of a step whose matmuls run in TF32: PyTorch's with TF32 on,
    llmnb's --precision tf32; or in bf16: autocast, --precision bf16)."""
    from llmnb.mfu import gpu_peak_flops
    fp32, _ = gpu_peak_flops()
    text = f"{100 * flops_per_s / fp32:.1f}% of fp32 peak"
    peak, _ = gpu_peak_flops(tensor)
    return text + (f", {100 * flops_per_s / peak:.1f}% of {tensor} peak" if math.isfinite(peak) else "")


def bench_llmnb(B, T, steps=10, warmup=2, precision="fp32"):
    if os.environ.get("LLMNB_GPU_CHECK_TINY") == "1":
        steps, warmup = 1, 1
    import numpy as np
    from numba import cuda
    from llmnb.backend import KERNEL_NAMES
    from llmnb.mfu import flops_per_step, gpu_peak_flops
    from llmnb.model import GPT2, init_params
    config = bench_config()
    peak, _ = gpu_peak_flops(precision)   # the kernels' rates: against the peak of what they run on
    flops = flops_per_step(config, B, T)
    x, y = make_batch(config, B, T)
    model = GPT2(config, init_params(config), device="cuda", copy=False, precision=precision)
    k = model.backend

    def step(t):
        loss = model.forward(x, y)
        model.zero_grad()
        model.backward()
        model.update(LR, BETA1, BETA2, EPS, WEIGHT_DECAY, t)
        k.synchronize()
        return loss
    t0 = time.perf_counter()
    step(1)
    from llmnb.cuda.launch import GEMM_KERNEL, VIEW_CACHE
    what = f"matmul {GEMM_KERNEL}" if precision == "fp32" else f"precision {precision}"
    what += "" if VIEW_CACHE else ", views uncached"
    print(f"llmnb B={B} T={T}, {what}: first step (compiles or loads the kernels) "
          f"{time.perf_counter() - t0:.1f} s")
    for t in range(2, warmup + 1):
        step(t)
    times = []
    for t in range(warmup + 1, warmup + 1 + steps):
        t0 = time.perf_counter()
        loss = step(t)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    free, total = cuda.current_context().get_memory_info()
    print(f"llmnb   B={B} T={T} ({what}): step ms min/median/max {1e3 * min(times):.1f} {1e3 * med:.1f} "
          f"{1e3 * max(times):.1f} | {B * T / med:.0f} tok/s | {flops / med / 1e12:.2f} TFLOP/s = "
          f"{peak_shares(flops / med, 'bf16' if precision == 'bf16' else 'tf32')} | loss {loss:.4f} | "
          f"device memory in use {(total - free) / 2**30:.1f} GiB")
    with EventTimer(k, KERNEL_NAMES + ("fill", "adamw_update_master")) as et:
        e0, e1 = cuda.event(), cuda.event()
        e0.record()
        step(warmup + steps + 1)
        e1.record()
        e1.synchronize()
        total_ms = e0.elapsed_time(e1)
    rows = sorted(et.table().items(), key=lambda kv: -kv[1][1])
    print(f"per-kernel times of one step (CUDA events), step {total_ms:.1f} ms:")
    print(f"{'kernel':32s} {'calls':>5s} {'ms':>9s} {'share':>6s}  rate")
    for n, (calls, ms, fl) in rows:
        rate = f"{fl / ms / 1e9:.1f} TFLOP/s" if fl else ""
        rate += f" = {100 * fl / (ms / 1e3) / peak:.0f}% of {precision} peak" if fl and math.isfinite(peak) else ""
        print(f"{n:32s} {calls:5d} {ms:9.2f} {100 * ms / total_ms:5.1f}%  {rate}")
    in_kernels = sum(r[1] for _, r in rows)
    print(f"{'(outside kernels: host, copies)':32s} {'':5s} {total_ms - in_kernels:9.2f} "
          f"{100 * (total_ms - in_kernels) / total_ms:5.1f}%")


class LaunchRecorder:
    """Counts the kernel launches made inside it and keeps each one's launch call as numba-cuda made
    it (cuda.core's launch with the argument list numba prepared), so they can be issued again
    with nothing of numba's in between: the floor of a cheaper launch path. On the simulator
    (no cuda.core launch) it counts only."""

    def __init__(self):
        self.count, self.calls = 0, []

    def __enter__(self):
        from llmnb.cuda.launch import SIMULATOR
        if SIMULATOR:
            from numba.cuda.simulator import kernel as sim
            self.where, self.name = sim.FakeCUDAKernel, "__call__"
            real = sim.FakeCUDAKernel.__call__

            def counted(kernel, *args):
                if not kernel._device and not sim._kernel_context:
                    self.count += 1
                return real(kernel, *args)
        else:
            from numba.cuda import dispatcher
            if hasattr(dispatcher, "launch"):   # numba-cuda 0.30: cuda.core's launch, called by _Kernel.launch
                self.where, self.name = dispatcher, "launch"
            else:                               # another release: count at _Kernel.launch, replay nothing
                self.where, self.name = dispatcher._Kernel, "launch"
            real = getattr(self.where, self.name)
            keep = self.where is dispatcher

            def counted(*args, **kwargs):
                self.count += 1
                if keep:
                    self.calls.append(args)
                return real(*args, **kwargs)
        self.real = real
        setattr(self.where, self.name, counted)
        return self

    def __exit__(self, *exc):
        setattr(self.where, self.name, self.real)

    def replay(self):
        for args in self.calls:
            self.real(*args)

    def graph(self):
        """-> (the recorded launches captured into one CUDA graph with cuda.core's GraphBuilder, the
        stream it launches on)."""
        # a stream of numba's own (its context, already current), seen as cuda.core's; a cuda.core
        # Device's stream where this numba-cuda has no such view
        try:
            from numba import cuda
            from numba.cuda.cudadrv.driver import _to_core_stream
            self.numba_stream = cuda.stream()   # (kept alive with the graph)
            stream = _to_core_stream(self.numba_stream)
        except (ImportError, AttributeError, TypeError):
            from cuda.core import Device
            device = Device()
            device.set_current()
            stream = device.create_stream()
        builder = stream.create_graph_builder().begin_building()
        try:
            for _, config, kernel, *args in self.calls:
                self.real(builder, config, kernel, *args)
        except Exception:
            try:   # (a capture cut short still ends, the stream usable again; the first error is the one raised)
                builder.end_building()
            except Exception:
                pass
            raise
        builder.end_building()
        return builder.complete(), stream


def launch_profile(B, T):
    """Where the host's time goes in one llmnb step on the card: the launches per step, the time
    the host takes to issue them against the card's time for the step, that step's launches issued
    again as recorded (cuda.core's launch only), a profile of the host's side of one step, and
    what a view of a device array costs. For issue 24's step 4 (a cheaper launch path)."""
    import cProfile
    import io
    import pstats
    from numba import cuda
    from llmnb.model import GPT2, init_params
    config = bench_config()
    x, y = make_batch(config, B, T)
    model = GPT2(config, init_params(config), device="cuda", copy=False)
    k = model.backend

    def step(t):
        model.forward(x, y)   # (ends by copying the losses to the host: the step's one sync before the last)
        model.zero_grad()
        model.backward()
        model.update(LR, BETA1, BETA2, EPS, WEIGHT_DECAY, t)
    for t in (1, 2):
        step(t)
    k.synchronize()
    steps = 2 if os.environ.get("LLMNB_GPU_CHECK_TINY") == "1" else 10
    walls, issues = [], []
    for t in range(3, 3 + steps):
        t0 = time.perf_counter()
        with LaunchRecorder() as rec:
            step(t)
        t1 = time.perf_counter()
        k.synchronize()
        walls.append(time.perf_counter() - t0)
        issues.append(t1 - t0)

    def med(xs):
        return 1e3 * sorted(xs)[len(xs) // 2]
    print(f"launch B={B} T={T}: {rec.count} launches per step; the step {med(walls):.1f} ms, its host returns after "
          f"{med(issues):.1f} ms ({1e3 * med(issues) / rec.count:.0f} us a launch, the loss copy's wait included)",
          flush=True)
    if not rec.calls:
        print(f"launch B={B} T={T}: replay n/a (the simulator, or a numba-cuda without cuda.core's launch)")
    else:   # each part in a try of its own: what one fails to measure, the next still does
        try:   # the same launches again, back to back, with nothing of numba's in between
            replays, replay_issues = [], []
            for _ in range(steps):
                t0 = time.perf_counter()
                rec.replay()
                replay_issues.append(time.perf_counter() - t0)
                k.synchronize()
                replays.append(time.perf_counter() - t0)
            print(f"launch B={B} T={T}: the step's launches issued again as recorded (cuda.core's launch alone): "
                  f"{med(replays):.1f} ms, issued in {med(replay_issues):.1f} ms "
                  f"({1e3 * med(replay_issues) / rec.count:.0f} us a launch): a cheaper launch path would save up "
                  f"to {med(walls) - med(replays):.1f} ms of the step", flush=True)
        except Exception as e:
            print(f"launch B={B} T={T}: the replay failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        try:   # the floor: the same launches as one CUDA graph, one launch a step
            graph, stream = rec.graph()
            k.synchronize()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                graph.launch(stream)
                stream.sync()
                times.append(time.perf_counter() - t0)
            print(f"launch B={B} T={T}: the step's launches as one CUDA graph (cuda.core): {med(times):.1f} ms a step",
                  flush=True)
        except Exception as e:
            print(f"launch B={B} T={T}: a CUDA graph of the step failed: {type(e).__name__}: {str(e)[:300]}",
                  flush=True)
    prof = cProfile.Profile()
    prof.enable()
    step(3 + steps)
    prof.disable()
    k.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    print(f"launch B={B} T={T}: the host's side of one step by own time (cProfile; its overhead inflates "
          "the totals):")
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])
    from llmnb.cuda.launch import cached_views
    plain = cuda.device_array(1 << 20, "float32")
    n = 200
    for name, flat in (("numba's", plain), ("llmnb's cached", cached_views(plain))):
        t0 = time.perf_counter()
        for i in range(n):
            flat[i % 12 * 4096:i % 12 * 4096 + 4096].reshape(64, 64)
        view = (time.perf_counter() - t0) / n
        stacked = flat[:12 * 4096].reshape(12, 4096)
        t0 = time.perf_counter()
        for i in range(n):
            stacked[i % 12]
        index = (time.perf_counter() - t0) / n
        print(f"launch: {name} views: a slice + reshape {1e6 * view:.1f} us, a stacked view's [l] {1e6 * index:.1f} us")


def bench_torch(B, T, steps=10, warmup=3):
    import numpy as np
    import torch
    from llmnb.mfu import flops_per_step
    from llmnb.model import init_params
    from llmnb.reference_torch import define_gpt2, load_llmc_
    config = bench_config()
    flops = flops_per_step(config, B, T)
    x, y = make_batch(config, B, T)
    model = define_gpt2(torch, sdpa=True)(config)
    load_llmc_(torch, model, init_params(config))
    model = model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS,
                            weight_decay=WEIGHT_DECAY)
    xt = torch.from_numpy(x.astype(np.int64)).cuda()
    yt = torch.from_numpy(y.astype(np.int64)).cuda()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16)

    def step(bf16):
        with autocast if bf16 else contextlib.nullcontext():
            _, loss = model(xt, yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        return loss.item()
    # fp32 with TF32 off and on, then bf16 autocast (TF32 on for what stays fp32): what a user who
    # trains in bf16 runs
    for label, tf32, bf16 in (("TF32 off", False, False), ("TF32 on ", True, False), ("bf16 autocast", True, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        for _ in range(warmup):
            step(bf16)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = step(bf16)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        print(f"PyTorch B={B} T={T} {label}: step ms min/median/max "
              f"{1e3 * min(times):.1f} {1e3 * med:.1f} {1e3 * max(times):.1f} | {B * T / med:.0f} tok/s | "
              f"{flops / med / 1e12:.2f} TFLOP/s = {peak_shares(flops / med, 'bf16' if bf16 else 'tf32')} | "
              f"loss {loss:.4f} | max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


# ------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default="gpu_check_out", help="folder for the results (default: %(default)s)")
    ap.add_argument("--budget", type=float, default=470, help="seconds for the whole check (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: check the plan, inputs and arguments only")
    ap.add_argument("--env", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bench", nargs=2, metavar=("SYSTEM", "BxT"), help=argparse.SUPPRESS)
    ap.add_argument("--launch", metavar="BxT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.env:
        return env_report()
    if args.launch:
        return launch_profile(*(int(v) for v in args.launch.split("x")))
    if args.bench:
        system, shape = args.bench
        B, T = (int(v) for v in shape.split("x"))
        if system == "torch":
            return bench_torch(B, T)
        return bench_llmnb(B, T, precision={"llmnb-tf32": "tf32", "llmnb-bf16": "bf16"}.get(system, "fp32"))
    if os.path.exists(args.out) and os.listdir(args.out):
        raise SystemExit(f"gpu_check: {args.out} is not empty; name another --out")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="llmnb-gpu-check-")
    try:
        if args.dry_run:
            dry_run(args.out, work)
        else:
            run_plan(args.out, work, args.budget)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
