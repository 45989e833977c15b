"""Kernel lab: the GPU attention (causal, flash-style: per-row log-sum-exp kept, no (T, T) buffer).

Versions (each computes what llmnb.kernels.attention_forward / attention_backward compute on the CPU):
  v1   2026-11-26's package kernels: one thread per query (forward, dquery) or per key (dkey/dvalue),
       32 per block, each thread's q, o, dq... rows in shared memory; two shared-memory reads per
       multiply-add. On an H200 at B=8 T=1024 (124M) it took 194 ms forward + 802 ms backward a step
       (benchmarks/gpu/2026-11-26b-h200/bench.txt): 71% of the step.
  v2   the package's default (llmnb/cuda/attention_v2.py, until a card has run v3): register tiles
       as in the matmuls, 64 queries (32 rows in backward) per block against tiles of
       32 keys, 4 x 2 scores and 4 x 4 outputs per thread; tiles staged transposed (channel, row) and
       read one float at a time (0.5-0.75 shared loads per multiply-add). On an H200 at B=8 T=1024:
       2.1 ms forward (6.1 TFLOP/s) and 6.8 ms backward (4.7 TFLOP/s) per layer
       (benchmarks/gpu/2026-11-26c-h200/cuda_attention.txt).
  v3   the package's with LLMNB_CUDA_ATTENTION=v3 (llmnb/cuda/attention.py): v2's tiles staged as they lie (row, channel) and
       read 4 floats at a time (load4: 0.12-0.19 shared loads per multiply-add), staging on 32-bit
       indices. In the SASS for sm_90 (ptxas, no GPU): per key tile forward ~1,880 instructions for
       1,024 FFMA (v2 ~4,500-5,000), dquery ~2,700 for 1,536 (v2 ~6,300-6,800); no spills. Not yet timed.
  v4t  tensor cores in TF32, the package's with --precision tf32 (llmnb/cuda/attention_tc.py): every
       product (forward 2, backward 5) is mma.sync.m16n8k8; 4 warps of 16 rows against tiles of 32
       keys; the row statistics on the accumulators by 4-lane shuffles; p and dS through a per-warp
       shared tile. sm_90 (python -m llmnb.cuda.sass): 128 / 160 / 249 registers (forward, dquery,
       dkey_value), no spills. Checked within 3e-3 (TF32 operands). Not yet run on a card.
The check compares each with the CPU kernels (float32, the package's tolerance; TF32's for v4t); the timing gives ms
and TFLOP/s of the causal work (2 products of T(T+1)/2 x hs per head forward, 5 in backward).

    python -m dev.cuda_attention            # on a GPU: check + time each
    python -m dev.cuda_attention --check    # check only (on the CUDA simulator, tiny shapes)
"""
import argparse
import math
import os
import sys

import numpy as np

if "--check" in sys.argv and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from numba import cuda, float32  # noqa: E402  (after the simulator switch above)

from llmnb import kernels as cpu  # noqa: E402
from llmnb.cuda import attention as pkg  # noqa: E402
from llmnb.cuda import attention_tc as pkg_tc  # noqa: E402
from llmnb.cuda import launch  # noqa: E402

F32 = np.float32
ZERO = F32(0.0)
ONE = F32(1.0)
NEG_INF = F32(-np.inf)
ATT_ROWS = 8 if launch.SIMULATOR else 32   # v1: queries (keys) per block, one per thread
ATT_HS_MAX = 64
ATT_HS_PAD = ATT_HS_MAX + 1


# ----------------------------------------------------------------------------------------------
# v1 (as it was in llmnb/cuda/kernels.py)

@cuda.jit(device=True)
def _stage_rows(dst, src, t0, T, c0, hs):
    # dst (ATT_ROWS, ATT_HS_MAX)[r, :hs] = src (T, .)[t0 + r, c0:c0+hs] for t0 + r < T, by the
    # block's ATT_ROWS threads together (consecutive threads read consecutive floats)
    tid = cuda.threadIdx.x
    for idx in range(tid, ATT_ROWS * hs, ATT_ROWS):
        r = idx // hs
        i = idx % hs
        if t0 + r < T:
            dst[r, i] = src[t0 + r, c0 + i]


@cuda.jit
def v1_forward_kernel(out, lse, inp, scale):
    # out (B,T,C), lse (B,NH,T) = attention of the queries t0..t0+ATT_ROWS-1 of head (b, h) =
    # blockIdx.y, one per thread: an online softmax over the key tiles 0..t0 (running max m, sum l,
    # output o rescaled by exp(m_old - m_new) when the max grows); inp (B,T,3C). Each thread's q
    # and o are a row of shared memory (rows of ATT_HS_PAD floats: no bank conflicts), not
    # local arrays (local memory)
    ks = cuda.shared.array((ATT_ROWS, ATT_HS_MAX), float32)
    vs = cuda.shared.array((ATT_ROWS, ATT_HS_MAX), float32)
    qsh = cuda.shared.array((ATT_ROWS, ATT_HS_PAD), float32)
    osh = cuda.shared.array((ATT_ROWS, ATT_HS_PAD), float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = out.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    tid = cuda.threadIdx.x
    t0 = cuda.blockIdx.x * ATT_ROWS
    t = t0 + tid
    q = qsh[tid]
    o = osh[tid]
    if t < T:
        for i in range(hs):
            q[i] = inp[b, t, h * hs + i]
            o[i] = ZERO
    m = NEG_INF
    l = ZERO
    for j0 in range(0, t0 + ATT_ROWS, ATT_ROWS):
        if j0 >= T:
            break
        cuda.syncthreads()   # the previous tile is no longer read
        _stage_rows(ks, inp[b], j0, T, C + h * hs, hs)
        _stage_rows(vs, inp[b], j0, T, 2 * C + h * hs, hs)
        cuda.syncthreads()
        if t < T:
            for j in range(ATT_ROWS):
                if j0 + j > t:
                    break
                s = ZERO
                for i in range(hs):
                    s += q[i] * ks[j, i]
                s *= scale
                if s > m:
                    corr = math.exp(m - s)
                    l *= corr
                    for i in range(hs):
                        o[i] *= corr
                    m = s
                p = math.exp(s - m)
                l += p
                for i in range(hs):
                    o[i] += p * vs[j, i]
    if t < T:
        inv = ONE / l
        for i in range(hs):
            out[b, t, h * hs + i] = o[i] * inv
        lse[b, h, t] = m + math.log(l)


@cuda.jit
def v1_dquery_kernel(dinp, dout, inp, out, lse, scale):
    # dinp (B,T,3C) query thirds += scale * sum_{t2<=t} dS[t,t2] k[t2], one query t per thread,
    # with att = exp(scale q.k - lse[t]) and dS = att (dout[t].v[t2] - dout[t].out[t])
    ks = cuda.shared.array((ATT_ROWS, ATT_HS_MAX), float32)
    vs = cuda.shared.array((ATT_ROWS, ATT_HS_MAX), float32)
    qsh = cuda.shared.array((ATT_ROWS, ATT_HS_PAD), float32)
    dosh = cuda.shared.array((ATT_ROWS, ATT_HS_PAD), float32)
    dqsh = cuda.shared.array((ATT_ROWS, ATT_HS_PAD), float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = dout.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    tid = cuda.threadIdx.x
    t0 = cuda.blockIdx.x * ATT_ROWS
    t = t0 + tid
    q = qsh[tid]
    do = dosh[tid]
    dq = dqsh[tid]
    dd = ZERO
    lse_t = ZERO
    if t < T:
        for i in range(hs):
            q[i] = inp[b, t, h * hs + i]
            do[i] = dout[b, t, h * hs + i]
            dq[i] = ZERO
            dd += do[i] * out[b, t, h * hs + i]
        lse_t = lse[b, h, t]
    for j0 in range(0, t0 + ATT_ROWS, ATT_ROWS):
        if j0 >= T:
            break
        cuda.syncthreads()
        _stage_rows(ks, inp[b], j0, T, C + h * hs, hs)
        _stage_rows(vs, inp[b], j0, T, 2 * C + h * hs, hs)
        cuda.syncthreads()
        if t < T:
            for j in range(ATT_ROWS):
                if j0 + j > t:
                    break
                s = ZERO
                dp = ZERO
                for i in range(hs):
                    s += q[i] * ks[j, i]
                    dp += do[i] * vs[j, i]
                ds = math.exp(s * scale - lse_t) * (dp - dd)
                for i in range(hs):
                    dq[i] += ds * ks[j, i]
    if t < T:
        for i in range(hs):
            dinp[b, t, h * hs + i] += scale * dq[i]


@cuda.jit
def v1_dkey_value_kernel(dinp, dout, inp, out, lse, scale):
    # dinp (B,T,3C) key and value thirds += for each key t2 (one per thread), over the queries
    # t >= t2: dk += scale * dS[t,t2] q[t], dv += att[t,t2] dout[t] (att, dS as in dquery); the
    # block stages the query tiles from t2's tile to T-1: q, dout, lse and dout.out per row. The
    # thread's own k and v are read from global memory (cached), its dk and dv are shared rows.
    qs = cuda.shared.array((ATT_ROWS, ATT_HS_MAX), float32)
    dos = cuda.shared.array((ATT_ROWS, ATT_HS_MAX), float32)
    lses = cuda.shared.array(ATT_ROWS, float32)
    dds = cuda.shared.array(ATT_ROWS, float32)
    dksh = cuda.shared.array((ATT_ROWS, ATT_HS_PAD), float32)
    dvsh = cuda.shared.array((ATT_ROWS, ATT_HS_PAD), float32)
    NH = lse.shape[1]
    T = lse.shape[2]
    C = dout.shape[2]
    hs = C // NH
    b = cuda.blockIdx.y // NH
    h = cuda.blockIdx.y % NH
    j0 = cuda.blockIdx.x * ATT_ROWS
    tid = cuda.threadIdx.x
    t2 = j0 + tid
    dk = dksh[tid]
    dv = dvsh[tid]
    for i in range(hs):
        dk[i] = ZERO
        dv[i] = ZERO
    k = inp[b, t2 if t2 < T else T - 1, C + h * hs:C + (h + 1) * hs]
    v = inp[b, t2 if t2 < T else T - 1, 2 * C + h * hs:2 * C + (h + 1) * hs]
    for t0 in range(j0, T, ATT_ROWS):
        cuda.syncthreads()
        _stage_rows(qs, inp[b], t0, T, h * hs, hs)
        _stage_rows(dos, dout[b], t0, T, h * hs, hs)
        t = t0 + tid
        if t < T:
            dd = ZERO
            for i in range(hs):
                dd += dout[b, t, h * hs + i] * out[b, t, h * hs + i]
            dds[tid] = dd
            lses[tid] = lse[b, h, t]
        cuda.syncthreads()
        if t2 < T:
            for r in range(ATT_ROWS):
                if t0 + r >= T:
                    break
                if t0 + r >= t2:
                    s = ZERO
                    dp = ZERO
                    for i in range(hs):
                        s += qs[r, i] * k[i]
                        dp += dos[r, i] * v[i]
                    p = math.exp(s * scale - lses[r])
                    ds = p * (dp - dds[r])
                    for i in range(hs):
                        dv[i] += p * dos[r, i]
                        dk[i] += ds * qs[r, i]
    if t2 < T:
        for i in range(hs):
            dinp[b, t2, C + h * hs + i] += scale * dk[i]
            dinp[b, t2, 2 * C + h * hs + i] += dv[i]


class V1:
    def forward(self, out, lse, inp):
        B, T, C3 = inp.shape
        NH = lse.shape[1]
        scale = F32(1.0 / math.sqrt(C3 // 3 // NH))
        v1_forward_kernel[(launch.cdiv(T, ATT_ROWS), B * NH), ATT_ROWS](out, lse, inp, scale)

    def backward(self, dinp, dout, inp, out, lse):
        B, T, C3 = inp.shape
        NH = lse.shape[1]
        scale = F32(1.0 / math.sqrt(C3 // 3 // NH))
        grid = (launch.cdiv(T, ATT_ROWS), B * NH)
        v1_dquery_kernel[grid, ATT_ROWS](dinp, dout, inp, out, lse, scale)
        v1_dkey_value_kernel[grid, ATT_ROWS](dinp, dout, inp, out, lse, scale)


class V2:
    """The package's v2 (llmnb/cuda/attention_v2.py, the version an H200 timed; the default)."""

    def __init__(self):
        self.att = pkg.Attention("v2")

    def forward(self, out, lse, inp):
        self.att.attention_forward(out, lse, inp)

    def backward(self, dinp, dout, inp, out, lse):
        self.att.attention_backward(dinp, dout, inp, out, lse)


class V3:
    def __init__(self):
        self.att = pkg.Attention("v3")

    def forward(self, out, lse, inp):
        self.att.attention_forward(out, lse, inp)

    def backward(self, dinp, dout, inp, out, lse):
        self.att.attention_backward(dinp, dout, inp, out, lse)


class V4T:
    def __init__(self):
        self.att = pkg_tc.AttentionTF32()

    def forward(self, out, lse, inp):
        self.att.attention_forward(out, lse, inp)

    def backward(self, dinp, dout, inp, out, lse):
        self.att.attention_backward(dinp, dout, inp, out, lse)


VERSIONS = {"v1": V1, "v2": V2, "v3": V3, "v4t": V4T}
# versions on tensor cores in TF32: checked with a TF32 tolerance (10-bit mantissas), not fp32's
TF32_VERSIONS = {"v4t"}


def inputs(B, T, NH, hs, rng):
    C = NH * hs
    qkv = rng.standard_normal((B, T, 3 * C), dtype=F32)
    dout = rng.standard_normal((B, T, C), dtype=F32)
    return qkv, dout


def check(shapes, versions=None):
    """Each version's out, lse and dinp against the CPU kernels on (B, T, NH, hs) shapes; returns the
    number of mismatches. versions: names of VERSIONS (default all)."""
    rng = np.random.default_rng(0)
    bad = 0
    for B, T, NH, hs in shapes:
        qkv, dout = inputs(B, T, NH, hs, rng)
        C = NH * hs
        out, lse = np.zeros((B, T, C), F32), np.zeros((B, NH, T), F32)
        cpu.attention_forward(out, lse, qkv)
        dinp = np.zeros_like(qkv)
        cpu.attention_backward(dinp, dout, qkv, out, lse)
        for name, cls in VERSIONS.items():
            if versions is not None and name not in versions:
                continue
            v = cls()
            d_out, d_lse = cuda.to_device(np.zeros_like(out)), cuda.to_device(np.zeros_like(lse))
            d_qkv, d_dout, d_dinp = cuda.to_device(qkv), cuda.to_device(dout), cuda.to_device(np.zeros_like(qkv))
            v.forward(d_out, d_lse, d_qkv)
            v.backward(d_dinp, d_dout, d_qkv, d_out, d_lse)
            for what, got, want in (("out", d_out, out), ("lse", d_lse, lse), ("dinp", d_dinp, dinp)):
                got = got.copy_to_host()
                err = float(np.abs(got - want).max() / np.abs(want).max())
                # TF32: both products' operands rounded to 10 mantissa bits (~5e-4 each); a wrong lane,
                # mask or rescale is O(1)
                ok = err < (3e-3 if name in TF32_VERSIONS else 1e-5)
                bad += not ok
                print(f"{'ok ' if ok else 'BAD'} {name} {what:5s} B={B} T={T} NH={NH} hs={hs}: max rel err {err:.1e}")
    return bad


def bench(shapes, runs):
    rng = np.random.default_rng(0)
    print(f"{'version':8s} {'shape':24s} {'fwd ms':>8s} {'TFLOP/s':>8s} {'bwd ms':>8s} {'TFLOP/s':>8s}")
    for B, T, NH, hs in shapes:
        qkv, dout = inputs(B, T, NH, hs, rng)
        C = NH * hs
        work = 2.0 * B * NH * (T * (T + 1) / 2) * hs   # one causal product's FLOPs
        for name, cls in VERSIONS.items():
            v = cls()
            d_out, d_lse = cuda.device_array((B, T, C), F32), cuda.device_array((B, NH, T), F32)
            d_qkv, d_dout, d_dinp = cuda.to_device(qkv), cuda.to_device(dout), cuda.to_device(np.zeros_like(qkv))
            times = []
            for fn in (lambda: v.forward(d_out, d_lse, d_qkv), lambda: v.backward(d_dinp, d_dout, d_qkv, d_out, d_lse)):
                fn()
                cuda.synchronize()
                e0, e1 = cuda.event(), cuda.event()
                e0.record()
                for _ in range(runs):
                    fn()
                e1.record()
                e1.synchronize()
                times.append(cuda.event_elapsed_time(e0, e1) / runs)
            fwd, bwd = times
            print(f"{name:8s} B={B} T={T} NH={NH} hs={hs:<4d} {fwd:8.3f} {2 * work / fwd / 1e9:8.2f} "
                  f"{bwd:8.3f} {5 * work / bwd / 1e9:8.2f}", flush=True)


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="check only, on the CUDA simulator")
    ap.add_argument("--runs", type=int, default=10, help="timed calls per version and shape (default 10)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.check:
        bad = check([(1, 11, 2, 8), (2, 20, 1, 12)])
    else:
        bad = check([(1, 200, 2, 64), (2, 70, 3, 32)])
        bench([(4, 64, 12, 64), (8, 1024, 12, 64)], args.runs)
    print(f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
