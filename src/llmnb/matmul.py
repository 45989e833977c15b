"""The matmuls of training: forward (out = inp @ W^T + b) and backward (dinp, dweight, dbias).

These carry ~99% of the FLOPs of a GPT-2 step. fastmath is on here (it lets LLVM reorder the sums
along K into SIMD accumulators); each output element is still summed by one thread in a fixed
order, so results do not depend on the number of threads.
"""
import numpy as np
from numba import njit, prange

F32 = np.float32
OTILE = 64  # output columns per parallel task in the forward pass
ITILE = 64  # input columns per parallel task in the dinp pass


@njit(fastmath=True, cache=True, inline="always")
def _dot(a, b):
    s = F32(0.0)
    for k in range(a.shape[0]):
        s += a[k] * b[k]
    return s


@njit(parallel=True, fastmath=True, cache=True)
def _matmul_forward_2d(out, inp, weight, bias, has_bias):
    # out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC)
    N, C = inp.shape
    OC = weight.shape[0]
    ntiles = (OC + OTILE - 1) // OTILE
    for tile in prange(ntiles):
        o_start = tile * OTILE
        o_end = min(o_start + OTILE, OC)
        r = 0
        # 4 rows x 4 columns at a time: 16 dot products sharing 8 streams along K
        while r + 4 <= N:
            x0, x1, x2, x3 = inp[r], inp[r + 1], inp[r + 2], inp[r + 3]
            o = o_start
            while o + 4 <= o_end:
                w0, w1, w2, w3 = weight[o], weight[o + 1], weight[o + 2], weight[o + 3]
                s00 = s01 = s02 = s03 = F32(0.0)
                s10 = s11 = s12 = s13 = F32(0.0)
                s20 = s21 = s22 = s23 = F32(0.0)
                s30 = s31 = s32 = s33 = F32(0.0)
                for k in range(C):
                    a0, a1, a2, a3 = x0[k], x1[k], x2[k], x3[k]
                    b0, b1, b2, b3 = w0[k], w1[k], w2[k], w3[k]
                    s00 += a0 * b0
                    s01 += a0 * b1
                    s02 += a0 * b2
                    s03 += a0 * b3
                    s10 += a1 * b0
                    s11 += a1 * b1
                    s12 += a1 * b2
                    s13 += a1 * b3
                    s20 += a2 * b0
                    s21 += a2 * b1
                    s22 += a2 * b2
                    s23 += a2 * b3
                    s30 += a3 * b0
                    s31 += a3 * b1
                    s32 += a3 * b2
                    s33 += a3 * b3
                c0 = bias[o] if has_bias else F32(0.0)
                c1 = bias[o + 1] if has_bias else F32(0.0)
                c2 = bias[o + 2] if has_bias else F32(0.0)
                c3 = bias[o + 3] if has_bias else F32(0.0)
                out[r, o], out[r, o + 1], out[r, o + 2], out[r, o + 3] = s00 + c0, s01 + c1, s02 + c2, s03 + c3
                out[r + 1, o], out[r + 1, o + 1], out[r + 1, o + 2], out[r + 1, o + 3] = s10 + c0, s11 + c1, s12 + c2, s13 + c3
                out[r + 2, o], out[r + 2, o + 1], out[r + 2, o + 2], out[r + 2, o + 3] = s20 + c0, s21 + c1, s22 + c2, s23 + c3
                out[r + 3, o], out[r + 3, o + 1], out[r + 3, o + 2], out[r + 3, o + 3] = s30 + c0, s31 + c1, s32 + c2, s33 + c3
                o += 4
            # leftover columns of this tile
            for oo in range(o, o_end):
                c = bias[oo] if has_bias else F32(0.0)
                for rr in range(r, r + 4):
                    out[rr, oo] = _dot(inp[rr], weight[oo]) + c
            r += 4
        # leftover rows
        for rr in range(r, N):
            for oo in range(o_start, o_end):
                c = bias[oo] if has_bias else F32(0.0)
                out[rr, oo] = _dot(inp[rr], weight[oo]) + c


def matmul_forward(out, inp, weight, bias):
    """out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC), bias may be None."""
    C = inp.shape[-1]
    OC = weight.shape[0]
    has_bias = bias is not None
    _matmul_forward_2d(out.reshape(-1, OC), inp.reshape(-1, C), weight,
                       bias if has_bias else weight[0], has_bias)


@njit(parallel=True, fastmath=True, cache=True)
def _matmul_backward_dinp(dinp, dout, weight):
    # dinp (N,C) += dout (N,OC) @ weight (OC,C); each task owns ITILE columns of dinp
    N, C = dinp.shape
    OC = weight.shape[0]
    ntiles = (C + ITILE - 1) // ITILE
    for tile in prange(ntiles):
        i0 = tile * ITILE
        i1 = min(i0 + ITILE, C)
        for o in range(OC):
            w = weight[o, i0:i1]
            for n in range(N):
                d = dout[n, o]
                row = dinp[n, i0:i1]
                for i in range(i1 - i0):
                    row[i] += d * w[i]


@njit(parallel=True, fastmath=True, cache=True)
def _matmul_backward_dweight(dweight, dbias, dout, inp, has_bias):
    # dweight (OC,C) += dout (N,OC)^T @ inp (N,C); dbias (OC) += sum_n dout; each task owns rows o
    N, C = inp.shape
    OC = dweight.shape[0]
    for o in prange(OC):
        drow = dweight[o]
        s = F32(0.0)
        for n in range(N):
            d = dout[n, o]
            s += d
            x = inp[n]
            for i in range(C):
                drow[i] += d * x[i]
        if has_bias:
            dbias[o] += s


def matmul_backward(dinp, dweight, dbias, dout, inp, weight):
    """dinp (B,T,C), dweight (OC,C), dbias (OC) or None += the gradients of matmul_forward,
    given dout (B,T,OC), inp (B,T,C), weight (OC,C)."""
    C = inp.shape[-1]
    OC = weight.shape[0]
    dout2 = dout.reshape(-1, OC)
    _matmul_backward_dinp(dinp.reshape(-1, C), dout2, weight)
    has_bias = dbias is not None
    _matmul_backward_dweight(dweight, dbias if has_bias else dweight[0], dout2,
                             inp.reshape(-1, C), has_bias)
