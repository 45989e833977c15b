"""The dot-product NT tiles: the matmul micro-kernels of llmnb before the packed GEMM (matmul.py),
kept for the kernel lab's earlier versions (dev/matmul_forward.py v4-v5, dev/matmul_backward.py
v3-v4, dev/attention.py v2).

    out[r, c] (+)= sum_k a[r, k] * b[c, k]      (a (M,K), b (P,K), both contiguous along k)

A block of RB rows of a times CB rows of b is RB*CB dot products that share RB+CB streams along k;
with fastmath LLVM turns each dot product into one vector accumulator. 6x4 with AVX-512's 32 vector
registers (81-83% of peak on Zen 4), 4x2 with AVX2's 16 (6x4's accumulators spill there).
"""
import os

import numpy as np
from numba import njit

from llmnb.matmul import NO_BIAS  # noqa: F401  (the labs pass it)

F32 = np.float32


def _avx512():
    """Whether Numba compiles for a CPU with AVX-512 (NUMBA_CPU_FEATURES if set, else the host).
    LLMNB_DOT_TILE=6x4 or 4x2 picks the micro-kernel instead (both are correct on any x86-64; use
    a fresh NUMBA_CACHE_DIR with it: Numba's cache keys on the CPU, not on this choice)."""
    from numba.core import config
    choice = os.environ.get("LLMNB_DOT_TILE", "")
    if choice:
        if choice not in ("6x4", "4x2"):
            raise ValueError(f"LLMNB_DOT_TILE={choice!r}: expected 6x4 or 4x2")
        return choice == "6x4"
    if config.CPU_FEATURES:
        return "+avx512f" in config.CPU_FEATURES
    import llvmlite.binding as ll
    return bool(ll.get_host_cpu_features().get("avx512f", False))


# The micro-kernel's shape follows the vector registers: with AVX-512's 32, the 6x4 kernel's 24
# accumulators fit (81-83% of peak on Zen 4); with AVX2's 16 they spill, and 4x2 (8 accumulators)
# is 2x faster (Zen 3, one core, K = 768: 6x4 37 GFLOP/s, 4x4 42, 4x3 76, 4x2 76, 6x2 64 of 92).
WIDE = _avx512()
RB = 6 if WIDE else 4   # micro-kernel rows (of a: output rows)
CB = 4 if WIDE else 2   # micro-kernel columns (rows of b: output columns)


@njit(fastmath=True, cache=True, inline="always")
def _dot(x, w, n):
    # sum_k x[k] * w[k] for k < n (loops from 0: Numba then knows k >= 0 and skips the
    # negative-index wraparound, which would turn the vector loads into gathers)
    s = F32(0.0)
    for k in range(n):
        s += x[k] * w[k]
    return s


@njit(fastmath=True, cache=True, inline="always")
def _put(out, r, c, s, bias, has_bias, accumulate):
    # out[r, c] += s (backward), or out[r, c] = s (+ bias[c]) (forward)
    if accumulate:
        out[r, c] += s
    elif has_bias:
        out[r, c] = s + bias[c]
    else:
        out[r, c] = s


# The micro-kernels are inlined into nt_tile by Numba (inline="always"): as separate functions
# they cost ~6% (LLVM then keeps the call and its argument set-up in the loop over columns).

@njit(fastmath=True, cache=True, inline="always")
def kernel_6x4(out, r, c, x0, x1, x2, x3, x4, x5, b, bias, has_bias, accumulate):
    # out[r:r+6, c:c+4] (+)= [x0..x5] (6,K) . b[c:c+4] (4,K)^T; x0..x5 are rows r..r+5 of a
    K = b.shape[1]
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = F32(0.0)
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = F32(0.0)
    s40 = s41 = s42 = s43 = s50 = s51 = s52 = s53 = F32(0.0)
    for k in range(K):
        b0, b1, b2, b3 = b[c, k], b[c + 1, k], b[c + 2, k], b[c + 3, k]
        ak = x0[k]
        s00 += ak * b0
        s01 += ak * b1
        s02 += ak * b2
        s03 += ak * b3
        ak = x1[k]
        s10 += ak * b0
        s11 += ak * b1
        s12 += ak * b2
        s13 += ak * b3
        ak = x2[k]
        s20 += ak * b0
        s21 += ak * b1
        s22 += ak * b2
        s23 += ak * b3
        ak = x3[k]
        s30 += ak * b0
        s31 += ak * b1
        s32 += ak * b2
        s33 += ak * b3
        ak = x4[k]
        s40 += ak * b0
        s41 += ak * b1
        s42 += ak * b2
        s43 += ak * b3
        ak = x5[k]
        s50 += ak * b0
        s51 += ak * b1
        s52 += ak * b2
        s53 += ak * b3
    _put(out, r, c, s00, bias, has_bias, accumulate)
    _put(out, r, c + 1, s01, bias, has_bias, accumulate)
    _put(out, r, c + 2, s02, bias, has_bias, accumulate)
    _put(out, r, c + 3, s03, bias, has_bias, accumulate)
    _put(out, r + 1, c, s10, bias, has_bias, accumulate)
    _put(out, r + 1, c + 1, s11, bias, has_bias, accumulate)
    _put(out, r + 1, c + 2, s12, bias, has_bias, accumulate)
    _put(out, r + 1, c + 3, s13, bias, has_bias, accumulate)
    _put(out, r + 2, c, s20, bias, has_bias, accumulate)
    _put(out, r + 2, c + 1, s21, bias, has_bias, accumulate)
    _put(out, r + 2, c + 2, s22, bias, has_bias, accumulate)
    _put(out, r + 2, c + 3, s23, bias, has_bias, accumulate)
    _put(out, r + 3, c, s30, bias, has_bias, accumulate)
    _put(out, r + 3, c + 1, s31, bias, has_bias, accumulate)
    _put(out, r + 3, c + 2, s32, bias, has_bias, accumulate)
    _put(out, r + 3, c + 3, s33, bias, has_bias, accumulate)
    _put(out, r + 4, c, s40, bias, has_bias, accumulate)
    _put(out, r + 4, c + 1, s41, bias, has_bias, accumulate)
    _put(out, r + 4, c + 2, s42, bias, has_bias, accumulate)
    _put(out, r + 4, c + 3, s43, bias, has_bias, accumulate)
    _put(out, r + 5, c, s50, bias, has_bias, accumulate)
    _put(out, r + 5, c + 1, s51, bias, has_bias, accumulate)
    _put(out, r + 5, c + 2, s52, bias, has_bias, accumulate)
    _put(out, r + 5, c + 3, s53, bias, has_bias, accumulate)


@njit(fastmath=True, cache=True, inline="always")
def kernel_4x2(out, r, c, x0, x1, x2, x3, b, bias, has_bias, accumulate):
    # out[r:r+4, c:c+2] (+)= [x0..x3] (4,K) . b[c:c+2] (2,K)^T: the micro-kernel for AVX2 (WIDE
    # False), whose 16 vector registers hold its 8 accumulators and the 6 streams' loads
    K = b.shape[1]
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = F32(0.0)
    for k in range(K):
        b0, b1 = b[c, k], b[c + 1, k]
        ak = x0[k]
        s00 += ak * b0
        s01 += ak * b1
        ak = x1[k]
        s10 += ak * b0
        s11 += ak * b1
        ak = x2[k]
        s20 += ak * b0
        s21 += ak * b1
        ak = x3[k]
        s30 += ak * b0
        s31 += ak * b1
    _put(out, r, c, s00, bias, has_bias, accumulate)
    _put(out, r, c + 1, s01, bias, has_bias, accumulate)
    _put(out, r + 1, c, s10, bias, has_bias, accumulate)
    _put(out, r + 1, c + 1, s11, bias, has_bias, accumulate)
    _put(out, r + 2, c, s20, bias, has_bias, accumulate)
    _put(out, r + 2, c + 1, s21, bias, has_bias, accumulate)
    _put(out, r + 3, c, s30, bias, has_bias, accumulate)
    _put(out, r + 3, c + 1, s31, bias, has_bias, accumulate)


@njit(fastmath=True, cache=True, inline="always")
def _kernel_1x2(out, r, c, x, b, bias, has_bias, accumulate):
    # out[r, c:c+2] (+)= x (K,) . b[c:c+2] (2,K)^T: the rows left over by the 4x2 blocks
    K = b.shape[1]
    s0 = s1 = F32(0.0)
    for k in range(K):
        ak = x[k]
        s0 += ak * b[c, k]
        s1 += ak * b[c + 1, k]
    _put(out, r, c, s0, bias, has_bias, accumulate)
    _put(out, r, c + 1, s1, bias, has_bias, accumulate)


@njit(fastmath=True, cache=True, inline="always")
def _kernel_1x4(out, r, c, x, b, bias, has_bias, accumulate):
    # out[r, c:c+4] (+)= x (K,) . b[c:c+4] (4,K)^T: the rows left over by the 6x4 blocks
    K = b.shape[1]
    s0 = s1 = s2 = s3 = F32(0.0)
    for k in range(K):
        ak = x[k]
        s0 += ak * b[c, k]
        s1 += ak * b[c + 1, k]
        s2 += ak * b[c + 2, k]
        s3 += ak * b[c + 3, k]
    _put(out, r, c, s0, bias, has_bias, accumulate)
    _put(out, r, c + 1, s1, bias, has_bias, accumulate)
    _put(out, r, c + 2, s2, bias, has_bias, accumulate)
    _put(out, r, c + 3, s3, bias, has_bias, accumulate)


@njit(fastmath=True, cache=True)
def nt_tile(out, a, a_off, b, c0, c1, bias, has_bias, accumulate):
    # out (M,P)[:, c0:c1] (+)= a (M,.)[:, a_off:a_off+K] . b (P,K)[c0:c1]^T (+ bias[c0:c1])
    # RB x CB blocks (6x4, or 4x2 without AVX-512: WIDE is a compile-time constant), row block by
    # row block; the leftover columns (c1-c0) % CB one dot product at a time, the leftover rows
    # M % RB one row at a time
    M = out.shape[0]
    K = b.shape[1]
    c4 = c0 + (c1 - c0) // CB * CB
    r = 0
    while r + RB <= M:
        x0, x1, x2 = a[r, a_off:a_off + K], a[r + 1, a_off:a_off + K], a[r + 2, a_off:a_off + K]
        x3 = a[r + 3, a_off:a_off + K]
        if WIDE:
            x4, x5 = a[r + 4, a_off:a_off + K], a[r + 5, a_off:a_off + K]
            for c in range(c0, c4, CB):
                kernel_6x4(out, r, c, x0, x1, x2, x3, x4, x5, b, bias, has_bias, accumulate)
        else:
            for c in range(c0, c4, CB):
                kernel_4x2(out, r, c, x0, x1, x2, x3, b, bias, has_bias, accumulate)
        for c in range(c4, c1):
            for rr in range(r, r + RB):
                _put(out, rr, c, _dot(a[rr, a_off:a_off + K], b[c], K), bias, has_bias, accumulate)
        r += RB
    for rr in range(r, M):
        x = a[rr, a_off:a_off + K]
        for c in range(c0, c4, CB):
            if WIDE:
                _kernel_1x4(out, rr, c, x, b, bias, has_bias, accumulate)
            else:
                _kernel_1x2(out, rr, c, x, b, bias, has_bias, accumulate)
        for c in range(c4, c1):
            _put(out, rr, c, _dot(x, b[c], K), bias, has_bias, accumulate)


