"""Helpers shared by the kernel lab (dev/*.py) and the benchmarks (benchmarks/*.py), like llm.c's
dev/cuda/common.h: the GPT-2 124M matmul shapes, timing with min/median/max, the machine's peak
(llmnb.mfu's estimate) and FMA ceiling, tables, errors.

The lab and the benchmarks time the installed llmnb; run them from the repository root as modules
(`python -m dev.matmul_forward`, `python -m benchmarks.step`), which is what lets them import this.
"""
import time

import numpy as np
from numba import get_num_threads, njit, prange

from llmnb import matmul
from llmnb.mfu import estimate_peak_flops

F32 = np.float32

# the matmuls of one GPT-2 124M layer and the classifier, at B=4, T=64 (N = B*T rows)
N_124M = 256
MATMUL_SHAPES = (  # (name, C, OC): inp (N,C) @ weight (OC,C)^T
    ("qkv", 768, 2304),
    ("attproj", 768, 768),
    ("fc", 768, 3072),
    ("fcproj", 3072, 768),
    ("classifier", 768, 50304),
)


def time_runs(fn, runs=10, warmup=1, max_seconds=None):
    """Wall-clock seconds of `runs` calls of fn() after `warmup` calls, sorted; with max_seconds,
    stop early (but after at least 3 runs) once the runs have taken that long."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return sorted(times)


def min_med_max(times):
    """(min, median, max) of a sorted list of times."""
    return times[0], times[len(times) // 2], times[-1]


@njit(parallel=True, cache=True)
def _ceiling_kernel(out, a, b, reps):
    # each task runs the GEMM's micro-kernel (matmul.micro_kernel: kernel_6x16 or, on AVX-512,
    # kernel_6x32) `reps` times on its own L1-resident packed panels a[t] (K*MR) and b[t] (K*NR)
    K = a.shape[1] // matmul.MR
    for t in prange(a.shape[0]):
        for _ in range(reps):
            matmul.micro_kernel(a[t], 0, 1, matmul.MR, b[t], 0, matmul.NR, K, out[t], 0, 0, True)


def fma_ceiling(seconds=0.3, K=256, runs=7):
    """GFLOP/s of the GEMM's micro-kernel on L1-resident packed panels, on all Numba threads at
    once: the most any matmul built on it can reach on this machine. Best of `runs` runs of
    ~`seconds` each."""
    nt = get_num_threads()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((nt, K * matmul.MR)).astype(F32)
    b = rng.standard_normal((nt, K * matmul.NR)).astype(F32) * F32(1e-3)
    out = np.zeros((nt, matmul.MR, matmul.NR), F32)
    _ceiling_kernel(out, a, b, 10)
    t0 = time.perf_counter()
    _ceiling_kernel(out, a, b, 1000)
    reps = max(1000, int(1000 * seconds / max(time.perf_counter() - t0, 1e-6)))
    best = min(time_runs(lambda: _ceiling_kernel(out, a, b, reps), runs=runs, warmup=0))
    return nt * reps * 2.0 * matmul.MR * matmul.NR * K / best / 1e9


def machine_peaks():
    """(peak GFLOP/s that percentages refer to: llmnb.mfu's estimate, the one llmnb-train's MFU uses;
    a line describing it and the FMA ceiling)."""
    flops, how = estimate_peak_flops(get_num_threads())
    peak, ceiling = flops / 1e9, fma_ceiling()
    return peak, (f"peak {peak:.0f} GFLOP/s = {how}; the {matmul.MR}x{matmul.NR} micro-kernel on L1-resident data "
                  f"reaches {ceiling:.0f} GFLOP/s ({100 * ceiling / peak:.0f}%) now")


def gflops(flops, seconds):
    return flops / seconds / 1e9


def format_table(headers, rows):
    """A plain-text table with right-aligned columns (rows: lists of str)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def max_rel_error(got, want):
    """max |got - want| / max |want| (float64)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
