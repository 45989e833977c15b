"""The matmuls on tensor cores in TF32 (--precision tf32): mma.sync.m16n8k8 with fp32 accumulation.

Training's three layouts as matmul.py's (forward, dinp, dweight: out (M,N) (+)= A (M,K) @ B (N,K)^T,
each operand K-contiguous or stored transposed), with bias and split K as there. One block of
WARPS_M x WARPS_N warps computes a BM x BN output tile, each warp a WM x WN piece of it as MI x NI
mma tiles of 16 x 8, its accumulators in registers (4 floats a tile a lane). K is walked a slab of
BK at a time, two slabs in flight: cp.async copies the next slab from global to shared memory, as
it lies (16-byte chunks, no registers on the way), while the warps multiply the current one. Each
fragment register is one 32-bit shared load (a conflict-free padding: mma_tiles.py) rounded by
cvt.rna.tf32.f32 (round to nearest, ties away from zero).

The index math (which lane copies, reads and writes what) is mma_tiles.py's plain functions, which
the warp emulator (lanes.py, tests/test_lanes.py) runs on a CPU; the kernels wrap them as device
functions. Where both operands' rows are 16-byte aligned (GPT-2's always are: matmul.aligned_rows)
the slabs are copied 16 bytes at a time; a twin kernel copies 4 bytes at a time for the others.
Operands are read as zero past their edges (cp.async's src-size 0), so any M, N, K works.

Geometry (launch.py's GEOMETRY): "gpu" 128 x 128 tiles of 8 warps (2 x 4, 64 x 32 each), BK 16:
40 KB of shared memory, 256 threads; "sim" 32 x 16 tiles of 2 warps for the CUDA simulator, where
ptx.py's instructions run through the same NumPy lane models. Not yet run on a card: the package's
GPU default stays fp32 (matmul.py) until benchmarks/gpu_check.py has run these on one.
"""
import numpy as np
from numba import cuda, float32, uint32

from . import mma_tiles
from .launch import ELEM_THREADS, GEOMETRY, INLINE, SIMULATOR, cached_views, cdiv, check, elementwise_grid
from .matmul import Matmuls, aligned_rows, matmul_reduce_splits_kernel
from .ptx import (cp_async4, cp_async16, cp_async_commit, cp_async_wait, cvt_rna_tf32, cvt_rna_tf32_bits, f32_bits,
                  ldmatrix_x4, mma_m16n8k8_tf32, narrow, widen)

#                BM   BN   BK  WARPS_M  WARPS_N
TC_SHAPES = {"gpu": (128, 128, 16, 2, 4), "sim": (32, 16, 16, 2, 1)}
U32 = np.uint32
ZERO = np.float32(0.0)
ALIGN = None if SIMULATOR else 16   # cp.async's 16-byte chunks (the simulator takes no alignment)


def _slab_copy(KR, at, chunk, elem, n_chunks, n_elems, VECTOR):
    """copy(sh, x, stage, r0, k0, k_end, tid): this thread's cp.async of the (R, BK) slab of X at rows
    r0.., k in [k0, k0 + BK) into stage `stage` of sh; X = x (KR False, x (R, K)) or x^T (KR True,
    x (K, R)); zeros past X's rows and past k_end. VECTOR: 16-byte chunks of 4 floats along x's
    contiguous dimension, all inside or all outside X when x's rows are 16-byte aligned (then R or
    K, and k_end, are multiples of 4); else one float at a time. (The BF16 GEMM's copies are the
    VECTOR ones: a chunk is 16 bytes of any element type, here 8 bf16; it passes no elem.)"""
    at, chunk = INLINE(at), INLINE(chunk)
    elem = INLINE(elem) if elem is not None else None

    @INLINE
    def copy(sh, x, stage, r0, k0, k_end, tid):
        R = U32(x.shape[1] if KR else x.shape[0])
        if VECTOR:
            for it in range(n_chunks):
                r, k = chunk(tid, it)
                i, j = at(stage, r, k)
                gr = r0 + r
                gk = k0 + k
                ok = (gr < R) & (gk < k_end)
                if KR:
                    cp_async16(sh, i, j, x, gk, gr, ok)
                else:
                    cp_async16(sh, i, j, x, gr, gk, ok)
        else:
            for it in range(n_elems):
                r, k = elem(tid, it)
                i, j = at(stage, r, k)
                gr = r0 + r
                gk = k0 + k
                ok = (gr < R) & (gk < k_end)
                if KR:
                    cp_async4(sh, i, j, x, gk, gr, ok)
                else:
                    cp_async4(sh, i, j, x, gr, gk, ok)
    return copy


@INLINE
def _same_bits(u):
    # (the -trunc lab variants with ldmatrix: the fp32 bits go to the mma as they are)
    return u


@INLINE
def put4(regs, q, r0, r1, r2, r3):
    # regs[q:q+4] = r0..r3 (an ldmatrix.x4's four registers)
    regs[q] = r0
    regs[q + 1] = r1
    regs[q + 2] = r2
    regs[q + 3] = r3


def unrolled_slab(multiply_k, KSTEP, BK):
    """multiply_slab(As, Bs, stage, acc, af, bf, warp, lane): multiply_k at each k step of KSTEP of a
    slab of BK, written out (numba leaves a loop over them rolled: ~10 more instructions per 16
    HMMA); at most 4 steps."""
    assert BK <= 4 * KSTEP, "multiply_slab writes out at most 4 k steps"

    @INLINE
    def multiply_slab(As, Bs, stage, acc, af, bf, warp, lane):
        multiply_k(As, Bs, stage, U32(0), acc, af, bf, warp, lane)
        if BK > KSTEP:
            multiply_k(As, Bs, stage, U32(KSTEP), acc, af, bf, warp, lane)
        if BK > 2 * KSTEP:
            multiply_k(As, Bs, stage, U32(2 * KSTEP), acc, af, bf, warp, lane)
        if BK > 3 * KSTEP:
            multiply_k(As, Bs, stage, U32(3 * KSTEP), acc, af, bf, warp, lane)
    return multiply_slab


def warp_product(mma, MI, NI):
    """product(acc, af, bf): a warp's MI x NI tiles of 16 x 8, acc (4 MI NI fp32 a lane) += mma of
    the lane's A registers af (4 MI: four of each m-tile) and B registers bf (2 NI: two of each
    n-tile); mma is ptx's TF32 (m16n8k8) or BF16 (m16n8k16) instruction."""
    @INLINE
    def product(acc, af, bf):
        for mi in range(MI):
            for ni in range(NI):
                q = 4 * (NI * mi + ni)
                d0, d1, d2, d3 = mma(af[4 * mi], af[4 * mi + 1], af[4 * mi + 2], af[4 * mi + 3], bf[2 * ni],
                                     bf[2 * ni + 1], acc[q], acc[q + 1], acc[q + 2], acc[q + 3])
                acc[q] = d0
                acc[q + 1] = d1
                acc[q + 2] = d2
                acc[q + 3] = d3
    return product


def make_gemm_tc(BM, BN, BK, WARPS_M, WARPS_N, A_KR, B_KR, ACCUM, VECTOR, ROUND=True, LDSM=False):
    """The kernel for one layout: out (S,M,N) = the partial sums of K slice z = blockIdx.z when
    `split`, else out[0] (+= when ACCUM) the whole sum (+ bias[n] when has_bias).
    Block (t.THREADS,), grid (cdiv(N, BN), cdiv(M, BM), S). ROUND False (a lab variant): the
    operands' fp32 bits go to the mma as they are, which reads them as tf32 (truncation toward zero,
    one fewer instruction per register). LDSM (a lab variant): a K-contiguous operand's fragments
    come from ldmatrix.x4 (one per 4 registers; mma_tiles.make's a_ldm / b_ldm) instead of a 32-bit
    shared load each; an R-contiguous one's stay 32-bit loads."""
    t = mma_tiles.make(BM, BN, BK, WARPS_M, WARPS_N, A_KR, B_KR)
    MI, NI = t.MI, t.NI
    copy_a = _slab_copy(A_KR, t.a_at, t.a_chunk, t.a_elem, t.A_CHUNKS, t.A_ELEMS, VECTOR)
    copy_b = _slab_copy(B_KR, t.b_at, t.b_chunk, t.b_elem, t.B_CHUNKS, t.B_ELEMS, VECTOR)
    a_at, b_at = INLINE(t.a_at), INLINE(t.b_at)
    a_frag, b_frag = INLINE(t.a_frag), INLINE(t.b_frag)
    a_ldm, b_ldm = INLINE(t.a_ldm), INLINE(t.b_ldm)
    A_LDSM, B_LDSM = LDSM and not A_KR, LDSM and not B_KR
    assert not B_LDSM or NI % 2 == 0, "ldmatrix.x4 loads two n-tiles of B"
    to_tf32 = cvt_rna_tf32 if ROUND else f32_bits
    bits_to_tf32 = cvt_rna_tf32_bits if ROUND else _same_bits
    product = warp_product(mma_m16n8k8_tf32, MI, NI)

    @INLINE
    def multiply_k8(As, Bs, stage, kk, acc, af, bf, warp, lane):
        # acc += this warp's rows of slab `stage` of A times its columns of B at k = kk..kk+7
        for mi in range(MI):
            if A_LDSM:
                i, j = a_at(stage, *a_ldm(warp, lane, mi, kk))
                a0, a1, a2, a3 = ldmatrix_x4(As, i, j)
                put4(af, 4 * mi, bits_to_tf32(a0), bits_to_tf32(a1), bits_to_tf32(a2), bits_to_tf32(a3))
            else:
                for reg in range(4):
                    r, k = a_frag(warp, lane, mi, kk, reg)
                    i, j = a_at(stage, r, k)
                    af[4 * mi + reg] = to_tf32(As[i, j])
        if B_LDSM:
            for nj in range(NI // 2):   # n-tiles 2 nj and 2 nj + 1
                i, j = b_at(stage, *b_ldm(warp, lane, nj, kk))
                b0, b1, b2, b3 = ldmatrix_x4(Bs, i, j)
                put4(bf, 4 * nj, bits_to_tf32(b0), bits_to_tf32(b1), bits_to_tf32(b2), bits_to_tf32(b3))
        else:
            for ni in range(NI):
                for reg in range(2):
                    n, k = b_frag(warp, lane, ni, kk, reg)
                    i, j = b_at(stage, n, k)
                    bf[2 * ni + reg] = to_tf32(Bs[i, j])
        product(acc, af, bf)

    return build_gemm(t, copy_a, copy_b, unrolled_slab(multiply_k8, 8, BK), float32, ACCUM)


def build_gemm(t, copy_a, copy_b, multiply_slab, SMEM, ACCUM):
    """The GEMM kernel of the tile math t around a precision's slab copies and multiply_slab (TF32
    here, BF16 in matmul_bf16.py), its slabs in shared arrays of dtype SMEM: acc (fp32) += the
    block's K range, two slabs in flight, then out[z] = acc (split), out[0] += acc (ACCUM) or
    out[0] = acc + bias. out, bias: float32, or bf16 bits (narrow rounds the fp32 value once)."""
    MI, NI, STAGES, BM, BN, BK = t.MI, t.NI, t.STAGES, t.BM, t.BN, t.BK
    A_KR, B_KR = t.A_KR, t.B_KR
    N_ACC, N_AF, N_BF = 4 * MI * NI, 4 * MI, 2 * NI   # a lane's accumulators, A and B registers
    A_SHAPE, B_SHAPE = t.A_SHAPE, t.B_SHAPE
    c_frag = INLINE(t.c_frag)

    def gemm(out, a, b, bias, has_bias, k_chunk, split):
        As = cuda.shared.array(A_SHAPE, SMEM, alignment=ALIGN)
        Bs = cuda.shared.array(B_SHAPE, SMEM, alignment=ALIGN)
        acc = cuda.local.array(N_ACC, float32)
        af = cuda.local.array(N_AF, uint32)
        bf = cuda.local.array(N_BF, uint32)
        bias_v = cuda.local.array(N_BF, float32)   # the bias of this lane's 2 NI columns
        tid = U32(cuda.threadIdx.x)
        lane = tid % U32(32)
        warp = tid // U32(32)
        m0 = U32(cuda.blockIdx.y) * U32(BM)
        n0 = U32(cuda.blockIdx.x) * U32(BN)
        M = a.shape[1] if A_KR else a.shape[0]
        N = b.shape[1] if B_KR else b.shape[0]
        K = U32(a.shape[0] if A_KR else a.shape[1])
        k_start = U32(cuda.blockIdx.z) * U32(k_chunk)
        k_end = k_start + U32(k_chunk)
        if k_end > K:
            k_end = K
        for q in range(N_ACC):
            acc[q] = ZERO
        n_slabs = (k_end - k_start + U32(BK - 1)) // U32(BK)
        copy_a(As, a, U32(0), m0, k_start, k_end, tid)
        copy_b(Bs, b, U32(0), n0, k_start, k_end, tid)
        cp_async_commit()
        for s in range(n_slabs):
            if s + U32(1) < n_slabs:   # the next slab's copies fly while this one is multiplied
                k_next = k_start + (s + U32(1)) * U32(BK)
                copy_a(As, a, (s + U32(1)) % U32(STAGES), m0, k_next, k_end, tid)
                copy_b(Bs, b, (s + U32(1)) % U32(STAGES), n0, k_next, k_end, tid)
                cp_async_commit()
                cp_async_wait(1)
            else:
                cp_async_wait(0)
            cuda.syncthreads()   # every thread's copies of slab s have landed
            multiply_slab(As, Bs, s % U32(STAGES), acc, af, bf, warp, lane)
            cuda.syncthreads()   # no thread still reads the stage that the next copies overwrite
        M = U32(M)
        N = U32(N)
        z = cuda.blockIdx.z
        if split:   # (float32 partial sums)
            for mi in range(MI):
                for ni in range(NI):
                    for reg in range(4):
                        m, n = c_frag(warp, lane, mi, ni, reg)
                        if m0 + m < M and n0 + n < N:
                            out[z, m0 + m, n0 + n] = narrow(out, acc[4 * (NI * mi + ni) + reg])
        elif ACCUM:
            for mi in range(MI):
                for ni in range(NI):
                    for reg in range(4):
                        m, n = c_frag(warp, lane, mi, ni, reg)
                        if m0 + m < M and n0 + n < N:
                            old = widen(out[0, m0 + m, n0 + n])
                            out[0, m0 + m, n0 + n] = narrow(out, old + acc[4 * (NI * mi + ni) + reg])
        else:
            for ni in range(NI):   # this lane's columns' bias first (a short loop: acc stays in registers)
                for reg in range(2):
                    m, n = c_frag(warp, lane, 0, ni, reg)
                    bv = ZERO
                    if has_bias and n0 + n < N:
                        bv = widen(bias[n0 + n])
                    bias_v[2 * ni + reg] = bv
            for mi in range(MI):
                for ni in range(NI):
                    for reg in range(4):
                        m, n = c_frag(warp, lane, mi, ni, reg)
                        if m0 + m < M and n0 + n < N:
                            out[0, m0 + m, n0 + n] = narrow(out, acc[4 * (NI * mi + ni) + reg] + bias_v[2 * ni + reg % 2])
    kernel = cuda.jit(gemm)   # (closures: not cache=True, see matmul.py)
    kernel.tiles = t
    return kernel


def make_gemms(BM, BN, BK, WARPS_M, WARPS_N, ROUND=True, LDSM=False):
    """{layout: (kernel with 4-byte copies, kernel with 16-byte copies)} for matmul.py's layouts."""
    layouts = {"forward": (False, False, False), "dinp": (False, True, True), "dweight": (True, True, True)}
    return {name: tuple(make_gemm_tc(BM, BN, BK, WARPS_M, WARPS_N, a_kr, b_kr, accum, vector, ROUND, LDSM)
                        for vector in (False, True))
            for name, (a_kr, b_kr, accum) in layouts.items()}


TC_GEMMS = make_gemms(*TC_SHAPES[GEOMETRY])
matmul_forward_tf32_kernel, matmul_forward_tf32_vload_kernel = TC_GEMMS["forward"]
matmul_backward_dinp_tf32_kernel, matmul_backward_dinp_tf32_vload_kernel = TC_GEMMS["dinp"]
matmul_backward_dweight_tf32_kernel, matmul_backward_dweight_tf32_vload_kernel = TC_GEMMS["dweight"]


class MatmulsTF32(Matmuls):
    """Matmuls (matmul.py: the same launchers, checks, split K and bias gradient) whose three GEMMs
    run on tensor cores in TF32."""
    precision = "tf32"

    def __init__(self, gemms=None):
        super().__init__()
        self.gemms = gemms or TC_GEMMS

    def _gemm(self, layout, out, a, b, bias, accumulate, M, N, K):
        # out (M,N) (+)= A @ B^T for a layout ("forward", "dinp", "dweight")
        scalar, vector = self.gemms[layout]
        kernel = vector if aligned_rows(a) and aligned_rows(b) else scalar
        check(kernel is not None, "matmul.py", f"{layout}: the {self.precision} kernels need every operand's "
              f"rows 16-byte aligned (a multiple of 8 bf16); got {tuple(a.shape)} and {tuple(b.shape)}")
        t = kernel.tiles
        gx, gy = cdiv(N, t.BN), cdiv(M, t.BM)
        S = max(1, min(cdiv(2 * self.sms, gx * gy), K // (8 * t.BK)))  # slices of >= 8 slabs
        chunk = cdiv(cdiv(K, S), t.BK) * t.BK
        S = cdiv(K, chunk)
        has_bias = bias is not None
        bias_arg = bias if has_bias else out[0]
        if S == 1:
            kernel[(gx, gy, 1), t.THREADS](out.reshape(1, M, N), a, b, bias_arg, has_bias, chunk, False)
            return
        if self.scratch is None or self.scratch.shape[0] < S * M * N:
            self.scratch = cached_views(cuda.device_array(S * M * N, np.float32))
        parts = self.scratch[:S * M * N].reshape(S, M, N)
        kernel[(gx, gy, S), t.THREADS](parts, a, b, bias_arg, False, chunk, True)
        matmul_reduce_splits_kernel[elementwise_grid(M * N), ELEM_THREADS](out, parts, bias_arg, has_bias, accumulate)


__all__ = ["MatmulsTF32", "build_gemm", "make_gemm_tc", "make_gemms", "put4", "unrolled_slab", "warp_product",
           "TC_SHAPES"]
