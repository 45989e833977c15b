"""Causal self-attention on tensor cores in TF32 (--precision tf32): every product of the forward (s =
q.k, o = p v) and of the backward (s, dP = dout.v, dq = dS k, dv = att^T dout, dk = dS^T q) is
mma.sync.m16n8k8 with fp32 accumulation, operands rounded by cvt.rna.tf32.

The algorithm and the kernels' split are attention.py's (FlashAttention: an online softmax over key
tiles, per-row log-sum-exp kept; backward recomputes att from it; dquery and dkey_value kernels, no
atomics). A block is TC_WARPS warps, each owning 16 rows (queries, or keys in dkey_value); a lane
holds its rows' scores as mma accumulators (rows groupID and groupID + 8, llmnb/cuda/mma_tiles.py's
frag_c), so the row max and sum are 4-lane shuffles. The operand a warp keeps for the whole block (q,
or k and v, or q and dout) sits in registers as tf32 fragments; k, v (or q, dout) tiles are staged in
shared memory by cp.async as they lie (row, channel), and the score-shaped operand of the second
product (p, dS) goes through a per-warp shared tile into A fragments. Channels past the head size
and rows past T are zeros. hs <= ATT_HS_MAX (64), a multiple of 4; rows of inp 16-byte aligned.

Geometry (launch.py's GEOMETRY): "gpu" 4 warps (64 rows) against tiles of 32 keys, <= 44 KB of
shared memory; "sim" 2 warps and 16 keys. The lab (dev/cuda_attention.py, v4t) checks and times
these against the fp32 versions. --precision bf16 runs them too: q, k, v and dout of bf16 bits are
staged widened (ptx.stage4; a bf16 value is exact in tf32) and out and dinp written through
ptx.narrow. Not yet run on a card.
"""
import math

import numpy as np
from numba import cuda, float32, uint32

from . import mma_tiles, ptx
from .attention import _attention_shapes, attention_backward_dd_kernel
from .launch import ATT_HS_MAX, ELEM_THREADS, GEOMETRY, INLINE, SIMULATOR, cached_views, cdiv, check, elementwise_grid

F32 = np.float32
U32 = np.uint32
I64 = np.int64   # row positions compared with T: signed (numba compares uint64 with int64 in float64)
ZERO = F32(0.0)
NEG_INF = F32(-np.inf)
WHERE = "attention_tc.py"


#                    warps  keys per tile
TC_GEOMETRIES = {"gpu": (4, 32), "sim": (2, 16)}
TC_WARPS, TC_BKV = TC_GEOMETRIES[GEOMETRY]
TC_THREADS = 32 * TC_WARPS
TC_BQ = 16 * TC_WARPS       # queries (forward, dquery) or keys (dkey_value) per block: 16 rows per warp
TC_HS_P = ATT_HS_MAX + 4    # Q and K tiles (row, channel), read along channels: rows 4 banks apart
TC_V_P = ATT_HS_MAX + 8     # the V tile (key, channel), read along keys: rows 8 banks apart
TC_BKV_P = TC_BKV + 4       # P (query, key), read along keys
NI_S, KS_S = TC_BKV // 8, ATT_HS_MAX // 8   # s = q.k: tiles of 8 keys, k steps of 8 channels
NI_O, KS_O = ATT_HS_MAX // 8, TC_BKV // 8   # o += p v: tiles of 8 channels, k steps of 8 keys
N_QF, N_SACC, N_OACC = 4 * KS_S, 4 * NI_S, 4 * NI_O   # a lane's q registers, s and o accumulators
TC_ALIGN = None if SIMULATOR else 16   # cp.async's 16-byte chunks (the simulator takes no alignment)
frag_a, frag_b, frag_c = INLINE(mma_tiles.frag_a), INLINE(mma_tiles.frag_b), INLINE(mma_tiles.frag_c)


@INLINE
def _tc_stage(dst, x, r0, R, T, c0, hs, tid):
    # dst[r, d] = x (T, 3C)[r0 + r, c0 + d] for r < R, d < ATT_HS_MAX, zero past T and hs: 16-byte
    # cp.async chunks, consecutive threads along a row (x's rows and c0 16-byte aligned, hs % 4 == 0);
    # x of bf16 bits: 8-byte loads widened to fp32 (ptx.stage4)
    for it in range(U32(R * (ATT_HS_MAX // 4) // TC_THREADS)):
        e = tid + it * U32(TC_THREADS)
        r = e // U32(ATT_HS_MAX // 4)
        d = U32(4) * (e % U32(ATT_HS_MAX // 4))
        t = U32(r0) + r
        ptx.stage4(dst, r, d, x, t, U32(c0) + d, (t < U32(T)) & (d < U32(hs)))


@cuda.jit
def attention_forward_tf32_kernel(out, lse, inp, scale):
    # out (B,T,C), lse (B,NH,T) = the attention of the TC_BQ queries q0.. of head (b, h) = blockIdx.y,
    # inp (B,T,3C); warp w owns queries q0 + 16 w ... + 15. Per key tile of TC_BKV: s = scale q.k on
    # tensor cores (q's fragments in registers, k's read from shared memory), masked; the online
    # softmax on the accumulators (a lane holds 2 rows: the row max and sum over the 4 lanes of its
    # group by shuffles); p = exp(s - m) through shared memory into A fragments; o += p v on tensor
    # cores. Operands rounded to tf32 (cvt.rna), sums in fp32.
    Qs = cuda.shared.array((TC_BQ, TC_HS_P), float32, alignment=TC_ALIGN)
    Ks = cuda.shared.array((TC_BKV, TC_HS_P), float32, alignment=TC_ALIGN)
    Vs = cuda.shared.array((TC_BKV, TC_V_P), float32, alignment=TC_ALIGN)
    Ps = cuda.shared.array((TC_BQ, TC_BKV_P), float32, alignment=TC_ALIGN)
    qf = cuda.local.array(N_QF, uint32)
    sacc = cuda.local.array(N_SACC, float32)
    oacc = cuda.local.array(N_OACC, float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = out.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    tid = U32(cuda.threadIdx.x)
    lane = tid % U32(32)
    wr = (tid // U32(32)) * U32(16)                            # this warp's first row
    q0 = I64(cuda.gridDim.x - 1 - cuda.blockIdx.x) * TC_BQ   # the blocks with the most tiles first
    x = inp[b]
    _tc_stage(Qs, x, q0, TC_BQ, T, h * hs, hs, tid)
    ptx.cp_async_commit()
    ptx.cp_async_wait(0)
    cuda.syncthreads()
    for ks in range(KS_S):
        for reg in range(4):
            r, k = frag_a(lane, 8 * ks, reg)
            qf[4 * ks + reg] = ptx.cvt_rna_tf32(Qs[wr + r, k])
    for q in range(4 * NI_O):
        oacc[q] = ZERO
    m_lo = NEG_INF   # rows wr + groupID (lo) and + 8 (hi): running max and this lane's share of the sum
    m_hi = NEG_INF
    l_lo = ZERO
    l_hi = ZERO
    q_last = q0 + TC_BQ - 1
    if q_last >= T:
        q_last = T - 1
    for kt in range(q_last // TC_BKV + 1):
        k0 = kt * TC_BKV
        cuda.syncthreads()   # every warp is done with the last tile's K and V
        _tc_stage(Ks, x, k0, TC_BKV, T, C + h * hs, hs, tid)
        _tc_stage(Vs, x, k0, TC_BKV, T, 2 * C + h * hs, hs, tid)
        ptx.cp_async_commit()
        ptx.cp_async_wait(0)
        cuda.syncthreads()
        for q in range(4 * NI_S):
            sacc[q] = ZERO
        for ks in range(KS_S):
            for ni in range(NI_S):
                n, k = frag_b(lane, ni, 8 * ks, 0)
                b0 = ptx.cvt_rna_tf32(Ks[n, k])
                n, k = frag_b(lane, ni, 8 * ks, 1)
                b1 = ptx.cvt_rna_tf32(Ks[n, k])
                d0, d1, d2, d3 = ptx.mma_m16n8k8_tf32(qf[4 * ks], qf[4 * ks + 1], qf[4 * ks + 2], qf[4 * ks + 3],
                                                      b0, b1, sacc[4 * ni], sacc[4 * ni + 1], sacc[4 * ni + 2],
                                                      sacc[4 * ni + 3])
                sacc[4 * ni] = d0
                sacc[4 * ni + 1] = d1
                sacc[4 * ni + 2] = d2
                sacc[4 * ni + 3] = d3
        mx_lo = m_lo
        mx_hi = m_hi
        for ni in range(NI_S):
            for reg in range(4):
                r, c = frag_c(lane, ni, reg)
                v = sacc[4 * ni + reg] * scale
                if k0 + I64(c) > q0 + I64(wr + r) or k0 + I64(c) >= T:
                    v = NEG_INF
                sacc[4 * ni + reg] = v
                if reg < 2:
                    mx_lo = max(mx_lo, v)
                else:
                    mx_hi = max(mx_hi, v)
        mx_lo = max(mx_lo, ptx.shfl_xor(mx_lo, 1))
        mx_lo = max(mx_lo, ptx.shfl_xor(mx_lo, 2))
        mx_hi = max(mx_hi, ptx.shfl_xor(mx_hi, 1))
        mx_hi = max(mx_hi, ptx.shfl_xor(mx_hi, 2))
        c_lo = math.exp(m_lo - mx_lo)   # (0 at the first tile: m was -inf, the new max is finite)
        c_hi = math.exp(m_hi - mx_hi)
        m_lo = mx_lo
        m_hi = mx_hi
        l_lo *= c_lo
        l_hi *= c_hi
        for ni in range(NI_O):
            oacc[4 * ni] *= c_lo
            oacc[4 * ni + 1] *= c_lo
            oacc[4 * ni + 2] *= c_hi
            oacc[4 * ni + 3] *= c_hi
        for ni in range(NI_S):
            for reg in range(4):
                r, c = frag_c(lane, ni, reg)
                p = math.exp(sacc[4 * ni + reg] - (m_lo if reg < 2 else m_hi))
                if reg < 2:
                    l_lo += p
                else:
                    l_hi += p
                Ps[wr + r, c] = p
        ptx.syncwarp()   # the warp's p rows are in shared memory
        for ks in range(KS_O):
            r, k = frag_a(lane, 8 * ks, 0)
            a0 = ptx.cvt_rna_tf32(Ps[wr + r, k])
            r, k = frag_a(lane, 8 * ks, 1)
            a1 = ptx.cvt_rna_tf32(Ps[wr + r, k])
            r, k = frag_a(lane, 8 * ks, 2)
            a2 = ptx.cvt_rna_tf32(Ps[wr + r, k])
            r, k = frag_a(lane, 8 * ks, 3)
            a3 = ptx.cvt_rna_tf32(Ps[wr + r, k])
            for ni in range(NI_O):
                n, k = frag_b(lane, ni, 8 * ks, 0)   # V as B: (k = key, n = channel)
                b0 = ptx.cvt_rna_tf32(Vs[k, n])
                n, k = frag_b(lane, ni, 8 * ks, 1)
                b1 = ptx.cvt_rna_tf32(Vs[k, n])
                d0, d1, d2, d3 = ptx.mma_m16n8k8_tf32(a0, a1, a2, a3, b0, b1, oacc[4 * ni], oacc[4 * ni + 1],
                                                      oacc[4 * ni + 2], oacc[4 * ni + 3])
                oacc[4 * ni] = d0
                oacc[4 * ni + 1] = d1
                oacc[4 * ni + 2] = d2
                oacc[4 * ni + 3] = d3
        ptx.syncwarp()   # p read before the next tile writes it
    l_lo += ptx.shfl_xor(l_lo, 1)   # the rows' sums over the group's 4 lanes
    l_lo += ptx.shfl_xor(l_lo, 2)
    l_hi += ptx.shfl_xor(l_hi, 1)
    l_hi += ptx.shfl_xor(l_hi, 2)
    for ni in range(NI_O):
        for reg in range(4):
            r, c = frag_c(lane, ni, reg)
            t = q0 + I64(wr + r)
            if t < T and I64(c) < hs:
                out[b, t, h * hs + c] = ptx.narrow(out, oacc[4 * ni + reg] / (l_lo if reg < 2 else l_hi))
    if lane % U32(4) == U32(0):
        t = q0 + I64(wr + lane // U32(4))
        if t < T:
            lse[b, h, t] = m_lo + math.log(l_lo)
        if t + 8 < T:
            lse[b, h, t + 8] = m_hi + math.log(l_hi)


def _make_product(NI, KS, A_IN_REGISTERS, B_K_CONTIGUOUS):
    """product(acc, A, ar0, Bs, lane): acc (4 NI: NI tiles of 16 x 8) += A (16 rows, 8 KS) . B^T with
    A this warp's tf32 fragments (A_IN_REGISTERS: A[4 ks + reg]) or the rows ar0.. of a shared tile
    (row, k), and B (n, k) from a shared tile laid out (n, k) (B_K_CONTIGUOUS) or (k, n)."""
    @INLINE
    def product(acc, A, ar0, Bs, lane):
        for ks in range(KS):
            if A_IN_REGISTERS:
                a0, a1, a2, a3 = A[4 * ks], A[4 * ks + 1], A[4 * ks + 2], A[4 * ks + 3]
            else:
                r, k = frag_a(lane, 8 * ks, 0)
                a0 = ptx.cvt_rna_tf32(A[ar0 + r, k])
                r, k = frag_a(lane, 8 * ks, 1)
                a1 = ptx.cvt_rna_tf32(A[ar0 + r, k])
                r, k = frag_a(lane, 8 * ks, 2)
                a2 = ptx.cvt_rna_tf32(A[ar0 + r, k])
                r, k = frag_a(lane, 8 * ks, 3)
                a3 = ptx.cvt_rna_tf32(A[ar0 + r, k])
            for ni in range(NI):
                n, k = frag_b(lane, ni, 8 * ks, 0)
                b0 = ptx.cvt_rna_tf32(Bs[n, k] if B_K_CONTIGUOUS else Bs[k, n])
                n, k = frag_b(lane, ni, 8 * ks, 1)
                b1 = ptx.cvt_rna_tf32(Bs[n, k] if B_K_CONTIGUOUS else Bs[k, n])
                d0, d1, d2, d3 = ptx.mma_m16n8k8_tf32(a0, a1, a2, a3, b0, b1, acc[4 * ni], acc[4 * ni + 1],
                                                      acc[4 * ni + 2], acc[4 * ni + 3])
                acc[4 * ni] = d0
                acc[4 * ni + 1] = d1
                acc[4 * ni + 2] = d2
                acc[4 * ni + 3] = d3
    return product


# the backward's products: scores of 16 rows x TC_BKV columns over the channels (A in registers), and
# 16 rows x ATT_HS_MAX channels over TC_BKV (A = dS or P from shared memory, B read along its rows)
_scores_tc = _make_product(NI_S, KS_S, True, True)
_accumulate_tc = _make_product(NI_O, KS_O, False, False)


@INLINE
def _load_frags(f, Xs, wr, lane):
    # f (4 KS_S) = this warp's 16 rows wr.. of the shared tile Xs (row, channel) as tf32 A fragments
    for ks in range(KS_S):
        for reg in range(4):
            r, k = frag_a(lane, 8 * ks, reg)
            f[4 * ks + reg] = ptx.cvt_rna_tf32(Xs[wr + r, k])


@INLINE
def _zero(acc, n):
    for q in range(n):
        acc[q] = ZERO


@cuda.jit
def attention_dquery_tf32_kernel(dinp, dout, inp, lse, dd, scale):
    # dinp (B,T,3C) query thirds += scale * dS k for the TC_BQ queries q0.. of head (b, h) (warp w:
    # 16 of them), over the key tiles up to the diagonal: s = q.k and dP = dout.v on tensor cores (q
    # and dout fragments in registers), dS = exp(scale s - lse) (dP - dd) through shared memory,
    # dq += dS k on tensor cores (k read along its keys)
    Xs = cuda.shared.array((TC_BQ, TC_HS_P), float32, alignment=TC_ALIGN)    # q, then dout, staged
    Ks = cuda.shared.array((TC_BKV, TC_HS_P), float32, alignment=TC_ALIGN)
    Vs = cuda.shared.array((TC_BKV, TC_HS_P), float32, alignment=TC_ALIGN)
    dSs = cuda.shared.array((TC_BQ, TC_BKV_P), float32, alignment=TC_ALIGN)
    qf = cuda.local.array(N_QF, uint32)
    dof = cuda.local.array(N_QF, uint32)
    sacc = cuda.local.array(N_SACC, float32)
    pacc = cuda.local.array(N_SACC, float32)
    dq = cuda.local.array(N_OACC, float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = dout.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    tid = U32(cuda.threadIdx.x)
    lane = tid % U32(32)
    wr = (tid // U32(32)) * U32(16)
    q0 = I64(cuda.gridDim.x - 1 - cuda.blockIdx.x) * TC_BQ
    x = inp[b]
    _tc_stage(Xs, x, q0, TC_BQ, T, h * hs, hs, tid)
    ptx.cp_async_commit()
    ptx.cp_async_wait(0)
    cuda.syncthreads()
    _load_frags(qf, Xs, wr, lane)
    cuda.syncthreads()
    _tc_stage(Xs, dout[b], q0, TC_BQ, T, h * hs, hs, tid)
    ptx.cp_async_commit()
    ptx.cp_async_wait(0)
    cuda.syncthreads()
    _load_frags(dof, Xs, wr, lane)
    t_lo = q0 + I64(wr + lane // U32(4))   # this lane's rows
    t_hi = t_lo + 8
    lse_lo = lse[b, h, t_lo] if t_lo < T else ZERO
    lse_hi = lse[b, h, t_hi] if t_hi < T else ZERO
    dd_lo = dd[b, h, t_lo] if t_lo < T else ZERO
    dd_hi = dd[b, h, t_hi] if t_hi < T else ZERO
    _zero(dq, N_OACC)
    q_last = q0 + TC_BQ - 1
    if q_last >= T:
        q_last = T - 1
    for kt in range(q_last // TC_BKV + 1):
        k0 = kt * TC_BKV
        cuda.syncthreads()
        _tc_stage(Ks, x, k0, TC_BKV, T, C + h * hs, hs, tid)
        _tc_stage(Vs, x, k0, TC_BKV, T, 2 * C + h * hs, hs, tid)
        ptx.cp_async_commit()
        ptx.cp_async_wait(0)
        cuda.syncthreads()
        _zero(sacc, N_SACC)
        _zero(pacc, N_SACC)
        _scores_tc(sacc, qf, 0, Ks, lane)    # q.k
        _scores_tc(pacc, dof, 0, Vs, lane)   # dout.v
        for ni in range(NI_S):
            for reg in range(4):
                r, c = frag_c(lane, ni, reg)
                t = t_lo if reg < 2 else t_hi
                ds = ZERO
                if k0 + I64(c) <= t and t < T:
                    ds = math.exp(sacc[4 * ni + reg] * scale - (lse_lo if reg < 2 else lse_hi)) * \
                        (pacc[4 * ni + reg] - (dd_lo if reg < 2 else dd_hi))
                dSs[wr + r, c] = ds
        ptx.syncwarp()
        _accumulate_tc(dq, dSs, wr, Ks, lane)   # dq += dS k
        ptx.syncwarp()
    for ni in range(NI_O):
        for reg in range(4):
            r, c = frag_c(lane, ni, reg)
            t = q0 + I64(wr + r)
            if t < T and I64(c) < hs:
                at = h * hs + c
                dinp[b, t, at] = ptx.narrow(dinp, ptx.widen(dinp[b, t, at]) + scale * dq[4 * ni + reg])


@cuda.jit
def attention_dkey_value_tf32_kernel(dinp, dout, inp, lse, dd, scale):
    # dinp (B,T,3C) key and value thirds += for the TC_BQ keys k0.. of head (b, h) (warp w: 16 of
    # them), over the query tiles from the diagonal on: s^T = k.q and dP^T = v.dout on tensor cores
    # (k and v fragments in registers), att^T = exp(scale s^T - lse), dS^T = att^T (dP^T - dd); dv +=
    # att^T dout, then dk += dS^T q on tensor cores, att^T and dS^T in turn through shared memory
    Xs = cuda.shared.array((TC_BQ, TC_HS_P), float32, alignment=TC_ALIGN)    # k, then v, staged
    Qs = cuda.shared.array((TC_BKV, TC_HS_P), float32, alignment=TC_ALIGN)
    dOs = cuda.shared.array((TC_BKV, TC_HS_P), float32, alignment=TC_ALIGN)
    Ps = cuda.shared.array((TC_BQ, TC_BKV_P), float32, alignment=TC_ALIGN)
    lses = cuda.shared.array(TC_BKV, float32)
    dds = cuda.shared.array(TC_BKV, float32)
    kf = cuda.local.array(N_QF, uint32)
    vf = cuda.local.array(N_QF, uint32)
    sacc = cuda.local.array(N_SACC, float32)
    pacc = cuda.local.array(N_SACC, float32)
    dk = cuda.local.array(N_OACC, float32)
    dv = cuda.local.array(N_OACC, float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = dout.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    tid = U32(cuda.threadIdx.x)
    lane = tid % U32(32)
    wr = (tid // U32(32)) * U32(16)
    k0 = I64(cuda.blockIdx.x) * TC_BQ   # the first keys (most query tiles) first
    x = inp[b]
    _tc_stage(Xs, x, k0, TC_BQ, T, C + h * hs, hs, tid)
    ptx.cp_async_commit()
    ptx.cp_async_wait(0)
    cuda.syncthreads()
    _load_frags(kf, Xs, wr, lane)
    cuda.syncthreads()
    _tc_stage(Xs, x, k0, TC_BQ, T, 2 * C + h * hs, hs, tid)
    ptx.cp_async_commit()
    ptx.cp_async_wait(0)
    cuda.syncthreads()
    _load_frags(vf, Xs, wr, lane)
    _zero(dk, N_OACC)
    _zero(dv, N_OACC)
    for t0 in range(k0 - k0 % TC_BKV, T, TC_BKV):
        cuda.syncthreads()
        _tc_stage(Qs, x, t0, TC_BKV, T, h * hs, hs, tid)
        _tc_stage(dOs, dout[b], t0, TC_BKV, T, h * hs, hs, tid)
        if tid < U32(TC_BKV):
            t = t0 + I64(tid)
            lses[tid] = lse[b, h, t] if t < T else ZERO
            dds[tid] = dd[b, h, t] if t < T else ZERO
        ptx.cp_async_commit()
        ptx.cp_async_wait(0)
        cuda.syncthreads()
        _zero(sacc, N_SACC)
        _zero(pacc, N_SACC)
        _scores_tc(sacc, kf, 0, Qs, lane)    # k.q
        _scores_tc(pacc, vf, 0, dOs, lane)   # v.dout
        for ni in range(NI_S):
            for reg in range(4):
                r, c = frag_c(lane, ni, reg)
                t2 = k0 + I64(wr + r)   # the key (row), t the query (column)
                t = t0 + I64(c)
                p = ZERO
                if t2 <= t and t < T:
                    p = math.exp(sacc[4 * ni + reg] * scale - lses[c])
                sacc[4 * ni + reg] = p
                Ps[wr + r, c] = p
        ptx.syncwarp()
        _accumulate_tc(dv, Ps, wr, dOs, lane)   # dv += att^T dout
        ptx.syncwarp()
        for ni in range(NI_S):
            for reg in range(4):
                r, c = frag_c(lane, ni, reg)
                Ps[wr + r, c] = sacc[4 * ni + reg] * (pacc[4 * ni + reg] - dds[c])   # dS^T (0 where att is)
        ptx.syncwarp()
        _accumulate_tc(dk, Ps, wr, Qs, lane)    # dk += dS^T q
        ptx.syncwarp()
    for ni in range(NI_O):
        for reg in range(4):
            r, c = frag_c(lane, ni, reg)
            t2 = k0 + I64(wr + r)
            if t2 < T and I64(c) < hs:
                k_at = C + h * hs + c
                v_at = 2 * C + h * hs + c
                dinp[b, t2, k_at] = ptx.narrow(dinp, ptx.widen(dinp[b, t2, k_at]) + scale * dk[4 * ni + reg])
                dinp[b, t2, v_at] = ptx.narrow(dinp, ptx.widen(dinp[b, t2, v_at]) + dv[4 * ni + reg])


class AttentionTF32:
    """Attention (attention.py: the same launchers' checks and dd scratch) with every product on
    tensor cores in TF32."""

    def __init__(self):
        self.dd = None

    def attention_forward(self, out, lse, inp):
        """out (B,T,C), lse (B,NH,T) = causal self-attention of inp (B,T,3C) = q,k,v, and the
        log-sum-exp of each query's scaled scores."""
        B, T, C, NH, hs = _attention_shapes("attention_forward", inp, lse, out)
        check(C % 4 == 0, WHERE, f"attention_forward: C={C} is not a multiple of 4 (16-byte rows for cp.async)")
        scale = F32(1.0 / math.sqrt(hs))
        attention_forward_tf32_kernel[(cdiv(T, TC_BQ), B * NH), TC_THREADS](out, lse, inp, scale)

    def attention_backward(self, dinp, dout, inp, out, lse):
        """dinp (B,T,3C) += the gradient of attention_forward, from dout (B,T,C), inp (B,T,3C) and
        forward's out (B,T,C) and lse (B,NH,T)."""
        B, T, C, NH, hs = _attention_shapes("attention_backward", inp, lse, dout)
        check(dinp.shape == inp.shape, WHERE, f"attention_backward: dinp {dinp.shape} is not inp's {inp.shape}")
        check(out.shape == dout.shape, WHERE, f"attention_backward: out {out.shape} is not dout's {dout.shape}")
        check(C % 4 == 0, WHERE, f"attention_backward: C={C} is not a multiple of 4 (16-byte rows for cp.async)")
        n = B * NH * T
        if self.dd is None or self.dd.shape[0] < n:
            self.dd = cached_views(cuda.device_array(n, np.float32))
        dd = self.dd[:n].reshape(B, NH, T)
        scale = F32(1.0 / math.sqrt(hs))
        attention_backward_dd_kernel[elementwise_grid(n), ELEM_THREADS](dd, dout, out)
        grid = (cdiv(T, TC_BQ), B * NH)
        attention_dquery_tf32_kernel[grid, TC_THREADS](dinp, dout, inp, lse, dd, scale)
        attention_dkey_value_tf32_kernel[grid, TC_THREADS](dinp, dout, inp, lse, dd, scale)


__all__ = ["AttentionTF32"]
