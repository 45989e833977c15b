"""The matmuls on tensor cores in BF16 (llm.c's train_gpt2.cu precision): mma.sync.m16n8k16 over
bf16 operands with fp32 accumulation, for --precision bf16's bf16 parameters and activations.

Tensors are uint16 arrays of bf16 bits (ptx.py: widen, narrow). The kernels are matmul_tc.py's
TF32 GEMM with bf16 slabs: the same three layouts (forward, dinp, dweight: out (M,N) (+)= A (M,K)
@ B (N,K)^T, each operand K-contiguous or stored transposed), block tiles, warp tiles, two slabs
in flight by cp.async, split K and bias. What differs:
  - a 16-byte chunk holds 8 elements, a k step of the mma is 16, a slab BK = 32;
  - each fragment register comes from ldmatrix.x4 (four 8 x 8 matrices a call: A's four registers
    of one m-tile, or B's two of two n-tiles), .trans where the operand is stored transposed
    (mma_tiles.make_bf16 has the addresses; the warp emulator, lanes.emulate_gemm_block_bf16,
    checks them on a CPU: tests/test_lanes.py);
  - the output is rounded to bf16 once, to nearest even, after the fp32 sum (+ bias, + the old
    value where the layout accumulates, as llm.c's cuBLAS calls with beta = 1 do); split K's
    partial sums stay fp32 (matmul.py's reduce kernel rounds their sum).
Every operand's rows must be 16-byte aligned (dimensions along memory multiples of 8, as GPT-2's
are); the launcher says so in one line otherwise.

Geometry (launch.py's GEOMETRY): "gpu" 128 x 128 tiles of 8 warps (2 x 4, 64 x 32 each), BK 32:
40 KB of shared memory; "sim" 32 x 16 tiles of 2 warps for the CUDA simulator. Not yet run on a
card (benchmarks/gpu_check.py's lab times it against torch's bf16 matmul).
"""
import numpy as np
from numba import uint16

from . import mma_tiles
from .launch import GEOMETRY, INLINE, check
from .matmul_tc import MatmulsTF32, _slab_copy, build_gemm, put4, unrolled_slab, warp_product
from .ptx import ldmatrix_x4, ldmatrix_x4_trans, mma_m16n8k16_bf16

#                BM   BN   BK  WARPS_M  WARPS_N
BF16_SHAPES = {"gpu": (128, 128, 32, 2, 4), "sim": (32, 16, 32, 2, 1)}
U32 = np.uint32


def make_gemm_bf16(BM, BN, BK, WARPS_M, WARPS_N, A_KR, B_KR, ACCUM):
    """The kernel for one layout, matmul_tc.build_gemm's around bf16 slabs and ldmatrix fragments,
    called as the TF32 one: (out, a, b, bias, has_bias, k_chunk, split), block (t.THREADS,), grid
    (cdiv(N, BN), cdiv(M, BM), S). a, b, bias: bf16 bits. out: bf16 bits (S = 1: out[0] = the sum
    (+ bias), or += it when ACCUM), or float32 partial sums (split)."""
    t = mma_tiles.make_bf16(BM, BN, BK, WARPS_M, WARPS_N, A_KR, B_KR)
    MI, NI = t.MI, t.NI
    copy_a = _slab_copy(A_KR, t.a_at, t.a_chunk, None, t.A_CHUNKS, 0, True)
    copy_b = _slab_copy(B_KR, t.b_at, t.b_chunk, None, t.B_CHUNKS, 0, True)
    a_at, b_at = INLINE(t.a_at), INLINE(t.b_at)
    a_ldm, b_ldm = INLINE(t.a_ldm), INLINE(t.b_ldm)
    load_a = ldmatrix_x4_trans if A_KR else ldmatrix_x4
    load_b = ldmatrix_x4_trans if B_KR else ldmatrix_x4
    product = warp_product(mma_m16n8k16_bf16, MI, NI)

    @INLINE
    def multiply_k16(As, Bs, stage, kk, acc, af, bf, warp, lane):
        # acc += this warp's rows of slab `stage` of A times its columns of B at k = kk..kk+15
        for mi in range(MI):
            i, j = a_at(stage, *a_ldm(warp, lane, mi, kk))
            a0, a1, a2, a3 = load_a(As, i, j)
            put4(af, 4 * mi, a0, a1, a2, a3)
        for nj in range(NI // 2):   # n-tiles 2 nj and 2 nj + 1: b0, b1 of each
            i, j = b_at(stage, *b_ldm(warp, lane, nj, kk))
            b0, b1, b2, b3 = load_b(Bs, i, j)
            put4(bf, 4 * nj, b0, b1, b2, b3)
        product(acc, af, bf)

    return build_gemm(t, copy_a, copy_b, unrolled_slab(multiply_k16, 16, BK), uint16, ACCUM)


def make_gemms_bf16(BM, BN, BK, WARPS_M, WARPS_N):
    """{layout: (None, kernel)} for matmul.py's layouts: 16-byte copies only (None: no twin for rows
    that are not 16-byte aligned; MatmulsBF16 refuses those)."""
    layouts = {"forward": (False, False, False), "dinp": (False, True, True), "dweight": (True, True, True)}
    return {name: (None, make_gemm_bf16(BM, BN, BK, WARPS_M, WARPS_N, a_kr, b_kr, accum))
            for name, (a_kr, b_kr, accum) in layouts.items()}


BF16_GEMMS = make_gemms_bf16(*BF16_SHAPES[GEOMETRY])
matmul_forward_bf16_kernel = BF16_GEMMS["forward"][1]
matmul_backward_dinp_bf16_kernel = BF16_GEMMS["dinp"][1]
matmul_backward_dweight_bf16_kernel = BF16_GEMMS["dweight"][1]


class MatmulsBF16(MatmulsTF32):
    """MatmulsTF32's launchers (split K, bias, checks) over bf16 tensors (uint16 bits) with the BF16
    GEMMs; the bias gradient is matmul.py's kernel, which sums bf16 in fp32."""
    precision = "bf16"

    def __init__(self, gemms=None):
        super().__init__(gemms or BF16_GEMMS)

    def _gemm(self, layout, out, a, b, bias, accumulate, M, N, K):
        for x in (out, a, b) + ((bias,) if bias is not None else ()):
            check(x.dtype == np.uint16, "matmul_bf16.py", f"{layout}: expected bf16 bits (uint16), got {x.dtype}")
        super()._gemm(layout, out, a, b, bias, accumulate, M, N, K)


__all__ = ["MatmulsBF16", "make_gemm_bf16", "make_gemms_bf16", "BF16_SHAPES"]
