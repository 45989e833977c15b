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
"""
import types

import numpy as np

U32 = np.uint32
PAD_K = 4   # floats after each K-contiguous slab row
PAD_R = 8   # floats after each R-contiguous slab row


def make(BM, BN, BK, WARPS_M, WARPS_N, A_KR, B_KR, STAGES=2):
    """A namespace of the geometry (BM, BN, BK, WM, WN, MI, NI, WARPS, THREADS, STAGES, A_SHAPE,
    B_SHAPE, A_CHUNKS, B_CHUNKS, A_ELEMS, B_ELEMS, A_KR, B_KR) and the index functions:
      a_at(s, r, k), b_at(s, n, k)     -> (i, j) in the operand's shared array of slab element (r, k)
      a_chunk(tid, it), b_chunk(..)    -> (r, k): the first of the 4 floats of thread tid's it-th
                                          16-byte copy (4 along the operand's contiguous dimension)
      a_elem(tid, it), b_elem(..)      -> (r, k) of thread tid's it-th 4-byte copy
      a_frag(warp, lane, mi, kk, reg)  -> (r, k) in the slab of the A register reg of m-tile mi at k step kk
      b_frag(warp, lane, ni, kk, reg)  -> (n, k) likewise for B
      c_frag(warp, lane, mi, ni, reg)  -> (m, n) in the block tile of accumulator reg of tile (mi, ni)"""
    WM, WN = BM // WARPS_M, BN // WARPS_N
    MI, NI = WM // 16, WN // 8
    WARPS = WARPS_M * WARPS_N
    THREADS = 32 * WARPS
    assert WM * WARPS_M == BM and WN * WARPS_N == BN and MI * 16 == WM and NI * 8 == WN, "warp tiles of m16n8"
    assert BK % 8 == 0 and STAGES >= 2
    for R in (BM, BN):
        assert R * BK % (4 * THREADS) == 0, "every thread copies the same number of 16-byte chunks"

    def shape(KR, R):
        return (STAGES * BK, R + PAD_R) if KR else (STAGES * R, BK + PAD_K)

    def slab_at(KR, R):
        def at(s, r, k):
            # (i, j) in shared memory of element (r, k) of stage s's slab
            if KR:
                return U32(BK) * U32(s) + U32(k), U32(r)
            return U32(R) * U32(s) + U32(r), U32(k)
        return at

    def slab_chunk(KR, R):
        def chunk(tid, it):
            # (r, k) of the first float of chunk c = tid + it * THREADS; consecutive threads take
            # consecutive chunks along the operand's rows in memory (coalesced)
            c = U32(tid) + U32(it * THREADS)
            if KR:
                return (c % U32(R // 4)) * U32(4), c // U32(R // 4)
            return c // U32(BK // 4), (c % U32(BK // 4)) * U32(4)
        return chunk

    def slab_elem(KR, R):
        def elem(tid, it):
            # (r, k) of element e = tid + it * THREADS, consecutive threads along memory
            e = U32(tid) + U32(it * THREADS)
            if KR:
                return e % U32(R), e // U32(R)
            return e // U32(BK), e % U32(BK)
        return elem

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

    def c_frag(warp, lane, mi, ni, reg):
        # accumulator reg: row groupID (+8 for reg >= 2), columns 2 threadID_in_group (+1 for odd reg)
        wm = U32(warp) // U32(WARPS_N)
        wn = U32(warp) % U32(WARPS_N)
        m = wm * U32(WM) + U32(16 * mi) + U32(lane) // U32(4) + U32(8 * (reg // 2))
        n = wn * U32(WN) + U32(8 * ni) + U32(2) * (U32(lane) % U32(4)) + U32(reg % 2)
        return m, n

    return types.SimpleNamespace(
        BM=BM, BN=BN, BK=BK, WM=WM, WN=WN, MI=MI, NI=NI, WARPS_M=WARPS_M, WARPS_N=WARPS_N, WARPS=WARPS,
        THREADS=THREADS, STAGES=STAGES, A_KR=A_KR, B_KR=B_KR,
        A_SHAPE=shape(A_KR, BM), B_SHAPE=shape(B_KR, BN),
        A_CHUNKS=BM * BK // (4 * THREADS), B_CHUNKS=BN * BK // (4 * THREADS),
        A_ELEMS=BM * BK // THREADS, B_ELEMS=BN * BK // THREADS,
        a_at=slab_at(A_KR, BM), b_at=slab_at(B_KR, BN),
        a_chunk=slab_chunk(A_KR, BM), b_chunk=slab_chunk(B_KR, BN),
        a_elem=slab_elem(A_KR, BM), b_elem=slab_elem(B_KR, BN),
        a_frag=a_frag, b_frag=b_frag, c_frag=c_frag)


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
