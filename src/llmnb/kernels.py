"""The layers of GPT-2, forward and backward: every function of llm.c's train_gpt2.c as a Numba kernel.

Conventions (as in the C):
- B = batch size, T = sequence length, C = channels, OC = output channels, NH = heads,
  hs = C / NH head size, V = real vocab size, Vp = padded vocab size.
- Arrays arrive in their natural shapes (the comments give them) and are views into the model's
  flat buffers; the kernels read sizes off the shapes, write into the arrays they are given and
  allocate nothing.
- Backward kernels *accumulate* (+=) into their gradient outputs, as the C does: the model zeroes
  the gradient buffers once per step.
- Parallel loops never let two threads write the same element, and every element is summed in the
  same order whatever the thread count, so a parallel kernel gives the same answer as its serial
  version on every input (tests/test_kernels.py checks this).
"""
import math

import numpy as np
from numba import njit, prange

from .matmul import (matmul_forward, matmul_backward, matvec_forward,  # noqa: F401  (re-exported,
                     matvec_forward_bf16, matvec_forward_int8)  # see matmul.py)
from .matmul import f32_from_bits  # the bitcast exp_f32 builds 2^n with
from .matmul import MR, NR, pack, tile_product  # attention's tile products (matmul.py)
from .matmul import DENSE, UPPER_ZERO, K_UPTO_ROW, K_FROM_ROW

F32 = np.float32
# the model's constants, defined here once (convert.py checks HF configs against LAYERNORM_EPS)
GELU_SCALING_FACTOR = F32(math.sqrt(2.0 / math.pi))
GELU_CUBE = F32(0.044715)
LAYERNORM_EPS = 1e-5  # inside the square root, as llm.c and PyTorch
CHUNK = 16  # channels per task in the kernels that reduce over B*T (one cache line of floats)
# fastmath for the kernels whose cost is float sums (attention's dot products, softmax's and
# layernorm's row sums): 'reassoc' lets LLVM keep vector accumulators, 'contract' fuses
# multiply-adds. Each sum is still done in one fixed order by one thread, so results stay
# deterministic (parallel == serial, bit for bit); they differ from the in-order sums by float32
# rounding only. No 'nnan'/'ninf': inf and NaN behave as IEEE says. No 'arcp' either: it let the
# parallel and serial builds of layernorm_forward round differently.
REDUCE_FASTMATH = {"reassoc", "contract"}


# ----------------------------------------------------------------------------------------------
# encoder: token embedding + position embedding

@njit(parallel=True, cache=True)
def encoder_forward(out, inp, wte, wpe):
    # out (B,T,C); inp (B,T) int32 token ids; wte (Vp,C); wpe (maxT,C)
    B, T, C = out.shape
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        ix = inp[b, t]
        for i in range(C):
            out[b, t, i] = wte[ix, i] + wpe[t, i]


@njit(parallel=True, cache=True)
def encoder_backward(dwte, dwpe, dout, inp):
    # dwte (Vp,C), dwpe (maxT,C) += from dout (B,T,C); inp (B,T) int32
    # The same token may appear many times in a batch, so rows of dwte cannot be split between
    # threads by (b,t). Instead each thread owns a slice of channels and walks all of (b,t).
    B, T, C = dout.shape
    nchunks = (C + CHUNK - 1) // CHUNK
    for ci in prange(nchunks):
        i0 = ci * CHUNK
        i1 = min(i0 + CHUNK, C)
        for b in range(B):
            for t in range(T):
                ix = inp[b, t]
                for i in range(i0, i1):
                    d = dout[b, t, i]
                    dwte[ix, i] += d
                    dwpe[t, i] += d


# ----------------------------------------------------------------------------------------------
# layernorm

@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def layernorm_forward(out, mean, rstd, inp, weight, bias):
    # out (B,T,C), mean (B,T), rstd (B,T); inp (B,T,C); weight (C), bias (C)
    B, T, C = inp.shape
    eps = F32(LAYERNORM_EPS)
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        x = inp[b, t]
        m = F32(0.0)
        for i in range(C):
            m += x[i]
        m = m / F32(C)
        v = F32(0.0)
        for i in range(C):
            xshift = x[i] - m
            v += xshift * xshift
        v = v / F32(C)
        s = F32(1.0) / np.sqrt(v + eps)
        o = out[b, t]
        for i in range(C):
            o[i] = (s * (x[i] - m)) * weight[i] + bias[i]
        mean[b, t] = m
        rstd[b, t] = s


@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    # dinp (B,T,C), dweight (C), dbias (C) += ; dout, inp (B,T,C); weight (C); mean, rstd (B,T)
    B, T, C = inp.shape
    # pass 1: dinp, independent per (b,t)
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        mean_bt = mean[b, t]
        rstd_bt = rstd[b, t]
        dnorm_mean = F32(0.0)
        dnorm_norm_mean = F32(0.0)
        for i in range(C):
            norm_bti = (inp[b, t, i] - mean_bt) * rstd_bt
            dnorm_i = weight[i] * dout[b, t, i]
            dnorm_mean += dnorm_i
            dnorm_norm_mean += dnorm_i * norm_bti
        dnorm_mean = dnorm_mean / F32(C)
        dnorm_norm_mean = dnorm_norm_mean / F32(C)
        for i in range(C):
            norm_bti = (inp[b, t, i] - mean_bt) * rstd_bt
            dnorm_i = weight[i] * dout[b, t, i]
            dval = dnorm_i - dnorm_mean - norm_bti * dnorm_norm_mean
            dinp[b, t, i] += dval * rstd_bt
    # pass 2: dweight, dbias reduce over (b,t); each thread owns a slice of channels
    nchunks = (C + CHUNK - 1) // CHUNK
    for ci in prange(nchunks):
        i0 = ci * CHUNK
        i1 = min(i0 + CHUNK, C)
        for b in range(B):
            for t in range(T):
                mean_bt = mean[b, t]
                rstd_bt = rstd[b, t]
                for i in range(i0, i1):
                    norm_bti = (inp[b, t, i] - mean_bt) * rstd_bt
                    dbias[i] += dout[b, t, i]
                    dweight[i] += norm_bti * dout[b, t, i]


# ----------------------------------------------------------------------------------------------
# attention

@njit(fastmath=REDUCE_FASTMATH, cache=True)
def attention_query_head(out_h, preatt_row, att_row, qkv, b, t, h):
    # one query: position t of sequence b, head h. qkv (T',B,3C) holds the query, key and value
    # vectors of B sequences (sequence b's rows 0..t are read); preatt_row, att_row (>= t+1) get
    # the scaled scores and their causal softmax over positions 0..t (they may be the same
    # array); out_h (hs) = the attention-weighted sum of the values. attention_query runs it for
    # every sequence and head.
    C = qkv.shape[2] // 3
    hs = out_h.shape[0]
    scale = F32(1.0 / math.sqrt(hs))
    q = qkv[t, b, h * hs:(h + 1) * hs]
    # pass 1: query . key, and the running max
    maxval = F32(-10000.0)
    for t2 in range(t + 1):
        k = qkv[t2, b, C + h * hs:C + (h + 1) * hs]
        val = F32(0.0)
        for i in range(hs):
            val += q[i] * k[i]
        val *= scale
        if val > maxval:
            maxval = val
        preatt_row[t2] = val
    # pass 2: exp and sum
    expsum = F32(0.0)
    for t2 in range(t + 1):
        expv = np.exp(preatt_row[t2] - maxval)
        expsum += expv
        att_row[t2] = expv
    expsum_inv = F32(0.0) if expsum == F32(0.0) else F32(1.0) / expsum
    # pass 3: normalise
    for t2 in range(t + 1):
        att_row[t2] *= expsum_inv
    # pass 4: weighted sum of the values
    for i in range(hs):
        out_h[i] = F32(0.0)
    for t2 in range(t + 1):
        v = qkv[t2, b, 2 * C + h * hs:2 * C + (h + 1) * hs]
        a = att_row[t2]
        for i in range(hs):
            out_h[i] += a * v[i]


@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def attention_query(out, att, qkv, t):
    # one token's attention in each of B sequences, the step of generation: out (B,C) = for each
    # sequence b, every head's query at position t over the keys/values of its positions 0..t in
    # qkv (maxT,B,3C) (the KV cache: position-major, so that a step's B rows of qkv are one
    # contiguous (B,3C) block); att (B,NH,maxT) is scratch for the scores. One task per
    # (sequence, head); a sequence's result does not depend on B.
    B, NH = att.shape[0], att.shape[1]
    hs = out.shape[1] // NH
    for bh in prange(B * NH):
        b, h = bh // NH, bh % NH
        attention_query_head(out[b, h * hs:(h + 1) * hs], att[b, h], att[b, h], qkv, b, t, h)


# Training attention is flash-style (Dao et al., FlashAttention): per (b, h), tiles of ATT_TILE
# queries against tiles of ATT_TILE keys, with the softmax computed online (a running max and sum
# per query row, the output rescaled when the max grows) and key tiles above the diagonal skipped
# (on the diagonal tiles, the micro-tiles and k ranges the mask zeroes: tile_product's causal modes).
# No (T, T) buffer exists: forward keeps per query row the log of its softmax denominator,
# lse = max + log(sum exp(s - max)), and backward recomputes att = exp(s - lse) tile by tile.
# The tile products go through matmul.py's register-blocked micro-kernel (kernel_6x16), on tiles
# packed once per (b, h) or, for p, att, dS and their transposes, read in place.
# dev/attention.py holds llm.c's literal version (preatt/att buffers) and the ladder to this.

# Exponentials (attention's and the classifier's softmax, gelu): Numba (without Intel's SVML) calls
# libm's expf one element at a time (~5.5 ns here): a third of attention_forward's time and most of
# gelu's went to exp. exp_f32 is Cephes' expf: a
# degree-6 polynomial on x - n ln2 and a scale by 2^n made from its bits, which LLVM vectorizes
# (~0.6 ns). Error < 1 ulp for x in [-87.3, 88.3] (tests/test_kernels.py); 0 below -87.34 (where
# exp leaves float32's normal range), inf above 88.72, NaN stays NaN.

EXP_LOG2E = F32(1.44269504088896341)
EXP_LN2_HI = F32(0.693359375)         # ln 2 in two parts: n * EXP_LN2_HI is exact for |n| < 2^9
EXP_LN2_LO = F32(-2.12194440e-4)
EXP_POLY = (F32(1.9875691500e-4), F32(1.3981999507e-3), F32(8.3334519073e-3), F32(4.1665795894e-2),
            F32(1.6666665459e-1), F32(5.0000001201e-1))


@njit(fastmath={"contract"}, cache=True, inline="always")
def exp_f32(x):
    # exp(x) for one float32 x (attention passes x <= 0: a score minus its row's max or lse)
    xc = min(max(x, F32(-87.33654)), F32(88.3)) if x == x else x
    n = np.floor(xc * EXP_LOG2E + F32(0.5))
    r = xc - n * EXP_LN2_HI - n * EXP_LN2_LO
    p = EXP_POLY[0]
    p = p * r + EXP_POLY[1]
    p = p * r + EXP_POLY[2]
    p = p * r + EXP_POLY[3]
    p = p * r + EXP_POLY[4]
    p = p * r + EXP_POLY[5]
    p = p * r * r + r + F32(1.0)
    e = p * f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    if x > F32(88.72284):
        e = F32(np.inf)
    return F32(0.0) if x < F32(-87.33654) else e


ATT_TILE = 96  # queries per query tile and keys per key tile: queries are rows of the tile
               # products and keys columns, so a multiple of the micro-tile's 6 rows and of its
               # 16 columns keeps every micro-tile whole (48, 144 and 192: the same
               # time at T = 1024 within this host's noise)

# how _pack_tiles lays out a (T, hs) slice of qkv or dout for matmul.tile_product
ROWS_A = 0   # A: rows are positions, k runs over head dims (q, dout in q k^T, dout v^T)
POS_B = 1    # B: k runs over head dims, columns are positions (k^T, v^T in q k^T, dout v^T)
DIMS_B = 2   # B: k runs over positions, columns are head dims (v, k, q, dout in p v, dS k,
             # dS^T q, att^T dout)


@njit(cache=True, inline="always")
def _panels(n, r):
    # n rounded up to a multiple of r: rows (r = MR) or columns (r = NR) of whole panels
    return (n + r - 1) // r * r


@njit(cache=True)
def _pack_tiles(dst, stride, x, T, TT, c0, hs, layout):
    # the (b, h) slice x[:, c0:c0+hs] of qkv (T,3C) or dout (T,C), tile by tile of TT positions,
    # packed as `layout` for matmul.tile_product at dst[tile * stride:]. Packed once per (b, h):
    # the tile products then read them in order, where gathering a tile's rows (9 KB apart in
    # qkv) for each pair of tiles made attention wait on memory.
    for t in range((T + TT - 1) // TT):
        t0, t1 = t * TT, min(t * TT + TT, T)
        d = dst[t * stride:]
        if layout == ROWS_A:     # lines: positions (rows of x), k: head dims
            pack(d, hs * MR, x, MR, True, t0, t1, c0, c0 + hs)
        elif layout == POS_B:
            pack(d, hs * NR, x, NR, True, t0, t1, c0, c0 + hs)
        else:
            pack(d, (t1 - t0) * NR, x, NR, False, c0, c0 + hs, t0, t1)


@njit(cache=True, inline="always")
def _row_max(row, n):
    # max of row[:n] (n >= 1), kept in 8 lanes: one running max is a chain of dependent compares
    # that LLVM does not vectorize (~1.6x slower)
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    n8 = n // 8 * 8
    for j in range(0, n8, 8):
        m0, m1, m2, m3 = max(m0, row[j]), max(m1, row[j + 1]), max(m2, row[j + 2]), max(m3, row[j + 3])
        m4, m5, m6, m7 = max(m4, row[j + 4]), max(m5, row[j + 5]), max(m6, row[j + 6]), max(m7, row[j + 7])
    for j in range(n8, n):
        m0 = max(m0, row[j])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def attention_forward(out, lse, inp):
    # out (B,T,C); lse (B,NH,T) the log-sum-exp of each query's scaled scores; inp (B,T,3C)
    # holding the query, key, value vectors. One task per (b, h): its q, k^T and v are packed
    # once; then per query tile, for each key tile up to the diagonal: s = q k^T, an online
    # softmax over s's rows, o += p v (p read in place from s). Products: matmul.tile_product.
    B, T, C3 = inp.shape
    C = C3 // 3
    NH = lse.shape[1]
    hs = C // NH
    scale = F32(1.0 / math.sqrt(hs))
    TT = min(ATT_TILE, T)   # short sequences: one tile of exactly T
    nt = (T + TT - 1) // TT
    sa, sb, sv = _panels(TT, MR) * hs, _panels(TT, NR) * hs, _panels(hs, NR) * TT  # per tile
    ld = _panels(TT, NR)    # row length of s: whole panels of keys
    for bh in prange(B * NH):
        b = bh // NH
        h = bh % NH
        q0, k0, v0 = h * hs, C + h * hs, 2 * C + h * hs
        qa = np.empty(nt * sa, F32)
        kb = np.empty(nt * sb, F32)
        vb = np.empty(nt * sv, F32)
        _pack_tiles(qa, sa, inp[b], T, TT, q0, hs, ROWS_A)
        _pack_tiles(kb, sb, inp[b], T, TT, k0, hs, POS_B)
        _pack_tiles(vb, sv, inp[b], T, TT, v0, hs, DIMS_B)
        s = np.zeros((_panels(TT, MR), ld), F32)   # scores, then p; whole panels of rows too
        sf = s.reshape(-1)
        o = np.empty((TT, hs), F32)
        edge = np.empty((MR, NR), F32)
        m = np.empty(TT, F32)
        lsum = np.empty(TT, F32)
        for qt in range(nt):
            t0 = qt * TT
            t1 = min(t0 + TT, T)
            nq = t1 - t0
            m[:] = -np.inf
            lsum[:] = F32(0.0)
            o[:] = F32(0.0)
            for kt in range(qt + 1):   # key tiles up to the diagonal: the causal rest is skipped
                j0 = kt * TT
                j1 = min(j0 + TT, t1)
                nk = j1 - j0
                diag = kt == qt        # keys j0 = t0..: masked above the diagonal
                upper, k_upto = (UPPER_ZERO, K_UPTO_ROW) if diag else (DENSE, DENSE)
                # s = q . k^T
                tile_product(s, qa, qt * sa, hs * MR, 1, MR, kb, kt * sb, hs * NR, NR, nq, nk, hs, False, edge, upper)
                for r in range(nq):
                    jend = min(j1, t0 + r + 1) - j0   # keys j0 .. t of this row (>= 1 of them)
                    row = s[r]
                    mx = max(m[r], _row_max(row, jend) * scale)   # (scale > 0: the max of the scaled row)
                    ssum = F32(0.0)
                    for j in range(jend):
                        p = exp_f32(row[j] * scale - mx)
                        row[j] = p
                        ssum += p
                    for j in range(jend, nk):
                        row[j] = F32(0.0)
                    corr = exp_f32(m[r] - mx)   # 0 on the first tile (m = -inf)
                    lsum[r] = lsum[r] * corr + ssum
                    m[r] = mx
                    for i in range(hs):
                        o[r, i] *= corr
                # o += p . v
                tile_product(o, sf, 0, MR * ld, ld, 1, vb, kt * sv, nk * NR, NR, nq, hs, nk, True, edge, k_upto)
            for r in range(nq):
                inv = F32(1.0) / lsum[r]
                for i in range(hs):
                    out[b, t0 + r, q0 + i] = o[r, i] * inv
                lse[b, h, t0 + r] = m[r] + np.log(lsum[r])


@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def attention_backward(dinp, dout, inp, out, lse):
    # dinp (B,T,3C) += the gradient of attention_forward, from dout (B,T,C), inp (B,T,3C) and
    # what forward left: out (B,T,C) and lse (B,NH,T). att = exp(scale q.k - lse) is recomputed per
    # (query tile, key tile); with dS = scale att (dout.v - dout.out) (the softmax backward, since
    # sum_t2 att dout.v = dout.out, times the scale of the scores):
    #     dv += att^T dout,  dk += dS^T q,  dq += dS k.
    # One task per (b, h): a key receives from every later query, so (b, h)'s slices of dinp are
    # the unit that no two tasks share. Its operands are packed once; att, dS and their
    # transposes are read in place; key tiles outer, so dk and dv of a tile stay in scratch,
    # rows of keys as in dinp.
    B, T, C3 = inp.shape
    C = C3 // 3
    NH = lse.shape[1]
    hs = C // NH
    scale = F32(1.0 / math.sqrt(hs))
    TT = min(ATT_TILE, T)   # short sequences: one tile of exactly T
    nt = (T + TT - 1) // TT
    sa, sb, sv = _panels(TT, MR) * hs, _panels(TT, NR) * hs, _panels(hs, NR) * TT   # per tile
    ld = max(_panels(TT, NR), _panels(TT, MR))   # row length of s and dp: whole panels of keys,
                                                 # as columns of B and as rows of A (transposed)
    for bh in prange(B * NH):
        b = bh // NH
        h = bh % NH
        q0, k0, v0 = h * hs, C + h * hs, 2 * C + h * hs
        x, dx = inp[b], dout[b]
        qa = np.empty(nt * sa, F32)
        doa = np.empty(nt * sa, F32)
        kb = np.empty(nt * sb, F32)
        vbt = np.empty(nt * sb, F32)
        kbd = np.empty(nt * sv, F32)
        qbd = np.empty(nt * sv, F32)
        dobd = np.empty(nt * sv, F32)
        # (one slice after another: a slice's second pack reads it from L2)
        _pack_tiles(qa, sa, x, T, TT, q0, hs, ROWS_A)     # q    in q k^T
        _pack_tiles(qbd, sv, x, T, TT, q0, hs, DIMS_B)    # q    in dS^T q
        _pack_tiles(doa, sa, dx, T, TT, q0, hs, ROWS_A)   # dout in dout v^T
        _pack_tiles(dobd, sv, dx, T, TT, q0, hs, DIMS_B)  # dout in att^T dout
        _pack_tiles(kb, sb, x, T, TT, k0, hs, POS_B)      # k^T  in q k^T
        _pack_tiles(kbd, sv, x, T, TT, k0, hs, DIMS_B)    # k    in dS k
        _pack_tiles(vbt, sb, x, T, TT, v0, hs, POS_B)     # v^T  in dout v^T
        s = np.zeros((_panels(TT, MR), ld), F32)    # scores, then att
        dp = np.zeros((_panels(TT, MR), ld), F32)   # dout . v, then dS
        sf, dpf = s.reshape(-1), dp.reshape(-1)
        dk = np.empty((TT, hs), F32)
        dv = np.empty((TT, hs), F32)
        dq = np.zeros((T, hs), F32)    # dS k, summed over the key tiles
        dd = np.empty(T, F32)          # dout . out per query row
        edge = np.empty((MR, NR), F32)
        for t in range(T):
            acc = F32(0.0)
            for i in range(hs):
                acc += dx[t, q0 + i] * out[b, t, q0 + i]
            dd[t] = acc
        for kt in range(nt):
            j0 = kt * TT
            j1 = min(j0 + TT, T)
            nk = j1 - j0
            dk[:nk] = F32(0.0)
            dv[:nk] = F32(0.0)
            for qt in range(kt, nt):   # query tiles on and below the diagonal
                t0 = qt * TT
                t1 = min(t0 + TT, T)
                nq = t1 - t0
                diag = qt == kt        # keys j0.. against queries t0 = j0..: masked above the diagonal
                upper, k_from, k_upto = (UPPER_ZERO, K_FROM_ROW, K_UPTO_ROW) if diag else (DENSE, DENSE, DENSE)
                tile_product(s, qa, qt * sa, hs * MR, 1, MR, kb, kt * sb, hs * NR, NR, nq, nk, hs, False, edge, upper)
                tile_product(dp, doa, qt * sa, hs * MR, 1, MR, vbt, kt * sb, hs * NR, NR, nq, nk, hs, False, edge, upper)
                for r in range(nq):
                    jend = min(j1, t0 + r + 1) - j0
                    lse_r = lse[b, h, t0 + r]
                    dd_r = dd[t0 + r]
                    for j in range(jend):
                        p = exp_f32(s[r, j] * scale - lse_r)
                        s[r, j] = p
                        dp[r, j] = p * (dp[r, j] - dd_r) * scale
                    for j in range(jend, nk):
                        s[r, j] = F32(0.0)
                        dp[r, j] = F32(0.0)
                # dv += att^T dout, dk += dS^T q (att^T and dS^T as A, in place)
                tile_product(dv, sf, 0, MR, 1, ld, dobd, qt * sv, nq * NR, NR, nk, hs, nq, True, edge, k_from)
                tile_product(dk, dpf, 0, MR, 1, ld, qbd, qt * sv, nq * NR, NR, nk, hs, nq, True, edge, k_from)
                # dq += dS k (dS as A, in place)
                tile_product(dq[t0:t1], dpf, 0, MR * ld, ld, 1, kbd, kt * sv, nk * NR, NR, nq, hs, nk, True, edge,
                             k_upto)
            for j in range(nk):   # (one slice per loop: two in one loop stay scalar, ~3x slower)
                dk_row, dv_row = dinp[b, j0 + j, k0:k0 + hs], dinp[b, j0 + j, v0:v0 + hs]
                for i in range(hs):
                    dk_row[i] += dk[j, i]
                for i in range(hs):
                    dv_row[i] += dv[j, i]
        for t in range(T):
            dq_row = dinp[b, t, q0:q0 + hs]
            for i in range(hs):
                dq_row[i] += dq[t, i]


# ----------------------------------------------------------------------------------------------
# gelu: llm.c's tanh approximation, gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
# computed exactly with one exp per element instead of libm's tanh (and cosh in the backward).
# With e = exp(-2|u|) in (0, 1] (it never overflows; |u| = inf gives e = 0) and r = 1 / (1 + e):
#     tanh(|u|) = (1 - e) r
#     1 + tanh(u) = 2 r        (u >= 0)      = 2 e r   (u < 0: no cancellation of 1 - (1 - e) r)
#     sech^2(u) = 1 - tanh^2(u) = 4 e r^2    (no cancellation of 1 - tanh^2 near |tanh| = 1)
# These are identities, not approximations: only float32 rounding differs from the float64 formula
# (a few ulp; tests/test_kernels.py: <= 1e-6 abs/rel), so the result is llm.c's gelu. fastmath is
# limited to 'contract' (fused multiply-adds: one rounding fewer); it assumes nothing about inf or
# NaN and reorders nothing (llm.c issue #168: -Ofast's full set of flags broke its gelu).

GELU_FASTMATH = {"contract"}


@njit(fastmath=GELU_FASTMATH, cache=True, inline="always")
def _gelu_one_plus_tanh_half(u):
    # returns (0.5 (1 + tanh(u)), sech^2(u)) for one float32 u, with one exp
    e = exp_f32(F32(-2.0) * abs(u))   # (see exp_f32: libm's expf one at a time was most of gelu)
    r = F32(1.0) / (F32(1.0) + e)
    half_one_plus_tanh = r if u >= F32(0.0) else e * r
    return half_one_plus_tanh, F32(4.0) * e * r * r


@njit(parallel=True, fastmath=GELU_FASTMATH, cache=True)
def gelu_forward(out, inp):
    # out, inp: any shape, N elements
    o = out.reshape(-1)
    x_ = inp.reshape(-1)
    for i in prange(x_.shape[0]):
        x = x_[i]
        u = GELU_SCALING_FACTOR * (x + GELU_CUBE * x * x * x)
        half_one_plus_tanh, _ = _gelu_one_plus_tanh_half(u)
        o[i] = x * half_one_plus_tanh


@njit(parallel=True, fastmath=GELU_FASTMATH, cache=True)
def gelu_backward(dinp, inp, dout):
    # dinp += ; inp, dout: same shape, N elements
    # d gelu / dx = 0.5 (1 + tanh(u)) + 0.5 x sech^2(u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    di = dinp.reshape(-1)
    x_ = inp.reshape(-1)
    do = dout.reshape(-1)
    for i in prange(x_.shape[0]):
        x = x_[i]
        u = GELU_SCALING_FACTOR * (x + GELU_CUBE * x * x * x)
        half_one_plus_tanh, sech2 = _gelu_one_plus_tanh_half(u)
        local_grad = half_one_plus_tanh + \
            x * F32(0.5) * sech2 * GELU_SCALING_FACTOR * (F32(1.0) + F32(3.0) * GELU_CUBE * x * x)
        di[i] += local_grad * do[i]


# ----------------------------------------------------------------------------------------------
# residual

@njit(parallel=True, cache=True)
def residual_forward(out, inp1, inp2):
    # out = inp1 + inp2, all the same shape
    o = out.reshape(-1)
    a = inp1.reshape(-1)
    b = inp2.reshape(-1)
    for i in prange(o.shape[0]):
        o[i] = a[i] + b[i]


@njit(parallel=True, cache=True)
def residual_backward(dinp1, dinp2, dout):
    # dinp1 += dout; dinp2 += dout
    d1 = dinp1.reshape(-1)
    d2 = dinp2.reshape(-1)
    d = dout.reshape(-1)
    for i in prange(d.shape[0]):
        d1[i] += d[i]
        d2[i] += d[i]


# ----------------------------------------------------------------------------------------------
# softmax and cross-entropy over the padded vocabulary: only the first V of Vp columns are real

@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def softmax_forward(probs, logits, V):
    # probs, logits (B,T,Vp); columns V..Vp-1 get probability 0. For a forward without targets
    # and generation's step; training's loss and gradient need no probs (crossentropy_* below)
    B, T, Vp = logits.shape
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        lg = logits[b, t]
        p = probs[b, t]
        maxval = F32(-10000.0)
        for i in range(V):
            if lg[i] > maxval:
                maxval = lg[i]
        s = F32(0.0)
        for i in range(V):
            p[i] = exp_f32(lg[i] - maxval)
            s += p[i]
        for i in range(V):
            p[i] /= s
        for i in range(V, Vp):
            p[i] = F32(0.0)


# The classifier fused as in llm.c's CUDA trainer (llmc/fused_classifier.cuh): training keeps no
# (B,T,Vp) probs and no (B,T,Vp) dlogits. Forward keeps per row the log-sum-exp of its logits
# (lse, B*T floats) and the loss lse - logit[target]; backward recomputes softmax = exp(logit -
# lse) and writes the logits' gradient over the logits, in place. (Each row's Vp floats, ~200 KB
# at GPT-2's vocabulary, are read from memory once per kernel; the second sweep finds them in L2.)

@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def crossentropy_forward(losses, lse, logits, targets, V):
    # losses, lse (B,T); logits (B,T,Vp), read only; targets (B,T) int32.
    # lse = log sum_{i<V} exp(logits[i]); losses = lse - logits[target] = -log softmax[target]
    B, T, Vp = logits.shape
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        lg = logits[b, t]
        maxval = lg[0]
        for i in range(1, V):
            if lg[i] > maxval:
                maxval = lg[i]
        s = F32(0.0)
        for i in range(V):
            s += exp_f32(lg[i] - maxval)
        row_lse = maxval + np.log(s)
        lse[b, t] = row_lse
        losses[b, t] = row_lse - lg[targets[b, t]]


@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def crossentropy_softmax_backward(logits, dlosses, lse, targets, V):
    # logits (B,T,Vp), in place: the logits in, dlogits out; dlosses, lse (B,T); targets (B,T)
    # int32. dlogits = (exp(logits - lse) - onehot(target)) * dloss over the first V columns, 0 in
    # the padded columns V..Vp-1 (overwritten, not accumulated: there is no other dlogits)
    B, T, Vp = logits.shape
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        lg = logits[b, t]
        dloss = dlosses[b, t]
        row_lse = lse[b, t]
        ix = targets[b, t]
        for i in range(V):
            indicator = F32(1.0) if i == ix else F32(0.0)
            lg[i] = (exp_f32(lg[i] - row_lse) - indicator) * dloss
        for i in range(V, Vp):
            lg[i] = F32(0.0)


# ----------------------------------------------------------------------------------------------
# AdamW over the flat buffers (gpt2_update in the C)

@njit(cache=True)
def bias_corrections(beta1, beta2, t):
    # float32 betas -> float32 (1 - beta1^t, 1 - beta2^t), as gpt2_update's 1.0f - powf(beta, t):
    # the power of the float32 beta rounded once to float32 (a correctly rounded powf), then the
    # subtraction in float32
    b1t = F32(np.float64(beta1) ** t)
    b2t = F32(np.float64(beta2) ** t)
    return F32(1.0) - b1t, F32(1.0) - b2t


@njit(parallel=True, cache=True)
def adamw_update(params, grads, m, v, learning_rate, beta1, beta2, eps, weight_decay, t, zero_grad=False):
    # params, grads, m, v: (num_parameters,) flat float32; t is the 1-based step. All in float32
    # as the C: the bias corrections 1.0f - powf(beta, t) use the same float32 betas as the moments.
    # zero_grad: each gradient is set to 0 once read, the next step's gpt2_zero_grad fill done in
    # this pass (one pass over the gradient instead of two; the model then skips its fill)
    lr = F32(learning_rate)
    b1 = F32(beta1)
    b2 = F32(beta2)
    ep = F32(eps)
    wd = F32(weight_decay)
    bc1, bc2 = bias_corrections(b1, b2, t)
    for i in prange(params.shape[0]):
        param = params[i]
        grad = grads[i]
        if zero_grad:
            grads[i] = F32(0.0)
        mi = b1 * m[i] + (F32(1.0) - b1) * grad
        vi = b2 * v[i] + (F32(1.0) - b2) * grad * grad
        m_hat = mi / bc1
        v_hat = vi / bc2
        m[i] = mi
        v[i] = vi
        params[i] = param - lr * (m_hat / (np.sqrt(v_hat) + ep) + wd * param)
