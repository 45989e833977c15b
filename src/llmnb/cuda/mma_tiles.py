"""The TF32 tensor-core GEMM's geometry and per-lane index math, as plain Python.

The same functions are a @cuda.jit kernel's device functions (llmnb/cuda/matmul_tc.py wraps them)
and what the warp emulator (llmnb/cuda/lanes.py: emulate_gemm_block) runs lane by lane on the CPU,
so the emulator tests the kernel's own index math. Unsigned 32-bit arithmetic throughout (U32):
in the kernel no negative-index wraparound and shifts for / and %; in Python the same values.

A block of WARPS_M x WARPS_N warps computes a (BM, BN) tile of out (M,N) (+)= A (M,K) @ B (N,K)^T,
each warp a (WM, WN) = (BM / WARPS_M, BN / WARPS_N) piece of it as MI x NI tiles of mma.m16n8k8
(MI = WM / 16, NI = WN / 8), over K a slab of BK at a time, STAGES slabs in flight (cp.async).
An operand's slab sits in shared memory as it lies in global memory, so that 16-byte cp.async
chunks copy it unchanged:
  K-contiguous (KR False, x is (R, K)): (STAGES * R, BK + 4) floats, row r of stage s at s*R + r.
    The fragments' 32-bit reads (row groupID, col threadID_in_group) then hit 32 different banks:
    rows are 20 floats apart for BK = 16, 8 rows x 4 columns -> {0,20,8,28,16,4,24,12} + 0..3.
  R-contiguous (KR True, x is (K, R)): (STAGES * BK, R + 8) floats, k of stage s at s*BK + k.
    Reads (k threadID_in_group, row groupID): rows R + 8 = 136 floats apart, 8 banks mod 32.
Rows stay 16-byte aligned (cp.async's 16-byte chunks, ldmatrix).

make_bf16 is the BF16 GEMM's (llmnb/cuda/matmul_bf16.py): the same tiles of mma.m16n8k16 over
operands of bf16 bits (uint16), 8 to a 16-byte chunk, slabs padded by 8 elements either way (rows
80 bytes apart for BK = 32, 272 for R = 128: the 8 rows an ldmatrix phase reads hit 8 different
16-byte bank groups). Its fragments are loaded by ldmatrix.x4: each lane gives the address of one
16-byte row of one 8 x 8 matrix, and .trans transposes where the operand is R-contiguous.
"""
import types

import numpy as np

U32 = np.uint32
PAD_K = 4   # floats after each K-contiguous slab row
PAD_R = 8   # floats after each R-contiguous slab row


def _slab_shape(KR, R, BK, STAGES, pad_r, pad_k):
    # an operand's shared array: STAGES slabs, each as it lies in global memory, rows padded
    return (STAGES * BK, R + pad_r) if KR else (STAGES * R, BK + pad_k)


def _slab_at(KR, R, BK):
    def at(s, r, k):
        # (i, j) in shared memory of element (r, k) of stage s's slab
        if KR:
            return U32(BK) * U32(s) + U32(k), U32(r)
        return U32(R) * U32(s) + U32(r), U32(k)
    return at


def _slab_chunk(KR, R, BK, THREADS, per):
    def chunk(tid, it):
        # (r, k) of the first element of chunk c = tid + it * THREADS (per elements, 16 bytes, along
        # the operand's contiguous dimension); consecutive threads take consecutive chunks (coalesced)
        c = U32(tid) + U32(it * THREADS)
        if KR:
            return (c % U32(R // per)) * U32(per), c // U32(R // per)
        return c // U32(BK // per), (c % U32(BK // per)) * U32(per)
    return chunk


def _c_frag(WARPS_N, WM, WN):
    def c_frag(warp, lane, mi, ni, reg):
        # accumulator reg: row groupID (+8 for reg >= 2), columns 2 threadID_in_group (+1 for odd reg)
        wm = U32(warp) // U32(WARPS_N)
        wn = U32(warp) % U32(WARPS_N)
        m = wm * U32(WM) + U32(16 * mi) + U32(lane) // U32(4) + U32(8 * (reg // 2))
        n = wn * U32(WN) + U32(8 * ni) + U32(2) * (U32(lane) % U32(4)) + U32(reg % 2)
        return m, n
    return c_frag


def _ldm(WARPS_N, WM, WN, SUB, A_KR, B_KR):
    """(a_ldm, b_ldm): the ldmatrix.x4 row addresses of a warp's fragments, SUB elements a matrix row
    along k (16 bytes: 8 bf16, or 4 fp32 for TF32's m16n8k8, whose registers are then one fp32 each)."""
    def a_ldm(warp, lane, mi, kk):
        i = U32(lane) // U32(8)
        j = U32(lane) % U32(8)
        r = (U32(warp) // U32(WARPS_N)) * U32(WM) + U32(16 * mi) + U32(8) * (i % U32(2))
        k = U32(kk) + U32(SUB) * (i // U32(2))
        if A_KR:
            return r, k + j
        return r + j, k

    def b_ldm(warp, lane, nj, kk):
        i = U32(lane) // U32(8)
        j = U32(lane) % U32(8)
        n = (U32(warp) % U32(WARPS_N)) * U32(WN) + U32(16 * nj) + U32(8) * (i // U32(2))
        k = U32(kk) + U32(SUB) * (i % U32(2))
        if B_KR:
            return n, k + j
        return n + j, k
    return a_ldm, b_ldm


def make(BM, BN, BK, WARPS_M, WARPS_N, A_KR, B_KR, STAGES=2):
    """A namespace of the geometry (BM, BN, BK, WM, WN, MI, NI, WARPS, THREADS, STAGES, A_SHAPE,
    B_SHAPE, A_CHUNKS, B_CHUNKS, A_ELEMS, B_ELEMS, A_KR, B_KR) and the index functions:
      a_at(s, r, k), b_at(s, n, k)     -> (i, j) in the operand's shared array of slab element (r, k)
      a_chunk(tid, it), b_chunk(..)    -> (r, k): the first of the 4 floats of thread tid's it-th
                                          16-byte copy (4 along the operand's contiguous dimension)
      a_elem(tid, it), b_elem(..)      -> (r, k) of thread tid's it-th 4-byte copy
      a_frag(warp, lane, mi, kk, reg)  -> (r, k) in the slab of the A register reg of m-tile mi at k step kk
      b_frag(warp, lane, ni, kk, reg)  -> (n, k) likewise for B
      c_frag(warp, lane, mi, ni, reg)  -> (m, n) in the block tile of accumulator reg of tile (mi, ni)
      a_ldm(warp, lane, mi, kk), b_ldm(warp, lane, nj, kk)
                                       -> as make_bf16's, for a K-contiguous operand's ldmatrix.x4
                                          (4 floats a matrix row: matrices 0..3 are a_frag's registers
                                          0..3 of m-tile mi, or b_frag's 0, 1 of n-tiles 2 nj, 2 nj + 1)"""
    WM, WN = BM // WARPS_M, BN // WARPS_N
    MI, NI = WM // 16, WN // 8
    WARPS = WARPS_M * WARPS_N
    THREADS = 32 * WARPS
    assert WM * WARPS_M == BM and WN * WARPS_N == BN and MI * 16 == WM and NI * 8 == WN, "warp tiles of m16n8"
    assert BK % 8 == 0 and STAGES >= 2
    for R in (BM, BN):
        assert R * BK % (4 * THREADS) == 0, "every thread copies the same number of 16-byte chunks"

    def slab_elem(KR, R):
        def elem(tid, it):
            # (r, k) of element e = tid + it * THREADS, consecutive threads along memory
            e = U32(tid) + U32(it * THREADS)
            if KR:
                return e % U32(R), e // U32(R)
            return e // U32(BK), e % U32(BK)
        return elem

    # ldmatrix.x4 of a K-contiguous operand's fp32 slab (matrix rows of 4 floats): lane l gets the
    # float (l % 4) of row l // 4 of each matrix, which is the m16n8k8 A (and B) layout (the lab's
    # -ldsm versions). Not for an R-contiguous one: .trans would split the floats' halves.
    ldm = _ldm(WARPS_N, WM, WN, 4, A_KR, B_KR)

    def a_frag(warp, lane, mi, kk, reg):
        # mma.m16n8k8 .tf32 A register reg: row groupID (+8 for odd reg), col threadID_in_group
        # (+4 for reg >= 2), in m-tile mi of this warp's rows
        wm = U32(warp) // U32(WARPS_N)
        r = wm * U32(WM) + U32(16 * mi) + U32(lane) // U32(4) + U32(8 * (reg % 2))
        k = U32(kk) + U32(lane) % U32(4) + U32(4 * (reg // 2))
        return r, k

    def b_frag(warp, lane, ni, kk, reg):
        # B register reg: k threadID_in_group (+4 for reg 1), column groupID, in n-tile ni
        wn = U32(warp) % U32(WARPS_N)
        n = wn * U32(WN) + U32(8 * ni) + U32(lane) // U32(4)
        k = U32(kk) + U32(lane) % U32(4) + U32(4 * reg)
        return n, k

    return types.SimpleNamespace(
        BM=BM, BN=BN, BK=BK, WM=WM, WN=WN, MI=MI, NI=NI, WARPS_M=WARPS_M, WARPS_N=WARPS_N, WARPS=WARPS,
        THREADS=THREADS, STAGES=STAGES, A_KR=A_KR, B_KR=B_KR,
        A_SHAPE=_slab_shape(A_KR, BM, BK, STAGES, PAD_R, PAD_K),
        B_SHAPE=_slab_shape(B_KR, BN, BK, STAGES, PAD_R, PAD_K),
        A_CHUNKS=BM * BK // (4 * THREADS), B_CHUNKS=BN * BK // (4 * THREADS),
        A_ELEMS=BM * BK // THREADS, B_ELEMS=BN * BK // THREADS,
        a_at=_slab_at(A_KR, BM, BK), b_at=_slab_at(B_KR, BN, BK),
        a_chunk=_slab_chunk(A_KR, BM, BK, THREADS, 4), b_chunk=_slab_chunk(B_KR, BN, BK, THREADS, 4),
        a_elem=slab_elem(A_KR, BM), b_elem=slab_elem(B_KR, BN),
        a_frag=a_frag, b_frag=b_frag, c_frag=_c_frag(WARPS_N, WM, WN),
        a_ldm=ldm[0], b_ldm=ldm[1])


# ------------------------------------------------------------------------------------------------
# one warp's mma.m16n8k8 .tf32 tile, lane by lane (the attention kernels' products: a warp holds 16
# rows; tile ni covers columns 8 ni .. 8 ni + 7; kk is the first k of the step)

def frag_a(lane, kk, reg):
    """(row, k) of A register reg (row groupID, +8 for odd reg; k threadID_in_group, +4 for reg >= 2)."""
    return U32(lane) // U32(4) + U32(8 * (reg % 2)), U32(kk) + U32(lane) % U32(4) + U32(4 * (reg // 2))


def frag_b(lane, ni, kk, reg):
    """(n, k) of B register reg of tile ni (n groupID; k threadID_in_group, +4 for reg 1)."""
    return U32(8 * ni) + U32(lane) // U32(4), U32(kk) + U32(lane) % U32(4) + U32(4 * reg)


def frag_c(lane, ni, reg):
    """(row, n) of accumulator reg of tile ni (row groupID, +8 for reg >= 2; n 2 threadID_in_group, +1 for odd reg)."""
    return U32(lane) // U32(4) + U32(8 * (reg // 2)), U32(8 * ni) + U32(2) * (U32(lane) % U32(4)) + U32(reg % 2)


# ------------------------------------------------------------------------------------------------
# the BF16 GEMM's tiles: mma.m16n8k16 fragments loaded by ldmatrix.x4

PAD_BF16 = 8   # bf16 elements (16 bytes) after each slab row, either layout


def make_bf16(BM, BN, BK, WARPS_M, WARPS_N, A_KR, B_KR, STAGES=2):
    """make's namespace for bf16 operands (uint16 slabs): a_at, b_at, a_chunk, b_chunk (a chunk is
    8 elements), c_frag as there, and in place of a_frag and b_frag the ldmatrix.x4 addresses:
      a_ldm(warp, lane, mi, kk)  -> (r, k) in the slab of the 16 bytes this lane points ldmatrix at
                                    for m-tile mi at k step kk (16 wide): matrices 0..3 are the
                                    registers a0..a3 (rows +0/+8, k +0/+8); .trans when A_KR
      b_ldm(warp, lane, nj, kk)  -> (n, k) likewise for the n-tiles 2 nj and 2 nj + 1: matrices
                                    0, 1 are b0, b1 of the first, 2, 3 of the second
    Lane l gives row l % 8 of matrix l // 8; stored rows run along the operand's non-contiguous
    dimension (R when K-contiguous, k when A_KR / B_KR)."""
    WM, WN = BM // WARPS_M, BN // WARPS_N
    MI, NI = WM // 16, WN // 8
    WARPS = WARPS_M * WARPS_N
    THREADS = 32 * WARPS
    assert WM * WARPS_M == BM and WN * WARPS_N == BN and MI * 16 == WM and NI * 8 == WN, "warp tiles of m16n8"
    assert NI % 2 == 0, "ldmatrix.x4 loads two n-tiles of B"
    assert BK % 16 == 0 and STAGES >= 2
    for R in (BM, BN):
        assert R * BK % (8 * THREADS) == 0, "every thread copies the same number of 16-byte chunks"

    a_ldm, b_ldm = _ldm(WARPS_N, WM, WN, 8, A_KR, B_KR)

    return types.SimpleNamespace(
        BM=BM, BN=BN, BK=BK, WM=WM, WN=WN, MI=MI, NI=NI, WARPS_M=WARPS_M, WARPS_N=WARPS_N, WARPS=WARPS,
        THREADS=THREADS, STAGES=STAGES, A_KR=A_KR, B_KR=B_KR,
        A_SHAPE=_slab_shape(A_KR, BM, BK, STAGES, PAD_BF16, PAD_BF16),
        B_SHAPE=_slab_shape(B_KR, BN, BK, STAGES, PAD_BF16, PAD_BF16),
        A_CHUNKS=BM * BK // (8 * THREADS), B_CHUNKS=BN * BK // (8 * THREADS),
        a_at=_slab_at(A_KR, BM, BK), b_at=_slab_at(B_KR, BN, BK),
        a_chunk=_slab_chunk(A_KR, BM, BK, THREADS, 8), b_chunk=_slab_chunk(B_KR, BN, BK, THREADS, 8),
        a_ldm=a_ldm, b_ldm=b_ldm, c_frag=_c_frag(WARPS_N, WM, WN))
