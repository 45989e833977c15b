"""The matmuls of training on the GPU: shared-memory tiled kernels with register blocking.

One block of TY x TX = 16 x 16 threads computes a TILE x TILE = 128 x 128 tile of the output;
each thread owns TM x TN = 8 x 8 outputs (rows ty + TY*i, columns tx + TX*j: neighbouring threads
write neighbouring columns, and read shared memory without bank conflicts). The K dimension is
walked BK = 16 at a time: the block stages a BK x TILE slab of each operand in shared memory,
then every thread does BK rank-1 updates of its 8x8 registers (the numbers of launch.py's "gpu"
geometry; the simulator's are smaller). Loads outside the matrices read as zero, so any shape
works, not only multiples of the tile.

The device functions are generic over the memory layout of each operand, so the attention kernels
(kernels.py) reuse them on per-head strided views of qkv, with a causal mask.
"""
import numpy as np
from numba import cuda, float32

from .launch import (BK, COL_ROWS, COL_WIDTH, TILE, TILE_BLOCK, TX, TY, cdiv, check, last_dim)

TM = TILE // TY     # output rows per thread
TN = TILE // TX     # output columns per thread
NTHREADS = TX * TY
PAD = 1             # shared tiles are (BK, TILE + PAD): spreads the transposing stores over banks
TILE_P = TILE + PAD  # (shared array shapes must be plain constants)
ZERO = np.float32(0.0)


# ----------------------------------------------------------------------------------------------
# the tile machinery (device functions)

@cuda.jit(device=True)
def load_tile(tile, x, r0, k0, kr, mask_upper):
    # tile (BK, TILE+PAD) <- tile[kk, rr] = X[r0 + rr, k0 + kk], zero outside X, where the
    # operand X is x itself (kr False: x is (R,K), K contiguous) or its transpose (kr True: x is
    # (K,R)). mask_upper: read x[i, j] as zero when j > i (the causal mask of a (T,T) matrix).
    # Consecutive threads read consecutive addresses of x in both layouts.
    tid = cuda.threadIdx.y * TX + cuda.threadIdx.x
    for l in range(tid, TILE * BK, NTHREADS):
        if kr:
            rr = l % TILE
            kk = l // TILE
            i = k0 + kk
            j = r0 + rr
        else:
            kk = l % BK
            rr = l // BK
            i = r0 + rr
            j = k0 + kk
        val = ZERO
        if i < x.shape[0] and j < x.shape[1]:
            if not (mask_upper and j > i):
                val = x[i, j]
        tile[kk, rr] = val


@cuda.jit(device=True)
def tile_fma(acc, As, Bs):
    # acc (TM,TN) += this thread's 8x8 share of As^T @ Bs, As and Bs (BK, TILE+PAD) in shared memory
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    a = cuda.local.array(TM, float32)
    b = cuda.local.array(TN, float32)
    for kk in range(BK):
        for i in range(TM):
            a[i] = As[kk, ty + i * TY]
        for j in range(TN):
            b[j] = Bs[kk, tx + j * TX]
        for i in range(TM):
            for j in range(TN):
                acc[i, j] += a[i] * b[j]


@cuda.jit(device=True)
def gemm_block(acc, As, Bs, a, a_kr, a_mask, b, b_kr, b_mask, m0, n0, k_start, k_end):
    # acc (TM,TN) = this thread's outputs of the block tile at (m0, n0) of A @ B^T, summing
    # k over [k_start, k_end): A[m,k] from a, B[n,k] from b, each with its layout and mask
    # (see load_tile). Every thread of the block must call this (it synchronises).
    for i in range(TM):
        for j in range(TN):
            acc[i, j] = ZERO
    for k0 in range(k_start, k_end, BK):
        load_tile(As, a, m0, k0, a_kr, a_mask)
        load_tile(Bs, b, n0, k0, b_kr, b_mask)
        cuda.syncthreads()
        tile_fma(acc, As, Bs)
        cuda.syncthreads()


# ----------------------------------------------------------------------------------------------
# the matmul kernels; block TILE_BLOCK, grid (cdiv(columns, TILE), cdiv(rows, TILE))

@cuda.jit(cache=True)
def matmul_forward_kernel(out, inp, weight, bias, has_bias):
    # out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC)
    As = cuda.shared.array((BK, TILE_P), float32)
    Bs = cuda.shared.array((BK, TILE_P), float32)
    acc = cuda.local.array((TM, TN), float32)
    m0 = cuda.blockIdx.y * TILE
    n0 = cuda.blockIdx.x * TILE
    gemm_block(acc, As, Bs, inp, False, False, weight, False, False, m0, n0, 0, inp.shape[1])
    for i in range(TM):
        m = m0 + cuda.threadIdx.y + i * TY
        for j in range(TN):
            n = n0 + cuda.threadIdx.x + j * TX
            if m < out.shape[0] and n < out.shape[1]:
                c = bias[n] if has_bias else ZERO
                out[m, n] = acc[i, j] + c


@cuda.jit(cache=True)
def matmul_backward_dinp_kernel(dinp, dout, weight):
    # dinp (N,C) += dout (N,OC) @ weight (OC,C)
    As = cuda.shared.array((BK, TILE_P), float32)
    Bs = cuda.shared.array((BK, TILE_P), float32)
    acc = cuda.local.array((TM, TN), float32)
    m0 = cuda.blockIdx.y * TILE
    n0 = cuda.blockIdx.x * TILE
    gemm_block(acc, As, Bs, dout, False, False, weight, True, False, m0, n0, 0, dout.shape[1])
    for i in range(TM):
        m = m0 + cuda.threadIdx.y + i * TY
        for j in range(TN):
            n = n0 + cuda.threadIdx.x + j * TX
            if m < dinp.shape[0] and n < dinp.shape[1]:
                dinp[m, n] += acc[i, j]


@cuda.jit(cache=True)
def matmul_backward_dweight_kernel(dweight, dout, inp):
    # dweight (OC,C) += dout (N,OC)^T @ inp (N,C)
    As = cuda.shared.array((BK, TILE_P), float32)
    Bs = cuda.shared.array((BK, TILE_P), float32)
    acc = cuda.local.array((TM, TN), float32)
    m0 = cuda.blockIdx.y * TILE
    n0 = cuda.blockIdx.x * TILE
    gemm_block(acc, As, Bs, dout, True, False, inp, True, False, m0, n0, 0, dout.shape[0])
    for i in range(TM):
        m = m0 + cuda.threadIdx.y + i * TY
        for j in range(TN):
            n = n0 + cuda.threadIdx.x + j * TX
            if m < dweight.shape[0] and n < dweight.shape[1]:
                dweight[m, n] += acc[i, j]


@cuda.jit(cache=True)
def matmul_backward_bias_kernel(dbias, dout):
    # dbias (OC) += sum over rows of dout (N,OC); block (COL_WIDTH, COL_ROWS), grid cdiv(OC, COL_WIDTH).
    # Each column is summed by the COL_ROWS threads of its lane, then those partial sums in order:
    # no atomics, the same result on every run.
    partial = cuda.shared.array((COL_ROWS, COL_WIDTH), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    N, OC = dout.shape
    o = cuda.blockIdx.x * COL_WIDTH + tx
    s = ZERO
    if o < OC:
        for n in range(ty, N, COL_ROWS):
            s += dout[n, o]
    partial[ty, tx] = s
    cuda.syncthreads()
    if ty == 0 and o < OC:
        total = ZERO
        for r in range(COL_ROWS):
            total += partial[r, tx]
        dbias[o] += total


# ----------------------------------------------------------------------------------------------
# launchers (host side): the shapes of llmnb.matmul, natural-shape views of device buffers

def matmul_forward(out, inp, weight, bias):
    """out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC), bias may be None."""
    OC, C = weight.shape
    where = "matmul.py"
    check(last_dim(inp) == C, where, f"matmul_forward: inp {inp.shape} does not end in C of weight {weight.shape}")
    out2 = out.reshape(-1, OC)
    inp2 = inp.reshape(-1, C)
    N = inp2.shape[0]
    check(out2.shape[0] == N, where, f"matmul_forward: out {out.shape} and inp {inp.shape} disagree on B*T")
    has_bias = bias is not None
    check(not has_bias or bias.shape == (OC,), where, f"matmul_forward: bias is not ({OC},)")
    grid = (cdiv(OC, TILE), cdiv(N, TILE))
    matmul_forward_kernel[grid, TILE_BLOCK](out2, inp2, weight, bias if has_bias else weight[0], has_bias)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight):
    """dinp (B,T,C), dweight (OC,C), dbias (OC) or None += the gradients of matmul_forward,
    given dout (B,T,OC), inp (B,T,C), weight (OC,C)."""
    OC, C = weight.shape
    where = "matmul.py"
    check(dweight.shape == (OC, C), where, f"matmul_backward: dweight {dweight.shape} is not weight's {weight.shape}")
    dout2 = dout.reshape(-1, OC)
    inp2 = inp.reshape(-1, C)
    dinp2 = dinp.reshape(-1, C)
    N = dout2.shape[0]
    check(inp2.shape[0] == N and dinp2.shape[0] == N, where,
          f"matmul_backward: dout {dout.shape}, inp {inp.shape}, dinp {dinp.shape} disagree on B*T")
    matmul_backward_dinp_kernel[(cdiv(C, TILE), cdiv(N, TILE)), TILE_BLOCK](dinp2, dout2, weight)
    matmul_backward_dweight_kernel[(cdiv(C, TILE), cdiv(OC, TILE)), TILE_BLOCK](dweight, dout2, inp2)
    if dbias is not None:
        check(dbias.shape == (OC,), where, f"matmul_backward: dbias {dbias.shape} is not ({OC},)")
        matmul_backward_bias_kernel[cdiv(OC, COL_WIDTH), (COL_WIDTH, COL_ROWS)](dbias, dout2)


__all__ = ["matmul_forward", "matmul_backward", "matmul_forward_kernel", "gemm_block", "load_tile",
           "tile_fma", "TM", "TN", "PAD", "ZERO"]
