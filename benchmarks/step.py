"""Time llmnb's GPT-2 training step (forward, zero_grad, backward, AdamW update) and, when PyTorch is
installed, PyTorch's on the same model and batch, in a process of its own started after llmnb's timing.

    python -m benchmarks.step                 # 124M, B=4, T=64: step times, per-kernel table, PyTorch
    python -m benchmarks.step --startup       # cold and warm time to the first step (and llmnb-train's)
    python -m benchmarks.step --no-torch --steps 20
    python -m benchmarks.step -d 6 -B 1 -T 1024   # a fresh d6 model (train_gpt2.cu's -e d6: C = 384)
    python -m benchmarks.step --torch-in-process  # PyTorch in llmnb's process, after Numba's pool ran
    python -m benchmarks.step --no-train      # without the llmnb-train row

Reports min/median/max over --steps steps after --warmup steps, tokens/s, MFU (model FLOPs per
second over the machine's peak, see dev/common.py), llmnb's peak RSS, and the time of each kernel in
one step, with the matmuls also by weight shape (the forward, dinp + dweight of each layer's four
weights and the classifier's). Then the same shape in `llmnb-train` itself (a fresh model on
tinyshakespeare, no val or sample), its steps as its log records them: what a user's run gets, with
the gradient norm, the data loader and the logging that the benchmark's bare step leaves out.

PyTorch (benchmarks/torch_step.py) runs with Numba's thread count, on llmnb's initial weights and
batch, in columns: a nanoGPT-style GPT-2 and Hugging Face's GPT2LMHeadModel, both eager with SDPA
attention, and torch.compile of the faster one (--no-compile skips it). The PyTorch/llmnb ratio is
taken against the faster eager model, which the output names. The last line is JSON for scripts
(benchmarks/sizes.py): {"step": {"llmnb_ms", "torch_ms": {column: median ms}, "baseline", ...}}.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from llmnb.backend import KERNEL_NAMES
from llmnb.config import GPT2Config
from llmnb.mfu import flops_per_step
from llmnb.model import GPT2, init_params

from benchmarks import torch_step
from benchmarks.torch_step import BETA1, BETA2, EPS, LR, WEIGHT_DECAY, make_batch
from dev import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llmnb_step(model, x, y, t):
    loss = model.forward(x, y)
    model.zero_grad()
    model.backward()
    model.update(LR, BETA1, BETA2, EPS, WEIGHT_DECAY, t)
    return loss


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ------------------------------------------------------------------------------------------------
# per-kernel timing: wrap the backend's kernels

class KernelTimer:
    """Wraps every kernel of a backend with a timer; `times` maps kernel name -> [calls, seconds,
    flops, bytes], `matmul_shapes` maps (matmul kernel, weight shape) -> [calls, seconds, flops]."""

    def __init__(self, backend):
        self.backend = backend
        self.originals = {name: getattr(backend, name) for name in KERNEL_NAMES}
        self.times = {}
        self.matmul_shapes = {}

    def __enter__(self):
        for name, fn in self.originals.items():
            setattr(self.backend, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self.originals.items():
            setattr(self.backend, name, fn)

    def _wrap(self, name, fn):
        def timed(*args):
            t0 = time.perf_counter()
            fn(*args)
            dt = time.perf_counter() - t0
            rec = self.times.setdefault(name, [0, 0.0, 0.0, 0.0])
            rec[0] += 1
            rec[1] += dt
            flops = kernel_flops(name, args)
            rec[2] += flops
            rec[3] += sum(a.nbytes for a in args if isinstance(a, np.ndarray))
            if name in MATMUL_ARGS:
                key = (name, args[MATMUL_ARGS[name][1]].shape)
                by_shape = self.matmul_shapes.setdefault(key, [0, 0.0, 0.0])
                by_shape[0] += 1
                by_shape[1] += dt
                by_shape[2] += flops
        return timed


# the matmul kernels: positions of inp and weight among their arguments, FLOPs per multiply (the
# backward does two products: dinp and dweight)
MATMUL_ARGS = {"matmul_forward": (1, 2, 2.0), "matmul_backward": (4, 5, 4.0)}


def kernel_flops(name, args):
    if name not in MATMUL_ARGS:
        return 0.0
    i, w, flops = MATMUL_ARGS[name]
    inp, weight = args[i], args[w]
    return flops * (inp.size // inp.shape[-1]) * weight.shape[0] * weight.shape[1]


def kernel_table(model, x, y, t):
    """One timed step with every kernel wrapped; the table as text."""
    with KernelTimer(model.backend) as kt:
        t0 = time.perf_counter()
        model.forward(x, y)
        t1 = time.perf_counter()
        model.zero_grad()
        t2 = time.perf_counter()
        model.backward()
        t3 = time.perf_counter()
        model.update(LR, BETA1, BETA2, EPS, WEIGHT_DECAY, t)
        t4 = time.perf_counter()
    total = t4 - t0
    rows = []
    for name, (calls, sec, flops, nbytes) in sorted(kt.times.items(), key=lambda kv: -kv[1][1]):
        rate = f"{flops / sec / 1e9:.0f} GFLOP/s" if flops else f"{nbytes / sec / 1e9:.1f} GB/s*"
        rows.append([name, str(calls), f"{sec * 1e3:.1f}", f"{100 * sec / total:.1f}%", rate])
    in_kernels = sum(v[1] for v in kt.times.values())
    # (after an update only the activation gradients are filled: adamw_update zeroed the parameters')
    rows.append(["zero_grad (fill)", "1", f"{(t2 - t1) * 1e3:.1f}", f"{100 * (t2 - t1) / total:.1f}%", ""])
    rest = total - in_kernels - (t2 - t1)
    rows.append(["other (Python, checks)", "", f"{rest * 1e3:.1f}", f"{100 * rest / total:.1f}%", ""])
    rows.append(["step", "", f"{total * 1e3:.1f}", "100%",
                 f"fwd {1e3 * (t1 - t0):.0f} ms, bwd {1e3 * (t3 - t2):.0f} ms, update {1e3 * (t4 - t3):.0f} ms"])
    table = common.format_table(["kernel", "calls", "ms", "share", "rate"], rows)
    table += "\n  * GB/s: bytes of the kernel's array arguments (each read or written once) per second"
    by_time = sorted(kt.matmul_shapes.items(), key=lambda kv: -kv[1][1])
    shape_rows = [[name, f"{oc} x {c}", str(calls), f"{sec * 1e3:.1f}", f"{flops / sec / 1e9:.0f} GFLOP/s"]
                  for (name, (oc, c)), (calls, sec, flops) in by_time]
    return table + "\n\nthe matmuls by weight shape (OC x C):\n" + common.format_table(
        ["kernel", "weight", "calls", "ms", "rate"], shape_rows)


# ------------------------------------------------------------------------------------------------
# PyTorch on the same model and batch: benchmarks/torch_step.py

def torch_argv(args, threads):
    argv = ["-B", str(args.batch), "-T", str(args.seq_len), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--threads", str(threads), "--model", "both"]
    argv += ["-d", str(args.depth)] if args.depth is not None else []
    return argv + ([] if args.no_compile else ["--compile"])


def torch_own_process(args, threads):
    """torch_step's results from a process of its own (its lines are printed as they come), with
    the thread count set for OpenMP and MKL before torch loads; [] when PyTorch is missing (the
    child says so)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "benchmarks.torch_step", *torch_argv(args, threads)]
    results = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as p:
        for line in p.stdout:
            if line.startswith("{"):
                results.append(json.loads(line)[torch_step.JSON_KEY])
            elif " step ms min/median/max " not in line:  # (main prints those, with MFU)
                print(line, end="", flush=True)
    if p.returncode != 0:
        raise SystemExit(f"benchmarks/step.py: {' '.join(cmd)} failed with status {p.returncode}")
    return results


def torch_in_process(args, threads):
    """torch_step's results from this process, after Numba's pool ran (the old setup, to measure
    what it costs); None when PyTorch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return torch_step.run(torch_step.parse_args(torch_argv(args, threads)), echo=False)


# ------------------------------------------------------------------------------------------------
# start-up: time from a fresh interpreter to the first finished step

def first_step_main():
    """Child of --startup: build the model, run one step, print seconds since the process began."""
    config = GPT2Config()
    model = GPT2(config, init_params(config))
    x, y = make_batch(config, 4, 64)
    llmnb_step(model, x, y, 1)
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    print(f"FIRST_STEP_SECONDS {uptime - start_ticks / ticks:.2f}")


def startup(runs):
    """Cold (an empty Numba cache) and warm start-up: benchmarks.step's own first 124M step, and
    llmnb-train's (a fresh d12 at B=4 T=64 on tinyshakespeare, no val or sample) from its launch to
    its first step line, the time a user waits."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="llmnb-numba-cache-") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        for label in ["cold (empty Numba cache)"] + ["warm"] * runs:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "benchmarks.step", "--first-step"],
                                 env=env, capture_output=True, text=True, check=True).stdout
            wall = time.perf_counter() - t0
            inner = [l.split()[1] for l in out.splitlines() if l.startswith("FIRST_STEP_SECONDS")]
            print(f"{label:26s} {wall:6.1f} s to the first finished 124M step "
                  f"(process start to step end: {inner[0]} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="llmnb-numba-cache-") as cache, \
            tempfile.TemporaryDirectory(prefix="llmnb-startup-out-") as out_dir:
        env["NUMBA_CACHE_DIR"] = cache
        for i, label in enumerate(["cold (empty Numba cache)"] + ["warm"] * runs):
            seconds, compile_line = train_first_step_line(env, os.path.join(out_dir, str(i)))
            print(f"{label:26s} {seconds:6.1f} s from llmnb-train's launch to its first step line"
                  + (f" ({compile_line})" if compile_line else ""), flush=True)


def train_argv(out_dir, depth, B, T, steps):
    """llmnb-train on a fresh d{depth} at B x T for `steps` steps into out_dir, no val, no sample
    (tinyshakespeare, its default data): the runs of --startup and of the llmnb-train row."""
    return [sys.executable, "-m", "llmnb.train", "-e", f"d{depth}", "-b", str(B), "-t", str(T), "-x", str(steps),
            "-v", "0", "-s", "0", "-o", out_dir]


def train_first_step_line(env, out_dir):
    """(seconds from launching llmnb-train to its first step line, its compile line or None)."""
    cmd = train_argv(out_dir, depth=12, B=4, T=64, steps=1)
    t0 = time.perf_counter()
    compile_line = None
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        for line in p.stdout:
            if "compil" in line and compile_line is None:
                compile_line = line.strip()
            if line.startswith("step "):
                seconds = time.perf_counter() - t0
                p.kill()
                return seconds, compile_line
    raise RuntimeError(f"llmnb-train printed no step line (exit {p.returncode}): {' '.join(cmd)}")


def train_step_times(B, T, depth, steps, warmup):
    """The step times (seconds) of `llmnb-train -e d{depth} -b B -t T` after `warmup` steps, as its
    log.jsonl records them (each the whole of train_step: batch, forward, backward, norm, update)."""
    with tempfile.TemporaryDirectory(prefix="llmnb-step-train-") as out_dir:
        cmd = train_argv(out_dir, depth, B, T, warmup + steps)
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            tail = (run.stdout + run.stderr).strip().splitlines()[-1:]
            print(f"llmnb-train: exit {run.returncode}: {' '.join(tail)}")
            return None
        with open(os.path.join(out_dir, "log.jsonl")) as f:
            ms = [r["ms"] for r in map(json.loads, f) if r.get("ms") is not None]
    return sorted(m / 1000 for m in ms[warmup:])


# ------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", "-B", type=int, default=4)
    ap.add_argument("--seq-len", "-T", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--depth", "-d", type=int, default=None,
                    help="a fresh d6/d12/d24... model (train_gpt2.cu's -e dL: GPT2Config.depth) instead of GPT-2 124M")
    ap.add_argument("--no-torch", action="store_true", help="llmnb only")
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile column")
    ap.add_argument("--no-train", action="store_true", help="no llmnb-train row (its own steps, same shape)")
    ap.add_argument("--torch-in-process", action="store_true",
                    help="time PyTorch in this process after llmnb (the old setup: to measure its cost)")
    ap.add_argument("--startup", action="store_true", help="measure cold and warm start-up only")
    ap.add_argument("--startup-runs", type=int, default=3, help="warm runs of --startup")
    ap.add_argument("--first-step", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.first_step:
        return first_step_main()
    if args.startup:
        return startup(args.startup_runs)

    from numba import get_num_threads
    threads = get_num_threads()
    config = GPT2Config() if args.depth is None else GPT2Config.depth(args.depth)
    name = "GPT-2 124M" if args.depth is None else f"d{args.depth} (C={config.channels}, {config.num_heads} heads)"
    B, T = args.batch, args.seq_len
    flops = flops_per_step(config, B, T)
    x, y = make_batch(config, B, T)
    peak, peak_line = common.machine_peaks()
    print(f"{name}, B={B} T={T}: {flops / 1e9:.1f} GFLOP per step; {threads} Numba threads")
    print(peak_line)

    model = GPT2(config, init_params(config))  # (the model keeps its own copy)
    t, losses = [0], []

    def step():
        t[0] += 1
        losses.append(llmnb_step(model, x, y, t[0]))

    times = common.time_runs(step, runs=args.steps, warmup=args.warmup)
    rss = peak_rss_mb()
    print(kernel_table(model, x, y, t[0] + 1))

    def report(name, ts):
        tmin, tmed, tmax = common.min_med_max(ts)
        print(f"{name:13s} step ms min/median/max {1e3 * tmin:7.0f} {1e3 * tmed:7.0f} {1e3 * tmax:7.0f}"
              f"   {B * T / tmed:6.0f} tok/s   {flops / tmed / 1e9:5.0f} GFLOP/s   "
              f"MFU {100 * flops / tmed / 1e9 / peak:4.1f}% (median)")

    print(f"\n{len(times)} steps after {args.warmup} warm-up steps:")
    report("llmnb", times)
    print(f"{'':13s} first step's loss {losses[0]:.4f}; peak RSS {rss:.0f} MB")
    summary = {"llmnb_ms": 1e3 * common.min_med_max(times)[1], "llmnb_rss_mb": rss, "torch_ms": {},
               "baseline": None, "torch_process": None, "train_ms": None}
    if not args.no_train:
        del model, step  # (one model in memory at a time)
        train = train_step_times(B, T, 12 if args.depth is None else args.depth, args.steps, args.warmup)
        if train:
            report("llmnb-train", train)
            print(f"{'':13s} its own step (a subprocess): the benchmark's step plus the gradient norm, "
                  f"the batch and the log line; {len(train)} steps after {args.warmup}")
            summary["train_ms"] = 1e3 * common.min_med_max(train)[1]
    if not args.no_torch:
        model = step = None  # (llmnb's buffers go before PyTorch allocates its own)
        where = "llmnb's process, after Numba's pool ran" if args.torch_in_process else "a process of its own"
        print(f"\nPyTorch, in {where}, {threads} threads:")
        results = (torch_in_process if args.torch_in_process else torch_own_process)(args, threads)
        timed = [r for r in results or [] if "times_s" in r]
        if not timed:
            print("PyTorch: not installed, skipped" if results is None else "PyTorch: no model ran")
        else:
            for r in timed:
                report(f"torch {r['model']}", r["times_s"])
                print(f"{'':13s} first step's loss {r['loss']:.4f}, first step {r['first_step_s']:.1f} s: "
                      f"{r['describe']}")
            eager = [r for r in timed if r["model"] != "compile"]
            base = min(eager, key=lambda r: common.min_med_max(r["times_s"])[1])
            summary.update(baseline=base["model"], torch_process="in-process" if args.torch_in_process else "own",
                           torch_ms={r["model"]: 1e3 * common.min_med_max(r["times_s"])[1] for r in timed})
            print(f"PyTorch baseline: {base['model']}, the faster eager model ({base['describe']})")
            for r in timed:
                ratio = common.min_med_max(r["times_s"])[1] / common.min_med_max(times)[1]
                name = "PyTorch" if r is base else f"torch {r['model']}"
                print(f"{name} / llmnb median step time: {ratio:.2f}")
    print(json.dumps({"step": summary}))


if __name__ == "__main__":
    main()
