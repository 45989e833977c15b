"""Kernel lab: the three GPU matmuls of training (forward, backward dinp, backward dweight) as one
tiled GEMM family, to pick tile shapes and pipelining on a real card.

    out (M,N) (+)= A (M,K) @ B (N,K)^T        A, B each stored K-contiguous or transposed
    forward:  out=out (N_tok,OC), A=inp (N_tok,C),        B=weight (OC,C)          (both K-contiguous)
    dinp:     out=dinp (N_tok,C), A=dout (N_tok,OC),      B=weight stored (OC,C) = B^T (transposed)
    dweight:  out=dweight (OC,C), A=dout stored (N_tok,OC) = A^T, B=inp stored (N_tok,C) = B^T

Versions:
  v3   the package's kernel before 2026-11-26 (128x128 tile, 16x16 threads, 8x8 outputs each,
       BK=16, loads and compute in turn: the SM idles while a tile loads); its timings are in
       benchmarks/gpu/2026-11-26-h200/cuda_gemm.txt, and the "package" row is now v4s-64x64
  v4   the same tile with register prefetch: the next K slab is loaded into registers while the
       current one is multiplied out of shared memory, and whole tiles skip the bounds checks
  v4s  v4 with split-K for grids smaller than two blocks per SM (dweight: K = B*T is long and the
       output small): each split writes its partial sum, a second kernel adds them in order
  v5s  v4s with the slab's k loop written four at a time over unsigned indices: numba's loop over k
       is not unrolled and each index pays a negative-index wraparound; on sm_90 (ptxas + cuobjdump
       here) the loop goes from 16 multiply-adds in 39 instructions to 64 in 110. The package's since
       2026-11-26 (second session); -r80 caps registers at 80 (3 blocks per SM instead of 2)
  v6s  v5s with 4 x 4 groups: each thread's rows and columns are groups of 4 neighbours, read from
       shared memory as one 128-bit load each (load4, an @intrinsic: numba emits four scalar loads
       for four neighbouring elements), the four k of a step written out as four inline calls
       (numba leaves the longer loop rolled), and the slab loads on unsigned indices. In the SASS
       of 128x128-bk8 (sm_90, compiled here without a GPU): the inner loop 256 FFMA in 287
       instructions (v5s: 64 in 110), 16 LDS.128 per 256 FFMA (v5s: 32 LDS.32 per 64), one slab
       with its loads ~65% FFMA (v5s ~32%); 126-138 registers. Not yet timed on a card; the
       package runs 128x128-bk8 with LLMNB_CUDA_GEMM=v6s (llmnb/cuda/launch.py)
  v7s  v6s whose slab loads read 4 neighbours along the operand's contiguous dimension in one
       128-bit global load, when the operands' rows are 16-byte aligned (Gemm then launches this
       kernel, else its scalar twin; partial slabs at the edges load one by one). SASS of the
       whole-slab path (sm_90): one slab of 128x128-bk8 with its loads ~616 instructions per 512
       FFMA (~83%; v6s ~790, ~65%), 128-133 registers. Not yet timed on a card.
  v8t  tensor cores in TF32 (mma.sync.m16n8k8, fp32 accumulate; llmnb/cuda/matmul_tc.py, the package's
       kernels behind --precision tf32): a block of 8 warps, each a 64 x 32 piece of the 128 x 128
       tile as 4 x 4 mma tiles, K slabs of 16 copied by cp.async two in flight, fragments read 32
       bits at a time from shared memory without bank conflicts and rounded by cvt.rna.tf32. SASS
       (sm_90, python -m llmnb.cuda.sass): 120-126 registers, no spills; a slab (2 k steps, with its
       cp.async copies and barriers) 274-289 instructions per 32 HMMA, of which 48 LDS and 2 x 48 for
       the rounding (FSETP + IADD per register). -trunc skips the rounding (the mma reads the fp32
       bits as tf32: truncation), 128x64, 64x64-bk32 and -w64x64 (4 warps of 64 x 64: 1 shared load
       per HMMA instead of 1.5, twice the accumulators) are other tiles. Checked against float64 of
       the tf32-rounded operands. -ldsm: the K-contiguous operands' fragments (forward's A and B,
       dinp's A) by ldmatrix.x4 (a matrix row is 4 floats, so lane l gets float l % 4 of row l // 4:
       the m16n8k8 layout), one LDSM per 4 registers instead of 4 LDS, then cvt.rna on the bits.
       SASS (sm_90, llmnb.cuda.sass.assemble of matmul_tc.make_gemms(128, 128, 16, 2, 4, LDSM=True)'s
       16-byte-copy kernels, no GPU, 2026-12-08 at `f5addc1`): a slab of forward 266
       instructions for 32 HMMA with 3 LDS + 12 LDSM (the package's: 278 with 51 LDS), dinp 281
       with 19 LDS + 8 LDSM (289), dweight unchanged (both operands R-contiguous); 120-126
       registers, no spills. Not yet run on a card.
  v9b  tensor cores in BF16 (mma.sync.m16n8k16 over bf16 operands, fp32 accumulate, bf16 output;
       llmnb/cuda/matmul_bf16.py, the matmuls of --precision bf16): v8t's tiles and pipeline with
       bf16 slabs (BK 32, 8 elements a 16-byte chunk), every fragment register from ldmatrix.x4
       (.trans for the transposed operands). SASS (sm_90): 122-130 registers, no spills; a slab
       (2 k steps) ~156-183 instructions per 32 HMMA, 12 LDSM and no other shared load. Checked
       against float64 of the bf16 operands (the output rounded to bf16: 2^-8 relative). Not yet
       run on a card. --cublas adds torch's bf16 and tf32 matmuls (cuBLAS) on the same shapes.
Each version is built by make_gemm(TM, TN, BK, ...) for its tile (v8t: matmul_tc.make_gemms); the
table shows TFLOP/s and the share of the card's fp32 peak at the GPT-2 124M shapes, B*T = 256 and
8192 (v8t against the same fp32 peak: tensor cores are several times above it).

    python -m dev.cuda_gemm            # on a GPU: check + time every version
    python -m dev.cuda_gemm --check    # check only (runs on the CUDA simulator, tiny tiles)
    python -m dev.cuda_gemm --ptx --versions v5s-64x64-bk16,v6s-128x128-bk8   # PTX load counts, no GPU
"""
import argparse
import os
import sys
import time

import numpy as np

if "--check" in sys.argv and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from numba import cuda, float32  # noqa: E402

from llmnb.cuda import launch  # noqa: E402,F401  (NumPy 2.5 shim, warnings filter)
from llmnb.cuda import lanes, matmul_bf16, matmul_tc  # noqa: E402
from llmnb.cuda import matmul as pkg  # noqa: E402

F32 = np.float32
U32 = np.uint32
ZERO = F32(0.0)
# device functions inlined at the NVVM level (the simulator's jit takes no such option)
DEVICE = cuda.jit(device=True) if launch.SIMULATOR else cuda.jit(device=True, forceinline=True)
ALIGN = None if launch.SIMULATOR else 16   # shared slabs' alignment (the simulator takes none)
# load4 (a 128-bit load), fetch4 and aligned_rows are the package's (llmnb/cuda/matmul.py, its v6s, v7s)
load4, fetch4, aligned_rows = pkg.load4, pkg.fetch4, pkg.aligned_rows


def make_gemm(TM, TN, BK, A_KR, B_KR, TX=16, TY=16, ACCUM=False, max_registers=None, unroll4=False,
              vec4=False, vload=False, vector_loads=False):
    """A kernel computing out[m, n] (+)= sum_k A[m,k] B[n,k] (+ bias[n]) over the K range of its
    blockIdx.z: splits[z] = out tile partial when SPLIT (out is (S,M,N)), else out (M,N).
    Block (TX, TY); grid (cdiv(N, TN*TX), cdiv(M, TM*TY), S).
    Thread (tx, ty) owns rows ty + TY*i and columns tx + TX*j; with vec4 it owns groups of 4
    neighbouring rows and columns instead, row(i) = (i // 4) * TILE_M / (TM / 4) + 4 ty + i % 4
    (likewise the columns), read from shared memory 4 at a time by load4."""
    TILE_M, TILE_N, NT = TM * TY, TN * TX, TX * TY
    A_LOADS, B_LOADS = TILE_M * BK // NT, TILE_N * BK // NT
    assert A_LOADS * NT == TILE_M * BK and B_LOADS * NT == TILE_N * BK
    # shared rows padded so that the transposing stores spread over the banks; vec4 pads by 4
    # floats, which keeps every row 16-byte aligned
    PM, PN = (TILE_M + 4, TILE_N + 4) if vec4 else (TILE_M + 1, TILE_N + 1)
    assert not vec4 or (TM % 4 == 0 and TN % 4 == 0 and BK % 4 == 0)
    # vload (v7): a thread's slab elements in groups of 4 along the operand's contiguous dimension;
    # vector_loads: the kernel that reads them with 128-bit global loads (whole slabs), for operands
    # whose rows are 16-byte aligned (Gemm picks it per call; the other reads them one by one)
    assert not vload or (vec4 and A_LOADS % 4 == 0 and B_LOADS % 4 == 0)
    assert vload or not vector_loads
    GM, GN = TILE_M // max(1, TM // 4), TILE_N // max(1, TN // 4)   # vec4: rows between a thread's groups

    @DEVICE
    def row_of(t, i, T, G):
        # the tile row (or column) of a thread's i-th accumulator row (column), t = ty (tx)
        if vec4:
            return (i // 4) * G + 4 * t + i % 4
        return t + i * T

    def make_load(KR, TILE_R, LOADS):
        @DEVICE
        def slab_elem(tid, i):
            # (rr, kk): the slab row and k of this thread's i-th element (tid unsigned with vec4).
            # vector_loads (v7's kernel for aligned rows): elements 4g..4g+3 are 4 neighbours along
            # x's contiguous dimension (k for KR False, r for KR True), one 128-bit global load; its
            # scalar twin keeps consecutive threads on consecutive elements (coalesced scalar loads)
            if vector_loads:
                l = U32(4) * (tid + U32((i // 4) * NT)) + U32(i % 4)
            elif vec4:
                l = tid + U32(i * NT)
            else:
                l = tid + i * NT
            if KR:
                if vec4:
                    return l % U32(TILE_R), l // U32(TILE_R)
                return l % TILE_R, l // TILE_R
            if vec4:
                return l // U32(BK), l % U32(BK)
            return l // BK, l % BK

        @DEVICE
        def load(regs, x, r0, k0, k_end):
            # regs[i] = X[r0 + rr, k0 + kk] for this thread's i-th element of the (TILE_R, BK) slab,
            # X = x (KR False: x is (R, K)) or x^T (KR True: x is (K, R)); zero outside
            tid = cuda.threadIdx.y * TX + cuda.threadIdx.x
            R = x.shape[1] if KR else x.shape[0]
            full = r0 + TILE_R <= R and k0 + BK <= k_end
            if vec4:  # v6: unsigned indices (no negative-index wraparound, shifts for / and %)
                tid = U32(tid)
                r0 = U32(r0)
                k0 = U32(k0)
                R = U32(R)
                k_end = U32(k_end)
            if vector_loads and full:  # v7: whole slab, 16-byte aligned rows (the launcher checked)
                for g in range(LOADS // 4):
                    rr, kk = slab_elem(tid, 4 * g)
                    if KR:
                        fetch4(regs, g, x, k0 + kk, r0 + rr)
                    else:
                        fetch4(regs, g, x, r0 + rr, k0 + kk)
                return
            for i in range(LOADS):
                rr, kk = slab_elem(tid, i)
                r = r0 + rr
                k = k0 + kk
                if full:
                    regs[i] = x[k, r] if KR else x[r, k]
                else:
                    v = ZERO
                    if r < R and k < k_end:
                        v = x[k, r] if KR else x[r, k]
                    regs[i] = v

        @DEVICE
        def store(tile, regs):
            tid = U32(cuda.threadIdx.y * TX + cuda.threadIdx.x) if vec4 else cuda.threadIdx.y * TX + cuda.threadIdx.x
            for i in range(LOADS):
                rr, kk = slab_elem(tid, i)
                tile[kk, rr] = regs[i]
        return load, store

    @DEVICE
    def outer4(acc, av, bv, As, Bs, kk, tyu4, txu4):
        # acc += the outer product of this thread's rows of A and columns of B at slab row kk,
        # each group of 4 read by one load4 (an inline function called four times in a row:
        # numba's loop over k is not unrolled when its body is this long)
        for g in range(TM // 4):
            fetch4(av, g, As, kk, tyu4 + U32(g * GM))
        for g in range(TN // 4):
            fetch4(bv, g, Bs, kk, txu4 + U32(g * GN))
        for i in range(TM):
            for j in range(TN):
                acc[i, j] += av[i] * bv[j]

    load_a, store_a = make_load(A_KR, TILE_M, A_LOADS)
    load_b, store_b = make_load(B_KR, TILE_N, B_LOADS)

    def body(out, a, b, bias, has_bias, k_chunk, split):
        As = cuda.shared.array((BK, PM), float32, alignment=ALIGN)
        Bs = cuda.shared.array((BK, PN), float32, alignment=ALIGN)
        ra = cuda.local.array(A_LOADS, float32)
        rb = cuda.local.array(B_LOADS, float32)
        acc = cuda.local.array((TM, TN), float32)
        av = cuda.local.array(TM, float32)
        bv = cuda.local.array(TN, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        m0 = cuda.blockIdx.y * TILE_M
        n0 = cuda.blockIdx.x * TILE_N
        K = a.shape[0] if A_KR else a.shape[1]
        k_start = cuda.blockIdx.z * k_chunk
        k_end = k_start + k_chunk
        if k_end > K:
            k_end = K
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = ZERO
        load_a(ra, a, m0, k_start, k_end)
        load_b(rb, b, n0, k_start, k_end)
        for k0 in range(k_start, k_end, BK):
            store_a(As, ra)
            store_b(Bs, rb)
            cuda.syncthreads()
            if k0 + BK < k_end:  # the next slab's loads fly while this one is multiplied
                load_a(ra, a, m0, k0 + BK, k_end)
                load_b(rb, b, n0, k0 + BK, k_end)
            if vec4:  # v6: each thread's rows and columns read 4 at a time, four k written out
                tyu4 = U32(4) * U32(ty)
                txu4 = U32(4) * U32(tx)
                for kq in range(U32(BK // 4)):
                    kk = kq * U32(4)
                    outer4(acc, av, bv, As, Bs, kk, tyu4, txu4)
                    outer4(acc, av, bv, As, Bs, kk + U32(1), tyu4, txu4)
                    outer4(acc, av, bv, As, Bs, kk + U32(2), tyu4, txu4)
                    outer4(acc, av, bv, As, Bs, kk + U32(3), tyu4, txu4)
            elif unroll4:  # v5: four k at a time, unsigned indices (what the package does)
                for kq in range(np.uint32(BK // 4)):
                    for u in range(4):
                        kk = kq * np.uint32(4) + np.uint32(u)
                        for i in range(TM):
                            av[i] = As[kk, np.uint32(ty) + np.uint32(i * TY)]
                        for j in range(TN):
                            bv[j] = Bs[kk, np.uint32(tx) + np.uint32(j * TX)]
                        for i in range(TM):
                            for j in range(TN):
                                acc[i, j] += av[i] * bv[j]
            else:
                for kk in range(BK):
                    for i in range(TM):
                        av[i] = As[kk, ty + i * TY]
                    for j in range(TN):
                        bv[j] = Bs[kk, tx + j * TX]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i, j] += av[i] * bv[j]
            cuda.syncthreads()
        M = a.shape[1] if A_KR else a.shape[0]
        N = b.shape[1] if B_KR else b.shape[0]
        for j in range(TN):  # the bias of this thread's columns (a small loop: acc stays in registers)
            n = n0 + row_of(tx, j, TX, GN)
            bv[j] = bias[n] if has_bias and n < N and not split else ZERO
        for i in range(TM):
            m = m0 + row_of(ty, i, TY, GM)
            for j in range(TN):
                n = n0 + row_of(tx, j, TX, GN)
                if m < M and n < N:
                    if split:
                        out[cuda.blockIdx.z, m, n] = acc[i, j]
                    elif ACCUM:
                        out[0, m, n] += acc[i, j]
                    else:
                        out[0, m, n] = acc[i, j] + bv[j]

    opts = {} if max_registers is None else {"max_registers": max_registers}
    kernel = cuda.jit(**opts)(body)
    kernel.tile = (TILE_M, TILE_N)
    kernel.block = (TX, TY)
    return kernel


@cuda.jit
def reduce_splits(out, parts, accumulate):
    # out (M,N) (+)= sum over s of parts (S,M,N), in order of s; grid-stride over M*N
    S, M, N = parts.shape
    for idx in range(cuda.grid(1), M * N, cuda.gridsize(1)):
        m = idx // N
        n = idx % N
        s = ZERO
        for z in range(S):
            s += parts[z, m, n]
        if accumulate:
            out[m, n] += s
        else:
            out[m, n] = s


class Gemm:
    """Launch one version for one layout: out (M,N) (+)= A @ B^T (+ bias)."""

    def __init__(self, TM, TN, BK, A_KR, B_KR, ACCUM, split_k=False, sms=132, **kw):
        self.scalar = make_gemm(TM, TN, BK, A_KR, B_KR, ACCUM=ACCUM, **kw)
        # v7: a second kernel with 128-bit global loads, for operands with 16-byte aligned rows
        self.vector = make_gemm(TM, TN, BK, A_KR, B_KR, ACCUM=ACCUM, vector_loads=True, **kw) \
            if kw.get("vload") else None
        self.BK, self.A_KR, self.B_KR, self.ACCUM = BK, A_KR, B_KR, ACCUM
        self.split_k, self.sms = split_k, sms
        self.scratch = None

    def __call__(self, out, a, b, bias=None):
        M, N = out.shape
        K = a.shape[0] if self.A_KR else a.shape[1]
        k = self.vector if self.vector is not None and aligned_rows(a) and aligned_rows(b) else self.scalar
        TILE_M, TILE_N = k.tile
        gx, gy = launch.cdiv(N, TILE_N), launch.cdiv(M, TILE_M)
        S = 1
        if self.split_k:  # enough blocks for two per SM, each split at least 8 slabs of K long
            S = max(1, min(launch.cdiv(2 * self.sms, gx * gy), K // (8 * self.BK)))
        chunk = launch.cdiv(launch.cdiv(K, S), self.BK) * self.BK
        S = launch.cdiv(K, chunk)
        has_bias = bias is not None
        if S == 1:
            k[(gx, gy, 1), k.block](out.reshape(1, M, N), a, b, bias if has_bias else out[0], has_bias, chunk, False)
            return
        if self.scratch is None or self.scratch.shape != (S, M, N):
            self.scratch = cuda.device_array((S, M, N), np.float32)
        k[(gx, gy, S), k.block](self.scratch, a, b, out[0], False, chunk, True)
        reduce_splits[launch.elementwise_grid(M * N), launch.ELEM_THREADS](out, self.scratch, self.ACCUM)


# ------------------------------------------------------------------------------------------------

VERSIONS = {
    # name: (TM, TN, BK, split_k, extra options)
    "v4-128x128-bk8": (8, 8, 8, False, {}),
    "v4-128x128-bk16": (8, 8, 16, False, {}),
    "v4-128x128-bk8-r128": (8, 8, 8, False, {"max_registers": 128}),
    "v4-64x64-bk16": (4, 4, 16, False, {}),
    "v4-128x64-bk16": (8, 4, 16, False, {}),
    "v4s-128x128-bk8": (8, 8, 8, True, {}),
    "v4s-64x64-bk16": (4, 4, 16, True, {}),
    "v5s-64x64-bk16": (4, 4, 16, True, {"unroll4": True}),
    "v5s-64x64-bk16-r80": (4, 4, 16, True, {"unroll4": True, "max_registers": 80}),
    "v6s-64x64-bk16": (4, 4, 16, True, {"vec4": True}),
    "v6s-128x64-bk8": (8, 4, 8, True, {"vec4": True}),
    "v6s-128x128-bk8": (8, 8, 8, True, {"vec4": True}),
    "v6s-128x128-bk8-r128": (8, 8, 8, True, {"vec4": True, "max_registers": 128}),
    "v6s-128x128-bk16": (8, 8, 16, True, {"vec4": True}),
    "v7s-128x128-bk8": (8, 8, 8, True, {"vec4": True, "vload": True}),
    "v7s-128x64-bk16": (8, 4, 16, True, {"vec4": True, "vload": True}),
}
# tensor cores (TF32): name: (BM, BN, BK, WARPS_M, WARPS_N, round the operands to tf32 with cvt.rna
# [, ldmatrix for the K-contiguous operands' fragments])
TC_VERSIONS = {
    "v8t-128x128-bk16": (128, 128, 16, 2, 4, True),   # the package's (--precision tf32)
    "v8t-128x128-bk16-ldsm": (128, 128, 16, 2, 4, True, True),
    "v8t-128x128-bk16-trunc": (128, 128, 16, 2, 4, False),
    "v8t-128x64-bk16": (128, 64, 16, 4, 2, True),
    "v8t-64x64-bk32": (64, 64, 32, 2, 2, True),
    "v8t-128x128-bk16-w64x64": (128, 128, 16, 2, 2, True),
}
SIM_TC_VERSIONS = {"v8t-sim": (32, 16, 16, 2, 1, True), "v8t-sim-trunc": (32, 16, 16, 2, 1, False),
                   "v8t-sim-ldsm": (32, 16, 16, 2, 1, True, True)}
# tensor cores (BF16): name: (BM, BN, BK, WARPS_M, WARPS_N)
BF16_VERSIONS = {
    "v9b-128x128-bk32": (128, 128, 32, 2, 4),   # the package's (--precision bf16)
    "v9b-128x64-bk32": (128, 64, 32, 4, 2),
    "v9b-64x64-bk32": (64, 64, 32, 2, 2),
}
SIM_BF16_VERSIONS = {"v9b-sim": (32, 16, 32, 2, 1)}
SIM_VERSIONS = {"v4-sim": (2, 2, 4, False, {"TX": 4, "TY": 4}), "v4s-sim": (2, 2, 4, True, {"TX": 4, "TY": 4}),
                "v5s-sim": (2, 2, 4, True, {"TX": 4, "TY": 4, "unroll4": True}),
                "v6s-sim": (8, 4, 4, True, {"TX": 2, "TY": 2, "vec4": True}),
                "v7s-sim": (8, 4, 4, True, {"TX": 2, "TY": 2, "vec4": True, "vload": True})}


def problems(Ntok):
    """(name, kind, M, N, K) for the 124M matmuls at Ntok = B*T rows."""
    out = []
    for name, C, OC in (("qkv", 768, 2304), ("attproj", 768, 768), ("fc", 768, 3072),
                        ("fcproj", 3072, 768), ("classifier", 768, 50304)):
        out.append((name, "forward", Ntok, OC, C))
        out.append((name, "dinp", Ntok, C, OC))
        out.append((name, "dweight", OC, C, Ntok))
    return out


def operands(kind, M, N, K, rng):
    """(out, a, b, reference) host arrays in the layouts of `kind`; reference float64 result."""
    if kind == "forward":
        a = rng.standard_normal((M, K), dtype=F32)
        b = rng.standard_normal((N, K), dtype=F32)
        ref = a.astype(np.float64) @ b.astype(np.float64).T
    elif kind == "dinp":
        a = rng.standard_normal((M, K), dtype=F32)
        b = rng.standard_normal((K, N), dtype=F32)  # weight (OC, C) = (K, N)
        ref = a.astype(np.float64) @ b.astype(np.float64)
    else:
        a = rng.standard_normal((K, M), dtype=F32)  # dout (Ntok, OC) = (K, M)
        b = rng.standard_normal((K, N), dtype=F32)  # inp (Ntok, C) = (K, N)
        ref = a.astype(np.float64).T @ b.astype(np.float64)
    out = rng.standard_normal((M, N), dtype=F32)
    return out, a, b, ref


LAYOUT = {"forward": (False, False, False), "dinp": (False, True, True), "dweight": (True, True, True)}


def operands_like(kind, a, b):
    """(None, a, b, reference) for operands a, b already in the layouts of `kind`."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64.T if kind == "forward" else (a64 @ b64 if kind == "dinp" else a64.T @ b64)
    return None, a, b, ref


def package_call(kind, out, a, b, matmuls):
    """The package's kernels (llmnb.cuda.matmul.Matmuls: launch.GEMM_KERNEL, v5s unless set) on the same
    operands, through its launcher's gemm (out, A, B^T in the layout of `kind`)."""
    M, N = out.shape
    K = a.shape[0] if kind == "dweight" else a.shape[1]
    matmuls._gemm(kind, out, a, b, None, kind != "forward", M, N, K)


class GemmTC:
    """Launch a tensor-core version for one layout through the package's launcher (split K as
    there): out (M,N) (+)= A @ B^T (+ bias). matmuls: MatmulsTF32, or MatmulsBF16 (bf16 operands)."""

    def __init__(self, kind, gemms, matmuls=matmul_tc.MatmulsTF32):
        self.kind = kind
        self.matmuls = matmuls(gemms)

    def __call__(self, out, a, b, bias=None):
        M, N = out.shape
        K = a.shape[0] if self.kind == "dweight" else a.shape[1]
        self.matmuls._gemm(self.kind, out, a, b, bias, self.kind != "forward", M, N, K)


def make_gemms(versions, sms):
    """{(version, layout): Gemm or GemmTC}: each make_gemm is a new kernel, compiled at its first
    launch, so check and bench share one per version and layout."""
    out = {}
    for vname, v in versions.items():
        if vname.startswith("v8t"):
            shape, round_inputs, ldsm = v[:5], v[5], len(v) > 6 and v[6]
            kernels = matmul_tc.make_gemms(*shape, ROUND=round_inputs, LDSM=ldsm)
            out.update({(vname, kind): GemmTC(kind, kernels) for kind in LAYOUT})
        elif vname.startswith("v9b"):
            kernels = matmul_bf16.make_gemms_bf16(*v)
            out.update({(vname, kind): GemmTC(kind, kernels, matmul_bf16.MatmulsBF16) for kind in LAYOUT})
        else:
            TM, TN, BK, split, kw = v
            out.update({(vname, kind): Gemm(TM, TN, BK, *LAYOUT[kind], split_k=split, sms=sms, **kw) for kind in LAYOUT})
    return out


def tf32_operands(a, b, round_inputs=True):
    """a and b as a TF32 version's tensor cores multiply them: rounded to nearest (cvt.rna), or
    truncated (the -trunc versions)."""
    if round_inputs:
        return lanes.round_tf32(a), lanes.round_tf32(b)
    return lanes.tf32_value(a.view(np.uint32)), lanes.tf32_value(b.view(np.uint32))


def bf16_bits(x):
    """float32 -> bf16 bits (uint16), rounded to nearest even"""
    return lanes.cvt_bf16x2(np.asarray(x, F32), 0).astype(np.uint16)


def check_bf16(vname, kind, g, M, N, K, rng):
    """One BF16 version and layout against float64 of the bf16 operands: (ok, line)."""
    out, a, b, _ = operands(kind, M, N, K, rng)
    out, a, b = bf16_bits(out), bf16_bits(a), bf16_bits(b)
    _, _, _, ref = operands_like(kind, lanes.bf16_value(a), lanes.bf16_value(b))
    want = ref + (lanes.bf16_value(out).astype(np.float64) if LAYOUT[kind][2] else 0)
    d_out = cuda.to_device(out)
    g(d_out, cuda.to_device(a), cuda.to_device(b))
    got = lanes.bf16_value(d_out.copy_to_host()).astype(np.float64)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    ok = err < 5e-3   # the output's rounding to bf16: at most 2^-8 of the largest value; a wrong lane is O(1)
    return ok, f"{'ok ' if ok else 'BAD'} {vname:22s} {kind:8s} M={M} N={N} K={K}: max rel err {err:.1e} (bf16 output)"


def check(versions, shapes, sms, gemms=None):
    rng = np.random.default_rng(0)
    gemms = gemms or make_gemms(versions, sms)
    bad = 0
    for vname in versions:
        for kind, (a_kr, b_kr, accum) in LAYOUT.items():
            g = gemms[(vname, kind)]
            for M, N, K in shapes:
                if vname.startswith("v9b"):   # (dimensions rounded up to multiples of 8: 16-byte rows)
                    ok, line = check_bf16(vname, kind, g, *(-(-x // 8) * 8 for x in (M, N, K)), rng)
                    bad += not ok
                    print(line)
                    continue
                out, a, b, ref = operands(kind, M, N, K, rng)
                tf32 = ""
                if vname.startswith("v8t"):   # the reference multiplies what the tensor cores multiply
                    exact = ref + (out.astype(np.float64) if accum else 0)
                    ra, rb = tf32_operands(a, b, versions[vname][5])
                    _, _, _, ref = operands_like(kind, ra, rb)
                want = ref + (out.astype(np.float64) if accum else 0)
                d_out = cuda.to_device(out)
                g(d_out, cuda.to_device(a), cuda.to_device(b))
                got = d_out.copy_to_host()
                err = float(np.abs(got - want).max() / np.abs(want).max())
                if vname.startswith("v8t"):
                    tf32 = f" (of the tf32 operands; {float(np.abs(got - exact).max() / np.abs(exact).max()):.1e} of fp32's)"
                ok = err < 1e-5
                bad += not ok
                print(f"{'ok ' if ok else 'BAD'} {vname:22s} {kind:8s} M={M} N={N} K={K}: max rel err {err:.1e}{tf32}")
    return bad


def cublas_calls(kind, out, a, b):
    """{name: fn} of torch's matmuls (cuBLAS) on the same problem in bf16 and in tf32 (out (+)= A @ B^T
    as `kind` lays it out), or {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    calls = {}
    for name, dtype, tf32 in (("cublas-bf16", torch.bfloat16, False), ("cublas-tf32", torch.float32, True)):
        ta, tb, to = (torch.from_numpy(x).to("cuda", dtype) for x in (a, b, out))
        A = ta if kind != "dweight" else ta.t()
        Bt = tb.t() if kind == "forward" else tb

        def fn(A=A, Bt=Bt, to=to, tf32=tf32, accum=kind != "forward"):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            if accum:
                to.addmm_(A, Bt)
            else:
                torch.mm(A, Bt, out=to)
        calls[name] = fn
    return calls


def bench(versions, ntoks, runs, sms, peak, gemms=None, cublas=False):
    rng = np.random.default_rng(0)
    gemms = gemms or make_gemms(versions, sms)
    print(f"{'version':22s} {'shape':26s} " + " ".join(f"{n:>9s}" for n in ["ms", "TFLOP/s", "% peak"]))
    totals = {}
    matmuls = pkg.Matmuls()
    for Ntok in ntoks:
        for name, kind, M, N, K in problems(Ntok):
            out, a, b, _ = operands(kind, M, N, K, rng)
            d_out, d_a, d_b = cuda.to_device(out), cuda.to_device(a), cuda.to_device(b)
            h_out, h_a, h_b = (cuda.to_device(bf16_bits(x)) for x in (out, a, b)) if any(
                v.startswith("v9b") for v in versions) else (None, None, None)
            flops = 2.0 * M * N * K
            calls = {"package": lambda: package_call(kind, d_out, d_a, d_b, matmuls)}
            for vname in versions:
                args = (h_out, h_a, h_b) if vname.startswith("v9b") else (d_out, d_a, d_b)
                calls[vname] = lambda g=gemms[(vname, kind)], args=args: g(*args)
            if cublas:
                calls.update(cublas_calls(kind, out, a, b))
            for vname, f in calls.items():
                f()
                cuda.synchronize()
                e0, e1 = cuda.event(), cuda.event()
                e0.record()
                for _ in range(runs):
                    f()
                e1.record()
                e1.synchronize()
                # (torch's calls run on its default stream, the legacy default stream that numba's
                # events are recorded on: the events bracket them too)
                ms = e0.elapsed_time(e1) / runs
                totals.setdefault((Ntok, vname), 0.0)
                totals[(Ntok, vname)] += ms
                print(f"{vname:22s} {f'{name} {kind} N={Ntok}':26s} {ms:9.3f} {flops / ms / 1e9:9.2f} "
                      f"{100 * flops / (ms / 1e3) / peak:8.1f}%", flush=True)
    print("\nsum of the 15 matmuls of one layer-equivalent set (ms), per version:")
    for (Ntok, vname), ms in sorted(totals.items()):
        print(f"  B*T={Ntok:5d} {vname:22s} {ms:8.3f}")


def version_names(text):
    """--versions: names of VERSIONS, comma-separated (checked, so that a wrong name fails at once)"""
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in {**VERSIONS, **TC_VERSIONS, **BF16_VERSIONS}]
    if unknown:
        raise argparse.ArgumentTypeError(f"no version {', '.join(unknown)} (there are: "
                                         f"{', '.join(list(VERSIONS) + list(TC_VERSIONS) + list(BF16_VERSIONS))})")
    return ",".join(names)


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="correctness only (CUDA simulator, tiny tiles)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--versions", default="", type=version_names,
                    help="comma-separated names of VERSIONS (default: all)")
    ap.add_argument("--ntok", default="8192,256", help="comma-separated B*T values to time")
    ap.add_argument("--cublas", action="store_true",
                    help="also time torch's bf16 and tf32 matmuls (cuBLAS) on the same shapes (needs torch)")
    ap.add_argument("--ptx", action="store_true",
                    help="no GPU needed: compile --versions for sm_90 and count their shared loads (scalar, "
                         "128-bit) and local-memory accesses in the PTX")
    return ap


def ptx_counts(versions, cc=(9, 0)):
    """{(version, layout): {"ld.shared.f32": n, "ld.shared.v4.f32": n, "ld.global.v4": n, "local": n}} of
    the PTX (v7s: of its kernel with 128-bit global loads)."""
    import re

    from numba import boolean, int64

    from llmnb.cuda.ptxcheck import compile_without_a_device
    f1, f2, f3 = float32[::1], float32[:, ::1], float32[:, :, ::1]
    counts = {}
    with compile_without_a_device(cc):
        for vname in versions:
            TM, TN, BK, split, kw = VERSIONS[vname]
            for kind, (a_kr, b_kr, accum) in LAYOUT.items():
                k = make_gemm(TM, TN, BK, a_kr, b_kr, ACCUM=accum, vector_loads=bool(kw.get("vload")), **kw)
                ptx, _ = cuda.compile_ptx(k.py_func, (f3, f2, f2, f1, boolean, int64, boolean), cc=cc)
                counts[(vname, kind)] = {"ld.shared.f32": len(re.findall(r"\bld\.shared\.f32\b", ptx)),
                                         "ld.shared.v4.f32": len(re.findall(r"\bld\.shared\.v4\.f32\b", ptx)),
                                         "ld.global.v4": len(re.findall(r"\bld\.global(?:\.\w+)*\.v4\.f32\b", ptx)),
                                         "local": len(re.findall(r"\b(?:ld|st)\.local\b", ptx))}
    return counts


def main():
    ap = build_parser()
    args = ap.parse_args()
    if args.ptx:
        names = [n for n in args.versions.split(",") if n and n in VERSIONS] or ([] if args.versions else VERSIONS)
        for (vname, kind), c in ptx_counts(names).items():
            print(f"{vname:22s} {kind:8s} " + "  ".join(f"{k} {v}" for k, v in c.items()))
        return 0
    if args.check:
        bad = check({**SIM_VERSIONS, **SIM_TC_VERSIONS, **SIM_BF16_VERSIONS}, [(9, 13, 11), (16, 8, 40), (16, 8, 200)],
                    sms=4)
        print(f"{bad} bad")
        return 1 if bad else 0
    from llmnb.mfu import gpu_peak_flops
    peak, how = gpu_peak_flops()
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    print(f"peak {peak / 1e12:.1f} TFLOP/s = {how}")
    t0 = time.perf_counter()
    every = {**VERSIONS, **TC_VERSIONS, **BF16_VERSIONS}
    versions = {n: every[n] for n in args.versions.split(",")} if args.versions else every
    gemms = make_gemms(versions, sms)
    bad = check(versions, [(300, 200, 136), (128, 256, 1000)], sms, gemms)
    print(f"check: {bad} bad ({time.perf_counter() - t0:.1f} s incl. compiles)")
    bench(versions, [int(n) for n in args.ntok.split(",")], args.runs, sms, peak, gemms, args.cublas)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
