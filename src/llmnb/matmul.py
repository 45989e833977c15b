"""The matmuls of training: forward (out = inp @ W^T + b) and backward (dinp, dweight, dbias).

They carry ~99% of the FLOPs of a GPT-2 step. All three are written as one "NT" product,
    out[r, c] (+)= sum_k a[r, k] * b[c, k]      (a (M,K), b (P,K), both contiguous along k)
computed by a register-blocked micro-kernel: a block of 6 rows of a times 4 rows of b is 24 dot
products that share 10 streams along k; with fastmath LLVM turns each dot product into one
AVX-512 accumulator, so each step of 16 k's is 24 FMAs for 10 loads. Without AVX-512 (16 vector
registers, AVX2) the block is 4x2: 8 dot products on 6 streams (see WIDE).

    forward   out  (N,OC) = inp (N,C)  . weight (OC,C)          + bias   a=inp,      b=weight
    dinp      dinp (N,C) += dout (N,OC) . weight^T (C,OC)                a=dout,     b=weight^T
    dweight   dW  (OC,C) += dout^T (OC,N) . inp^T (C,N)                  a=dout^T,   b=inp^T
    dbias     dbias (OC) += row sums of dout^T

The backward operands whose reduction axis is not contiguous (weight^T, dout^T, inp^T) are first
transposed into the buffers of a MatmulScratch, allocated once and grown on demand, never per
call. The classifier (OC = Vp = 50304) goes in chunks of the reduction axis (dinp: DINP_CHUNK
columns of dout per pass) and of output rows (dweight), so that the scratch stays ~30 MB.

Speed on the 2-core Zen 4 this was tuned on (peak 235 GFLOP/s; dev/matmul_*.py measure it):
forward ~81-83% of peak, dinp ~71-77%, dweight ~68% (its reduction axis is only N = B*T long,
so the horizontal sum that ends each dot product weighs more).

Each output element is summed by one thread in a fixed order (for the classifier's dinp: pass by
pass), so results do not depend on the number of threads: the parallel kernels are bitwise equal
to their serial copies.
"""
import os

import numpy as np
from numba import njit, prange

F32 = np.float32


def _avx512():
    """Whether Numba compiles for a CPU with AVX-512 (NUMBA_CPU_FEATURES if set, else the host).
    LLMNB_MATMUL_KERNEL=6x4 or 4x2 picks the micro-kernel instead (both are correct on any x86-64;
    the tests run the one this machine does not pick; use a fresh NUMBA_CACHE_DIR with it: Numba's
    cache keys on the CPU, not on this choice)."""
    from numba.core import config
    choice = os.environ.get("LLMNB_MATMUL_KERNEL", "")
    if choice:
        if choice not in ("6x4", "4x2"):
            raise ValueError(f"LLMNB_MATMUL_KERNEL={choice!r}: expected 6x4 or 4x2")
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
TILE_BYTES = 192 * 1024   # columns per parallel task: the task's b-tile (cols x K) fits L2
DINP_CHUNK = 4096   # dinp: columns of dout per pass (a pass's N x 4096 block of dout stays in L3)
DW_CHUNK_FLOATS = 4 * 1024 * 1024  # dweight: largest dout^T chunk in the scratch (16 MB)
DW_ROWS = 48        # rows of dweight per parallel task of the backward (a multiple of RB)
NO_BIAS = np.zeros(0, dtype=F32)


# ------------------------------------------------------------------------------------------------
# the NT core

@njit(fastmath=True, cache=True, inline="always")
def _dot(x, w, n):
    # sum_k x[k] * w[k] for k < n (loops from 0: Numba then knows k >= 0 and skips the
    # negative-index wraparound, which would turn the vector loads into gathers)
    s = F32(0.0)
    for k in range(n):
        s += x[k] * w[k]
    return s


@njit(fastmath=True, cache=True, inline="always")
def _sum(x):
    # sum_k x[k]
    s = F32(0.0)
    for k in range(x.shape[0]):
        s += x[k]
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


@njit(cache=True, inline="always")
def _tile_width(P, K):
    # columns per parallel task: a multiple of CB whose b-tile (width x K floats) is ~TILE_BYTES
    width = TILE_BYTES // (4 * max(1, K)) // CB * CB
    return max(CB, min(width, (P + CB - 1) // CB * CB))


# ------------------------------------------------------------------------------------------------
# packing: transposes into scratch

@njit(fastmath=True, cache=True)
def _pack_transposed(dst, d0, e0, src, c0, c1, k0, k1):
    # dst[c - d0, k - e0] = src[k, c] for c in [c0, c1), k in [k0, k1): columns of src become
    # rows of dst, contiguous along k. Eight rows of src at a time: each dst row gets 8
    # consecutive floats per pass (~2 G floats/s a core, 2-3x the naive element loop).
    k8 = k0 + (k1 - k0) // 8 * 8
    for kb in range(k0, k8, 8):
        s0, s1, s2, s3 = src[kb], src[kb + 1], src[kb + 2], src[kb + 3]
        s4, s5, s6, s7 = src[kb + 4], src[kb + 5], src[kb + 6], src[kb + 7]
        o = kb - e0
        for c in range(c0, c1):
            d = dst[c - d0]
            d[o], d[o + 1], d[o + 2], d[o + 3] = s0[c], s1[c], s2[c], s3[c]
            d[o + 4], d[o + 5], d[o + 6], d[o + 7] = s4[c], s5[c], s6[c], s7[c]
    for k in range(k8, k1):
        for c in range(c0, c1):
            dst[c - d0, k - e0] = src[k, c]


@njit(parallel=True, cache=True)
def transpose(dst, src):
    # dst (P,Q) = src (Q,P)^T, in parallel over tiles of 128 columns of src: 512-byte stretches
    # of each src row (64-column tiles are 1.4x slower, and so are tiles of fewer rows)
    Q, P = src.shape
    for t in prange((P + 127) // 128):
        _pack_transposed(dst, 0, 0, src, t * 128, min(t * 128 + 128, P), 0, Q)


class MatmulScratch:
    """Flat float32 scratch buffers for the backward transposes, by name; each one grows to the
    largest size asked for and is then reused, so steady-state calls allocate nothing.
    Not thread-safe: give each Python thread that runs matmuls its own MatmulScratch."""

    def __init__(self):
        self._buffers = {}

    def get(self, name, shape, apart_from=None):
        """A C-contiguous float32 view of the shape, on the buffer of that name (contents
        undefined). With apart_from (an array), the view starts 2 KB away from that array's start
        modulo 4 KB. Rows a multiple of 4 KB long (K = 1024, 3072 floats) of two arrays that start
        at the same offset modulo 4 KB all fall in the same L1 set, and the 6x4 micro-kernel's 10
        streams then thrash its 8 ways (~8% slower); apart, they use two sets."""
        n = 1
        for d in shape:
            n *= d
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < n + 1024:
            buf = np.empty(n + 1024, dtype=F32)
            self._buffers[name] = buf
        start = 0
        if apart_from is not None:
            start = (apart_from.ctypes.data + 2048 - buf.ctypes.data) % 4096 // 4
        return buf[start:start + n].reshape(shape)

    def nbytes(self):
        return sum(b.nbytes for b in self._buffers.values())


# the scratch of the module-level functions below (one process, one Python thread at a time:
# the kernels do not release the GIL)
DEFAULT_SCRATCH = MatmulScratch()


# ------------------------------------------------------------------------------------------------
# the three matmuls (2-D), and the public API

@njit(parallel=True, fastmath=True, cache=True)
def _matmul_forward_2d(out, inp, weight, bias, has_bias):
    # out (N,OC) = inp (N,C) . weight (OC,C)^T + bias (OC)
    C = inp.shape[1]
    OC = out.shape[1]
    width = _tile_width(OC, C)
    ntiles = (OC + width - 1) // width
    for t in prange(ntiles):
        o0 = t * width
        nt_tile(out, inp, 0, weight, o0, min(o0 + width, OC), bias, has_bias, False)


@njit(parallel=True, fastmath=True, cache=True)
def _matmul_backward_dinp(dinp, dout, o0, weightT):
    # dinp (N,C) += dout (N,OC)[:, o0:o0+K] . weightT (C,K)^T, weightT = weight[o0:o0+K]^T
    C = dinp.shape[1]
    width = _tile_width(C, weightT.shape[1])
    for t in prange((C + width - 1) // width):
        c0 = t * width
        nt_tile(dinp, dout, o0, weightT, c0, min(c0 + width, C), NO_BIAS, False, True)


@njit(parallel=True, fastmath=True, cache=True)
def _matmul_backward_dweight(dweight, dbias, dout, inpT, o0, o1, doutT, has_bias):
    # dweight (OC,C)[o0:o1] += dout (N,OC)[:, o0:o1]^T . inpT (C,N)^T; dbias[o0:o1] += sums over N
    # each task owns DW_ROWS rows of dweight: it packs their doutT (rows, N) into its part of the
    # scratch doutT (o1-o0, N), then sweeps the columns of dweight in L2-sized blocks of inpT
    C, N = inpT.shape
    width = _tile_width(C, N)
    for t in prange((o1 - o0 + DW_ROWS - 1) // DW_ROWS):
        r0 = o0 + t * DW_ROWS
        r1 = min(r0 + DW_ROWS, o1)
        _pack_transposed(doutT, o0, 0, dout, r0, r1, 0, N)
        a = doutT[r0 - o0:r1 - o0]
        out = dweight[r0:r1]
        for c0 in range(0, C, width):
            nt_tile(out, a, 0, inpT, c0, min(c0 + width, C), NO_BIAS, False, True)
        if has_bias:
            for o in range(r0, r1):
                dbias[o] += _sum(a[o - r0])


MV_ROWS = 256  # matvec_forward: rows of weight per parallel task (768 KB at C = 768)


@njit(parallel=True, fastmath=True, cache=True)
def _matvec_forward(out, inp, weight, bias, has_bias):
    # out (OC,) = weight (OC,C) . inp (C,) + bias (OC): matmul_forward for one token (a GEMV).
    # Generation reads every weight once per token, so this is bound by memory bandwidth: each
    # task streams a contiguous block of MV_ROWS rows front to back, one row's dot product at a
    # time (a single stream the prefetcher follows; inp stays in L1), and prange hands each
    # thread one contiguous run of tasks.
    # (The dot product is written out here: through _dot on the row view weight[r] it runs at
    # half the speed.)
    OC, C = weight.shape
    for task in prange((OC + MV_ROWS - 1) // MV_ROWS):
        for r in range(task * MV_ROWS, min((task + 1) * MV_ROWS, OC)):
            s = F32(0.0)
            for k in range(C):
                s += inp[k] * weight[r, k]
            out[r] = s + bias[r] if has_bias else s


@njit(parallel=True, fastmath=True, cache=True)
def _matvec_forward_bf16(out, inp, weight, bias, has_bias, scratch):
    # _matvec_forward with weight (OC,C) held as bfloat16 bit patterns (uint16): half the bytes
    # to stream. Each row is widened into the task's row of scratch (ntasks, >= C) uint32 (a
    # bfloat16 is the top half of a float32), then dotted as float32.
    OC, C = weight.shape
    for task in prange((OC + MV_ROWS - 1) // MV_ROWS):
        bits = scratch[task, :C]
        row = bits.view(np.float32)
        for r in range(task * MV_ROWS, min((task + 1) * MV_ROWS, OC)):
            for k in range(C):
                bits[k] = np.uint32(weight[r, k]) << np.uint32(16)
            s = F32(0.0)
            for k in range(C):
                s += inp[k] * row[k]
            out[r] = s + bias[r] if has_bias else s


def _check(name, arr, shape):
    # arr must be a C-contiguous float32 array of exactly this shape
    if not isinstance(arr, np.ndarray) or arr.dtype != F32:
        raise ValueError(f"matmul: {name} must be a float32 NumPy array, got {getattr(arr, 'dtype', type(arr))}")
    if arr.shape != shape:
        raise ValueError(f"matmul: {name} has shape {arr.shape}, expected {shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"matmul: {name} must be C-contiguous")


def _rows(name, arr, ncols):
    # arr (..., ncols) as a C-contiguous (rows, ncols) view, or a clear error
    if not isinstance(arr, np.ndarray) or arr.ndim < 1 or arr.shape[-1] != ncols:
        raise ValueError(f"matmul: {name} has shape {getattr(arr, 'shape', None)}, "
                         f"its last axis must be {ncols}")
    _check(name, arr, arr.shape)
    return arr.reshape(-1, ncols)


def _weight_shape(weight):
    if not isinstance(weight, np.ndarray) or weight.ndim != 2 or min(weight.shape) < 1:
        raise ValueError(f"matmul: weight must be a non-empty (OC, C) array, got shape "
                         f"{getattr(weight, 'shape', None)}")
    _check("weight", weight, weight.shape)
    return weight.shape


def matmul_forward(out, inp, weight, bias):
    """out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC); bias may be None."""
    OC, C = _weight_shape(weight)
    inp2 = _rows("inp", inp, C)
    out2 = _rows("out", out, OC)
    if out2.shape[0] != inp2.shape[0]:
        raise ValueError(f"matmul: out {out.shape} and inp {inp.shape} have different B*T")
    has_bias = bias is not None
    if has_bias:
        _check("bias", bias, (OC,))
    _matmul_forward_2d(out2, inp2, weight, bias if has_bias else NO_BIAS, has_bias)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, scratch=None):
    """dinp (B,T,C), dweight (OC,C), dbias (OC) or None += the gradients of matmul_forward,
    given dout (B,T,OC), inp (B,T,C), weight (OC,C). scratch: a MatmulScratch for the transposed
    operands (default: the module's DEFAULT_SCRATCH)."""
    OC, C = _weight_shape(weight)
    s = DEFAULT_SCRATCH if scratch is None else scratch
    dout2 = _rows("dout", dout, OC)
    inp2 = _rows("inp", inp, C)
    dinp2 = _rows("dinp", dinp, C)
    N = dout2.shape[0]
    if inp2.shape[0] != N or dinp2.shape[0] != N:
        raise ValueError(f"matmul: dout {dout.shape}, inp {inp.shape}, dinp {dinp.shape} differ in B*T")
    _check("dweight", dweight, (OC, C))
    has_bias = dbias is not None
    if has_bias:
        _check("dbias", dbias, (OC,))

    backward_dinp(dinp2, dout2, weight, s)
    backward_dweight(dweight, dbias, dout2, inp2, s)


def backward_dinp(dinp, dout, weight, scratch):
    """dinp (N,C) += dout (N,OC) . weight (OC,C), in passes over DINP_CHUNK columns of dout (one
    pass below the classifier): a pass's block of dout stays in L3, and its transposed weight rows
    weight[o0:o1]^T fit a small scratch. Checked arrays only."""
    OC, C = weight.shape
    och = min(OC, DINP_CHUNK)
    for o0 in range(0, OC, och):
        o1 = min(o0 + och, OC)
        weightT = scratch.get("weightT", (C, o1 - o0), apart_from=dout)
        transpose(weightT, weight[o0:o1])
        _matmul_backward_dinp(dinp, dout, o0, weightT)


def backward_dweight(dweight, dbias, dout, inp, scratch):
    """dweight (OC,C) += dout (N,OC)^T . inp (N,C), dbias (OC) or None += dout summed over N, in
    chunks of the rows of dweight so that dout[:, o0:o1]^T fits the scratch. Checked arrays only."""
    N, C = inp.shape
    OC = dweight.shape[0]
    has_bias = dbias is not None
    inpT = scratch.get("inpT", (C, N))
    transpose(inpT, inp)
    och = max(DW_ROWS, min(OC, DW_CHUNK_FLOATS // max(N, 1)))
    for o0 in range(0, OC, och):
        o1 = min(o0 + och, OC)
        _matmul_backward_dweight(dweight, dbias if has_bias else NO_BIAS, dout, inpT, o0, o1,
                                 scratch.get("doutT", (o1 - o0, N)), has_bias)


def matvec_forward(out, inp, weight, bias):
    """out (OC,) = weight (OC,C) @ inp (C,) + bias (OC): one token's matmul_forward; bias may be None."""
    OC, C = _weight_shape(weight)
    _check("inp", inp, (C,))
    _check("out", out, (OC,))
    has_bias = bias is not None
    if has_bias:
        _check("bias", bias, (OC,))
    _matvec_forward(out, inp, weight, bias if has_bias else NO_BIAS, has_bias)


def matvec_scratch(OC, C):
    """The uint32 scratch matvec_forward_bf16 needs for a weight of up to (OC, C)."""
    return np.zeros(((OC + MV_ROWS - 1) // MV_ROWS, C), dtype=np.uint32)


def matvec_forward_bf16(out, inp, weight_bits, bias, scratch):
    """matvec_forward with weight_bits (OC,C) uint16: bfloat16 bit patterns (formats.fp32_to_bf16);
    scratch from matvec_scratch(>= OC, >= C)."""
    if not isinstance(weight_bits, np.ndarray) or weight_bits.dtype != np.uint16 or weight_bits.ndim != 2 \
            or not weight_bits.flags.c_contiguous:
        raise ValueError("matmul: weight_bits must be a C-contiguous (OC, C) uint16 array of bfloat16 bits")
    OC, C = weight_bits.shape
    _check("inp", inp, (C,))
    _check("out", out, (OC,))
    if scratch.dtype != np.uint32 or scratch.shape[0] < (OC + MV_ROWS - 1) // MV_ROWS or scratch.shape[1] < C:
        raise ValueError(f"matmul: scratch {scratch.shape} too small for a ({OC}, {C}) weight")
    has_bias = bias is not None
    if has_bias:
        _check("bias", bias, (OC,))
    _matvec_forward_bf16(out, inp, weight_bits, bias if has_bias else NO_BIAS, has_bias, scratch)
