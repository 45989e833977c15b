"""The PTX ISA's per-lane semantics of llmnb.cuda.ptx's instructions, in NumPy, and a 32-lane warp emulator.

A tensor-core instruction is warp-collective: each of the 32 lanes holds a few registers of each
operand, at places the PTX ISA's fragment layout tables fix ("Matrix fragments for mma.m16n8k8",
"... mma.m16n8k16", "Warp-level matrix load instruction: ldmatrix"). Each model here takes the 32
lanes' registers at once, as arrays with one row per lane, and returns what each lane gets back:
  mma_m16n8k8_tf32   a (32,4) b32, b (32,2) b32, c (32,4) f32 -> d (32,4) f32
  mma_m16n8k16_bf16  a (32,4) b32 (bf16x2), b (32,2), c (32,4) f32 -> d (32,4) f32
  ldmatrix           the 16 bytes at each lane's row address (32,8) b16 -> (32,num) b32
  cp_async           16 or 4 bytes copied, the ones past src_size zero
  cvt_rna_tf32       f32 -> tf32 in a b32 (round to nearest, ties away from zero)
  cvt_bf16x2         two f32 -> bf16x2 in a b32 (round to nearest even; lo in the low half)
The coordinate tables (*_coords: (32, regs, 2) of (row, col)) are the ISA's tables written once;
the models, llmnb.cuda.ptx's simulator twins and the tests use them. No numba here: the default
pytest runs the emulator (tests/test_lanes.py) on any machine.

emulate_gemm_block runs a tensor-core GEMM kernel's per-lane index math (llmnb/cuda/mma_tiles.py:
the same plain functions the @cuda.jit kernel calls) over one block, a warp at a time through
these models, and returns the block's output tile: what the kernel computes, if its index math
and the ISA tables agree.
"""
import numpy as np

WARP = 32
LANES = np.arange(WARP)
TF32_MASK = np.uint32(0xFFFFE000)   # a tf32 in a b32: sign, 8 exponent bits, 10 mantissa bits


# ------------------------------------------------------------------------------------------------
# fragment layouts: (row, col) of each lane's register r. groupID = lane >> 2, threadID_in_group =
# lane % 4 in the ISA's words

def _table(nregs, fn):
    c = np.empty((WARP, nregs, 2), np.int64)
    for lane in range(WARP):
        for r in range(nregs):
            c[lane, r] = fn(lane >> 2, lane & 3, r)
    return c


# m16n8k8 .tf32: A (16,8) row-major, B (8,8) as (k, n), C/D (16,8)
TF32_A = _table(4, lambda g, t, r: (g + 8 * (r & 1), t + 4 * (r >> 1)))
TF32_B = _table(2, lambda g, t, r: (t + 4 * r, g))
ACC = _table(4, lambda g, t, r: (g + 8 * (r >> 1), 2 * t + (r & 1)))
# m16n8k16 .bf16, per 16-bit half h of register r (element 2r + h): A (16,16), B (16,8) as (k, n)
BF16_A = _table(8, lambda g, t, e: (g + 8 * ((e >> 1) & 1), 2 * t + (e & 1) + 8 * (e >> 2)))
BF16_B = _table(4, lambda g, t, e: (2 * t + (e & 1) + 8 * (e >> 1), g))


# ------------------------------------------------------------------------------------------------
# conversions

def tf32_value(bits):
    """The float32 value of tf32 bits (the mma reads only the top 19 bits of each register)."""
    return (np.asarray(bits, np.uint32) & TF32_MASK).view(np.float32)


def cvt_rna_tf32(x):
    """cvt.rna.tf32.f32: x (float32) rounded to 10 mantissa bits, ties away from zero, as b32.
    Inf and NaN keep their class (a NaN's payload may be dropped)."""
    u = np.asarray(x, np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x1000)) & TF32_MASK   # half an ulp of tf32, then truncate: ties away
    special = (u & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    nan = special & ((u & np.uint32(0x7FFFFF)) != 0)
    return np.where(nan, np.uint32(0x7FFFFFFF), np.where(special, u, rounded)).astype(np.uint32)


def round_tf32(x):
    """x rounded to tf32 as float32 values (what an operand of the TF32 kernels multiplies with)."""
    return tf32_value(cvt_rna_tf32(x))


def _bf16_bits(x):
    u = np.asarray(x, np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)  # nearest even
    nan = np.isnan(np.asarray(x, np.float32))
    return np.where(nan, np.uint32(0x7FC0), rounded).astype(np.uint32)


def cvt_bf16x2(lo, hi):
    """cvt.rn.bf16x2.f32 d, hi, lo: bf16(lo) in the low 16 bits of d, bf16(hi) in the high ones."""
    return (_bf16_bits(lo) | (_bf16_bits(hi) << np.uint32(16))).astype(np.uint32)


def bf16_value(half_bits):
    """The float32 value of bf16 bits (uint16 or the low 16 bits of a uint32)."""
    return (np.asarray(half_bits, np.uint32).astype(np.uint32) << np.uint32(16)).view(np.float32)


def unpack_bf16x2(words):
    """(32, n) b32 of bf16x2 -> (32, 2n) float32: element 2r the low half of register r, 2r+1 the high."""
    w = np.asarray(words, np.uint32)
    out = np.empty(w.shape[:-1] + (2 * w.shape[-1],), np.float32)
    out[..., 0::2] = bf16_value(w & np.uint32(0xFFFF))
    out[..., 1::2] = bf16_value(w >> np.uint32(16))
    return out


# ------------------------------------------------------------------------------------------------
# the warp-collective instructions

def gather(frags, coords, shape):
    """The matrix (float64) that the lanes' registers frags (32, n) hold at coords (32, n, 2)."""
    m = np.full(shape, np.nan)
    m[coords[..., 0], coords[..., 1]] = frags
    return m


def scatter(matrix, coords):
    """Each lane's registers (32, n) of a matrix laid out as coords (32, n, 2)."""
    return np.asarray(matrix)[coords[..., 0], coords[..., 1]]


def _mma(A, B, c):
    # D = A @ B + C, each product exact in float64 (as in the tensor core: tf32 x tf32 and bf16 x bf16
    # products are exact in fp32), the sum rounded to float32 once (the hardware's order of the
    # fp32 additions is unspecified: a kernel's tolerance covers it)
    C = gather(np.asarray(c, np.float32), ACC, (16, 8))
    return scatter(A @ B + C, ACC).astype(np.float32)


def mma_m16n8k8_tf32(a, b, c):
    """mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: d (32,4) f32 of the 32 lanes' a (32,4),
    b (32,2) tf32 in b32 and c (32,4) f32."""
    A = gather(tf32_value(a), TF32_A, (16, 8))
    B = gather(tf32_value(b), TF32_B, (8, 8))
    return _mma(A, B, c)


def mma_m16n8k16_bf16(a, b, c):
    """mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: d (32,4) f32 of the 32 lanes' a (32,4)
    and b (32,2) bf16x2 in b32 and c (32,4) f32."""
    A = gather(unpack_bf16x2(a), BF16_A, (16, 16))
    B = gather(unpack_bf16x2(b), BF16_B, (16, 8))
    return _mma(A, B, c)


def ldmatrix(rows, num, trans=False):
    """ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16: rows (32, 8) uint16 are the 16 bytes at
    each lane's address (lanes 8i..8i+7 give the 8 rows of matrix i; the other lanes' addresses
    are not read). -> (32, num) b32: lane l's register i holds row l>>2, elements 2(l&3) and
    2(l&3)+1 of matrix i (its transpose with .trans), the first in the low half."""
    rows = np.asarray(rows, np.uint16).astype(np.uint32)
    out = np.empty((WARP, num), np.uint32)
    for i in range(num):
        m = rows[8 * i:8 * i + 8]
        if trans:
            m = m.T
        out[:, i] = m[LANES >> 2, 2 * (LANES & 3)] | (m[LANES >> 2, 2 * (LANES & 3) + 1] << np.uint32(16))
    return out


def cp_async(src, cp_size, src_size):
    """cp.async ... [dst], [src], cp_size, src_size: the cp_size bytes written to dst, the first
    src_size of them src's, the rest zero (src: a uint8 array of at least src_size bytes)."""
    out = np.zeros(cp_size, np.uint8)
    out[:src_size] = np.asarray(src, np.uint8)[:src_size]
    return out


# ------------------------------------------------------------------------------------------------
# the warp emulator: a tensor-core GEMM's block, run lane by lane through the kernel's own index math

def _copy_slabs(t, stage, A_sh, B_sh, a, b, m0, n0, k0, k_end):
    # every thread's 16-byte cp.async chunks of the slab at k0 (t.a_chunk/t.b_chunk, to t.a_at/t.b_at):
    # the chunk's elements lie along x's contiguous dimension, zero past x's edges
    for sh, x, KR, r0, chunk, at, n_chunks in ((A_sh, a, t.A_KR, m0, t.a_chunk, t.a_at, t.A_CHUNKS),
                                               (B_sh, b, t.B_KR, n0, t.b_chunk, t.b_at, t.B_CHUNKS)):
        R = x.shape[1] if KR else x.shape[0]
        for tid in range(t.THREADS):
            for it in range(n_chunks):
                r, k = (int(v) for v in chunk(tid, it))
                i, j = (int(v) for v in at(stage, r, k))
                for q in range(16 // sh.dtype.itemsize):
                    gr, gk = (r0 + r + q, k0 + k) if KR else (r0 + r, k0 + k + q)
                    ok = gr < R and gk < k_end
                    sh[i, j + q] = (x[gk, gr] if KR else x[gr, gk]) if ok else 0


def _write_tile(t, acc):
    # the block's output tile from each warp's accumulators (t.c_frag)
    out = np.full((t.BM, t.BN), np.nan, np.float32)
    for w in range(t.WARPS):
        for lane in range(WARP):
            for mi in range(t.MI):
                for ni in range(t.NI):
                    for reg in range(4):
                        m, n = (int(v) for v in t.c_frag(w, lane, mi, ni, reg))
                        out[m, n] = acc[w, mi, ni, lane, reg]
    return out


def emulate_gemm_block(t, a, b, m0, n0, k_start, k_end, stale=np.nan):
    """The (t.BM, t.BN) output tile at (m0, n0) of the block that sums k in [k_start, k_end), as the
    kernel built from the tile math t (llmnb/cuda/mma_tiles.py) computes it: each thread's slab
    copies (16-byte chunks: t.a_chunk/t.b_chunk, into shared memory at t.a_at/t.b_at, zero past the
    operand's edges), then per warp and k step of 8 each lane's fragment registers (t.a_frag,
    t.b_frag) rounded by cvt_rna_tf32, the mma model, and each lane's accumulators written where
    t.c_frag says. a is (M, K), or (K, M) when t.A_KR; b is (N, K), or (K, N) when t.B_KR.
    Shared memory starts as `stale` (NaN: a fragment read from a place no copy wrote shows)."""
    A_sh = np.full(t.A_SHAPE, stale, np.float32)
    B_sh = np.full(t.B_SHAPE, stale, np.float32)
    acc = np.zeros((t.WARPS, t.MI, t.NI, WARP, 4), np.float32)
    for s, k0 in enumerate(range(k_start, k_end, t.BK)):
        stage = s % t.STAGES
        _copy_slabs(t, stage, A_sh, B_sh, a, b, m0, n0, k0, k_end)
        for kk in range(0, t.BK, 8):
            for w in range(t.WARPS):
                af = np.empty((t.MI, WARP, 4), np.uint32)
                bf = np.empty((t.NI, WARP, 2), np.uint32)
                for lane in range(WARP):
                    for mi in range(t.MI):
                        for reg in range(4):
                            r, k = t.a_frag(w, lane, mi, kk, reg)
                            af[mi, lane, reg] = cvt_rna_tf32(A_sh[tuple(int(v) for v in t.a_at(stage, r, k))])
                    for ni in range(t.NI):
                        for reg in range(2):
                            n, k = t.b_frag(w, lane, ni, kk, reg)
                            bf[ni, lane, reg] = cvt_rna_tf32(B_sh[tuple(int(v) for v in t.b_at(stage, n, k))])
                for mi in range(t.MI):
                    for ni in range(t.NI):
                        acc[w, mi, ni] = mma_m16n8k8_tf32(af[mi], bf[ni], acc[w, mi, ni])
        A_sh[...] = stale   # the next slab's copies must write every place its fragments read
        B_sh[...] = stale
    return _write_tile(t, acc)


BF16_NAN = np.uint16(0x7FC0)


def emulate_gemm_block_bf16(t, a, b, m0, n0, k_start, k_end, stale=BF16_NAN):
    """emulate_gemm_block for the BF16 GEMM (llmnb/cuda/matmul_bf16.py; t from mma_tiles.make_bf16):
    a and b hold bf16 bits (uint16); each k step of 16 every lane points ldmatrix.x4 at the 16 bytes
    t.a_ldm / t.b_ldm name (.trans where the operand is R-contiguous), then the m16n8k16 model.
    -> the (t.BM, t.BN) float32 tile of fp32 sums. Shared memory starts as `stale` (a bf16 NaN)."""
    A_sh = np.full(t.A_SHAPE, stale, np.uint16)
    B_sh = np.full(t.B_SHAPE, stale, np.uint16)
    acc = np.zeros((t.WARPS, t.MI, t.NI, WARP, 4), np.float32)
    for s, k0 in enumerate(range(k_start, k_end, t.BK)):
        stage = s % t.STAGES
        _copy_slabs(t, stage, A_sh, B_sh, a, b, m0, n0, k0, k_end)
        for kk in range(0, t.BK, 16):
            for w in range(t.WARPS):
                rows = np.empty((WARP, 8), np.uint16)
                af = np.empty((t.MI, WARP, 4), np.uint32)
                bf = np.empty((t.NI, WARP, 2), np.uint32)
                for mi in range(t.MI):
                    for lane in range(WARP):
                        i, j = (int(v) for v in t.a_at(stage, *t.a_ldm(w, lane, mi, kk)))
                        rows[lane] = A_sh[i, j:j + 8]
                    af[mi] = ldmatrix(rows, 4, t.A_KR)
                for nj in range(t.NI // 2):
                    for lane in range(WARP):
                        i, j = (int(v) for v in t.b_at(stage, *t.b_ldm(w, lane, nj, kk)))
                        rows[lane] = B_sh[i, j:j + 8]
                    regs = ldmatrix(rows, 4, t.B_KR)
                    bf[2 * nj], bf[2 * nj + 1] = regs[:, 0:2], regs[:, 2:4]
                for mi in range(t.MI):
                    for ni in range(t.NI):
                        acc[w, mi, ni] = mma_m16n8k16_bf16(af[mi], bf[ni], acc[w, mi, ni])
        A_sh[...] = stale
        B_sh[...] = stale
    return _write_tile(t, acc)
