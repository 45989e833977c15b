"""Kernel lab: matmul_backward, the gradients of out = inp @ weight^T + bias:
    dinp (N,C) += dout (N,OC) @ weight (OC,C);  dweight (OC,C) += dout^T @ inp;  dbias += sum_n dout

Versions, from the straight port of llm.c upward:
  v1  llm.c's matmul_backward: dinp row by row (parallel over rows), dweight row by row
      (parallel over OC), as axpy loops that load and store the gradient for every term
  v2  llmnb's first package kernel: v1 with dinp tiled by 64 columns
  v3  both products as "NT" dot-product products (the 6x4 micro-kernel of the forward) on
      operands transposed into scratch first, by separate parallel transposes
  v4  as v3, but each parallel task transposes only the operand rows it multiplies, just before
      (they are then still in its L2); dweight in 48-row tasks; the classifier in chunks that
      keep the scratch at <= 16 MB (the package's until the packed GEMM)
  v5  llmnb.matmul.matmul_backward (the package's): the packed GEMM of the forward (6x16 vector
      micro-kernel), its packing reading dout^T and weight in place: no transposes

`python -m dev.matmul_backward` checks every version against float64 NumPy (odd shapes, the
124M shapes) and prints GFLOP/s (4*N*C*OC FLOPs per call) and the fraction of the
machine's peak at the GPT-2 124M shapes (N = 256), then v5's two halves (dinp, dweight+dbias) alone.
Options: --runs R (default 10), --versions v1,v5, --quick (skip the classifier shape).
"""
import argparse

import numpy as np
from numba import njit, prange

from llmnb import matmul
from llmnb.matmul import matmul_backward as v5_package

from dev import common, dot_tiles
from dev.dot_tiles import nt_tile
from dev.common import F32, MATMUL_SHAPES, N_124M


# ------------------------------------------------------------------------------------------------
# v1: llm.c's matmul_backward

@njit(parallel=True, fastmath=True, cache=True)
def _v1_dinp(dinp, dout, weight):
    N, C = dinp.shape
    OC = weight.shape[0]
    for n in prange(N):
        for o in range(OC):
            d = dout[n, o]
            for i in range(C):
                dinp[n, i] += weight[o, i] * d


@njit(parallel=True, fastmath=True, cache=True)
def _v1_dweight(dweight, dbias, dout, inp, has_bias):
    N, C = inp.shape
    OC = dweight.shape[0]
    for o in prange(OC):
        for n in range(N):
            d = dout[n, o]
            if has_bias:
                dbias[o] += d
            for i in range(C):
                dweight[o, i] += inp[n, i] * d


def v1(dinp, dweight, dbias, dout, inp, weight):
    OC, C = weight.shape
    d2 = dout.reshape(-1, OC)
    _v1_dinp(dinp.reshape(-1, C), d2, weight)
    _v1_dweight(dweight, dbias if dbias is not None else matmul.NO_BIAS, d2, inp.reshape(-1, C),
                dbias is not None)


# ------------------------------------------------------------------------------------------------
# v2: dinp in 64-column tiles (the package's first kernel)

@njit(parallel=True, fastmath=True, cache=True)
def _v2_dinp(dinp, dout, weight):
    N, C = dinp.shape
    OC = weight.shape[0]
    for tile in prange((C + 63) // 64):
        i0 = tile * 64
        i1 = min(i0 + 64, C)
        for o in range(OC):
            w = weight[o, i0:i1]
            for n in range(N):
                d = dout[n, o]
                row = dinp[n, i0:i1]
                for i in range(i1 - i0):
                    row[i] += d * w[i]


@njit(parallel=True, fastmath=True, cache=True)
def _v2_dweight(dweight, dbias, dout, inp, has_bias):
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


def v2(dinp, dweight, dbias, dout, inp, weight):
    OC, C = weight.shape
    d2 = dout.reshape(-1, OC)
    _v2_dinp(dinp.reshape(-1, C), d2, weight)
    _v2_dweight(dweight, dbias if dbias is not None else matmul.NO_BIAS, d2, inp.reshape(-1, C),
                dbias is not None)


# ------------------------------------------------------------------------------------------------
# v3: transpose everything first (separate passes), then NT products with the package's core

@njit(parallel=True, fastmath=True, cache=True)
def _nt_product(out, a, b):
    # out (M,P) += a (M,K) . b (P,K)^T, in parallel over 64-column tiles
    P = out.shape[1]
    for t in prange((P + 63) // 64):
        nt_tile(out, a, 0, b, t * 64, min(t * 64 + 64, P), matmul.NO_BIAS, False, True)


@njit(parallel=True, fastmath=True, cache=True)
def _row_sums(dbias, rows):
    for o in prange(rows.shape[0]):
        s = F32(0.0)
        for k in range(rows.shape[1]):
            s += rows[o, k]
        dbias[o] += s


def v3(dinp, dweight, dbias, dout, inp, weight, scratch=matmul.MatmulScratch()):
    OC, C = weight.shape
    d2, x2 = dout.reshape(-1, OC), inp.reshape(-1, C)
    N = d2.shape[0]
    weightT = scratch.get("weightT", (C, OC))   # (whole matrices: fine below the classifier)
    doutT = scratch.get("doutT", (OC, N))
    inpT = scratch.get("inpT", (C, N))
    _transpose(weightT, weight)
    _transpose(doutT, d2)
    _transpose(inpT, x2)
    _nt_product(dinp.reshape(-1, C), d2, weightT)
    _nt_product(dweight, doutT, inpT)
    if dbias is not None:
        _row_sums(dbias, doutT)


# ------------------------------------------------------------------------------------------------
# transposes (v3, v4) and v4: each task packs its own operand rows

@njit(fastmath=True, cache=True, inline="always")
def _sum(x):
    # sum_k x[k]
    s = F32(0.0)
    for k in range(x.shape[0]):
        s += x[k]
    return s


TILE_BYTES = 192 * 1024   # columns per parallel task: the task's b-tile (cols x K) fits L2
DINP_CHUNK = 4096   # dinp: columns of dout per pass (a pass's N x 4096 block of dout stays in L3)
DW_CHUNK_FLOATS = 4 * 1024 * 1024  # dweight: largest dout^T chunk in the scratch (16 MB)
DW_ROWS = 48        # rows of dweight per parallel task of the backward (a multiple of RB)


@njit(cache=True, inline="always")
def _tile_width(P, K):
    # columns per parallel task: a multiple of dot_tiles.CB whose b-tile (width x K floats) is ~TILE_BYTES
    width = TILE_BYTES // (4 * max(1, K)) // dot_tiles.CB * dot_tiles.CB
    return max(dot_tiles.CB, min(width, (P + dot_tiles.CB - 1) // dot_tiles.CB * dot_tiles.CB))


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
def _transpose(dst, src):
    # dst (P,Q) = src (Q,P)^T, in parallel over tiles of 128 columns of src: 512-byte stretches
    # of each src row (64-column tiles are 1.4x slower, and so are tiles of fewer rows)
    Q, P = src.shape
    for t in prange((P + 127) // 128):
        _pack_transposed(dst, 0, 0, src, t * 128, min(t * 128 + 128, P), 0, Q)


@njit(parallel=True, fastmath=True, cache=True)
def _matmul_backward_dinp(dinp, dout, o0, weightT):
    # dinp (N,C) += dout (N,OC)[:, o0:o0+K] . weightT (C,K)^T, weightT = weight[o0:o0+K]^T
    C = dinp.shape[1]
    width = _tile_width(C, weightT.shape[1])
    for t in prange((C + width - 1) // width):
        c0 = t * width
        nt_tile(dinp, dout, o0, weightT, c0, min(c0 + width, C), matmul.NO_BIAS, False, True)


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
            nt_tile(out, a, 0, inpT, c0, min(c0 + width, C), matmul.NO_BIAS, False, True)
        if has_bias:
            for o in range(r0, r1):
                dbias[o] += _sum(a[o - r0])


def _v4_dinp(dinp, dout, weight, scratch):
    """dinp (N,C) += dout (N,OC) . weight (OC,C), in passes over DINP_CHUNK columns of dout (one
    pass below the classifier): a pass's block of dout stays in L3, and its transposed weight rows
    weight[o0:o1]^T fit a small scratch. Checked arrays only."""
    OC, C = weight.shape
    och = min(OC, DINP_CHUNK)
    for o0 in range(0, OC, och):
        o1 = min(o0 + och, OC)
        weightT = scratch.get("weightT", (C, o1 - o0))
        _transpose(weightT, weight[o0:o1])
        _matmul_backward_dinp(dinp, dout, o0, weightT)


def _v4_dweight(dweight, dbias, dout, inp, scratch):
    """dweight (OC,C) += dout (N,OC)^T . inp (N,C), dbias (OC) or None += dout summed over N, in
    chunks of the rows of dweight so that dout[:, o0:o1]^T fits the scratch. Checked arrays only."""
    N, C = inp.shape
    OC = dweight.shape[0]
    has_bias = dbias is not None
    inpT = scratch.get("inpT", (C, N))
    _transpose(inpT, inp)
    och = max(DW_ROWS, min(OC, DW_CHUNK_FLOATS // max(N, 1)))
    for o0 in range(0, OC, och):
        o1 = min(o0 + och, OC)
        _matmul_backward_dweight(dweight, dbias if has_bias else matmul.NO_BIAS, dout, inpT, o0, o1,
                                 scratch.get("doutT", (o1 - o0, N)), has_bias)


def v4(dinp, dweight, dbias, dout, inp, weight, scratch=matmul.MatmulScratch()):
    OC, C = weight.shape
    d2, x2 = dout.reshape(-1, OC), inp.reshape(-1, C)
    _v4_dinp(dinp.reshape(-1, C), d2, weight, scratch)
    _v4_dweight(dweight, dbias, d2, x2, scratch)


VERSIONS = {
    "v1": ("llm.c", v1),
    "v2": ("dinp 64-col tiles", v2),
    "v3": ("transpose, then NT 6x4", v3),
    "v4": ("fused transposes, NT", v4),
    "v5": ("package: packed 6x16", v5_package),
}

CHECK_SHAPES = ((15, 37, 67), (3, 5, 3), (2, 70, 1), (9, 130, 133), (13, 1700, 29), (50, 48, 1000))


def check(fn, N, C, OC, with_bias, rng):
    """Max relative error of the accumulated gradients vs float64 NumPy (random start values)."""
    inp = rng.standard_normal((N, C)).astype(F32)
    weight = (rng.standard_normal((OC, C)) / np.sqrt(C)).astype(F32)
    dout = rng.standard_normal((N, OC)).astype(F32)
    g0 = [rng.standard_normal(s).astype(F32) for s in ((N, C), (OC, C), (OC,))]
    dinp, dweight, dbias = (g.copy() for g in g0)
    fn(dinp, dweight, dbias if with_bias else None, dout, inp, weight)
    x, w, d = (a.astype(np.float64) for a in (inp, weight, dout))
    errs = [common.max_rel_error(dinp - g0[0], d @ w),
            common.max_rel_error(dweight - g0[1], d.T @ x)]
    if with_bias:
        errs.append(common.max_rel_error(dbias - g0[2], d.sum(0)))
    else:
        assert np.array_equal(dbias, g0[2])
    return max(errs)


def problem(rng, C, OC):
    inp = rng.standard_normal((N_124M, C)).astype(F32)
    weight = (rng.standard_normal((OC, C)) * 0.02).astype(F32)
    dout = rng.standard_normal((N_124M, OC)).astype(F32)
    grads = (np.zeros((N_124M, C), F32), np.zeros((OC, C), F32), np.zeros(OC, F32))
    return inp, weight, dout, grads


def cell(times, flops, peak):
    tmin, tmed, _ = common.min_med_max(times)
    g = common.gflops(flops, tmin)
    return f"{g:.0f} ({common.gflops(flops, tmed):.0f}) {100 * g / peak:.0f}%"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--versions", default=",".join(VERSIONS))
    ap.add_argument("--quick", action="store_true", help="skip the classifier shape")
    args = ap.parse_args(argv)
    names = args.versions.split(",")
    rng = np.random.default_rng(0)
    shapes = [s for s in MATMUL_SHAPES if not (args.quick and s[0] == "classifier")]

    print("correctness vs float64 NumPy (max |err| / max |ref| of the added gradient, tolerance 1e-4):")
    for name in names:
        fn = VERSIONS[name][1]
        errs = [check(fn, N, C, OC, hb, rng) for (N, C, OC) in CHECK_SHAPES for hb in (True, False)]
        errs += [check(fn, N_124M, C, OC, True, rng) for (_, C, OC) in shapes
                 if name != "v3" or OC < 10000]
        status = "ok" if max(errs) < 1e-4 else "FAIL"
        print(f"  {name} {VERSIONS[name][0]:24s} max {max(errs):.2e}  {status}")

    peak, line = common.machine_peaks()
    print("\n" + line)
    print(f"timing: N={N_124M}, up to {args.runs} runs; GFLOP/s from the min time (median in "
          f"brackets); % of peak")
    rows = []
    for name in names:
        fn = VERSIONS[name][1]
        row = [name]
        for (_, C, OC) in shapes:
            if name in ("v1", "v2", "v3") and OC > 10000 and args.runs > 3:
                runs = 3  # the slow versions on the classifier: 3 runs
            else:
                runs = args.runs
            inp, weight, dout, (dinp, dweight, dbias) = problem(rng, C, OC)
            ts = common.time_runs(lambda: fn(dinp, dweight, dbias, dout, inp, weight),
                                   runs=runs, max_seconds=30)
            row.append(cell(ts, 4.0 * N_124M * C * OC, peak))
        rows.append(row)
    headers = ["version"] + [f"{n} {C}->{OC}" for (n, C, OC) in shapes]
    print(common.format_table(headers, rows))

    print("\nv5's halves (2*N*C*OC FLOPs each): dinp (with its weight^T packing), "
          "dweight+dbias (with the dout^T and inp^T packing)")
    rows = []
    scratch = matmul.MatmulScratch()
    for label, part in (("dinp", _dinp_half), ("dweight", _dweight_half)):
        row = [label]
        for (_, C, OC) in shapes:
            inp, weight, dout, grads = problem(rng, C, OC)
            ts = common.time_runs(lambda: part(grads, dout, inp, weight, scratch),
                                   runs=args.runs, max_seconds=30)
            row.append(cell(ts, 2.0 * N_124M * C * OC, peak))
        rows.append(row)
    print(common.format_table(["half"] + [f"{n} {C}->{OC}" for (n, C, OC) in shapes], rows))


def _dinp_half(grads, dout, inp, weight, scratch):
    matmul.backward_dinp(grads[0], dout, weight, scratch)


def _dweight_half(grads, dout, inp, weight, scratch):
    matmul.backward_dweight(grads[1], grads[2], dout, inp, scratch)


if __name__ == "__main__":
    main()
