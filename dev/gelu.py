"""Kernel lab: gelu_forward / gelu_backward (GPT-2's tanh approximation), the largest non-matmul
cost of a 124M step (12 + 12 calls on (B,T,4C) = 786,432 floats at B=4, T=64).

    gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
    dgelu/dx = 0.5 (1 + tanh(u)) + 0.5 x sech^2(u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

Versions:
  v0  llm.c's formulas as the package first had them: np.tanh and np.cosh per element, no
      fastmath (llm.c keeps gelu out of -Ofast, its issue #168): two scalar libm calls per
      element in the backward, nothing vectorised
  v1  llmnb.kernels.gelu_forward/backward now: v2's one exp, written so that nothing cancels
      (1 + tanh(u) = 2e/(1+e) for u < 0, sech^2 = 4e/(1+e)^2), fastmath 'contract' only
  v2  one exp per element: tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2|u|) (never
      overflows), sech^2 = 1 - tanh^2 (no cosh); fastmath; the exp stays a scalar libm call
      (llvmlite's LLVM has no vector math library here), the rest vectorises
  v3  no libm at all: tanh(u) = u P(u^2) / Q(u^2) on |u| < 9 and +-1 beyond (tanh(9) rounds to
      1 in float32), a rational fit of degree 4/4 made for this lab (dev/gelu.py --fit refits
      it: weighted linearised least squares on [0, 9]); everything vectorises (AVX-512). Its
      ~3e-7 absolute error in tanh near +-1 is multiplied by ~x^3 in the gradient's 1 - tanh^2
      term: ~4e-6 there (v1: 2e-7, v2: 1e-6)

`python -m dev.gelu` prints each version's max |error| against float64 (typical inputs and
extremes up to +-1e4, where none may give NaN) and its time per call at the 124M shape.
v1 (the package) is v2 made exact to a few ulp; v3 is not in the package (4e-6 error).
"""
import argparse
import math

import numpy as np
from numba import njit, prange

from llmnb import kernels

from dev import common
from dev.common import F32

S = F32(math.sqrt(2.0 / math.pi))
CUBE = F32(0.044715)
UMAX = F32(9.0)
# tanh(u) ~ u * (P0 + P1 y + ... + P4 y^4) / (1 + Q1 y + ... + Q4 y^4), y = u^2, |u| <= 9
P0, P1, P2, P3, P4 = (F32(9.99999979e-01), F32(1.33810226e-01), F32(3.49558440e-03),
                      F32(2.06090202e-05), F32(1.33545796e-08))
Q1, Q2, Q3, Q4 = F32(4.67143381e-01), F32(2.58769682e-02), F32(3.28562866e-04), F32(7.77652352e-07)


# ------------------------------------------------------------------------------------------------
# v0: llm.c's formulas (the package's first version)

@njit(parallel=True, cache=True)
def v0_forward(out, inp):
    o, x_ = out.reshape(-1), inp.reshape(-1)
    for i in prange(x_.shape[0]):
        x = x_[i]
        o[i] = F32(0.5) * x * (F32(1.0) + np.tanh(S * (x + CUBE * x * x * x)))


@njit(parallel=True, cache=True)
def v0_backward(dinp, inp, dout):
    di, x_, do = dinp.reshape(-1), inp.reshape(-1), dout.reshape(-1)
    for i in prange(x_.shape[0]):
        x = x_[i]
        u = S * (x + CUBE * x * x * x)
        c = np.cosh(u)
        local = F32(0.5) * (F32(1.0) + np.tanh(u)) + \
            x * F32(0.5) * (F32(1.0) / (c * c)) * S * (F32(1.0) + F32(3.0) * CUBE * x * x)
        di[i] += local * do[i]


# ------------------------------------------------------------------------------------------------
# v2: one exp per element

@njit(fastmath=True, cache=True, inline="always")
def _tanh_exp(u):
    e = np.exp(F32(-2.0) * abs(u))
    t = (F32(1.0) - e) / (F32(1.0) + e)
    return t if u >= F32(0.0) else -t


@njit(parallel=True, fastmath=True, cache=True)
def v2_forward(out, inp):
    o, x_ = out.reshape(-1), inp.reshape(-1)
    for i in prange(x_.shape[0]):
        x = x_[i]
        o[i] = F32(0.5) * x * (F32(1.0) + _tanh_exp(S * (x + CUBE * x * x * x)))


@njit(parallel=True, fastmath=True, cache=True)
def v2_backward(dinp, inp, dout):
    di, x_, do = dinp.reshape(-1), inp.reshape(-1), dout.reshape(-1)
    for i in prange(x_.shape[0]):
        x = x_[i]
        t = _tanh_exp(S * (x + CUBE * x * x * x))
        local = F32(0.5) * (F32(1.0) + t) + \
            x * F32(0.5) * (F32(1.0) - t * t) * S * (F32(1.0) + F32(3.0) * CUBE * x * x)
        di[i] += local * do[i]


# ------------------------------------------------------------------------------------------------
# v3: rational tanh, no libm

@njit(fastmath=True, cache=True, inline="always")
def _tanh_rational(u):
    # |u| >= 9: exactly +-1, as float32 tanh is (else 1 - t^2 in the backward is not 0, and it is
    # multiplied by x^3: huge errors for large |x|)
    c = min(max(u, -UMAX), UMAX)
    y = c * c
    p = (((P4 * y + P3) * y + P2) * y + P1) * y + P0
    q = (((Q4 * y + Q3) * y + Q2) * y + Q1) * y + F32(1.0)
    t = c * p / q
    return t if abs(u) < UMAX else (F32(1.0) if u > F32(0.0) else F32(-1.0))


@njit(parallel=True, fastmath=True, cache=True)
def v3_forward(out, inp):
    o, x_ = out.reshape(-1), inp.reshape(-1)
    for i in prange(x_.shape[0]):
        x = x_[i]
        o[i] = F32(0.5) * x * (F32(1.0) + _tanh_rational(S * (x + CUBE * x * x * x)))


@njit(parallel=True, fastmath=True, cache=True)
def v3_backward(dinp, inp, dout):
    di, x_, do = dinp.reshape(-1), inp.reshape(-1), dout.reshape(-1)
    for i in prange(x_.shape[0]):
        x = x_[i]
        t = _tanh_rational(S * (x + CUBE * x * x * x))
        local = F32(0.5) * (F32(1.0) + t) + \
            x * F32(0.5) * (F32(1.0) - t * t) * S * (F32(1.0) + F32(3.0) * CUBE * x * x)
        di[i] += local * do[i]


VERSIONS = {
    "v0": ("llm.c tanh + cosh", v0_forward, v0_backward),
    "v1": ("package (one exp, exact)", kernels.gelu_forward, kernels.gelu_backward),
    "v2": ("one exp, fastmath", v2_forward, v2_backward),
    "v3": ("rational tanh, vectorised", v3_forward, v3_backward),
}


# ------------------------------------------------------------------------------------------------

def reference(x):
    """float64 gelu and its derivative."""
    x = x.astype(np.float64)
    s = math.sqrt(2.0 / math.pi)
    u = s * (x + 0.044715 * x ** 3)
    t = np.tanh(u)
    return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * s * (1 + 3 * 0.044715 * x * x)


def fit(xmax=9.0, iterations=60):
    """Refit the degree-4/4 rational tanh on [0, xmax]; prints the coefficients and errors."""
    x = np.linspace(1e-4, xmax, 20001)
    y, f = x * x, np.tanh(x)
    w = np.ones_like(x)
    for _ in range(iterations):
        A = np.column_stack([x * y ** i for i in range(5)] + [-f * y ** j for j in range(1, 5)])
        sol = np.linalg.lstsq(A * (w / f)[:, None], w, rcond=None)[0]
        p, q = sol[:5], np.concatenate([[1.0], sol[5:]])
        rel = (x * np.polyval(p[::-1], y) / np.polyval(q[::-1], y) - f) / f
        w = w * (1 + np.abs(rel) / np.abs(rel).max())
    print("P", p.tolist(), "\nQ", q.tolist(), "\nmax relative error (float64):", np.abs(rel).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--fit", action="store_true", help="refit v3's rational tanh and exit")
    args = ap.parse_args(argv)
    if args.fit:
        return fit()
    rng = np.random.default_rng(0)
    x_typ = (rng.standard_normal(786432) * 3).astype(F32)
    x_ext = np.concatenate([np.linspace(-20, 20, 4001), [-1e4, -100, -50, 50, 100, 1e4]]).astype(F32)
    print("max |error| against float64 (forward out, backward local gradient):")
    for name, (label, fwd, bwd) in VERSIONS.items():
        errs = []
        for x in (x_typ, x_ext):
            out = np.empty_like(x)
            dinp = np.zeros_like(x)
            fwd(out, x)
            bwd(dinp, x, np.ones_like(x))
            rout, rgrad = reference(x)
            errs += [np.abs(out - rout).max(), np.abs(dinp - rgrad).max()]
        print(f"  {name} {label:28s} typical |x|~3: out {errs[0]:.1e} grad {errs[1]:.1e}   "
              f"|x| up to 1e4: out {errs[2]:.1e} grad {errs[3]:.1e}")

    B, T, C4 = 4, 64, 4 * 768
    x = (rng.standard_normal((B, T, C4)) * 3).astype(F32)
    dout = rng.standard_normal((B, T, C4)).astype(F32)
    out, dinp = np.empty_like(x), np.zeros_like(x)
    rows = []
    for name, (label, fwd, bwd) in VERSIONS.items():
        tf = common.time_runs(lambda: fwd(out, x), runs=args.runs)
        tb = common.time_runs(lambda: bwd(dinp, x, dout), runs=args.runs)
        rows.append([name, label] + [f"{1e3 * v:.3f}" for v in common.min_med_max(tf)]
                    + [f"{1e3 * v:.3f}" for v in common.min_med_max(tb)]
                    + [f"{12e3 * (tf[len(tf) // 2] + tb[len(tb) // 2]):.1f}"])
    print(f"\ntime per call at (B,T,4C) = ({B},{T},{C4}), ms min/median/max; per step = 12 x (fwd + bwd)")
    print(common.format_table(["version", "", "fwd min", "fwd med", "fwd max", "bwd min", "bwd med",
                                "bwd max", "ms/step"], rows))


if __name__ == "__main__":
    main()
