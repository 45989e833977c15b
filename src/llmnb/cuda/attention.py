"""Causal self-attention on the GPU, flash-style, with register-tiled score and output products.

Per head h, q, k, v are the columns [h*hs, (h+1)*hs) of the thirds of qkv (B,T,3C). The algorithm is
the CPU's (llmnb/kernels.py; FlashAttention, Dao et al.): no (T, T) buffer; forward runs an online
softmax over tiles of keys and keeps per query row the log-sum-exp of its scaled scores, lse
(B,NH,T); backward recomputes att = exp(scale q.k - lse) tile by tile from it.

Each block works as the matmuls do (matmul.py): the tiles it multiplies are staged in shared memory,
and each thread holds an ATT_RM x ATT_CN piece of the scores and an ATT_RM x ATT_DN piece of the
output in registers (rows ty + TY*i, columns tx + TX*j: neighbouring threads, neighbouring
columns). Row-wise steps (the softmax's max, the sum) go through a shared tile of scores. Tiles
wholly above the diagonal are never visited, and the blocks with the most tiles start first.

  forward         a block of ATT_BQ queries walks the key tiles 0..its last query
  backward        attention_backward_dd_kernel: dd (B,NH,T) = rowsum(dout * out) (FlashAttention-2's D)
                  attention_dquery_kernel: a block of ATT_BR queries walks the key tiles: dq
                  attention_dkey_value_kernel: a block of ATT_BR keys walks the query tiles after it:
                  dk and dv. Two kernels, so that no gradient is summed by atomics (same bits every run).
Shared memory tiles are stored (head channel, row) with one float of padding per row of the tile:
the transposing stores and the column reads then hit distinct banks. hs <= ATT_HS_MAX.
dev/cuda_attention.py keeps the earlier one-thread-per-query version and times both.
"""
import math

import numpy as np
from numba import cuda, float32

from .launch import (ATT_BK, ATT_BK_P, ATT_BQ, ATT_BQ_P, ATT_BR, ATT_BR_P, ATT_CN, ATT_DN, ATT_HS_MAX, ATT_RM, ATT_TX, ATT_TY,
                     ATT_TY_BWD, ELEM_THREADS, INLINE, cdiv, check, elementwise_grid)

F32 = np.float32
ZERO = F32(0.0)
U32 = np.uint32   # unsigned loop indices: no negative-index wraparound (see matmul.py)
ONE = F32(1.0)
NEG_INF = F32(-np.inf)   # a masked score, and the running max's start in the online softmax
WHERE = "attention.py"


@INLINE
def _stage_t(dst, src, r0, R, T, c0, hs, tid, nthreads):
    # dst (ATT_HS_MAX, >= R)[d, r] = src (T, .)[r0 + r, c0 + d] for r < R, d < hs; rows past T and
    # channels past hs are 0 (the register tiles multiply all ATT_HS_MAX channels and drop the
    # extra ones: zeros, not whatever shared memory held). Consecutive threads read consecutive
    # channels of a row (coalesced) and store down a column
    for idx in range(tid, R * ATT_HS_MAX, nthreads):
        r = idx // ATT_HS_MAX
        d = idx % ATT_HS_MAX
        t = r0 + r
        dst[d, r] = src[t, c0 + d] if t < T and d < hs else ZERO


@INLINE
def _stage(dst, src, r0, R, T, c0, hs, tid, nthreads):
    # dst (>= R, ATT_HS_MAX)[r, d] = src (T, .)[r0 + r, c0 + d] for r < R, d < hs; rows past T and
    # channels past hs are 0, as in _stage_t
    for idx in range(tid, R * ATT_HS_MAX, nthreads):
        r = idx // ATT_HS_MAX
        d = idx % ATT_HS_MAX
        t = r0 + r
        dst[r, d] = src[t, c0 + d] if t < T and d < hs else ZERO


@cuda.jit(cache=True)
def attention_forward_kernel(out, lse, inp, scale):
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
    _stage_t(Qs, x, q0, ATT_BQ, T, h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        m[i] = NEG_INF
        l[i] = ZERO
        for j in range(ATT_DN):
            o[i, j] = ZERO
    k_end = min(q0 + ATT_BQ, T)
    for k0 in range(0, k_end, ATT_BK):
        cuda.syncthreads()   # the previous tile is no longer read
        _stage_t(Ks, x, k0, ATT_BK, T, C + h * hs, hs, tid, nthreads)
        _stage(Vs, x, k0, ATT_BK, T, 2 * C + h * hs, hs, tid, nthreads)
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
                    out[b, t, h * hs + d] = o[i, j] * inv
            if tx == 0:
                lse[b, h, t] = m[i] + math.log(total)


@cuda.jit(cache=True)
def attention_backward_dd_kernel(dd, dout, out):
    # dd (B,NH,T) = sum over the head's channels of dout * out (B,T,C); grid-stride over the rows
    B, NH, T = dd.shape
    hs = out.shape[2] // NH
    for idx in range(cuda.grid(1), B * NH * T, cuda.gridsize(1)):
        t = idx % T
        h = (idx // T) % NH
        b = idx // (T * NH)
        acc = ZERO
        for d in range(hs):
            acc += dout[b, t, h * hs + d] * out[b, t, h * hs + d]
        dd[b, h, t] = acc


@INLINE
def _scores_and_dp(s, dp, A1, B1, A2, B2, hs, av, gv, bv, wv):
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


@INLINE
def _accumulate_product(acc, P, Xt, av, bv):
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


@cuda.jit(cache=True)
def attention_dquery_kernel(dinp, dout, inp, lse, dd, scale):
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
    _stage_t(Qs, inp[b], q0, ATT_BR, T, h * hs, hs, tid, nthreads)
    _stage_t(dOs, dout[b], q0, ATT_BR, T, h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        t = q0 + ty + ATT_TY_BWD * i
        lse_r[i] = lse[b, h, t] if t < T else ZERO
        dd_r[i] = dd[b, h, t] if t < T else ZERO
        for j in range(ATT_DN):
            dq[i, j] = ZERO
    k_end = min(q0 + ATT_BR, T)
    for k0 in range(0, k_end, ATT_BK):
        cuda.syncthreads()
        _stage_t(Ks, inp[b], k0, ATT_BK, T, C + h * hs, hs, tid, nthreads)
        _stage_t(Vts, inp[b], k0, ATT_BK, T, 2 * C + h * hs, hs, tid, nthreads)
        cuda.syncthreads()
        _scores_and_dp(s, dp, Qs, Ks, dOs, Vts, hs, qa, ga, kb, vb)   # q.k, dout.v
        for i in range(ATT_RM):
            t = q0 + ty + ATT_TY_BWD * i
            for j in range(ATT_CN):
                t2 = k0 + tx + ATT_TX * j
                ds = ZERO
                if t2 <= t and t < T:
                    ds = math.exp(s[i, j] * scale - lse_r[i]) * (dp[i, j] - dd_r[i])
                dSs[ty + ATT_TY_BWD * i, tx + ATT_TX * j] = ds
        cuda.syncthreads()
        _accumulate_product(dq, dSs, Ks, qa, kb)   # dq += dS k
    for i in range(ATT_RM):
        t = q0 + ty + ATT_TY_BWD * i
        if t < T:
            for j in range(ATT_DN):
                d = tx + ATT_TX * j
                if d < hs:
                    dinp[b, t, h * hs + d] += scale * dq[i, j]


@cuda.jit(cache=True)
def attention_dkey_value_kernel(dinp, dout, inp, lse, dd, scale):
    # dinp (B,T,3C) key and value thirds += for the ATT_BR keys t2 of this block, over the queries
    # t >= t2 (in tiles of ATT_BK): dk += scale * dS[t,t2] q[t], dv += att[t,t2] dout[t]; att, dS as
    # in attention_dquery_kernel. Rows of the register tiles are keys here, columns queries.
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
    _stage_t(Ks, inp[b], k0, ATT_BR, T, C + h * hs, hs, tid, nthreads)
    _stage_t(Vts, inp[b], k0, ATT_BR, T, 2 * C + h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        for j in range(ATT_DN):
            dk[i, j] = ZERO
            dv[i, j] = ZERO
    for t0 in range(k0, T, ATT_BK):
        cuda.syncthreads()
        _stage_t(Qs, inp[b], t0, ATT_BK, T, h * hs, hs, tid, nthreads)
        _stage_t(dOs, dout[b], t0, ATT_BK, T, h * hs, hs, tid, nthreads)
        if tid < ATT_BK:
            t = t0 + tid
            lses[tid] = lse[b, h, t] if t < T else ZERO
            dds[tid] = dd[b, h, t] if t < T else ZERO
        cuda.syncthreads()
        _scores_and_dp(s, dp, Ks, Qs, Vts, dOs, hs, ka, va, qb, gb)   # k.q, v.dout
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
        _accumulate_product(dv, Ps, dOs, ka, qb)   # dv += att dout
        cuda.syncthreads()
        for i in range(ATT_RM):
            for j in range(ATT_CN):
                Ps[ty + ATT_TY_BWD * i, tx + ATT_TX * j] = dp[i, j]
        cuda.syncthreads()
        _accumulate_product(dk, Ps, Qs, ka, qb)   # dk += dS q
    for i in range(ATT_RM):
        t2 = k0 + ty + ATT_TY_BWD * i
        if t2 < T:
            for j in range(ATT_DN):
                d = tx + ATT_TX * j
                if d < hs:
                    dinp[b, t2, C + h * hs + d] += scale * dk[i, j]
                    dinp[b, t2, 2 * C + h * hs + d] += dv[i, j]


# ----------------------------------------------------------------------------------------------
# launchers (host side)

def _attention_shapes(name, inp, lse, out):
    B, T, C3 = inp.shape
    NH = lse.shape[1]
    check(C3 % 3 == 0, WHERE, f"{name}: inp {inp.shape} does not end in 3*C")
    C = C3 // 3
    check(C % NH == 0, WHERE, f"{name}: C={C} is not divisible by NH={NH}")
    check(C // NH <= ATT_HS_MAX, WHERE, f"{name}: head size {C // NH} > {ATT_HS_MAX} (launch.ATT_HS_MAX)")
    check(C // NH % 4 == 0, WHERE, f"{name}: head size {C // NH} is not a multiple of 4 (the kernels' unrolling)")
    check(lse.shape == (B, NH, T), WHERE, f"{name}: lse {lse.shape} is not (B,NH,T) = {(B, NH, T)}")
    check(out.shape == (B, T, C), WHERE, f"{name}: (d)out {out.shape} is not (B,T,C) = {(B, T, C)}")
    return B, T, C, NH, C // NH


class Attention:
    """attention_forward and attention_backward with backward's dd scratch (B*NH*T floats: one per
    backend, it grows to the largest B*NH*T seen and is not allocated again after the first step)."""

    def __init__(self):
        self.dd = None

    def attention_forward(self, out, lse, inp):
        """out (B,T,C), lse (B,NH,T) = causal self-attention of inp (B,T,3C) = q,k,v, and the
        log-sum-exp of each query's scaled scores."""
        B, T, C, NH, hs = _attention_shapes("attention_forward", inp, lse, out)
        scale = F32(1.0 / math.sqrt(hs))
        attention_forward_kernel[(cdiv(T, ATT_BQ), B * NH), (ATT_TX, ATT_TY)](out, lse, inp, scale)

    def attention_backward(self, dinp, dout, inp, out, lse):
        """dinp (B,T,3C) += the gradient of attention_forward, from dout (B,T,C), inp (B,T,3C) and
        forward's out (B,T,C) and lse (B,NH,T)."""
        B, T, C, NH, hs = _attention_shapes("attention_backward", inp, lse, dout)
        check(dinp.shape == inp.shape, WHERE, f"attention_backward: dinp {dinp.shape} is not inp's {inp.shape}")
        check(out.shape == dout.shape, WHERE, f"attention_backward: out {out.shape} is not dout's {dout.shape}")
        n = B * NH * T
        if self.dd is None or self.dd.shape[0] < n:
            self.dd = cuda.device_array(n, np.float32)
        dd = self.dd[:n].reshape(B, NH, T)
        scale = F32(1.0 / math.sqrt(hs))
        attention_backward_dd_kernel[elementwise_grid(n), ELEM_THREADS](dd, dout, out)
        grid = (cdiv(T, ATT_BR), B * NH)
        attention_dquery_kernel[grid, (ATT_TX, ATT_TY_BWD)](dinp, dout, inp, lse, dd, scale)
        attention_dkey_value_kernel[grid, (ATT_TX, ATT_TY_BWD)](dinp, dout, inp, lse, dd, scale)

