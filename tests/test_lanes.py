"""The tensor-core instructions' lane models (llmnb/cuda/lanes.py) and the TF32 GEMM's index math
(llmnb/cuda/mma_tiles.py) run on the 32-lane warp emulator, against float64 NumPy. No GPU, no
simulator: this is how the kernels' fragment mapping is checked before a card runs them."""
import numpy as np
import pytest

from llmnb.cuda import lanes, mma_tiles

F32 = np.float32


# ------------------------------------------------------------------------------------------------
# the ISA's tables

@pytest.mark.parametrize("coords, shape", [(lanes.TF32_A, (16, 8)), (lanes.TF32_B, (8, 8)), (lanes.ACC, (16, 8)),
                                           (lanes.BF16_A, (16, 16)), (lanes.BF16_B, (16, 8))])
def test_each_fragment_table_holds_every_element_once(coords, shape):
    seen = np.zeros(shape, int)
    np.add.at(seen, (coords[..., 0], coords[..., 1]), 1)
    assert (seen == 1).all()


def test_tables_agree_with_the_isa_examples():
    # lane 5 is groupID 1, threadID_in_group 1 (PTX ISA, "Matrix fragments for mma.m16n8k8")
    assert [tuple(x) for x in lanes.TF32_A[5]] == [(1, 1), (9, 1), (1, 5), (9, 5)]
    assert [tuple(x) for x in lanes.TF32_B[5]] == [(1, 1), (5, 1)]
    assert [tuple(x) for x in lanes.ACC[5]] == [(1, 2), (1, 3), (9, 2), (9, 3)]
    # m16n8k16 bf16, lane 31 (groupID 7, threadID_in_group 3): a0..a7, b0..b3
    assert [tuple(x) for x in lanes.BF16_A[31]] == [(7, 6), (7, 7), (15, 6), (15, 7), (7, 14), (7, 15), (15, 14), (15, 15)]
    assert [tuple(x) for x in lanes.BF16_B[31]] == [(6, 7), (7, 7), (14, 7), (15, 7)]


# ------------------------------------------------------------------------------------------------
# conversions

def test_cvt_rna_tf32_rounds_to_nearest_ties_away_from_zero():
    ulp = 2.0 ** -10          # tf32's ulp at 1
    x = np.array([1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 2 - 2.0 ** -23, 1 + 1.5 * ulp, 3.0, np.inf, -np.inf], F32)
    want = np.array([1 + ulp, -(1 + ulp), 1, 1 + 2 * ulp, 3.0, np.inf, -np.inf], F32)
    got = lanes.tf32_value(lanes.cvt_rna_tf32(x))
    assert np.array_equal(got, want)
    assert np.isnan(lanes.tf32_value(lanes.cvt_rna_tf32(np.array([np.nan], F32)))).all()
    # random values: within half a tf32 ulp, and only the top 19 bits set
    r = np.random.default_rng(0).standard_normal(10000).astype(F32)
    bits = lanes.cvt_rna_tf32(r)
    assert not (bits & ~lanes.TF32_MASK).any()
    assert (np.abs(lanes.tf32_value(bits) - r) <= np.abs(r) * 2.0 ** -11).all()


def test_cvt_bf16x2_packs_lo_low_and_rounds_to_nearest_even():
    one = 1.0
    ulp = 2.0 ** -7
    lo = np.array([one + ulp / 2, one + 1.5 * ulp, -2.0], F32)   # ties: to even (1, 1 + 2 ulp)
    hi = np.array([3.0, 0.5, one + ulp / 4], F32)
    w = lanes.cvt_bf16x2(lo, hi)
    assert np.array_equal(lanes.bf16_value(w & 0xFFFF), np.array([1.0, one + 2 * ulp, -2.0], F32))
    assert np.array_equal(lanes.bf16_value(w >> 16), np.array([3.0, 0.5, 1.0], F32))


# ------------------------------------------------------------------------------------------------
# the instructions

def test_mma_tf32_model_is_the_matrix_product_of_the_fragments():
    rng = np.random.default_rng(1)
    A, B, C = rng.standard_normal((16, 8)), rng.standard_normal((8, 8)), rng.standard_normal((16, 8))
    a = lanes.cvt_rna_tf32(lanes.scatter(A, lanes.TF32_A).astype(F32))
    b = lanes.cvt_rna_tf32(lanes.scatter(B, lanes.TF32_B).astype(F32))
    d = lanes.mma_m16n8k8_tf32(a, b, lanes.scatter(C, lanes.ACC).astype(F32))
    want = lanes.round_tf32(A.astype(F32)).astype(float) @ lanes.round_tf32(B.astype(F32)) + C.astype(F32)
    assert np.allclose(lanes.gather(d, lanes.ACC, (16, 8)), want, rtol=1e-6, atol=1e-6)
    # the low 13 bits of an operand register are not read
    assert np.array_equal(lanes.mma_m16n8k8_tf32(a | np.uint32(0x1FFF), b, d * 0), lanes.mma_m16n8k8_tf32(a, b, d * 0))


def test_mma_bf16_model_is_the_matrix_product_of_the_fragments():
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((16, 16)).astype(F32), rng.standard_normal((16, 8)).astype(F32)
    ea, eb = lanes.scatter(A, lanes.BF16_A), lanes.scatter(B, lanes.BF16_B)   # (32, 8), (32, 4) elements
    a = lanes.cvt_bf16x2(ea[:, 0::2], ea[:, 1::2])
    b = lanes.cvt_bf16x2(eb[:, 0::2], eb[:, 1::2])
    d = lanes.mma_m16n8k16_bf16(a, b, np.zeros((32, 4), F32))
    rA = lanes.bf16_value(lanes._bf16_bits(A)).astype(float)
    rB = lanes.bf16_value(lanes._bf16_bits(B)).astype(float)
    assert np.allclose(lanes.gather(d, lanes.ACC, (16, 8)), rA @ rB, rtol=1e-6, atol=1e-6)


def test_ldmatrix_x4_gives_each_lane_its_rows_words_and_trans_the_columns():
    M = np.arange(4 * 64, dtype=np.uint16).reshape(4, 8, 8)   # 4 matrices of 8 x 8 b16
    rows = M.reshape(32, 8)                                   # lane l addresses row l % 8 of matrix l // 8
    got = lanes.ldmatrix(rows, 4)
    lane = 13   # row 3, elements 2 and 3
    assert [int(got[lane, i]) for i in range(4)] == [int(M[i, 3, 2]) | int(M[i, 3, 3]) << 16 for i in range(4)]
    got_t = lanes.ldmatrix(rows, 2, trans=True)
    assert int(got_t[lane, 1]) == int(M[1, 2, 3]) | int(M[1, 3, 3]) << 16
    # a tf32 tile of 8 rows x 4 floats read with ldmatrix (b16 pairs = one float): lane l gets
    # [l >> 2, l & 3], the A fragment's register 0 of mma.m16n8k8
    T = np.random.default_rng(3).standard_normal((8, 4)).astype(F32)
    words = lanes.ldmatrix(np.tile(T.view(np.uint16), (4, 1)), 1)[:, 0]
    assert np.array_equal(words.view(F32), lanes.scatter(T, lanes.TF32_A[:, :1] % [8, 4])[:, 0])


def test_cp_async_zero_fills_past_src_size():
    src = np.arange(1, 17, dtype=np.uint8)
    assert list(lanes.cp_async(src, 16, 8)) == list(range(1, 9)) + [0] * 8
    assert not lanes.cp_async(src, 4, 0).any()


# ------------------------------------------------------------------------------------------------
# the TF32 GEMM's index math on the emulator (llmnb/cuda/matmul_tc.py's kernels call the same functions)

LAYOUTS = {"forward": (False, False), "dinp": (False, True), "dweight": (True, True)}
GEOMETRIES = {"gpu": (128, 128, 16, 2, 4), "sim": (32, 16, 16, 2, 1), "128x64": (128, 64, 16, 4, 2),
              "w64x64": (128, 128, 16, 2, 2), "64x64-bk32": (64, 64, 32, 2, 2)}


def _operands(kind, M, N, K, rng):
    A_KR, B_KR = LAYOUTS[kind]
    a = rng.standard_normal((K, M) if A_KR else (M, K)).astype(F32)
    b = rng.standard_normal((K, N) if B_KR else (N, K)).astype(F32)
    A = (a.T if A_KR else a).astype(np.float64)   # (M, K)
    B = (b.T if B_KR else b).astype(np.float64)   # (N, K)
    return a, b, A, B


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_emulated_block_is_the_tf32_product_of_its_tile(kind, geometry):
    BM, BN, BK, WM, WN = GEOMETRIES[geometry]
    t = mma_tiles.make(BM, BN, BK, WM, WN, *LAYOUTS[kind])
    rng = np.random.default_rng(4)
    # the block at (1, 1) of a matrix whose last tile is partial in M, N and K (zeros past the edges)
    M, N, K = BM + BM // 2 + 3, BN + 5, 2 * BK + 5
    a, b, A, B = _operands(kind, M, N, K, rng)
    got = lanes.emulate_gemm_block(t, a, b, BM, BN, 0, K)
    rows, cols = M - BM, N - BN
    ref = lanes.round_tf32(A[BM:, :].astype(F32)).astype(float) @ lanes.round_tf32(B[BN:, :].astype(F32)).T
    assert not np.isnan(got).any()
    err = np.abs(got[:rows, :cols] - ref).max() / np.abs(ref).max()
    assert err < 2e-6, err           # fp32 sums of exact tf32 products: a wrong lane is O(1)
    assert not got[rows:, :].any() and not got[:, cols:].any()   # past the edges: zero operands
    # against the float64 product of the operands as given: tf32's 10-bit mantissa
    exact = A[BM:] @ B[BN:].T
    assert 1e-5 < np.abs(got[:rows, :cols] - exact).max() / np.abs(exact).max() < 2e-3


def test_a_split_k_range_sums_only_its_slabs():
    t = mma_tiles.make(*GEOMETRIES["sim"], False, True)
    rng = np.random.default_rng(5)
    a, b, A, B = _operands("dinp", 32, 16, 40, rng)
    got = lanes.emulate_gemm_block(t, a, b, 0, 0, 16, 32)   # K slice [16, 32)
    ref = lanes.round_tf32(A[:, 16:32].astype(F32)).astype(float) @ lanes.round_tf32(B[:, 16:32].astype(F32)).T
    assert np.abs(got - ref).max() / np.abs(ref).max() < 2e-6


def test_a_wrong_lane_mapping_fails_the_emulated_product():
    # the check above would catch a kernel whose A fragment swapped the roles of a register's two
    # bits (rows +8 and columns +4): the product of the same tile then differs at O(1)
    t = mma_tiles.make(*GEOMETRIES["sim"], False, False)
    good = t.a_frag
    t.a_frag = lambda warp, lane, mi, kk, reg: good(warp, lane, mi, kk, (reg % 2) * 2 + reg // 2)
    rng = np.random.default_rng(6)
    a, b, A, B = _operands("forward", 32, 16, 16, rng)
    got = lanes.emulate_gemm_block(t, a, b, 0, 0, 0, 16)
    ref = lanes.round_tf32(A.astype(F32)).astype(float) @ lanes.round_tf32(B.astype(F32)).T
    assert np.abs(got - ref).max() / np.abs(ref).max() > 0.1


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_slab_copies_cover_each_slab_once(kind, geometry):
    # the 16-byte chunks and the 4-byte elements of all threads: every (r, k) of the slab once
    t = mma_tiles.make(*GEOMETRIES[geometry], *LAYOUTS[kind])
    for KR, R, chunk, elem, n_chunks, n_elems in ((t.A_KR, t.BM, t.a_chunk, t.a_elem, t.A_CHUNKS, t.A_ELEMS),
                                                  (t.B_KR, t.BN, t.b_chunk, t.b_elem, t.B_CHUNKS, t.B_ELEMS)):
        seen = np.zeros((R, t.BK), int)
        for tid in range(t.THREADS):
            for it in range(n_chunks):
                r, k = (int(v) for v in chunk(tid, it))
                for q in range(4):
                    seen[(r + q, k) if KR else (r, k + q)] += 1
        assert (seen == 1).all()
        seen[...] = 0
        for tid in range(t.THREADS):
            for it in range(n_elems):
                seen[tuple(int(v) for v in elem(tid, it))] += 1
        assert (seen == 1).all()


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_fragment_reads_are_free_of_shared_memory_bank_conflicts(kind):
    # every 32-bit fragment read of a warp (one register of one tile) touches 32 different banks
    t = mma_tiles.make(*GEOMETRIES["gpu"], *LAYOUTS[kind])
    for frag, at, shape, nregs, tiles in ((t.a_frag, t.a_at, t.A_SHAPE, 4, t.MI), (t.b_frag, t.b_at, t.B_SHAPE, 2, t.NI)):
        for reg in range(nregs):
            for tile in range(tiles):
                banks = set()
                for lane in range(32):
                    i, j = (int(v) for v in at(1, *frag(3, lane, tile, 8, reg)))
                    banks.add((i * shape[1] + j) % 32)
                assert len(banks) == 32, (kind, reg, tile)


def test_the_attention_kernels_warp_fragments_are_the_isa_tables():
    # mma_tiles.frag_a/b/c (a warp's 16-row tile, llmnb's TF32 attention) against lanes' ISA tables
    for lane in range(32):
        for reg in range(4):
            assert tuple(int(v) for v in mma_tiles.frag_a(lane, 8, reg)) == (lanes.TF32_A[lane, reg, 0],
                                                                              8 + lanes.TF32_A[lane, reg, 1])
            assert tuple(int(v) for v in mma_tiles.frag_c(lane, 2, reg)) == (lanes.ACC[lane, reg, 0],
                                                                              16 + lanes.ACC[lane, reg, 1])
        for reg in range(2):
            n, k = (int(v) for v in mma_tiles.frag_b(lane, 3, 16, reg))
            assert (k - 16, n - 24) == tuple(lanes.TF32_B[lane, reg])


# ------------------------------------------------------------------------------------------------
# the BF16 GEMM's index math (llmnb/cuda/matmul_bf16.py): ldmatrix.x4 fragments of mma.m16n8k16

GEOMETRIES_BF16 = {"gpu": (128, 128, 32, 2, 4), "sim": (32, 16, 32, 2, 1), "64x64": (64, 64, 32, 2, 2)}


def _bf16_operands(kind, M, N, K, rng):
    # operands as bf16 bits, and their values (float64, A (M, K) and B (N, K))
    a, b, _, _ = _operands(kind, M, N, K, rng)
    a16, b16 = lanes.cvt_bf16x2(a, 0).astype(np.uint16), lanes.cvt_bf16x2(b, 0).astype(np.uint16)
    A_KR, B_KR = LAYOUTS[kind]
    A = lanes.bf16_value(a16).astype(np.float64)
    B = lanes.bf16_value(b16).astype(np.float64)
    return a16, b16, (A.T if A_KR else A), (B.T if B_KR else B)


@pytest.mark.parametrize("geometry", list(GEOMETRIES_BF16))
@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_emulated_bf16_block_is_the_product_of_its_tile(kind, geometry):
    BM, BN, BK, WM, WN = GEOMETRIES_BF16[geometry]
    t = mma_tiles.make_bf16(BM, BN, BK, WM, WN, *LAYOUTS[kind])
    rng = np.random.default_rng(7)
    # the block at (1, 1), its last tile partial in M, N and K (the BF16 kernels take dimensions
    # that are multiples of 8: 16-byte rows)
    M, N, K = BM + BM // 2 + 8, BN + 8, 2 * BK + 8
    a, b, A, B = _bf16_operands(kind, M, N, K, rng)
    got = lanes.emulate_gemm_block_bf16(t, a, b, BM, BN, 0, K)
    rows, cols = M - BM, N - BN
    ref = A[BM:] @ B[BN:].T   # bf16 x bf16 products are exact: only the fp32 sums round
    assert not np.isnan(got).any()
    assert np.abs(got[:rows, :cols] - ref).max() / np.abs(ref).max() < 2e-6   # a wrong lane is O(1)
    assert not got[rows:, :].any() and not got[:, cols:].any()


def test_a_bf16_split_k_range_sums_only_its_slabs():
    t = mma_tiles.make_bf16(*GEOMETRIES_BF16["sim"], True, True)
    a, b, A, B = _bf16_operands("dweight", 32, 16, 96, np.random.default_rng(8))
    got = lanes.emulate_gemm_block_bf16(t, a, b, 0, 0, 32, 64)
    ref = A[:, 32:64] @ B[:, 32:64].T
    assert np.abs(got - ref).max() / np.abs(ref).max() < 2e-6


@pytest.mark.parametrize("swap", ["a_matrices", "b_tiles"])
def test_a_wrong_ldmatrix_address_fails_the_emulated_bf16_product(swap):
    # a kernel whose A lanes point at matrices 1 and 2 the other way round (rows +8 for k +8), or
    # whose B lanes give the two n-tiles' rows in the wrong order, computes a different product
    t = mma_tiles.make_bf16(*GEOMETRIES_BF16["sim"], False, False)
    if swap == "a_matrices":
        good = t.a_ldm
        t.a_ldm = lambda w, lane, mi, kk: good(w, (lane % 8) + 8 * [0, 2, 1, 3][lane // 8], mi, kk)
    else:
        good = t.b_ldm
        t.b_ldm = lambda w, lane, nj, kk: good(w, (lane + 16) % 32, nj, kk)
    a, b, A, B = _bf16_operands("forward", 32, 16, 32, np.random.default_rng(9))
    got = lanes.emulate_gemm_block_bf16(t, a, b, 0, 0, 0, 32)
    ref = A @ B.T
    assert np.abs(got - ref).max() / np.abs(ref).max() > 0.1


@pytest.mark.parametrize("geometry", list(GEOMETRIES_BF16))
@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_bf16_slab_copies_cover_each_slab_once(kind, geometry):
    t = mma_tiles.make_bf16(*GEOMETRIES_BF16[geometry], *LAYOUTS[kind])
    for KR, R, chunk, n_chunks in ((t.A_KR, t.BM, t.a_chunk, t.A_CHUNKS), (t.B_KR, t.BN, t.b_chunk, t.B_CHUNKS)):
        seen = np.zeros((R, t.BK), int)
        for tid in range(t.THREADS):
            for it in range(n_chunks):
                r, k = (int(v) for v in chunk(tid, it))
                for q in range(8):
                    seen[(r + q, k) if KR else (r, k + q)] += 1
        assert (seen == 1).all()


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_bf16_ldmatrix_phases_are_free_of_bank_conflicts(kind):
    # ldmatrix reads one 8 x 8 matrix per phase: its 8 lanes' 16-byte rows must fall in 8 different
    # 16-byte bank groups (of the 128 bytes the 32 banks serve at once), and start 16-byte aligned
    t = mma_tiles.make_bf16(*GEOMETRIES_BF16["gpu"], *LAYOUTS[kind])
    for ldm, at, shape, tiles in ((t.a_ldm, t.a_at, t.A_SHAPE, t.MI), (t.b_ldm, t.b_at, t.B_SHAPE, t.NI // 2)):
        for tile in range(tiles):
            for phase in range(4):
                groups = set()
                for lane in range(8 * phase, 8 * phase + 8):
                    i, j = (int(v) for v in at(1, *ldm(5, lane, tile, 16)))
                    byte = 2 * (i * shape[1] + j)
                    assert byte % 16 == 0
                    groups.add(byte % 128 // 16)
                assert len(groups) == 8, (kind, tile, phase)


@pytest.mark.parametrize("kind", ["forward", "dinp"])
def test_tf32_ldmatrix_addresses_give_each_lane_its_fragment_registers(kind):
    # the lab's -ldsm TF32 versions load a K-contiguous operand's fragments with ldmatrix.x4 (rows of
    # 4 floats): each lane's 4 registers must be the fp32 bits a_frag's (b_frag's) 32-bit reads give
    t = mma_tiles.make(*GEOMETRIES["gpu"], *LAYOUTS[kind])
    rng = np.random.default_rng(10)
    for ldm, at, frag, shape, tiles, KR in ((t.a_ldm, t.a_at, t.a_frag, t.A_SHAPE, t.MI, t.A_KR),
                                            (t.b_ldm, t.b_at, t.b_frag, t.B_SHAPE, t.NI // 2, t.B_KR)):
        if KR:
            continue
        sh = rng.standard_normal(shape).astype(F32)
        for w in (0, 5):
            for tile in range(tiles):
                rows = np.empty((32, 8), np.uint16)
                for lane in range(32):
                    i, j = (int(v) for v in at(1, *ldm(w, lane, tile, 8)))
                    assert (i * shape[1] + j) % 4 == 0   # 16-byte aligned rows
                    rows[lane] = sh[i, j:j + 4].view(np.uint16)
                regs = lanes.ldmatrix(rows, 4)
                for lane in range(32):
                    if frag is t.a_frag:
                        want = [sh[tuple(int(v) for v in at(1, *frag(w, lane, tile, 8, reg)))] for reg in range(4)]
                    else:   # n-tiles 2 tile and 2 tile + 1, registers 0 and 1 of each
                        want = [sh[tuple(int(v) for v in at(1, *frag(w, lane, 2 * tile + q // 2, 8, q % 2)))]
                                for q in range(4)]
                    assert list(regs[lane]) == list(np.array(want, F32).view(np.uint32)), (kind, w, tile, lane)
