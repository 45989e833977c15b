"""Kernel lab: matmul_forward, out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC).

Versions, from the straight port of llm.c upward:
  v1  llm.c's matmul_forward_naive: one dot product per output, parallel over rows
  v2  llm.c's matmul_forward: 8 rows share each weight element (LOOP_UNROLL = 8)
  v3  llmnb's first package kernel: 4x4 blocks of dot products, parallel over 64-column tiles
  v4  6x4 blocks of dot products (24 AVX-512 accumulators, 10 loads per 24 FMAs), 64-column tiles
  v5  v4's micro-kernel (4x2 without AVX-512), column tiles sized so that a task's weight tile
      fits L2, the whole k of a row in one pass, edge kernels for any shape (the package's until
      the packed GEMM)
  v6  llmnb.matmul.matmul_forward (the package's): the packed GEMM, BLIS-style: 6-row panels of
      inp and 16-column panels of weight^T copied k-major into scratch, the 6x16 vector
      micro-kernel (12 accumulators of 8 floats, 22 loads per 96 FMAs), tasks of 120 x 128

`python -m dev.matmul_forward` checks every version against a float64 NumPy reference (odd
shapes and the 124M shapes) and prints GFLOP/s and the fraction of the machine's peak at the
GPT-2 124M shapes (N = B*T = 256). Options: --runs R (default 10), --versions v1,v6, --quick
(skip the classifier shape), --numpy (np.matmul as a reference row:
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m dev.matmul_forward --numpy`).
"""
import argparse

import numpy as np
from numba import njit, prange

from llmnb.matmul import matmul_forward as v6_package

from dev import common, dot_tiles
from dev.dot_tiles import nt_tile
from dev.common import F32, MATMUL_SHAPES, N_124M


# ------------------------------------------------------------------------------------------------
# v1: llm.c's matmul_forward_naive

@njit(parallel=True, fastmath=True, cache=True)
def _v1(out, inp, weight, bias, has_bias):
    N, C = inp.shape
    OC = weight.shape[0]
    for n in prange(N):
        for o in range(OC):
            val = bias[o] if has_bias else F32(0.0)
            for i in range(C):
                val += inp[n, i] * weight[o, i]
            out[n, o] = val


# ------------------------------------------------------------------------------------------------
# v2: llm.c's matmul_forward (8 rows reuse each loaded weight; falls back to v1 if N % 8)

@njit(parallel=True, fastmath=True, cache=True)
def _v2(out, inp, weight, bias, has_bias):
    N, C = inp.shape
    OC = weight.shape[0]
    for blk in prange(N // 8):
        n = blk * 8
        for o in range(OC):
            b = bias[o] if has_bias else F32(0.0)
            r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = b
            for i in range(C):
                w = weight[o, i]
                r0 += inp[n, i] * w
                r1 += inp[n + 1, i] * w
                r2 += inp[n + 2, i] * w
                r3 += inp[n + 3, i] * w
                r4 += inp[n + 4, i] * w
                r5 += inp[n + 5, i] * w
                r6 += inp[n + 6, i] * w
                r7 += inp[n + 7, i] * w
            out[n, o], out[n + 1, o], out[n + 2, o], out[n + 3, o] = r0, r1, r2, r3
            out[n + 4, o], out[n + 5, o], out[n + 6, o], out[n + 7, o] = r4, r5, r6, r7


# ------------------------------------------------------------------------------------------------
# v3: 4x4 blocks of dot products along C (the package's first kernel)

@njit(fastmath=True, cache=True)
def _dot(x, w):
    s = F32(0.0)
    for k in range(x.shape[0]):
        s += x[k] * w[k]
    return s


@njit(parallel=True, fastmath=True, cache=True)
def _v3(out, inp, weight, bias, has_bias):
    N, C = inp.shape
    OC = weight.shape[0]
    ntiles = (OC + 63) // 64
    for tile in prange(ntiles):
        o0 = tile * 64
        o1 = min(o0 + 64, OC)
        r = 0
        while r + 4 <= N:
            x0, x1, x2, x3 = inp[r], inp[r + 1], inp[r + 2], inp[r + 3]
            o = o0
            while o + 4 <= o1:
                w0, w1, w2, w3 = weight[o], weight[o + 1], weight[o + 2], weight[o + 3]
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = F32(0.0)
                s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = F32(0.0)
                for k in range(C):
                    a0, a1, a2, a3 = x0[k], x1[k], x2[k], x3[k]
                    b0, b1, b2, b3 = w0[k], w1[k], w2[k], w3[k]
                    s00 += a0 * b0
                    s01 += a0 * b1
                    s02 += a0 * b2
                    s03 += a0 * b3
                    s10 += a1 * b0
                    s11 += a1 * b1
                    s12 += a1 * b2
                    s13 += a1 * b3
                    s20 += a2 * b0
                    s21 += a2 * b1
                    s22 += a2 * b2
                    s23 += a2 * b3
                    s30 += a3 * b0
                    s31 += a3 * b1
                    s32 += a3 * b2
                    s33 += a3 * b3
                c0 = bias[o] if has_bias else F32(0.0)
                c1 = bias[o + 1] if has_bias else F32(0.0)
                c2 = bias[o + 2] if has_bias else F32(0.0)
                c3 = bias[o + 3] if has_bias else F32(0.0)
                out[r, o], out[r, o + 1], out[r, o + 2], out[r, o + 3] = s00 + c0, s01 + c1, s02 + c2, s03 + c3
                out[r + 1, o], out[r + 1, o + 1], out[r + 1, o + 2], out[r + 1, o + 3] = s10 + c0, s11 + c1, s12 + c2, s13 + c3
                out[r + 2, o], out[r + 2, o + 1], out[r + 2, o + 2], out[r + 2, o + 3] = s20 + c0, s21 + c1, s22 + c2, s23 + c3
                out[r + 3, o], out[r + 3, o + 1], out[r + 3, o + 2], out[r + 3, o + 3] = s30 + c0, s31 + c1, s32 + c2, s33 + c3
                o += 4
            for oo in range(o, o1):
                c = bias[oo] if has_bias else F32(0.0)
                for rr in range(r, r + 4):
                    out[rr, oo] = _dot(inp[rr], weight[oo]) + c
            r += 4
        for rr in range(r, N):
            for oo in range(o0, o1):
                c = bias[oo] if has_bias else F32(0.0)
                out[rr, oo] = _dot(inp[rr], weight[oo]) + c


# ------------------------------------------------------------------------------------------------
# v4: 6x4 blocks of dot products along C, 64-column tiles, whole C at once

@njit(parallel=True, fastmath=True, cache=True)
def _v4(out, inp, weight, bias, has_bias):
    N, C = inp.shape
    OC = weight.shape[0]
    ntiles = (OC + 63) // 64
    for tile in prange(ntiles):
        o0 = tile * 64
        o1 = min(o0 + 64, OC)
        o4 = o0 + (o1 - o0) // 4 * 4
        r = 0
        while r + 6 <= N:
            x0, x1, x2, x3, x4, x5 = inp[r], inp[r + 1], inp[r + 2], inp[r + 3], inp[r + 4], inp[r + 5]
            for o in range(o0, o4, 4):
                w0, w1, w2, w3 = weight[o], weight[o + 1], weight[o + 2], weight[o + 3]
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = F32(0.0)
                s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = F32(0.0)
                s40 = s41 = s42 = s43 = s50 = s51 = s52 = s53 = F32(0.0)
                for k in range(C):
                    b0, b1, b2, b3 = w0[k], w1[k], w2[k], w3[k]
                    a = x0[k]
                    s00 += a * b0
                    s01 += a * b1
                    s02 += a * b2
                    s03 += a * b3
                    a = x1[k]
                    s10 += a * b0
                    s11 += a * b1
                    s12 += a * b2
                    s13 += a * b3
                    a = x2[k]
                    s20 += a * b0
                    s21 += a * b1
                    s22 += a * b2
                    s23 += a * b3
                    a = x3[k]
                    s30 += a * b0
                    s31 += a * b1
                    s32 += a * b2
                    s33 += a * b3
                    a = x4[k]
                    s40 += a * b0
                    s41 += a * b1
                    s42 += a * b2
                    s43 += a * b3
                    a = x5[k]
                    s50 += a * b0
                    s51 += a * b1
                    s52 += a * b2
                    s53 += a * b3
                c0 = bias[o] if has_bias else F32(0.0)
                c1 = bias[o + 1] if has_bias else F32(0.0)
                c2 = bias[o + 2] if has_bias else F32(0.0)
                c3 = bias[o + 3] if has_bias else F32(0.0)
                out[r, o], out[r, o + 1], out[r, o + 2], out[r, o + 3] = s00 + c0, s01 + c1, s02 + c2, s03 + c3
                out[r + 1, o], out[r + 1, o + 1], out[r + 1, o + 2], out[r + 1, o + 3] = s10 + c0, s11 + c1, s12 + c2, s13 + c3
                out[r + 2, o], out[r + 2, o + 1], out[r + 2, o + 2], out[r + 2, o + 3] = s20 + c0, s21 + c1, s22 + c2, s23 + c3
                out[r + 3, o], out[r + 3, o + 1], out[r + 3, o + 2], out[r + 3, o + 3] = s30 + c0, s31 + c1, s32 + c2, s33 + c3
                out[r + 4, o], out[r + 4, o + 1], out[r + 4, o + 2], out[r + 4, o + 3] = s40 + c0, s41 + c1, s42 + c2, s43 + c3
                out[r + 5, o], out[r + 5, o + 1], out[r + 5, o + 2], out[r + 5, o + 3] = s50 + c0, s51 + c1, s52 + c2, s53 + c3
            for o in range(o4, o1):
                c = bias[o] if has_bias else F32(0.0)
                for rr in range(r, r + 6):
                    out[rr, o] = _dot(inp[rr], weight[o]) + c
            r += 6
        for rr in range(r, N):
            for o in range(o0, o1):
                c = bias[o] if has_bias else F32(0.0)
                out[rr, o] = _dot(inp[rr], weight[o]) + c


# ------------------------------------------------------------------------------------------------
# the versions, with the public argument convention (bias may be None)

# ------------------------------------------------------------------------------------------------
# v5: dot-product tiles (matmul.nt_tile), column tiles that fit L2

TILE_BYTES = 192 * 1024   # columns per parallel task: the task's b-tile (cols x K) fits L2


@njit(cache=True, inline="always")
def _tile_width(P, K):
    # columns per parallel task: a multiple of CB whose b-tile (width x K floats) is ~TILE_BYTES
    width = TILE_BYTES // (4 * max(1, K)) // dot_tiles.CB * dot_tiles.CB
    return max(dot_tiles.CB, min(width, (P + dot_tiles.CB - 1) // dot_tiles.CB * dot_tiles.CB))


@njit(parallel=True, fastmath=True, cache=True)
def _matmul_forward_2d(out, inp, weight, bias, has_bias):
    # out (N,OC) = inp (N,C) . weight (OC,C)^T + bias (OC)
    C = inp.shape[1]
    OC = out.shape[1]
    width = _tile_width(OC, C)
    ntiles = (OC + width - 1) // width
    for t in prange(ntiles):
        o0 = t * width
        nt_tile(out, inp, 0, weight, o0, min(o0 + width, OC), bias, has_bias, False)


def _with_public_args(kernel, needs_rows_multiple_of=1):
    def run(out, inp, weight, bias):
        C = inp.shape[-1]
        OC = weight.shape[0]
        inp2, out2 = inp.reshape(-1, C), out.reshape(-1, OC)
        if inp2.shape[0] % needs_rows_multiple_of:
            _v1(out2, inp2, weight, bias if bias is not None else weight[0], bias is not None)
        else:
            kernel(out2, inp2, weight, bias if bias is not None else weight[0], bias is not None)
    return run


def numpy_matmul(out, inp, weight, bias):
    """Reference only (BLAS is not used on llmnb's training path): NumPy's OpenBLAS sgemm."""
    np.matmul(inp, weight.T, out=out)
    if bias is not None:
        out += bias


VERSIONS = {
    "v1": ("llm.c naive", _with_public_args(_v1)),
    "v2": ("llm.c 8-row unroll", _with_public_args(_v2, needs_rows_multiple_of=8)),
    "v3": ("4x4 blocks", _with_public_args(_v3)),
    "v4": ("6x4 blocks", _with_public_args(_v4)),
    "v5": ("dot tiles, L1/L2 tiling", _with_public_args(_matmul_forward_2d)),
    "v6": ("package: packed 6x16", v6_package),
}

CHECK_SHAPES = ((15, 37, 67), (3, 5, 3), (2, 70, 1), (9, 130, 133), (13, 1700, 29))  # (N, C, OC)


def reference(inp, weight, bias):
    out = inp.astype(np.float64) @ weight.astype(np.float64).T
    return out if bias is None else out + bias


def check(fn, N, C, OC, with_bias, rng):
    """Max relative error of fn vs float64 NumPy on random inputs; out starts as NaN garbage."""
    inp = rng.standard_normal((N, C)).astype(F32)
    weight = (rng.standard_normal((OC, C)) / np.sqrt(C)).astype(F32)
    bias = rng.standard_normal(OC).astype(F32) if with_bias else None
    out = np.full((N, OC), np.nan, F32)
    fn(out, inp, weight, bias)
    return common.max_rel_error(out, reference(inp, weight, bias))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--versions", default=",".join(VERSIONS))
    ap.add_argument("--quick", action="store_true", help="skip the classifier shape")
    ap.add_argument("--numpy", action="store_true",
                    help="add np.matmul (OpenBLAS) as a reference row; run with OPENBLAS_CORETYPE "
                         "and OPENBLAS_L2_SIZE unset (env -u ...) to let it pick its AVX-512 kernels")
    args = ap.parse_args(argv)
    names = args.versions.split(",")
    if args.numpy:
        VERSIONS["numpy"] = ("np.matmul (OpenBLAS)", numpy_matmul)
        names.append("numpy")
    rng = np.random.default_rng(0)
    shapes = [s for s in MATMUL_SHAPES if not (args.quick and s[0] == "classifier")]

    print("correctness vs float64 NumPy (max |err| / max |ref|, tolerance 1e-5):")
    for name in names:
        fn = VERSIONS[name][1]
        errs = [check(fn, N, C, OC, hb, rng) for (N, C, OC) in CHECK_SHAPES for hb in (True, False)]
        errs += [check(fn, N_124M, C, OC, True, rng) for (_, C, OC) in shapes]
        status = "ok" if max(errs) < 1e-5 else "FAIL"
        print(f"  {name} {VERSIONS[name][0]:28s} max {max(errs):.2e}  {status}")

    peak, line = common.machine_peaks()
    print("\n" + line)
    print(f"timing: N={N_124M}, min/median/max of up to {args.runs} runs; GFLOP/s from the min "
          f"(median in brackets); % of peak")
    rows = []
    for name in names:
        fn = VERSIONS[name][1]
        row = [name]
        for (_, C, OC) in shapes:
            inp = rng.standard_normal((N_124M, C)).astype(F32)
            weight = (rng.standard_normal((OC, C)) * 0.02).astype(F32)
            bias = rng.standard_normal(OC).astype(F32)
            out = np.empty((N_124M, OC), F32)
            ts = common.time_runs(lambda: fn(out, inp, weight, bias), runs=args.runs, max_seconds=20)
            tmin, tmed, _ = common.min_med_max(ts)
            flops = 2.0 * N_124M * C * OC
            g = common.gflops(flops, tmin)
            row.append(f"{g:.0f} ({common.gflops(flops, tmed):.0f}) {100 * g / peak:.0f}%")
        rows.append(row)
    headers = ["version"] + [f"{n} {C}->{OC}" for (n, C, OC) in shapes]
    print(common.format_table(headers, rows))


if __name__ == "__main__":
    main()
