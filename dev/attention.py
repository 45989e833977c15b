"""Kernel lab: causal self-attention forward and backward (qkv (B,T,3C) -> out (B,T,C)).

Versions, from the straight port of llm.c upward:
  v1  llm.c's attention_forward / attention_backward: one task per (b, t, h) query in forward,
      per (b, h) in backward, through (B, NH, T, T) buffers preatt and att (and their gradients)
  v2  flash-style: tiles of 128 queries against tiles of 128 keys through matmul.nt_tile (the
      dot-product micro-kernels, 4x2 on AVX2), an online softmax, causal tiles skipped; forward
      keeps only the per-row log-sum-exp (B, NH, T) and backward recomputes att from it, tile by
      tile. No T x T buffer.
  v3  v2's forward with a backward one query row at a time (v1's loops, att recomputed from lse):
      kept as the measured alternative; at T = 1024 it was ~2x slower than v2's tiles (the k and
      v gradient rows of every earlier key are read and written once per query), at T <= 256 on
      par with v2 and v1
  v4  llmnb.kernels.attention_forward / attention_backward (the package's): v2's algorithm with
      the tile products through matmul.tile_product (the GEMM's 6x16 vector micro-kernel: q and
      dout packed as A, p, dS and their transposes att^T, dS^T read in place as A; k^T, v^T, v,
      k, q, dout packed as B), tiles of 96 (keys are rows and columns: multiples of 6 and 16
      avoid edge tiles); on a diagonal tile only the micro-tiles and k ranges that the causal
      mask leaves nonzero (tile_product's causal modes)

`python -m dev.attention` checks both against a float64 NumPy reference (odd shapes, T not a
multiple of the tile, T = 1) and prints the time of one layer's forward and backward at GPT-2
124M's heads (C = 768, NH = 12) for B = 1 and T = 64, 256, 1024, with GFLOP/s counted on the
causal pairs only (4 hs FLOPs per pair forward, 8 hs backward: what the one FLOP count of
llmnb.mfu counts). Options: --runs R (default 5), --T 64,256,1024, --versions v2,v4.
"""
import argparse
import math

import numpy as np
from numba import njit, prange

from llmnb import kernels
from llmnb.kernels import REDUCE_FASTMATH, attention_query_head

from dev import common
from dev.common import F32
from dev.dot_tiles import NO_BIAS, nt_tile


# ------------------------------------------------------------------------------------------------
# v1: llm.c's attention, with its (B, NH, T, T) buffers

@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def _v1_forward(out, preatt, att, inp):
    # out (B,T,C); preatt, att (B,NH,T,T); inp (B,T,3C); one task per (b, t, h) query
    B, T, C3 = inp.shape
    C = C3 // 3
    NH = att.shape[1]
    hs = C // NH
    for bth in prange(B * T * NH):
        b = bth // (T * NH)
        t = (bth // NH) % T
        h = bth % NH
        attention_query_head(out[b, t, h * hs:(h + 1) * hs], preatt[b, h, t], att[b, h, t],
                             inp[b].reshape(T, 1, C3), 0, t, h)
        for t2 in range(t + 1, T):
            att[b, h, t, t2] = F32(0.0)


@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def _v1_backward(dinp, dpreatt, datt, dout, inp, att):
    # dinp (B,T,3C), dpreatt, datt (B,NH,T,T) += ; dout (B,T,C); inp (B,T,3C); att (B,NH,T,T)
    B, T, C3 = inp.shape
    C = C3 // 3
    NH = att.shape[1]
    hs = C // NH
    scale = F32(1.0 / math.sqrt(hs))
    for bh in prange(B * NH):
        b = bh // NH
        h = bh % NH
        q0, k0, v0 = h * hs, C + h * hs, 2 * C + h * hs
        for t in range(T):
            att_bth = att[b, h, t]
            datt_bth = datt[b, h, t]
            dpreatt_bth = dpreatt[b, h, t]
            dout_bt = dout[b, t, q0:q0 + hs]
            for t2 in range(t + 1):   # through the value sum
                v = inp[b, t2, v0:v0 + hs]
                acc = F32(0.0)
                for i in range(hs):
                    acc += v[i] * dout_bt[i]
                datt_bth[t2] += acc
            for t2 in range(t + 1):
                a = att_bth[t2]
                dv = dinp[b, t2, v0:v0 + hs]
                for i in range(hs):
                    dv[i] += a * dout_bt[i]
            dot = F32(0.0)            # through the softmax
            for t2 in range(t + 1):
                dot += att_bth[t2] * datt_bth[t2]
            for t3 in range(t + 1):
                dpreatt_bth[t3] += att_bth[t3] * (datt_bth[t3] - dot)
            q = inp[b, t, q0:q0 + hs]  # through query . key
            dq = dinp[b, t, q0:q0 + hs]
            for t2 in range(t + 1):
                g = dpreatt_bth[t2] * scale
                k = inp[b, t2, k0:k0 + hs]
                dk = dinp[b, t2, k0:k0 + hs]
                for i in range(hs):
                    dq[i] += k[i] * g
                for i in range(hs):
                    dk[i] += q[i] * g


class V1:
    """llm.c's attention; its T x T buffers belong to the version, allocated per shape."""
    label = "llm.c (preatt/att buffers)"

    def setup(self, B, T, C, NH):
        z = lambda *s: np.zeros(s, F32)  # noqa: E731
        self.preatt, self.att = z(B, NH, T, T), z(B, NH, T, T)
        self.dpreatt, self.datt = z(B, NH, T, T), z(B, NH, T, T)

    def forward(self, out, inp):
        _v1_forward(out, self.preatt, self.att, inp)

    def backward(self, dinp, dout, inp, out):
        _v1_backward(dinp, self.dpreatt, self.datt, dout, inp, self.att)


# ------------------------------------------------------------------------------------------------
# v2: flash-style tiles through the dot-product NT tiles

V2_TILE = 128  # queries per query tile and keys per key tile (128 was faster than 64 at T = 1024:
                # the products that sum over a tile's keys or queries get longer sums, see
                # dev/attention.py; a task's tiles, ~0.3 MB, stay in L2)


@njit(cache=True)
def _pack_rows(dst, src, t0, t1, c0):
    # dst (n,hs)[r] = src (T,3C)[t0 + r, c0:c0+hs] for r < t1 - t0; zero rows after
    n, hs = dst.shape
    for r in range(n):
        if t0 + r < t1:
            for i in range(hs):
                dst[r, i] = src[t0 + r, c0 + i]
        else:
            for i in range(hs):
                dst[r, i] = F32(0.0)


@njit(cache=True)
def _pack_cols(dst, src, t0, t1, c0, scale):
    # dst (hs,n)[:, r] = scale * src (T,3C)[t0 + r, c0:c0+hs] for r < t1 - t0; zero columns after
    hs, n = dst.shape
    for r in range(n):
        if t0 + r < t1:
            for i in range(hs):
                dst[i, r] = scale * src[t0 + r, c0 + i]
        else:
            for i in range(hs):
                dst[i, r] = F32(0.0)


@njit(cache=True)
def _transpose_tile(dst, src):
    # dst (n,m) = src (m,n)^T
    m, n = src.shape
    for r in range(m):
        for j in range(n):
            dst[j, r] = src[r, j]


@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def _v2_forward(out, lse, inp):
    # out (B,T,C); lse (B,NH,T) the log-sum-exp of each query's scaled scores; inp (B,T,3C)
    # holding the query, key, value vectors. One task per (b, h, query tile).
    B, T, C3 = inp.shape
    C = C3 // 3
    NH = lse.shape[1]
    hs = C // NH
    scale = F32(1.0 / math.sqrt(hs))
    TT = min(V2_TILE, T)   # short sequences: one tile of exactly T, no padding
    nqt = (T + TT - 1) // TT
    for task in prange(B * NH * nqt):
        b = task // (NH * nqt)
        h = (task // nqt) % NH
        t0 = (task % nqt) * TT
        t1 = min(t0 + TT, T)
        nq = t1 - t0
        q0, k0, v0 = h * hs, C + h * hs, 2 * C + h * hs
        # per-task tiles (TT*TT + 3*TT*hs floats), allocated once per task, not per key tile
        qp = np.empty((TT, hs), F32)
        kp = np.empty((TT, hs), F32)
        vt = np.empty((hs, TT), F32)
        s = np.empty((TT, TT), F32)
        o = np.zeros((TT, hs), F32)
        m = np.empty(TT, F32)
        lsum = np.zeros(TT, F32)
        m[:] = -np.inf
        _pack_rows(qp, inp[b], t0, t1, q0)
        for j0 in range(0, t1, TT):   # key tiles up to the diagonal: the causal rest is skipped
            j1 = min(j0 + TT, t1)
            _pack_rows(kp, inp[b], j0, j1, k0)
            _pack_cols(vt, inp[b], j0, j1, v0, F32(1.0))
            nt_tile(s, qp, 0, kp, 0, j1 - j0, NO_BIAS, False, False)   # s = q . k
            for r in range(nq):
                jend = min(j1, t0 + r + 1) - j0   # keys j0 .. t of this row (>= 1 of them)
                row = s[r]
                mx = m[r]
                for j in range(jend):
                    x = row[j] * scale
                    row[j] = x
                    mx = max(mx, x)
                ssum = F32(0.0)
                for j in range(jend):
                    p = kernels.exp_f32(row[j] - mx)
                    row[j] = p
                    ssum += p
                for j in range(jend, TT):
                    row[j] = F32(0.0)
                corr = np.exp(m[r] - mx)   # 0 on the first tile (m = -inf)
                lsum[r] = lsum[r] * corr + ssum
                m[r] = mx
                for i in range(hs):
                    o[r, i] *= corr
            nt_tile(o[:nq], s, 0, vt, 0, hs, NO_BIAS, False, True)   # o += p . v
        for r in range(nq):
            inv = F32(1.0) / lsum[r]
            for i in range(hs):
                out[b, t0 + r, q0 + i] = o[r, i] * inv
            lse[b, h, t0 + r] = m[r] + np.log(lsum[r])


@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def _v2_backward(dinp, dout, inp, out, lse):
    # dinp (B,T,3C) += the gradient of attention_forward, from dout (B,T,C), inp (B,T,3C) and
    # what forward left: out (B,T,C) and lse (B,NH,T). att = exp(scale q.k - lse) is recomputed per
    # (query tile, key tile); with dS = att * (dout.v - dout.out) (the softmax backward, since
    # sum_t2 att dout.v = dout.out):
    #     dv += att^T dout,  dq += scale dS k,  dk += scale dS^T q.
    # One task per (b, h): a key receives from every later query, so (b, h)'s slices of dinp are
    # the unit that no two tasks share. Key tiles outer, so dk and dv of a tile stay in scratch.
    B, T, C3 = inp.shape
    C = C3 // 3
    NH = lse.shape[1]
    hs = C // NH
    scale = F32(1.0 / math.sqrt(hs))
    TT = min(V2_TILE, T)   # short sequences: one tile of exactly T, no padding
    for bh in prange(B * NH):
        b = bh // NH
        h = bh % NH
        q0, k0, v0 = h * hs, C + h * hs, 2 * C + h * hs
        qp = np.empty((TT, hs), F32)    # the query tile's q, and its dout
        dop = np.empty((TT, hs), F32)
        qt = np.empty((hs, TT), F32)    # the same, transposed
        dot_ = np.empty((hs, TT), F32)
        kp = np.empty((TT, hs), F32)    # the key tile's k and v, and k transposed
        vp = np.empty((TT, hs), F32)
        kt = np.empty((hs, TT), F32)
        s = np.empty((TT, TT), F32)     # scores, then att
        dp = np.empty((TT, TT), F32)    # dout . v, then dS
        st = np.empty((TT, TT), F32)    # att^T, then (scale dS)^T
        dk = np.empty((TT, hs), F32)
        dv = np.empty((TT, hs), F32)
        dq = np.empty((TT, hs), F32)
        dd = np.empty(TT, F32)          # dout . out per query row
        for j0 in range(0, T, TT):
            j1 = min(j0 + TT, T)
            nk = j1 - j0
            _pack_rows(kp, inp[b], j0, j1, k0)
            _pack_rows(vp, inp[b], j0, j1, v0)
            _pack_cols(kt, inp[b], j0, j1, k0, F32(1.0))
            dk[:] = F32(0.0)
            dv[:] = F32(0.0)
            for t0 in range(j0, T, TT):   # query tiles on and below the diagonal
                t1 = min(t0 + TT, T)
                nq = t1 - t0
                _pack_rows(qp, inp[b], t0, t1, q0)
                _pack_rows(dop, dout[b], t0, t1, q0)
                _pack_cols(qt, inp[b], t0, t1, q0, scale)
                _pack_cols(dot_, dout[b], t0, t1, q0, F32(1.0))
                for r in range(nq):
                    acc = F32(0.0)
                    for i in range(hs):
                        acc += dop[r, i] * out[b, t0 + r, q0 + i]
                    dd[r] = acc
                nt_tile(s, qp, 0, kp, 0, nk, NO_BIAS, False, False)    # q . k
                nt_tile(dp, dop, 0, vp, 0, nk, NO_BIAS, False, False)  # dout . v
                for r in range(TT):   # rows past nq become zeros too: they are summed over below
                    jend = min(j1, t0 + r + 1) - j0 if r < nq else 0
                    for j in range(jend):
                        p = kernels.exp_f32(s[r, j] * scale - lse[b, h, t0 + r])
                        s[r, j] = p
                        dp[r, j] = p * (dp[r, j] - dd[r])
                    for j in range(jend, TT):
                        s[r, j] = F32(0.0)
                        dp[r, j] = F32(0.0)
                _transpose_tile(st, s)
                nt_tile(dv[:nk], st, 0, dot_, 0, hs, NO_BIAS, False, True)   # dv += att^T dout
                _transpose_tile(st, dp)
                nt_tile(dk[:nk], st, 0, qt, 0, hs, NO_BIAS, False, True)     # dk += dS^T (scale q)
                nt_tile(dq[:nq], dp, 0, kt, 0, hs, NO_BIAS, False, False)    # dS k
                for r in range(nq):
                    for i in range(hs):
                        dinp[b, t0 + r, q0 + i] += scale * dq[r, i]
            for j in range(nk):
                for i in range(hs):
                    dinp[b, j0 + j, k0 + i] += dk[j, i]
                    dinp[b, j0 + j, v0 + i] += dv[j, i]


class V2:
    """Flash-style tiles, dot-product micro-kernels."""
    label = "flash tiles, nt_tile"

    def setup(self, B, T, C, NH):
        self.lse = np.zeros((B, NH, T), F32)

    def forward(self, out, inp):
        _v2_forward(out, self.lse, inp)

    def backward(self, dinp, dout, inp, out):
        _v2_backward(dinp, dout, inp, out, self.lse)


# ------------------------------------------------------------------------------------------------
# v3: v2's forward; backward one query row at a time (v1's loops) with att recomputed from lse

@njit(parallel=True, fastmath=REDUCE_FASTMATH, cache=True)
def _v3_backward(dinp, dout, inp, out, lse):
    # dinp (B,T,3C) += ; dout, out (B,T,C); inp (B,T,3C); lse (B,NH,T). Per (b, h), per query t,
    # per key t2 <= t: att = exp(scale q.k - lse), dS = att (dout.v - dout.out), then
    # dv[t2] += att dout, dk[t2] += scale dS q, dq += scale dS k: two dot products and three row
    # updates of hs floats, all in L1/L2, no T x T buffer
    B, T, C3 = inp.shape
    C = C3 // 3
    NH = lse.shape[1]
    hs = C // NH
    scale = F32(1.0 / math.sqrt(hs))
    for bh in prange(B * NH):
        b = bh // NH
        h = bh % NH
        q0, k0, v0 = h * hs, C + h * hs, 2 * C + h * hs
        for t in range(T):
            q = inp[b, t, q0:q0 + hs]
            do = dout[b, t, q0:q0 + hs]
            o = out[b, t, q0:q0 + hs]
            dq = dinp[b, t, q0:q0 + hs]
            dd = F32(0.0)
            for i in range(hs):
                dd += do[i] * o[i]
            lse_t = lse[b, h, t]
            for t2 in range(t + 1):
                k = inp[b, t2, k0:k0 + hs]
                v = inp[b, t2, v0:v0 + hs]
                s = F32(0.0)
                dp = F32(0.0)
                for i in range(hs):
                    s += q[i] * k[i]
                    dp += do[i] * v[i]
                p = np.exp(s * scale - lse_t)
                ds = p * (dp - dd) * scale
                dk = dinp[b, t2, k0:k0 + hs]
                dv = dinp[b, t2, v0:v0 + hs]
                for i in range(hs):
                    dv[i] += p * do[i]
                    dk[i] += ds * q[i]
                    dq[i] += ds * k[i]


class V3(V2):
    """v2's forward, a row-by-row backward."""
    label = "v2 fwd, row backward"

    def backward(self, dinp, dout, inp, out):
        _v3_backward(dinp, dout, inp, out, self.lse)


class V4(V2):
    """The package's flash-style kernels."""
    label = "flash tiles, 6x16 (package)"

    def forward(self, out, inp):
        kernels.attention_forward(out, self.lse, inp)

    def backward(self, dinp, dout, inp, out):
        kernels.attention_backward(dinp, dout, inp, out, self.lse)


VERSIONS = {"v1": V1(), "v2": V2(), "v3": V3(), "v4": V4()}
CHECK_SHAPES = ((2, 7, 15, 3), (1, 1, 4, 1), (2, 129, 36, 4), (1, 300, 128, 2))  # B, T, C, NH


def reference(inp, dout, NH):
    """float64 (out, dinp) of causal attention, NumPy (the same math as tests/reference_numpy.py)."""
    B, T, C3 = inp.shape
    C = C3 // 3
    hs = C // NH
    x = inp.astype(np.float64)
    q, k, v = (x[..., i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    att = np.exp(s - s.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    out = att @ v
    do = dout.astype(np.float64).reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    dv = att.transpose(0, 1, 3, 2) @ do
    datt = do @ v.transpose(0, 1, 3, 2)
    ds = att * (datt - (att * datt).sum(-1, keepdims=True)) / math.sqrt(hs)
    dq, dk = ds @ k, ds.transpose(0, 1, 3, 2) @ q
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, C)  # noqa: E731
    return merge(out), np.concatenate([merge(dq), merge(dk), merge(dv)], axis=-1)


def check(version, B, T, C, NH, rng):
    """Max relative errors (out, dinp) of a version against the float64 reference."""
    inp = rng.standard_normal((B, T, 3 * C)).astype(F32)
    dout = rng.standard_normal((B, T, C)).astype(F32)
    out = np.full((B, T, C), np.nan, F32)
    dinp = np.zeros((B, T, 3 * C), F32)
    version.setup(B, T, C, NH)
    version.forward(out, inp)
    version.backward(dinp, dout, inp, out)
    rout, rdinp = reference(inp, dout, NH)
    return common.max_rel_error(out, rout), common.max_rel_error(dinp, rdinp)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--T", default="64,256,1024", help="sequence lengths to time (B = 1)")
    ap.add_argument("--versions", default=",".join(VERSIONS))
    args = ap.parse_args(argv)
    versions = {n: VERSIONS[n] for n in args.versions.split(",")}
    rng = np.random.default_rng(0)
    print("correctness vs float64 NumPy (max |err| / max |ref|, tolerance 1e-5):")
    for name, v in versions.items():
        errs = [check(v, *shape, rng) for shape in CHECK_SHAPES]
        worst = max(max(e) for e in errs)
        print(f"  {name} {v.label:28s} max {worst:.2e}  {'ok' if worst < 1e-5 else 'FAIL'}")

    B, C, NH = 1, 768, 12
    hs = C // NH
    print(f"\none layer's attention at B={B}, C={C}, NH={NH}: ms min/median of up to {args.runs} runs, "
          f"GFLOP/s (median) on the causal pairs")
    rows = []
    for T in [int(t) for t in args.T.split(",")]:
        inp = (rng.standard_normal((B, T, 3 * C)) * 0.5).astype(F32)
        dout = rng.standard_normal((B, T, C)).astype(F32)
        out, dinp = np.empty((B, T, C), F32), np.zeros((B, T, 3 * C), F32)
        pairs = B * NH * T * (T + 1) / 2
        for name, v in versions.items():
            v.setup(B, T, C, NH)
            tf = common.time_runs(lambda: v.forward(out, inp), runs=args.runs, max_seconds=10)
            tb = common.time_runs(lambda: v.backward(dinp, dout, inp, out), runs=args.runs, max_seconds=10)
            (fmin, fmed, _), (bmin, bmed, _) = common.min_med_max(tf), common.min_med_max(tb)
            rows.append([str(T), name, f"{1e3 * fmin:.2f}", f"{1e3 * fmed:.2f}",
                         f"{common.gflops(4 * hs * pairs, fmed):.0f}", f"{1e3 * bmin:.2f}",
                         f"{1e3 * bmed:.2f}", f"{common.gflops(8 * hs * pairs, bmed):.0f}"])
    print(common.format_table(["T", "version", "fwd min", "fwd med", "GFLOP/s", "bwd min", "bwd med",
                                "GFLOP/s"], rows))


if __name__ == "__main__":
    main()
