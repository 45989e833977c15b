"""v2 of the GPU attention: the version timed on an H200 (the default until a card has run v3).

Causal, flash-style (per-row log-sum-exp kept, no (T, T) buffer), with register tiles as in the
matmuls: 64 queries (32 rows in backward) per block against tiles of 32 keys, 4 x 2 scores and 4 x 4
outputs per thread; the tiles of q, k, v and dout staged transposed (channel, row) and read one float
at a time. On an H200 at B=8 T=1024 (GPT-2 124M): 2.1 ms forward (6.1 TFLOP/s) and 6.8 ms backward
(4.7 TFLOP/s) per layer (benchmarks/gpu/2026-11-26c-h200/cuda_attention.txt). attention.py's v3 is
the same algorithm with tiles read 4 floats at a time (half the instructions per tile in the SASS);
LLMNB_CUDA_ATTENTION=v3 selects it (launch.py). The launches are attention.py's Attention's: the same
grids, blocks and arguments for both versions.
"""
import math

import numpy as np
from numba import cuda, float32

from . import launch
from .ptx import narrow, widen

F32 = np.float32
ZERO = F32(0.0)
ONE = F32(1.0)
NEG_INF = F32(-np.inf)
ATT_HS_MAX = launch.ATT_HS_MAX

(ATT_TX, ATT_TY, ATT_TY_BWD, ATT_RM, ATT_CN, ATT_DN, ATT_BQ, ATT_BR, ATT_BK) = (
    launch.ATT_TX, launch.ATT_TY, launch.ATT_TY_BWD, launch.ATT_RM, launch.ATT_CN, launch.ATT_DN, launch.ATT_BQ,
    launch.ATT_BR, launch.ATT_BK)
ATT_BQ_P, ATT_BR_P, ATT_BK_P = ATT_BQ + 1, ATT_BR + 1, ATT_BK + 1   # shared tiles' padded rows
U32 = np.uint32
DEVICE = launch.INLINE


@DEVICE
def _v2_stage_t(dst, src, r0, R, T, c0, hs, tid, nthreads):
    # dst (ATT_HS_MAX, >= R)[d, r] = src (T, .)[r0 + r, c0 + d] for r < R, d < hs; rows past T and
    # channels past hs are 0 (the register tiles multiply all ATT_HS_MAX channels and drop the
    # extra ones: zeros, not whatever shared memory held). Consecutive threads read consecutive
    # channels of a row (coalesced) and store down a column
    for idx in range(tid, R * ATT_HS_MAX, nthreads):
        r = idx // ATT_HS_MAX
        d = idx % ATT_HS_MAX
        t = r0 + r
        dst[d, r] = widen(src[t, c0 + d]) if t < T and d < hs else ZERO


@DEVICE
def _v2_stage(dst, src, r0, R, T, c0, hs, tid, nthreads):
    # dst (>= R, ATT_HS_MAX)[r, d] = src (T, .)[r0 + r, c0 + d] for r < R, d < hs; rows past T and
    # channels past hs are 0, as in _stage_t
    for idx in range(tid, R * ATT_HS_MAX, nthreads):
        r = idx // ATT_HS_MAX
        d = idx % ATT_HS_MAX
        t = r0 + r
        dst[r, d] = widen(src[t, c0 + d]) if t < T and d < hs else ZERO


@cuda.jit
def v2_forward_kernel(out, lse, inp, scale):
    # out (B,T,C), lse (B,NH,T) = the attention of the ATT_BQ queries q0.. of head (b, h) =
    # blockIdx.y, inp (B,T,3C). Per key tile: s = scale q.k (masked: -inf), the rows' new max m from
    # the shared score tile, o and l rescaled by exp(m_old - m), p = exp(s - m), o += p v. Each thread
    # keeps l over its own key columns; the row's l is their sum, at the end.
    Qs = cuda.shared.array((ATT_HS_MAX, ATT_BQ_P), float32)   # Qs[d, r] = q[q0 + r, d]
    Ks = cuda.shared.array((ATT_HS_MAX, ATT_BK_P), float32)   # Ks[d, c] = k[k0 + c, d]
    Vs = cuda.shared.array((ATT_BK, ATT_HS_MAX), float32)       # Vs[c, d] = v[k0 + c, d]
    Ps = cuda.shared.array((ATT_BQ, ATT_BK_P), float32)       # scores, then probabilities
    s = cuda.local.array((ATT_RM, ATT_CN), float32)
    o = cuda.local.array((ATT_RM, ATT_DN), float32)
    m = cuda.local.array(ATT_RM, float32)
    l = cuda.local.array(ATT_RM, float32)
    av = cuda.local.array(ATT_RM, float32)
    bv = cuda.local.array(ATT_DN, float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = out.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * ATT_TX + tx
    nthreads = ATT_TX * ATT_TY
    q0 = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * ATT_BQ   # the last queries (most key tiles) first
    x = inp[b]
    _v2_stage_t(Qs, x, q0, ATT_BQ, T, h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        m[i] = NEG_INF
        l[i] = ZERO
        for j in range(ATT_DN):
            o[i, j] = ZERO
    k_end = min(q0 + ATT_BQ, T)
    for k0 in range(0, k_end, ATT_BK):
        cuda.syncthreads()   # the previous tile is no longer read
        _v2_stage_t(Ks, x, k0, ATT_BK, T, C + h * hs, hs, tid, nthreads)
        _v2_stage(Vs, x, k0, ATT_BK, T, 2 * C + h * hs, hs, tid, nthreads)
        cuda.syncthreads()
        for i in range(ATT_RM):
            for j in range(ATT_CN):
                s[i, j] = ZERO
        for dq4 in range(U32(hs // 4)):
            for u in range(4):
                d = dq4 * U32(4) + U32(u)
                for i in range(ATT_RM):
                    av[i] = Qs[d, ty + ATT_TY * i]
                for j in range(ATT_CN):
                    bv[j] = Ks[d, tx + ATT_TX * j]
                for i in range(ATT_RM):
                    for j in range(ATT_CN):
                        s[i, j] += av[i] * bv[j]
        for i in range(ATT_RM):
            t = q0 + ty + ATT_TY * i
            for j in range(ATT_CN):
                t2 = k0 + tx + ATT_TX * j
                val = s[i, j] * scale
                if t2 > t or t2 >= T:
                    val = NEG_INF
                s[i, j] = val
                Ps[ty + ATT_TY * i, tx + ATT_TX * j] = val
        cuda.syncthreads()
        for i in range(ATT_RM):   # the new row max (finite from the first tile on: key 0 is visible)
            r = ty + ATT_TY * i
            mx = m[i]
            for cq4 in range(U32(ATT_BK // 4)):
                for u in range(4):
                    c = cq4 * U32(4) + U32(u)
                    mx = max(mx, Ps[r, c])
            corr = math.exp(m[i] - mx)
            m[i] = mx
            l[i] *= corr
            for j in range(ATT_DN):
                o[i, j] *= corr
            for j in range(ATT_CN):
                p = math.exp(s[i, j] - mx)
                s[i, j] = p
                l[i] += p
        cuda.syncthreads()   # every row max is read: the tile takes the probabilities
        for i in range(ATT_RM):
            for j in range(ATT_CN):
                Ps[ty + ATT_TY * i, tx + ATT_TX * j] = s[i, j]
        cuda.syncthreads()
        for cq4 in range(U32(ATT_BK // 4)):
            for u in range(4):
                c = cq4 * U32(4) + U32(u)
                for i in range(ATT_RM):
                    av[i] = Ps[ty + ATT_TY * i, c]
                for j in range(ATT_DN):
                    bv[j] = Vs[c, tx + ATT_TX * j]
                for i in range(ATT_RM):
                    for j in range(ATT_DN):
                        o[i, j] += av[i] * bv[j]
    # the row sums: each thread's l over its key columns, added up in the order of tx
    cuda.syncthreads()
    for i in range(ATT_RM):
        Ps[ty + ATT_TY * i, tx] = l[i]
    cuda.syncthreads()
    for i in range(ATT_RM):
        r = ty + ATT_TY * i
        t = q0 + r
        total = ZERO
        for c in range(ATT_TX):
            total += Ps[r, c]
        if t < T:
            inv = ONE / total
            for j in range(ATT_DN):
                d = tx + ATT_TX * j
                if d < hs:
                    out[b, t, h * hs + d] = narrow(out, o[i, j] * inv)
            if tx == 0:
                lse[b, h, t] = m[i] + math.log(total)


@DEVICE
def _v2_scores_and_dp(s, dp, A1, B1, A2, B2, hs, av, gv, bv, wv):
    # backward's two products in registers: s = A1^T B1 and dp = A2^T B2 over the hs channels of
    # (ATT_HS_MAX, .) shared tiles stored (channel, row), for this thread's ATT_RM rows
    # (ty + ATT_TY_BWD*i) and ATT_CN columns (tx + ATT_TX*j); av, gv, bv, wv are register scratch
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    for i in range(ATT_RM):
        for j in range(ATT_CN):
            s[i, j] = ZERO
            dp[i, j] = ZERO
    for dq4 in range(U32(hs // 4)):
        for u in range(4):
            d = dq4 * U32(4) + U32(u)
            for i in range(ATT_RM):
                av[i] = A1[d, ty + ATT_TY_BWD * i]
                gv[i] = A2[d, ty + ATT_TY_BWD * i]
            for j in range(ATT_CN):
                bv[j] = B1[d, tx + ATT_TX * j]
                wv[j] = B2[d, tx + ATT_TX * j]
            for i in range(ATT_RM):
                for j in range(ATT_CN):
                    s[i, j] += av[i] * bv[j]
                    dp[i, j] += gv[i] * wv[j]


@DEVICE
def _v2_accumulate_product(acc, P, Xt, av, bv):
    # acc (ATT_RM, ATT_DN) += P (ATT_BR, ATT_BK) Xt^T for this thread's rows (ty + ATT_TY_BWD*i)
    # and channels (tx + ATT_TX*j), Xt a shared tile stored (channel, column): dq = dS k,
    # dv = att dout, dk = dS q
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    for cq4 in range(U32(ATT_BK // 4)):
        for u in range(4):
            c = cq4 * U32(4) + U32(u)
            for i in range(ATT_RM):
                av[i] = P[ty + ATT_TY_BWD * i, c]
            for j in range(ATT_DN):
                bv[j] = Xt[tx + ATT_TX * j, c]
            for i in range(ATT_RM):
                for j in range(ATT_DN):
                    acc[i, j] += av[i] * bv[j]


@cuda.jit
def v2_dquery_kernel(dinp, dout, inp, lse, dd, scale):
    # dinp (B,T,3C) query thirds += scale * sum_{t2<=t} dS[t,t2] k[t2] for the ATT_BR queries t of
    # this block, with att = exp(scale q.k - lse[t]), dP = dout[t].v[t2], dS = att (dP - dd[t])
    Qs = cuda.shared.array((ATT_HS_MAX, ATT_BR_P), float32)
    dOs = cuda.shared.array((ATT_HS_MAX, ATT_BR_P), float32)
    Ks = cuda.shared.array((ATT_HS_MAX, ATT_BK_P), float32)
    Vts = cuda.shared.array((ATT_HS_MAX, ATT_BK_P), float32)
    dSs = cuda.shared.array((ATT_BR, ATT_BK_P), float32)
    s = cuda.local.array((ATT_RM, ATT_CN), float32)
    dp = cuda.local.array((ATT_RM, ATT_CN), float32)
    dq = cuda.local.array((ATT_RM, ATT_DN), float32)
    lse_r = cuda.local.array(ATT_RM, float32)
    dd_r = cuda.local.array(ATT_RM, float32)
    qa = cuda.local.array(ATT_RM, float32)
    ga = cuda.local.array(ATT_RM, float32)
    kb = cuda.local.array(ATT_DN, float32)
    vb = cuda.local.array(ATT_CN, float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = dout.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * ATT_TX + tx
    nthreads = ATT_TX * ATT_TY_BWD
    q0 = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * ATT_BR
    _v2_stage_t(Qs, inp[b], q0, ATT_BR, T, h * hs, hs, tid, nthreads)
    _v2_stage_t(dOs, dout[b], q0, ATT_BR, T, h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        t = q0 + ty + ATT_TY_BWD * i
        lse_r[i] = lse[b, h, t] if t < T else ZERO
        dd_r[i] = dd[b, h, t] if t < T else ZERO
        for j in range(ATT_DN):
            dq[i, j] = ZERO
    k_end = min(q0 + ATT_BR, T)
    for k0 in range(0, k_end, ATT_BK):
        cuda.syncthreads()
        _v2_stage_t(Ks, inp[b], k0, ATT_BK, T, C + h * hs, hs, tid, nthreads)
        _v2_stage_t(Vts, inp[b], k0, ATT_BK, T, 2 * C + h * hs, hs, tid, nthreads)
        cuda.syncthreads()
        _v2_scores_and_dp(s, dp, Qs, Ks, dOs, Vts, hs, qa, ga, kb, vb)   # q.k, dout.v
        for i in range(ATT_RM):
            t = q0 + ty + ATT_TY_BWD * i
            for j in range(ATT_CN):
                t2 = k0 + tx + ATT_TX * j
                ds = ZERO
                if t2 <= t and t < T:
                    ds = math.exp(s[i, j] * scale - lse_r[i]) * (dp[i, j] - dd_r[i])
                dSs[ty + ATT_TY_BWD * i, tx + ATT_TX * j] = ds
        cuda.syncthreads()
        _v2_accumulate_product(dq, dSs, Ks, qa, kb)   # dq += dS k
    for i in range(ATT_RM):
        t = q0 + ty + ATT_TY_BWD * i
        if t < T:
            for j in range(ATT_DN):
                d = tx + ATT_TX * j
                if d < hs:
                    dinp[b, t, h * hs + d] = narrow(dinp, widen(dinp[b, t, h * hs + d]) + scale * dq[i, j])


@cuda.jit
def v2_dkey_value_kernel(dinp, dout, inp, lse, dd, scale):
    # dinp (B,T,3C) key and value thirds += for the ATT_BR keys t2 of this block, over the queries
    # t >= t2 (in tiles of ATT_BK): dk += scale * dS[t,t2] q[t], dv += att[t,t2] dout[t]; att, dS as
    # in v2_dquery_kernel. Rows of the register tiles are keys here, columns queries.
    Ks = cuda.shared.array((ATT_HS_MAX, ATT_BR_P), float32)
    Vts = cuda.shared.array((ATT_HS_MAX, ATT_BR_P), float32)
    Qs = cuda.shared.array((ATT_HS_MAX, ATT_BK_P), float32)
    dOs = cuda.shared.array((ATT_HS_MAX, ATT_BK_P), float32)
    Ps = cuda.shared.array((ATT_BR, ATT_BK_P), float32)   # att, then dS (keys x queries)
    lses = cuda.shared.array(ATT_BK, float32)
    dds = cuda.shared.array(ATT_BK, float32)
    s = cuda.local.array((ATT_RM, ATT_CN), float32)
    dp = cuda.local.array((ATT_RM, ATT_CN), float32)
    dk = cuda.local.array((ATT_RM, ATT_DN), float32)
    dv = cuda.local.array((ATT_RM, ATT_DN), float32)
    ka = cuda.local.array(ATT_RM, float32)
    va = cuda.local.array(ATT_RM, float32)
    qb = cuda.local.array(ATT_DN, float32)
    gb = cuda.local.array(ATT_CN, float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = dout.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * ATT_TX + tx
    nthreads = ATT_TX * ATT_TY_BWD
    k0 = cuda.blockIdx.x * ATT_BR   # the first keys (most query tiles) first
    _v2_stage_t(Ks, inp[b], k0, ATT_BR, T, C + h * hs, hs, tid, nthreads)
    _v2_stage_t(Vts, inp[b], k0, ATT_BR, T, 2 * C + h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        for j in range(ATT_DN):
            dk[i, j] = ZERO
            dv[i, j] = ZERO
    for t0 in range(k0, T, ATT_BK):
        cuda.syncthreads()
        _v2_stage_t(Qs, inp[b], t0, ATT_BK, T, h * hs, hs, tid, nthreads)
        _v2_stage_t(dOs, dout[b], t0, ATT_BK, T, h * hs, hs, tid, nthreads)
        if tid < ATT_BK:
            t = t0 + tid
            lses[tid] = lse[b, h, t] if t < T else ZERO
            dds[tid] = dd[b, h, t] if t < T else ZERO
        cuda.syncthreads()
        _v2_scores_and_dp(s, dp, Ks, Qs, Vts, dOs, hs, ka, va, qb, gb)   # k.q, v.dout
        for i in range(ATT_RM):
            t2 = k0 + ty + ATT_TY_BWD * i
            for j in range(ATT_CN):
                c = tx + ATT_TX * j
                t = t0 + c
                p = ZERO
                ds = ZERO
                if t2 <= t and t < T:
                    p = math.exp(s[i, j] * scale - lses[c])
                    ds = p * (dp[i, j] - dds[c])
                dp[i, j] = ds
                Ps[ty + ATT_TY_BWD * i, c] = p
        cuda.syncthreads()
        _v2_accumulate_product(dv, Ps, dOs, ka, qb)   # dv += att dout
        cuda.syncthreads()
        for i in range(ATT_RM):
            for j in range(ATT_CN):
                Ps[ty + ATT_TY_BWD * i, tx + ATT_TX * j] = dp[i, j]
        cuda.syncthreads()
        _v2_accumulate_product(dk, Ps, Qs, ka, qb)   # dk += dS q
    for i in range(ATT_RM):
        t2 = k0 + ty + ATT_TY_BWD * i
        if t2 < T:
            for j in range(ATT_DN):
                d = tx + ATT_TX * j
                if d < hs:
                    k_at = C + h * hs + d
                    v_at = 2 * C + h * hs + d
                    dinp[b, t2, k_at] = narrow(dinp, widen(dinp[b, t2, k_at]) + scale * dk[i, j])
                    dinp[b, t2, v_at] = narrow(dinp, widen(dinp[b, t2, v_at]) + dv[i, j])
