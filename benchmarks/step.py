"""Time llmnb's GPT-2 training step (forward, zero_grad, backward, AdamW update) and, when PyTorch is
installed, PyTorch eager on the same model and batch in the same run.

    python -m benchmarks.step                 # 124M, B=4, T=64: step times, per-kernel table
    python -m benchmarks.step --startup       # cold and warm time to the first finished step
    python -m benchmarks.step --no-torch --steps 20
    python -m benchmarks.step -d 6 -B 1 -T 1024   # a fresh d6 model (d6/d12/d24: C = 64 x depth)

Reports min/median/max over --steps steps after --warmup steps, tokens/s, MFU (model FLOPs per
second over the machine's peak, see dev/common.py), the PyTorch/llmnb
ratio, llmnb's peak RSS, and the time of each kernel in one step, with the matmuls also by weight shape
(the forward, dinp + dweight of each layer's four weights and the classifier's).
"""
import argparse
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

from dev import common

# AdamW hyperparameters of llm.c's train_gpt2.c
LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-4, 0.9, 0.999, 1e-8, 0.0


def make_batch(config, B, T, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=B * T + 1).astype(np.int32)
    return tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)


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
# PyTorch eager on the same model and batch

def torch_steps(params, config, x, y, warmup, steps, threads):
    """Step times (s) of PyTorch eager with llmnb.reference_torch's GPT-2 using F.scaled_dot_product_attention
    (the attention nanoGPT and llm.c's train_gpt2.py use: what a user would run), or None without torch."""
    try:
        import torch
        from llmnb.reference_torch import define_gpt2, load_llmc_
    except ImportError:
        return None
    torch.set_num_threads(threads)
    model = define_gpt2(torch, sdpa=True)(config)
    load_llmc_(torch, model, params)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS,
                            weight_decay=WEIGHT_DECAY)
    xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))

    def step():
        _, loss = model(xt, yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return common.time_runs(step, runs=steps, warmup=warmup)


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
                  f"(process start to step end: {inner[0]} s)")


# ------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", "-B", type=int, default=4)
    ap.add_argument("--seq-len", "-T", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--depth", "-d", type=int, default=None,
                    help="a fresh d6/d12/d24... model (train_gpt2.cu's family: C = 64*L) instead of GPT-2 124M")
    ap.add_argument("--no-torch", action="store_true")
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
    t = [0]

    def step():
        t[0] += 1
        return llmnb_step(model, x, y, t[0])

    times = common.time_runs(step, runs=args.steps, warmup=args.warmup)
    rss = peak_rss_mb()
    print(kernel_table(model, x, y, t[0] + 1))

    def report(name, ts):
        tmin, tmed, tmax = common.min_med_max(ts)
        print(f"{name:8s} step ms min/median/max {1e3 * tmin:7.0f} {1e3 * tmed:7.0f} {1e3 * tmax:7.0f}"
              f"   {B * T / tmed:6.0f} tok/s   {flops / tmed / 1e9:5.0f} GFLOP/s   "
              f"MFU {100 * flops / tmed / 1e9 / peak:4.1f}% (median)")

    print(f"\n{len(times)} steps after {args.warmup} warm-up steps:")
    report("llmnb", times)
    print(f"llmnb peak RSS {rss:.0f} MB")
    if not args.no_torch:
        del model
        ttimes = torch_steps(init_params(config), config, x, y, args.warmup, args.steps, threads)
        if ttimes is None:
            print("PyTorch: not installed, skipped")
        else:
            report("PyTorch", ttimes)
            print("(PyTorch: eager, fp32, attention by F.scaled_dot_product_attention as nanoGPT)")
            print(f"PyTorch / llmnb median step time: {np.median(ttimes) / np.median(times):.2f}")


if __name__ == "__main__":
    main()
