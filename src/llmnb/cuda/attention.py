"""Causal self-attention on the GPU, flash-style, with register-tiled products read 128 bits at a time.

Per head h, q, k, v are the columns [h*hs, (h+1)*hs) of the thirds of qkv (B,T,3C). The algorithm is
the CPU's (llmnb/kernels.py; FlashAttention, Dao et al.): no (T, T) buffer; forward runs an online
softmax over tiles of keys and keeps per query row the log-sum-exp of its scaled scores, lse
(B,NH,T); backward recomputes att = exp(scale q.k - lse) tile by tile from it.

A block stages the rows of q, k, v and dout it needs in shared memory as they lie in memory (row,
channel: coalesced loads, no transposing stores), and each thread holds a piece of each product in
registers, as the matmuls do (matmul.py):
  _scores      s = q.k (backward also dp = dout.v) for ATT_RM rows (ty + TY*i) x ATT_CN columns
               (tx + ATT_TX*j), over the channels 4 at a time: each row's 4 channels in one 128-bit
               shared load (load4)
  _accumulate  o += p v (backward dq += dS k, dk += dS^T q, dv += att^T dout) for ATT_RM rows x
               ATT_DN channels in groups of 4 neighbours (_channel): per 4 columns c, each row's 4 p
               in one load and each c's 4 channels of v in one load
so a multiply-add costs 0.12-0.19 shared loads (the version before, attention_v2.py's v2: 0.5-0.75).
This is v3; Attention launches v2's kernels instead by default (LLMNB_CUDA_ATTENTION, launch.py) until
a card has run v3.
The softmax's row max: each thread's maximum over its own columns goes through a shared tile, and
each thread reads its rows' ATT_TX partial maxima 4 at a time. Tiles wholly above the diagonal are
never visited, and the blocks with the most tiles start first.

  forward         a block of ATT_BQ queries walks the key tiles 0..its last query
  backward        attention_backward_dd_kernel: dd (B,NH,T) = rowsum(dout * out) (FlashAttention-2's D)
                  attention_dquery_kernel: a block of ATT_BR queries walks the key tiles: dq
                  attention_dkey_value_kernel: a block of ATT_BR keys walks the query tiles after it:
                  dk and dv. Two kernels, so that no gradient is summed by atomics (same bits every run).
Shared tiles' rows are padded by 4 floats (launch.py: 16-byte aligned rows for load4). hs <= ATT_HS_MAX
and a multiple of 4.
"""
import math

import numpy as np
from numba import cuda, float32

from .launch import (ATT_BK, ATT_BK_P, ATT_BQ, ATT_BR, ATT_CN, ATT_DN, ATT_HS4, ATT_HS_MAX, ATT_HS_P, ATT_RM, ATT_TX, ATT_TY,
                     ATT_TY_BWD, ELEM_THREADS, INLINE, SIMULATOR, cdiv, check, elementwise_grid)
from . import attention_v2
from .launch import ATTENTION_KERNEL, cached_views
from .matmul import fetch4, load4, store4
from .ptx import widen

F32 = np.float32
ZERO = F32(0.0)
U32 = np.uint32   # unsigned loop indices: no negative-index wraparound (see matmul.py)
ONE = F32(1.0)
NEG_INF = F32(-np.inf)   # a masked score, and the running max's start in the online softmax
WHERE = "attention.py"
ALIGN = None if SIMULATOR else 16   # the shared tiles' alignment, for load4 (the simulator takes none)
# register scratch of the products: 4 channels (or columns) of each row, of each column, of each c
RM4, CN4, DN4 = 4 * ATT_RM, 4 * ATT_CN, 4 * ATT_DN


@INLINE
def _stage(dst, src, r0, R, T, c0, hs, tid, nthreads):
    # dst (>= R, ATT_HS_P)[r, d] = src (T, .)[r0 + r, c0 + d] for r < R, d < ATT_HS_MAX; rows past T
    # and channels past hs are 0 (the products multiply all ATT_HS_MAX channels and drop the extra
    # ones: zeros, not whatever shared memory held). Each thread takes 4 neighbouring channels of a
    # row at a time (one 128-bit shared store), consecutive threads the next 4. The element index is
    # unsigned 32-bit and the trip count a constant (launch.py): / and % are shifts (with int64
    # indices staging took ~60 instructions a float on sm_90, as many as the multiply-adds).
    for it in range(R * ATT_HS4 // nthreads):
        e = U32(tid) + U32(it * nthreads)
        r = e // U32(ATT_HS4)
        d = U32(4) * (e % U32(ATT_HS4))
        t = U32(r0) + r
        x0 = x1 = x2 = x3 = ZERO
        if t < U32(T) and d < U32(hs):   # hs is a multiple of 4
            c = U32(c0) + d
            x0 = src[t, c]
            x1 = src[t, c + U32(1)]
            x2 = src[t, c + U32(2)]
            x3 = src[t, c + U32(3)]
        store4(dst, r, d, x0, x1, x2, x3)


@INLINE
def _channel(tx, j):
    # the head channel of a thread's j-th output column: groups of 4 neighbours, 4*ATT_TX apart
    return (j // 4) * (4 * ATT_TX) + 4 * tx + j % 4


@INLINE
def _scores(s, A, B, hs, TYS, av, bv):
    # s (ATT_RM, ATT_CN) = A[rows] . B[columns] over the hs channels, for this thread's rows ty + TYS*i
    # of A and columns tx + ATT_TX*j of B, both (rows, ATT_HS_P) shared tiles; av (RM4) and
    # bv (CN4) are register scratch: 4 channels of each row and column per step
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    for i in range(ATT_RM):
        for j in range(ATT_CN):
            s[i, j] = ZERO
    for dq4 in range(U32(hs // 4)):
        d = dq4 * U32(4)
        for i in range(ATT_RM):
            fetch4(av, i, A, ty + TYS * i, d)
        for j in range(ATT_CN):
            fetch4(bv, j, B, tx + ATT_TX * j, d)
        for u in range(4):
            for i in range(ATT_RM):
                for j in range(ATT_CN):
                    s[i, j] += av[4 * i + u] * bv[4 * j + u]


@INLINE
def _accumulate(acc, P, X, TYS, av, xb):
    # acc (ATT_RM, ATT_DN) += P[rows, :ATT_BK] . X[:ATT_BK, channels] for this thread's rows
    # ty + TYS*i of P (rows, ATT_BK_P) and its channels (_channel) of X (ATT_BK, ATT_HS_P): o = p v,
    # dq = dS k, dk = dS^T q, dv = att^T dout. av (RM4), xb (DN4) are register scratch:
    # per 4 columns c, each row's 4 values of P and each c's groups of 4 channels of X
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    for cq4 in range(U32(ATT_BK // 4)):
        c = cq4 * U32(4)
        for i in range(ATT_RM):
            fetch4(av, i, P, ty + TYS * i, c)
        for u in range(4):
            for g in range(ATT_DN // 4):
                fetch4(xb, u * (ATT_DN // 4) + g, X, c + U32(u), g * (4 * ATT_TX) + 4 * tx)
        for u in range(4):
            for i in range(ATT_RM):
                for j in range(ATT_DN):
                    acc[i, j] += av[4 * i + u] * xb[u * ATT_DN + j]


@INLINE
def _row_max(P, r, mx):
    # max(mx, P[r, :ATT_TX]): the row's ATT_TX partial maxima, 4 per load
    for q in range(U32(ATT_TX // 4)):
        x0, x1, x2, x3 = load4(P, r, q * U32(4))
        mx = max(mx, max(max(x0, x1), max(x2, x3)))
    return mx


@cuda.jit(cache=True)
def attention_forward_kernel(out, lse, inp, scale):
    # out (B,T,C), lse (B,NH,T) = the attention of the ATT_BQ queries q0.. of head (b, h) =
    # blockIdx.y, inp (B,T,3C). Per key tile: s = scale q.k (masked: -inf), the rows' new max m from
    # each thread's maximum over its ATT_CN columns (through the shared tile), o and l rescaled by
    # exp(m_old - m), p = exp(s - m), o += p v. Each thread keeps l over its own key columns; the
    # row's l is their sum, at the end.
    Qs = cuda.shared.array((ATT_BQ, ATT_HS_P), float32, alignment=ALIGN)   # Qs[r, d] = q[q0 + r, d]
    Ks = cuda.shared.array((ATT_BK, ATT_HS_P), float32, alignment=ALIGN)   # Ks[c, d] = k[k0 + c, d]
    Vs = cuda.shared.array((ATT_BK, ATT_HS_P), float32, alignment=ALIGN)   # Vs[c, d] = v[k0 + c, d]
    Ps = cuda.shared.array((ATT_BQ, ATT_BK_P), float32, alignment=ALIGN)   # scores, then probabilities
    s = cuda.local.array((ATT_RM, ATT_CN), float32)
    o = cuda.local.array((ATT_RM, ATT_DN), float32)
    m = cuda.local.array(ATT_RM, float32)
    l = cuda.local.array(ATT_RM, float32)
    av = cuda.local.array(RM4, float32)
    bv = cuda.local.array(CN4, float32)
    xb = cuda.local.array(DN4, float32)
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
    _stage(Qs, x, q0, ATT_BQ, T, h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        m[i] = NEG_INF
        l[i] = ZERO
        for j in range(ATT_DN):
            o[i, j] = ZERO
    k_end = min(q0 + ATT_BQ, T)
    for k0 in range(0, k_end, ATT_BK):
        cuda.syncthreads()   # the previous tile is no longer read
        _stage(Ks, x, k0, ATT_BK, T, C + h * hs, hs, tid, nthreads)
        _stage(Vs, x, k0, ATT_BK, T, 2 * C + h * hs, hs, tid, nthreads)
        cuda.syncthreads()
        _scores(s, Qs, Ks, hs, ATT_TY, av, bv)
        for i in range(ATT_RM):
            t = q0 + ty + ATT_TY * i
            pm = NEG_INF
            for j in range(ATT_CN):
                t2 = k0 + tx + ATT_TX * j
                val = s[i, j] * scale
                if t2 > t or t2 >= T:
                    val = NEG_INF
                s[i, j] = val
                pm = max(pm, val)
            Ps[ty + ATT_TY * i, tx] = pm   # this thread's part of the row max
        cuda.syncthreads()
        for i in range(ATT_RM):   # the new row max (finite from the first tile on: key 0 is visible)
            mx = _row_max(Ps, ty + ATT_TY * i, m[i])
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
        _accumulate(o, Ps, Vs, ATT_TY, av, xb)
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
                d = _channel(tx, j)
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
            acc += widen(dout[b, t, h * hs + d]) * widen(out[b, t, h * hs + d])
        dd[b, h, t] = acc


@cuda.jit(cache=True)
def attention_dquery_kernel(dinp, dout, inp, lse, dd, scale):
    # dinp (B,T,3C) query thirds += scale * sum_{t2<=t} dS[t,t2] k[t2] for the ATT_BR queries t of
    # this block, with att = exp(scale q.k - lse[t]), dP = dout[t].v[t2], dS = att (dP - dd[t])
    Qs = cuda.shared.array((ATT_BR, ATT_HS_P), float32, alignment=ALIGN)
    dOs = cuda.shared.array((ATT_BR, ATT_HS_P), float32, alignment=ALIGN)
    Ks = cuda.shared.array((ATT_BK, ATT_HS_P), float32, alignment=ALIGN)
    Vs = cuda.shared.array((ATT_BK, ATT_HS_P), float32, alignment=ALIGN)
    dSs = cuda.shared.array((ATT_BR, ATT_BK_P), float32, alignment=ALIGN)
    s = cuda.local.array((ATT_RM, ATT_CN), float32)
    dp = cuda.local.array((ATT_RM, ATT_CN), float32)
    dq = cuda.local.array((ATT_RM, ATT_DN), float32)
    lse_r = cuda.local.array(ATT_RM, float32)
    dd_r = cuda.local.array(ATT_RM, float32)
    av = cuda.local.array(RM4, float32)
    bv = cuda.local.array(CN4, float32)
    xb = cuda.local.array(DN4, float32)
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
    _stage(Qs, inp[b], q0, ATT_BR, T, h * hs, hs, tid, nthreads)
    _stage(dOs, dout[b], q0, ATT_BR, T, h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        t = q0 + ty + ATT_TY_BWD * i
        lse_r[i] = lse[b, h, t] if t < T else ZERO
        dd_r[i] = dd[b, h, t] if t < T else ZERO
        for j in range(ATT_DN):
            dq[i, j] = ZERO
    k_end = min(q0 + ATT_BR, T)
    for k0 in range(0, k_end, ATT_BK):
        cuda.syncthreads()
        _stage(Ks, inp[b], k0, ATT_BK, T, C + h * hs, hs, tid, nthreads)
        _stage(Vs, inp[b], k0, ATT_BK, T, 2 * C + h * hs, hs, tid, nthreads)
        cuda.syncthreads()
        _scores(s, Qs, Ks, hs, ATT_TY_BWD, av, bv)    # q.k
        _scores(dp, dOs, Vs, hs, ATT_TY_BWD, av, bv)  # dout.v
        for i in range(ATT_RM):
            t = q0 + ty + ATT_TY_BWD * i
            for j in range(ATT_CN):
                t2 = k0 + tx + ATT_TX * j
                ds = ZERO
                if t2 <= t and t < T:
                    ds = math.exp(s[i, j] * scale - lse_r[i]) * (dp[i, j] - dd_r[i])
                dSs[ty + ATT_TY_BWD * i, tx + ATT_TX * j] = ds
        cuda.syncthreads()
        _accumulate(dq, dSs, Ks, ATT_TY_BWD, av, xb)   # dq += dS k
    for i in range(ATT_RM):
        t = q0 + ty + ATT_TY_BWD * i
        if t < T:
            for j in range(ATT_DN):
                d = _channel(tx, j)
                if d < hs:
                    dinp[b, t, h * hs + d] += scale * dq[i, j]


@cuda.jit(cache=True)
def attention_dkey_value_kernel(dinp, dout, inp, lse, dd, scale):
    # dinp (B,T,3C) key and value thirds += for the ATT_BR keys t2 of this block, over the queries
    # t >= t2 (in tiles of ATT_BK): dk += scale * dS[t,t2] q[t], dv += att[t,t2] dout[t]; att, dS as
    # in attention_dquery_kernel. Rows of the register tiles are keys here, columns queries.
    Ks = cuda.shared.array((ATT_BR, ATT_HS_P), float32, alignment=ALIGN)
    Vs = cuda.shared.array((ATT_BR, ATT_HS_P), float32, alignment=ALIGN)
    Qs = cuda.shared.array((ATT_BK, ATT_HS_P), float32, alignment=ALIGN)
    dOs = cuda.shared.array((ATT_BK, ATT_HS_P), float32, alignment=ALIGN)
    Ps = cuda.shared.array((ATT_BR, ATT_BK_P), float32, alignment=ALIGN)    # att (keys x queries)
    dSs = cuda.shared.array((ATT_BR, ATT_BK_P), float32, alignment=ALIGN)   # dS (keys x queries)
    lses = cuda.shared.array(ATT_BK, float32)
    dds = cuda.shared.array(ATT_BK, float32)
    s = cuda.local.array((ATT_RM, ATT_CN), float32)
    dp = cuda.local.array((ATT_RM, ATT_CN), float32)
    dk = cuda.local.array((ATT_RM, ATT_DN), float32)
    dv = cuda.local.array((ATT_RM, ATT_DN), float32)
    av = cuda.local.array(RM4, float32)
    bv = cuda.local.array(CN4, float32)
    xb = cuda.local.array(DN4, float32)
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
    _stage(Ks, inp[b], k0, ATT_BR, T, C + h * hs, hs, tid, nthreads)
    _stage(Vs, inp[b], k0, ATT_BR, T, 2 * C + h * hs, hs, tid, nthreads)
    for i in range(ATT_RM):
        for j in range(ATT_DN):
            dk[i, j] = ZERO
            dv[i, j] = ZERO
    for t0 in range(k0, T, ATT_BK):
        cuda.syncthreads()
        _stage(Qs, inp[b], t0, ATT_BK, T, h * hs, hs, tid, nthreads)
        _stage(dOs, dout[b], t0, ATT_BK, T, h * hs, hs, tid, nthreads)
        if tid < ATT_BK:
            t = t0 + tid
            lses[tid] = lse[b, h, t] if t < T else ZERO
            dds[tid] = dd[b, h, t] if t < T else ZERO
        cuda.syncthreads()
        _scores(s, Ks, Qs, hs, ATT_TY_BWD, av, bv)    # k.q
        _scores(dp, Vs, dOs, hs, ATT_TY_BWD, av, bv)  # v.dout
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
                Ps[ty + ATT_TY_BWD * i, c] = p
                dSs[ty + ATT_TY_BWD * i, c] = ds
        cuda.syncthreads()
        _accumulate(dv, Ps, dOs, ATT_TY_BWD, av, xb)   # dv += att dout
        _accumulate(dk, dSs, Qs, ATT_TY_BWD, av, xb)   # dk += dS q
    for i in range(ATT_RM):
        t2 = k0 + ty + ATT_TY_BWD * i
        if t2 < T:
            for j in range(ATT_DN):
                d = _channel(tx, j)
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


# each version's (forward, dquery, dkey_value) kernels: the same grids, blocks and arguments
KERNELS = {
    "v2": (attention_v2.v2_forward_kernel, attention_v2.v2_dquery_kernel, attention_v2.v2_dkey_value_kernel),
    "v3": (attention_forward_kernel, attention_dquery_kernel, attention_dkey_value_kernel),
}


class Attention:
    """attention_forward and attention_backward with backward's dd scratch (B*NH*T floats: one per
    backend, it grows to the largest B*NH*T seen and is not allocated again after the first step).
    version: "v2" or "v3" (KERNELS; default launch.py's ATTENTION_KERNEL, LLMNB_CUDA_ATTENTION)."""

    def __init__(self, version=ATTENTION_KERNEL):
        self.dd = None
        self.version = version
        self.forward_kernel, self.dquery_kernel, self.dkey_value_kernel = KERNELS[version]

    def attention_forward(self, out, lse, inp):
        """out (B,T,C), lse (B,NH,T) = causal self-attention of inp (B,T,3C) = q,k,v, and the
        log-sum-exp of each query's scaled scores."""
        B, T, C, NH, hs = _attention_shapes("attention_forward", inp, lse, out)
        scale = F32(1.0 / math.sqrt(hs))
        self.forward_kernel[(cdiv(T, ATT_BQ), B * NH), (ATT_TX, ATT_TY)](out, lse, inp, scale)

    def attention_backward(self, dinp, dout, inp, out, lse):
        """dinp (B,T,3C) += the gradient of attention_forward, from dout (B,T,C), inp (B,T,3C) and
        forward's out (B,T,C) and lse (B,NH,T)."""
        B, T, C, NH, hs = _attention_shapes("attention_backward", inp, lse, dout)
        check(dinp.shape == inp.shape, WHERE, f"attention_backward: dinp {dinp.shape} is not inp's {inp.shape}")
        check(out.shape == dout.shape, WHERE, f"attention_backward: out {out.shape} is not dout's {dout.shape}")
        n = B * NH * T
        if self.dd is None or self.dd.shape[0] < n:
            self.dd = cached_views(cuda.device_array(n, np.float32))
        dd = self.dd[:n].reshape(B, NH, T)
        scale = F32(1.0 / math.sqrt(hs))
        attention_backward_dd_kernel[elementwise_grid(n), ELEM_THREADS](dd, dout, out)
        grid = (cdiv(T, ATT_BR), B * NH)
        self.dquery_kernel[grid, (ATT_TX, ATT_TY_BWD)](dinp, dout, inp, lse, dd, scale)
        self.dkey_value_kernel[grid, (ATT_TX, ATT_TY_BWD)](dinp, dout, inp, lse, dd, scale)

