"""Issue 26's done-when: llm.c's scripts/run_gpt2_124M.sh command line, `./train_gpt2cu` replaced
by `llmnb-train`, runs on the CPU on a tiny fineweb-format data set, and prints llm.c's
hyperparameters: its learning rate at every step (llm.c's own llmc/schedulers.h, through the
LLMC_LR_RECIPE constants of tests/test_optim.py), its gradient accumulation and weight decay.

Every flag of the script is passed, each with its meaning; the sizes are scaled down (-e d2 for
-e d12, -b 2 -t 32 -d 128 for -b 64 -t 1024 -d 524288, -u 3 for -u 700, -v 4 for -v 250, -n 4
for -n 5000), and the script's one epoch (-x -1, train_gpt2.cu's default) is 8 steps of the tiny
data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmnb.formats import write_shard
from optional import needs_gpt2_encoding
from test_optim import LLMC_LR_RECIPE

ROOT = Path(__file__).resolve().parent.parent

# run_gpt2_124M.sh's flags, in its order, at f1e2ace: the values the script gives, and the ones here
SCRIPT = [("-i", "dev/data/fineweb10B/fineweb_train_*.bin", "{d}/fineweb10B/fineweb_train_*.bin"),
          ("-j", "dev/data/fineweb10B/fineweb_val_*.bin", "{d}/fineweb10B/fineweb_val_*.bin"),
          ("-o", "log_gpt2_124M", "{out}"),
          ("-v", "250", "4"), ("-s", "20000", "20000"), ("-g", "144", "144"), ("-h", "1", "1"),
          ("-b", "64", "2"), ("-t", "1024", "32"), ("-d", "524288", "128"), ("-r", "0", "0"), ("-z", "1", "1"),
          ("-c", "0.1", "0.1"), ("-l", "0.0006", "0.0006"), ("-q", "0.0", "0.0"), ("-u", "700", "3"),
          ("-n", "5000", "4"), ("-y", "1", "1"), ("-e", "d12", "d2"),
          # the script gives no -x: train_gpt2.cu's default -1, one epoch; llmnb's default is
          # train_gpt2.c's 40 steps, so llmnb's command says -x -1 (as issue 26's quote of it, "-x ...")
          ("-x", None, "-1")]

# the script's command as a subprocess of llmnb-train's console script (llmnb.cli.train)
CONSOLE_SCRIPT = "import sys; from llmnb import cli; sys.argv[0] = 'llmnb-train'; sys.exit(cli.train())"

HELLASWAG = [("A man is sitting on a roof. he", ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                                  "is holding a rubik's cube.", "starts pulling up roofing on a roof."], 3),
             ("A woman is outside with a bucket and a dog.", ["rinses the bucket off with soap.",
                                                               "uses a hose to keep it from getting soapy.",
                                                               "gets the dog wet, then it runs away again.",
                                                               "gets into a bath tub with the dog."], 2)]


def fineweb_like(d):
    """fineweb.py's layout and names, written by llmnb's write_shard: 4 train shards of 280 tokens
    (1120 tokens: one epoch of -d 128 is 8 steps) and a val shard, shard 0 as fineweb.py writes it."""
    rng = np.random.default_rng(26)
    (d / "fineweb10B").mkdir(parents=True)
    for i in range(1, 5):
        write_shard(d / "fineweb10B" / f"fineweb_train_{i:06d}.bin", rng.integers(0, 50257, 280))
    write_shard(d / "fineweb10B" / "fineweb_val_000000.bin", rng.integers(0, 50257, 400))
    (d / "hellaswag").mkdir()
    with open(d / "hellaswag" / "hellaswag_val.jsonl", "w") as f:  # -h 1 reads it from --data-dir
        for ctx, endings, label in HELLASWAG:
            f.write(json.dumps({"ctx": ctx, "endings": endings, "label": label}) + "\n")


def table(text):
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ")]
    return {k.strip(): v.strip() for k, v in rows}


@pytest.mark.slow
@needs_gpt2_encoding
def test_run_gpt2_124M_sh_runs_with_llmcs_hyperparameters(tmp_path):
    assert [f for f, _, _ in SCRIPT] == ["-i", "-j", "-o", "-v", "-s", "-g", "-h", "-b", "-t", "-d", "-r", "-z",
                                          "-c", "-l", "-q", "-u", "-n", "-y", "-e", "-x"]
    d, out = tmp_path / "data", tmp_path / "log_gpt2_124M"
    fineweb_like(d)
    argv = [a for flag, _, mine in SCRIPT for a in (flag, mine.format(d=d, out=out))]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, *argv, "--data-dir", str(d)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout
    t = table(text)
    # the hyperparameters as train_gpt2.cu prints them (its printf formats: %d, %s, %e)
    assert (t["total batch size"], t["micro batch size B"], t["sequence length T"]) == ("128", "2", "32")
    assert (t["LR scheduler"], t["learning rate (LR)"], t["warmup iterations"]) == ("cosine", "6.000000e-04", "3")
    assert (t["final LR fraction"], t["weight decay"]) == ("0.000000e+00", "1.000000e-01")
    assert (t["max_steps"], t["train_num_batches"], t["zero_stage"], t["recompute"]) == ("-1", "8", "1", "0")
    assert (t["resume"], t["run hellaswag"], t["num_layers L"], t["weight init method"]) == ("1", "yes", "2", "d2")
    assert "batch_size B=2 * seq_len T=32 * num_processes=1 and total_batch_size=128\n" in text
    assert "=> setting grad_accum_steps=2\n" in text
    # llm.c's learning rate at every step: the log's value is llm.c's float, bit for bit; the step
    # lines and main.log print it as llm.c's printf does
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    lrs = [r["lr"] for r in log if r["train_loss"] is not None]
    assert lrs == [float(np.float32(x)) for x in LLMC_LR_RECIPE]
    steps = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split("| lr ")[1].split(" ")[0] for line in steps] == [f"{x:.2e}" for x in LLMC_LR_RECIPE]
    assert steps[0].startswith("step    1/8 | loss ") and steps[-1].startswith("step    8/8 | loss ")
    trl = [line for line in (out / "main.log").read_text().splitlines() if " trl:" in line]
    assert [line.split(" lr:")[1].split(" ")[0] for line in trl] == [f"{x:.6f}" for x in LLMC_LR_RECIPE]
    # what the script's other flags do: val every 4 steps, HellaSwag there (-h 1), one sample at the
    # end (-s 20000), checkpoints at 4 and at the end (-n 4)
    main_log = (out / "main.log").read_text().splitlines()
    assert [line.split()[0] for line in main_log if "tel:" in line] == ["s:0", "s:4", "s:8"]
    assert [line.split()[0] for line in main_log if "eval:" in line] == ["s:4", "s:8"]
    assert text.count("generating:\n---\n") == 1
    assert (out / "DONE_00000004").exists() and (out / "DONE_00000008").exists()
