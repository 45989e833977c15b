"""Kernel lab: generation's GEMV, out (N,OC) = inp (N,C) @ weight (OC,C)^T, with the weight streamed
once per step as float32, bfloat16 bits or int8 with a scale per row.

Versions, from the first package kernel upward:
  v1  llmnb's first GEMV: one row's dot at a time, tasks of 256 rows; bfloat16 and int8 rows
      widened into a per-task float32 scratch row, then dotted
  v2  float32 four rows at a time (one load of inp for four FMAs); bfloat16 and int8 widened
      inside the dot (a shift and a bitcast, a sign extension and a conversion: no scratch)
  v3  llmnb.matmul.matvec (the package's): v2, the bfloat16 and int8 rows prefetched MV_AHEAD
      bytes ahead, tasks of 64 rows (768-row weights split evenly over 2 threads)

`python -m dev.matvec` checks every version against a float64 NumPy reference of the weight each
stands for, then times them at the GPT-2 124M classifier's shape (50304 x 768) and a layer's fc
(3072 x 768): GB/s of weight read, warm (the same weight again: it may sit in a large L3) and cold
(after reading 1 GB elsewhere: from DRAM, as a step reads each matrix), against the threads'
read bandwidth. Options: --threads T (default 1: times on the thread's CPU clock,
time.thread_time, less disturbed by other processes than wall time; more threads: wall time),
--runs R (default 5), -n N (sequences at once, default 1). Real numbers need a quiet machine.
"""
import argparse
import time

import numba
import numpy as np
from numba import njit, prange

from llmnb import matmul
from llmnb.formats import bf16_to_fp32, fp32_to_bf16

from dev import common
from dev.common import F32
from benchmarks.membw import parallel_read


# ------------------------------------------------------------------------------------------------
# v1: one row at a time; bfloat16 and int8 widened into scratch

V1_ROWS = 256


@njit(parallel=True, fastmath=True, cache=True)
def _v1_f32(out, inp, weight):
    N, C = inp.shape
    OC = weight.shape[0]
    for task in prange((OC + V1_ROWS - 1) // V1_ROWS):
        for r in range(task * V1_ROWS, min((task + 1) * V1_ROWS, OC)):
            for n in range(N):
                s = F32(0.0)
                for k in range(C):
                    s += inp[n, k] * weight[r, k]
                out[n, r] = s


@njit(parallel=True, fastmath=True, cache=True)
def _v1_bf16(out, inp, weight, scratch):
    N, C = inp.shape
    OC = weight.shape[0]
    for task in prange((OC + V1_ROWS - 1) // V1_ROWS):
        bits = scratch[task, :C]
        row = bits.view(np.float32)
        for r in range(task * V1_ROWS, min((task + 1) * V1_ROWS, OC)):
            for k in range(C):
                bits[k] = np.uint32(weight[r, k]) << np.uint32(16)
            for n in range(N):
                s = F32(0.0)
                for k in range(C):
                    s += inp[n, k] * row[k]
                out[n, r] = s


@njit(parallel=True, fastmath=True, cache=True)
def _v1_int8(out, inp, q, scale, scratch):
    N, C = inp.shape
    OC = q.shape[0]
    for task in prange((OC + V1_ROWS - 1) // V1_ROWS):
        row = scratch[task, :C].view(np.float32)
        for r in range(task * V1_ROWS, min((task + 1) * V1_ROWS, OC)):
            for k in range(C):
                row[k] = F32(q[r, k])
            for n in range(N):
                s = F32(0.0)
                for k in range(C):
                    s += inp[n, k] * row[k]
                out[n, r] = s * scale[r]


def _scratch(OC, C):
    return np.zeros(((OC + V1_ROWS - 1) // V1_ROWS, C), np.uint32)


# ------------------------------------------------------------------------------------------------
# v2: float32 four rows at a time; bfloat16 and int8 widened inside the dot

V2_ROWS = 256


@njit(parallel=True, fastmath=True, cache=True)
def _v2_bf16(out, inp, weight):
    N, C = inp.shape
    OC = weight.shape[0]
    for task in prange((OC + V2_ROWS - 1) // V2_ROWS):
        for r in range(task * V2_ROWS, min((task + 1) * V2_ROWS, OC)):
            for n in range(N):
                s = F32(0.0)
                for k in range(C):
                    s += inp[n, k] * matmul._bf16_value(weight[r, k])
                out[n, r] = s


@njit(parallel=True, fastmath=True, cache=True)
def _v2_int8(out, inp, q, scale):
    N, C = inp.shape
    OC = q.shape[0]
    for task in prange((OC + V2_ROWS - 1) // V2_ROWS):
        for r in range(task * V2_ROWS, min((task + 1) * V2_ROWS, OC)):
            for n in range(N):
                s = F32(0.0)
                for k in range(C):
                    s += inp[n, k] * F32(q[r, k])
                out[n, r] = s * scale[r]


# (v2's float32 kernel is v3's: the package's _matvec_forward)


# ------------------------------------------------------------------------------------------------
# the versions of each precision: name -> fn(out, inp, w) for the weight as that precision holds it

def versions(OC, C):
    s = _scratch(OC, C)
    return {
        "float32": {"v1": lambda o, x, w: _v1_f32(o, x, w),
                    "v3": lambda o, x, w: matmul.matvec(o, x, w, None)},
        "bfloat16": {"v1": lambda o, x, w: _v1_bf16(o, x, w, s),
                     "v2": lambda o, x, w: _v2_bf16(o, x, w),
                     "v3": lambda o, x, w: matmul.matvec(o, x, w, None)},
        "int8": {"v1": lambda o, x, w: _v1_int8(o, x, w.q, w.scale, s),
                 "v2": lambda o, x, w: _v2_int8(o, x, w.q, w.scale),
                 "v3": lambda o, x, w: matmul.matvec(o, x, w, None)},
    }


def weights(w):
    """The weight as each precision holds it, and the float64 weight it stands for."""
    bits, q = fp32_to_bf16(w), matmul.quantize_int8(w)
    return {"float32": (w, w.astype(np.float64)),
            "bfloat16": (bits, bf16_to_fp32(bits).astype(np.float64)),
            "int8": (q, q.q.astype(np.float64) * q.scale.astype(np.float64)[:, None])}


def timed(fn, runs, clock, before=None):
    ts = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return min(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-n", type=int, default=1, help="sequences at once (rows of inp)")
    args = ap.parse_args(argv)
    numba.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)

    print("correctness vs float64 NumPy of the weight each precision stands for (max |err| / max |ref|, "
          "tolerance 1e-5):")
    for N, OC, C in ((1, 257, 33), (3, 1000, 64), (args.n, 3072, 768)):
        w = rng.standard_normal((OC, C), dtype=np.float32)
        x = rng.standard_normal((N, C), dtype=np.float32)
        for dtype, (held, w64) in weights(w).items():
            for name, fn in versions(OC, C)[dtype].items():
                out = np.full((N, OC), np.nan, F32)
                fn(out, x, held)
                err = common.max_rel_error(out, x.astype(np.float64) @ w64.T)
                print(f"  N={N} {OC}x{C} {dtype:8s} {name}: {err:.2e} {'ok' if err < 1e-5 else 'FAIL'}")

    flush = np.ones(256 << 20, F32)   # 1 GB, read between cold runs
    read = flush.nbytes / timed(lambda: parallel_read(flush), 3, clock) / 1e9
    print(f"\n{args.threads} thread(s), -n {args.n}; reading 1 GB: {read:.1f} GB/s "
          f"({'thread CPU time' if args.threads == 1 else 'wall time'}); GB/s of weight read, min of {args.runs} runs")
    rows = []
    for OC, C in ((50304, 768), (3072, 768)):
        w = rng.standard_normal((OC, C), dtype=np.float32)
        x = rng.standard_normal((args.n, C), dtype=np.float32)
        out = np.empty((args.n, OC), F32)
        for dtype, (held, _) in weights(w).items():
            for name, fn in versions(OC, C)[dtype].items():
                run = lambda: fn(out, x, held)  # noqa: E731
                run()
                warm = held.nbytes / timed(run, args.runs, clock) / 1e9
                cold = held.nbytes / timed(run, args.runs, clock, lambda: parallel_read(flush)) / 1e9
                rows.append([f"{OC}x{C}", dtype, name, f"{warm:.1f}", f"{cold:.1f}", f"{100 * cold / read:.0f}%"])
    print(common.format_table(["weight", "dtype", "version", "warm GB/s", "cold GB/s", "cold of read"], rows))


if __name__ == "__main__":
    main()
