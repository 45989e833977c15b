"""Kernel lab: matmul_backward, the gradients of out = inp @ weight^T + bias:
    dinp (N,C) += dout (N,OC) @ weight (OC,C);  dweight (OC,C) += dout^T @ inp;  dbias += sum_n dout

Versions, from the straight port of llm.c upward:
  v1  llm.c's matmul_backward: dinp row by row (parallel over rows), dweight row by row
      (parallel over OC), as axpy loops that load and store the gradient for every term
  v2  llmnb's first package kernel: v1 with dinp tiled by 64 columns
  v3  both products as "NT" dot-product products (the 6x4 micro-kernel of the forward) on
      operands transposed into scratch first, by separate parallel transposes
  v4  llmnb.matmul.matmul_backward (the package's): as v3, but each parallel task transposes only
      the operand rows it multiplies, just before (they are then still in its L2); dweight in
      48-row tasks; the classifier in chunks that keep the scratch at <= 16 MB

`python -m dev.matmul_backward` checks every version against float64 NumPy (odd shapes, the
124M shapes) and prints GFLOP/s (4*N*C*OC FLOPs per call) and the fraction of the
machine's peak at the GPT-2 124M shapes (N = 256), then v4's two halves (dinp, dweight+dbias) alone.
Options: --runs R (default 10), --versions v1,v4, --quick (skip the classifier shape).
"""
import argparse

import numpy as np
from numba import njit, prange

from llmnb import matmul
from llmnb.matmul import matmul_backward as v4_package

from dev import common
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
        matmul._nt_tile(out, a, 0, b, t * 64, min(t * 64 + 64, P), matmul.NO_BIAS, False, True)


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
    matmul._transpose(weightT, weight)
    matmul._transpose(doutT, d2)
    matmul._transpose(inpT, x2)
    _nt_product(dinp.reshape(-1, C), d2, weightT)
    _nt_product(dweight, doutT, inpT)
    if dbias is not None:
        _row_sums(dbias, doutT)


VERSIONS = {
    "v1": ("llm.c", v1),
    "v2": ("dinp 64-col tiles", v2),
    "v3": ("transpose, then NT 6x4", v3),
    "v4": ("package: fused packing", v4_package),
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

    print("\nv4's halves (2*N*C*OC FLOPs each): dinp (with its weight^T packing), "
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
