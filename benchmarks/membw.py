"""Effective bandwidth of the memory-bound kernels of a GPT-2 124M step (B=4, T=64), against the
machine's copy bandwidth.

    python -m benchmarks.membw [--runs 10]

For each kernel: min/median/max time of one call, GB/s (benchmarks/cases.py's least bytes over
the min time), and that as a fraction of copying an array of the same traffic (in cache, for
the small ones) with np.copyto (one thread, as NumPy copies) and with a 2-thread Numba copy.
The large-array copies (256 MB, DRAM) are printed first.
"""
import argparse

import numpy as np
from numba import njit, prange

from benchmarks.cases import memory_bound_cases
from dev import common

F32 = np.float32


@njit(parallel=True, cache=True)
def parallel_copy(dst, src):
    # dst = src, flat float32, split over the Numba threads in 64 KB blocks
    n = src.shape[0]
    for blk in prange((n + 16383) // 16384):
        d = dst[blk * 16384:min(blk * 16384 + 16384, n)]
        s = src[blk * 16384:min(blk * 16384 + 16384, n)]
        for i in range(d.shape[0]):
            d[i] = s[i]


@njit(parallel=True, fastmath=True, cache=True)
def parallel_read(src):
    # the sum of src (flat float32), split over the Numba threads in 64 KB blocks: a pure read
    # stream, as generation's GEMVs are
    n = src.shape[0]
    total = F32(0.0)
    for blk in prange((n + 16383) // 16384):
        s = F32(0.0)
        for i in range(blk * 16384, min(blk * 16384 + 16384, n)):
            s += src[i]
        total += s
    return total


def read_gbs(nbytes, runs):
    """GB/s of the Numba threads reading an array of nbytes (parallel_read)."""
    src = np.random.default_rng(0).standard_normal(max(1024, nbytes // 4)).astype(F32)
    return src.nbytes / min(common.time_runs(lambda: parallel_read(src), runs=runs)) / 1e9


def copy_gbs(nbytes, runs):
    """(np.copyto GB/s, Numba 2-thread copy GB/s) copying nbytes/2 bytes (nbytes moved)."""
    n = max(1024, nbytes // 8)
    src = np.random.default_rng(0).standard_normal(n).astype(F32)
    dst = np.empty_like(src)
    t_np = min(common.time_runs(lambda: np.copyto(dst, src), runs=runs))
    t_nb = min(common.time_runs(lambda: parallel_copy(dst, src), runs=runs))
    return 8 * n / t_np / 1e9, 8 * n / t_nb / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    big_np, big_nb = copy_gbs(512 * 2**20, args.runs)
    print(f"copy of a 256 MB array (DRAM): np.copyto {big_np:.1f} GB/s, "
          f"Numba 2-thread copy {big_nb:.1f} GB/s (bytes read + written)")
    rows = []
    for name, kernel, kargs, nbytes in memory_bound_cases():
        ts = common.time_runs(lambda: kernel(*kargs), runs=args.runs)
        tmin, tmed, tmax = common.min_med_max(ts)
        gbs = nbytes / tmin / 1e9
        c_np, c_nb = copy_gbs(nbytes, args.runs)
        rows.append([name, f"{nbytes / 2**20:.1f}", f"{1e3 * tmin:.3f}", f"{1e3 * tmed:.3f}",
                     f"{1e3 * tmax:.3f}", f"{gbs:.1f}", f"{c_np:.0f}", f"{100 * gbs / c_np:.0f}%",
                     f"{c_nb:.0f}", f"{100 * gbs / c_nb:.0f}%"])
    print(common.format_table(
        ["kernel", "MB moved", "min ms", "median ms", "max ms", "GB/s", "copyto GB/s", "of copyto",
         "2-thr copy GB/s", "of 2-thr copy"], rows))
    print("copies of the same traffic as the kernel (so in the same cache level); kernel GB/s "
          "from its min time")


if __name__ == "__main__":
    main()
