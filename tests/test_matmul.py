"""The fast matmuls of src/llmnb/matmul.py against float64 NumPy.

- forward overwrites `out` (it starts as NaN garbage), with and without bias;
- backward accumulates: every gradient buffer starts random and must end as before + reference;
- odd shapes: N, C, OC not multiples of the micro-kernel's 6x16 tile, N < 6, OC < 16, long rows, and
  the chunked path of the classifier's sizes (small KCH, PCH and PACK_FLOATS force several chunks);
- the parallel kernels equal their serial copies bit for bit (each output element is summed by one
  thread in a fixed order);
- scratch buffers are reused, not reallocated, from one call to the next;
- bad arguments raise ValueError naming the argument.
Tolerances: each output is a float32 sum of K products (K = C, OC or N), added in order, against
float64: |err| <= 1e-5 |ref| + 4 sqrt(K) eps32 S, S the float64 sum of the terms' magnitudes
(|start| + sum |a b|): random rounding errors grow like sqrt(K) eps32 S. A term missing or counted
twice moves the result by about S / K, 1000x the tolerance at K = 256.
"""
import functools
import math

import numba
from numba import njit
import numpy as np
import pytest

from llmnb import matmul

F32 = np.float32
PARALLEL_KERNELS = ("pack_chunk", "gemm", "bias_backward")


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


EPS32 = float(np.finfo(F32).eps)


def assert_close(got, want, K, what, scale=None):
    """got ~ want for sums of K terms whose magnitudes add up to scale (default: 1 + |want|)."""
    if scale is None:
        scale = 1.0 + np.abs(want)
    err = np.abs(got.astype(np.float64) - want)
    tol = 1e-5 * np.abs(want) + 4 * math.sqrt(K) * EPS32 * scale
    bad = ~(err <= tol)   # (NaN is bad too)
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} beyond tolerance, worst err "
                           f"{err.max():.3g}, at tolerance {tol.reshape(-1)[np.argmax(err)]:.3g}")


def make_problem(rng, N, C, OC, with_bias):
    inp = randn(rng, N, C)
    weight = randn(rng, OC, C, scale=1.0 / math.sqrt(C))
    bias = randn(rng, OC) if with_bias else None
    dout = randn(rng, N, OC, scale=1.0 / math.sqrt(max(OC / C, 1.0)))
    return inp, weight, bias, dout


def reference(inp, weight, bias, dout):
    x, w, d = (a.astype(np.float64) for a in (inp, weight, dout))
    out = x @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    return out, d @ w, d.T @ x, d.sum(axis=0)


def magnitudes(inp, weight, bias, dout):
    """reference() of the absolute values: the sums of the terms' magnitudes, for the tolerances."""
    return reference(*(None if a is None else np.abs(a) for a in (inp, weight, bias, dout)))


def run_backward(rng, inp, weight, dout, with_bias, **kw):
    """Backward from random starting gradients; returns (starting values, results)."""
    N, C = inp.shape
    OC = weight.shape[0]
    start = (randn(rng, N, C), randn(rng, OC, C), randn(rng, OC) if with_bias else None)
    dinp, dweight = start[0].copy(), start[1].copy()
    dbias = start[2].copy() if with_bias else None
    matmul.matmul_backward(dinp, dweight, dbias, dout, inp, weight, **kw)
    return start, (dinp, dweight, dbias)


SHAPES = [  # (N, C, OC)
    (1, 1, 1),
    (5, 3, 2),         # N < 6, OC < 16: one partial micro-tile
    (6, 16, 16),       # exactly one micro-tile (and dweight: 16 rows, one partial micro-tile of 6)
    (7, 37, 67),       # one leftover row, 3 leftover columns, C not a multiple of 16
    (13, 300, 133),    # several column tiles (NC = 128), C > KC = 256: two k blocks
    (20, 1700, 9),     # long rows: C = 1700
    (250, 48, 1000),   # several row tasks (MC = 120 or 256; dweight: M = 1000) and column tasks, partial ones
    (256, 768, 768),   # GPT-2 124M attproj at B*T = 256
]


@pytest.mark.parametrize("N,C,OC", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_matches_float64(N, C, OC, with_bias):
    rng = np.random.default_rng(N * 1000 + C + OC)
    inp, weight, bias, dout = make_problem(rng, N, C, OC, with_bias)
    rout, rdinp, rdweight, rdbias = reference(inp, weight, bias, dout)

    sout, sdinp, sdweight, sdbias = magnitudes(inp, weight, bias, dout)
    out = np.full((N, OC), np.nan, F32)
    matmul.matmul_forward(out, inp, weight, bias)
    assert_close(out, rout, C, "out", sout)

    start, (dinp, dweight, dbias) = run_backward(rng, inp, weight, dout, with_bias)
    assert_close(dinp, start[0] + rdinp, OC, "dinp", np.abs(start[0]) + sdinp)
    assert_close(dweight, start[1] + rdweight, N, "dweight", np.abs(start[1]) + sdweight)
    if with_bias:
        assert_close(dbias, start[2] + rdbias, N, "dbias", np.abs(start[2]) + sdbias)


def test_batched_shapes_and_views():
    # (B,T,C) arrays and the model's per-layer views (weight[l] of a stacked (L,OC,C) array)
    rng = np.random.default_rng(1)
    B, T, C, OC, L = 2, 5, 40, 24, 3
    inp = randn(rng, B, T, C)
    weights = randn(rng, L, OC, C, scale=0.2)
    biases = randn(rng, L, OC)
    out = np.full((B, T, OC), np.nan, F32)
    matmul.matmul_forward(out, inp, weights[1], biases[1])
    want = inp.astype(np.float64) @ weights[1].astype(np.float64).T + biases[1]
    assert_close(out, want, C, "out")

    dout = randn(rng, B, T, OC)
    dinp0, dws0, dbs0 = randn(rng, B, T, C), randn(rng, L, OC, C), randn(rng, L, OC)
    dinp, dws, dbs = dinp0.copy(), dws0.copy(), dbs0.copy()
    matmul.matmul_backward(dinp, dws[1], dbs[1], dout, inp, weights[1])
    d2, x2 = dout.reshape(-1, OC).astype(np.float64), inp.reshape(-1, C).astype(np.float64)
    assert_close(dinp, dinp0 + dout.astype(np.float64) @ weights[1], OC, "dinp")
    assert_close(dws[1], dws0[1] + d2.T @ x2, B * T, "dweight")
    assert_close(dbs[1], dbs0[1] + d2.sum(0), B * T, "dbias")
    # the other layers' gradients are untouched
    assert np.array_equal(dws[[0, 2]], dws0[[0, 2]]) and np.array_equal(dbs[[0, 2]], dbs0[[0, 2]])


def test_backward_accumulates_twice():
    # two calls add twice the gradient: nothing is overwritten
    rng = np.random.default_rng(2)
    inp, weight, _, dout = make_problem(rng, 11, 70, 30, False)
    _, rdinp, rdweight, rdbias = reference(inp, weight, None, dout)
    dinp, dweight, dbias = np.zeros((11, 70), F32), np.zeros((30, 70), F32), np.zeros(30, F32)
    for _ in range(2):
        matmul.matmul_backward(dinp, dweight, dbias, dout, inp, weight)
    assert_close(dinp, 2 * rdinp, 30, "dinp")
    assert_close(dweight, 2 * rdweight, 11, "dweight")
    assert_close(dbias, 2 * rdbias, 11, "dbias")


def test_chunked(monkeypatch):
    # the classifier's path: k in chunks of KCH (dinp: K = OC = 1001 in 3 chunks, forward's bias
    # and overwrite on the first only), columns of B in chunks of PCH, rows of A in chunks of
    # PACK_FLOATS // k rounded to MC (dweight: 1001 rows of dout^T in 4 chunks of MC = 120 or 256)
    monkeypatch.setattr(matmul, "KCH", 400)
    monkeypatch.setattr(matmul, "PCH", 48)
    monkeypatch.setattr(matmul, "PACK_FLOATS", 2400)
    rng = np.random.default_rng(3)
    N, C, OC = 10, 40, 1001
    inp, weight, bias, dout = make_problem(rng, N, C, OC, True)
    rout, rdinp, rdweight, rdbias = reference(inp, weight, bias, dout)
    out = np.full((N, OC), np.nan, F32)
    matmul.matmul_forward(out, inp, weight, bias, scratch=matmul.MatmulScratch())
    assert_close(out, rout, C, "out")
    wide = make_problem(rng, N, 1001, 30, True)   # forward with K = 1001 > KCH: 3 chunks of k
    out = np.full((N, 30), np.nan, F32)
    matmul.matmul_forward(out, wide[0], wide[1], wide[2], scratch=matmul.MatmulScratch())
    assert_close(out, reference(*wide)[0], 1001, "out (chunked k)")
    start, (dinp, dweight, dbias) = run_backward(rng, inp, weight, dout, True,
                                                 scratch=matmul.MatmulScratch())
    assert_close(dinp, start[0] + rdinp, OC, "dinp")
    assert_close(dweight, start[1] + rdweight, N, "dweight")
    assert_close(dbias, start[2] + rdbias, N, "dbias")


# ------------------------------------------------------------------------------------------------
# the micro-kernels

@njit(cache=True)
def _run_micro_kernel(wide, a, a_off, a_ms, a_ks, b, b_off, b_ks, kc, out, r0, c0, add):
    if wide:
        matmul.kernel_8x32(a, a_off, a_ms, a_ks, b, b_off, b_ks, kc, out, r0, c0, add)
    else:
        matmul.kernel_6x16(a, a_off, a_ms, a_ks, b, b_off, b_ks, kc, out, r0, c0, add)


@pytest.mark.parametrize("mr,nr", [(6, 16), (8, 32)])   # AVX2's and AVX-512's: both run on every x86-64
@pytest.mark.parametrize("add", [False, True])
def test_micro_kernel_tile_against_float64(mr, nr, add):
    # out[r0:r0+mr, c0:c0+nr] (+)= A . B with A read through strides (a_ms, a_ks) from an offset
    # and B's rows b_ks apart; every other float of out untouched (a lane or row mix-up shows)
    kc = 37
    rng = np.random.default_rng(nr + add)
    a = randn(rng, 5 + mr * 3 * kc)
    b = randn(rng, 2 + kc * (nr + 5))
    A = np.array([[a[5 + i * 3 + k * 3 * mr] for k in range(kc)] for i in range(mr)], np.float64)
    B = np.array([b[2 + k * (nr + 5):][:nr] for k in range(kc)], np.float64)
    out = randn(rng, mr + 3, nr + 7)
    want = out.astype(np.float64)
    want[2:2 + mr, 3:3 + nr] = (want[2:2 + mr, 3:3 + nr] if add else 0) + A @ B
    _run_micro_kernel(nr == 32, a, 5, 3, 3 * mr, b, 2, nr + 5, kc, out, 2, 3, add)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(kc))
    untouched = np.ones(out.shape, bool)
    untouched[2:2 + mr, 3:3 + nr] = False
    assert np.array_equal(out[untouched], want[untouched].astype(F32))


def test_the_host_runs_the_widest_micro_kernel_its_cores_run_at_full_rate():
    import llvmlite.binding as ll
    avx512 = ll.get_host_cpu_features().get("avx512f", False) and ll.get_host_cpu_name() != "znver4"
    assert (matmul.LANES, matmul.MR, matmul.NR) == ((16, 8, 32) if avx512 else (8, 6, 16))
    assert matmul.micro_kernel is (matmul.kernel_8x32 if avx512 else matmul.kernel_6x16)


# ------------------------------------------------------------------------------------------------
# packing

def packed_reference(x, w, gather, m0, m1, k0, k1):
    """pack's layout built with NumPy: (panels, k1 - k0, w), lines past m1 zero."""
    lines = x[m0:m1, k0:k1] if gather else x[k0:k1, m0:m1].T      # (lines, k)
    npan = -(-(m1 - m0) // w)
    full = np.zeros((npan * w, k1 - k0), F32)
    full[:m1 - m0] = lines
    return full.reshape(npan, w, k1 - k0).transpose(0, 2, 1)


@pytest.mark.parametrize("w", sorted({matmul.MR, matmul.NR, 6, 8, 16, 32}))   # both micro-kernels' panels
@pytest.mark.parametrize("gather", [True, False])
@pytest.mark.parametrize("m0,m1,k0,k1", [(0, 1, 0, 1), (3, 40, 5, 29), (0, 32, 0, 16), (16, 53, 8, 43),
                                         (5, 2100, 3, 20)])   # copying: 3 tasks of <= 1024 lines
def test_pack_layout(w, gather, m0, m1, k0, k1):
    # every float of every panel, for full and partial panels, k blocks of 8 (the transposed
    # 8x8 blocks when gathering, spilling for w = 6) and leftovers, and a panel stride longer than k1 - k0
    rng = np.random.default_rng(m1 * 100 + k1)
    x = randn(rng, max(m1, k1) + 7, max(m1, k1) + 7)
    want = packed_reference(x, w, gather, m0, m1, k0, k1)
    ps = (k1 - k0) * w + 7
    dst = np.full(want.shape[0] * ps, np.nan, F32)
    matmul.pack(dst, ps, x, w, gather, m0, m1, k0, k1)
    got = np.stack([dst[p * ps:p * ps + (k1 - k0) * w].reshape(k1 - k0, w) for p in range(want.shape[0])])
    assert np.array_equal(got, want)
    chunk = np.full(want.size, np.nan, F32)   # the parallel tasks (8 panels, or 8 rows of x, each)
    matmul.pack_chunk(chunk, x, w, gather, m0, m1, k0, k1)
    assert np.array_equal(chunk.reshape(want.shape), want)


@pytest.mark.parametrize("n", [96, 40, 7])   # attention's tile, a partial one (edges), less than a panel
def test_tile_product_causal_skips_only_zeros(n):
    # a diagonal tile of attention: n queries against the same n keys. A is read in place as
    # attention reads it (rows of a 2-D buffer, or its columns: a_ms = 1), B packed as panels of
    # 16. What a causal mode may skip is NaN in A: reading any of it would show in out.
    MR, NR = matmul.MR, matmul.NR
    rng = np.random.default_rng(n)
    ld = (n + NR - 1) // NR * NR + NR
    i, k = np.indices((n, n))
    b = randn(rng, n, 2 * NR + 3)
    P = b.shape[1]
    bp = np.zeros((P + NR - 1) // NR * NR * n, F32)
    matmul.pack(bp, n * NR, b, NR, False, 0, P, 0, n)   # B = b: its columns copied k by k
    edge = np.empty((MR, NR), F32)
    for causal, zero, skip in [(matmul.K_UPTO_ROW, k > i, k >= i // MR * MR + MR),   # p v, dS k
                               (matmul.K_FROM_ROW, k < i, k < i // MR * MR)]:       # dS^T q, att^T dout
        a = randn(rng, n, n)
        a[zero] = 0.0      # what the causal mask zeroes ...
        a[skip] = np.nan   # ... and of it, what the mode skips
        buf = np.zeros((n + MR, ld), F32)   # A's rows (or, for K_FROM_ROW, columns), readable past n
        if causal == matmul.K_FROM_ROW:
            buf[:n, :n] = a.T
            a_ps, a_ms, a_ks = MR, 1, ld
        else:
            buf[:n, :n] = a
            a_ps, a_ms, a_ks = MR * ld, ld, 1
        out = randn(rng, n, P)
        want = out.astype(np.float64) + np.where(np.isnan(a), 0.0, a).astype(np.float64) @ b
        matmul.tile_product(out, buf.reshape(-1), 0, a_ps, a_ms, a_ks, bp, 0, n * NR, NR, n, P, n, True, edge,
                            causal)
        assert_close(out, want, n, f"tile_product causal={causal}")
    # s = q k^T: micro-tiles right of the diagonal are left as they were (the caller zeroes them)
    q, kt = randn(rng, n, 16), randn(rng, 16, n)
    qbuf = np.zeros((n + MR, 16), F32)
    qbuf[:n] = q
    kp = np.zeros(((n + NR - 1) // NR + 1) * NR * 16, F32)
    matmul.pack(kp, 16 * NR, kt, NR, False, 0, n, 0, 16)
    s = np.full((n, n), np.inf, F32)
    matmul.tile_product(s, qbuf.reshape(-1), 0, MR * 16, 16, 1, kp, 0, 16 * NR, NR, n, n, 16, False, edge,
                        matmul.UPPER_ZERO)
    want = q.astype(np.float64) @ kt
    assert_close(np.where(k <= i, s, 0), np.where(k <= i, want, 0), 16, "s on and below the diagonal")
    skipped = k // NR * NR >= i // MR * MR + MR
    assert np.isinf(s[skipped]).all() and np.isfinite(s[~skipped]).all()


# ------------------------------------------------------------------------------------------------
# parallel == serial

@functools.cache
def serial_copy(dispatcher):
    """The kernel's source compiled again with parallel=False (prange runs as range)."""
    opts = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    opts["parallel"] = False
    return numba.njit(**opts)(dispatcher.py_func)


@pytest.mark.parametrize("N,C,OC", [(13, 800, 150), (40, 64, 300)])
def test_parallel_equals_serial_bitwise(monkeypatch, N, C, OC):
    rng = np.random.default_rng(4)
    inp, weight, bias, dout = make_problem(rng, N, C, OC, True)
    grads = (randn(rng, N, C), randn(rng, OC, C), randn(rng, OC))
    results = []
    for serial in (False, True):
        with monkeypatch.context() as mp:
            if serial:
                for name in PARALLEL_KERNELS:
                    mp.setattr(matmul, name, serial_copy(getattr(matmul, name)))
            out = np.full((N, OC), np.nan, F32)
            matmul.matmul_forward(out, inp, weight, bias)
            dinp, dweight, dbias = (g.copy() for g in grads)
            matmul.matmul_backward(dinp, dweight, dbias, dout, inp, weight,
                                   scratch=matmul.MatmulScratch())
            results.append((out, dinp, dweight, dbias))
    for name, a, b in zip(("out", "dinp", "dweight", "dbias"), *results):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), f"{name}: parallel != serial"


# ------------------------------------------------------------------------------------------------
# scratch and errors

def test_scratch_is_reused():
    rng = np.random.default_rng(5)
    scratch = matmul.MatmulScratch()
    inp, weight, _, dout = make_problem(rng, 12, 50, 70, False)
    grads = (np.zeros((12, 50), F32), np.zeros((70, 50), F32), None)
    matmul.matmul_backward(*grads, dout, inp, weight, scratch=scratch)
    buffers = {name: buf for name, buf in scratch._buffers.items()}
    assert set(buffers) == {"packed_a", "packed_b"}
    size = scratch.nbytes()
    # the same shapes and a smaller one: no new buffer
    matmul.matmul_backward(*grads, dout, inp, weight, scratch=scratch)
    matmul.matmul_backward(grads[0][:5], grads[1][:30], None, np.ascontiguousarray(dout[:5, :30]), inp[:5],
                           np.ascontiguousarray(weight[:30]), scratch=scratch)
    assert all(scratch._buffers[name] is buf for name, buf in buffers.items())
    assert scratch.nbytes() == size


def test_bad_arguments_raise_clear_errors():
    rng = np.random.default_rng(6)
    inp, weight, bias, dout = make_problem(rng, 4, 8, 6, True)
    out = np.zeros((4, 6), F32)
    with pytest.raises(ValueError, match="matmul: inp"):
        matmul.matmul_forward(out, inp[:, :7], weight, bias)
    with pytest.raises(ValueError, match="matmul: bias"):
        matmul.matmul_forward(out, inp, weight, bias[:5])
    with pytest.raises(ValueError, match="matmul: weight must be a float32"):
        matmul.matmul_forward(out, inp, weight.astype(np.float64), bias)
    with pytest.raises(ValueError, match="matmul: out .* different B\\*T"):
        matmul.matmul_forward(out[:3], inp, weight, bias)
    with pytest.raises(ValueError, match="C-contiguous"):
        matmul.matmul_forward(out, np.asfortranarray(inp), weight, bias)
    with pytest.raises(ValueError, match="matmul: dweight"):
        matmul.matmul_backward(np.zeros_like(inp), np.zeros((6, 7), F32), None, dout, inp, weight)
    with pytest.raises(ValueError, match="matmul: dout .* differ in B\\*T"):
        matmul.matmul_backward(np.zeros((3, 8), F32), np.zeros_like(weight), None, dout, inp, weight)


def test_row_tasks_of_any_height_give_the_same_bits():
    # _gemm's row tasks are taller with one thread than with two (N = 256 rows, one column task:
    # 2 tasks of 128 against 4 of 64 with the 8x32 kernel): each element is still summed by one task
    # in one k order, so the results are the same bits whatever the thread count
    rng = np.random.default_rng(7)
    N, C, OC = 256, 40, 48
    inp, weight, bias, dout = make_problem(rng, N, C, OC, True)

    def run(threads):
        before = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            out = np.empty((N, OC), F32)
            matmul.matmul_forward(out, inp, weight, bias, scratch=matmul.MatmulScratch())
            dinp, dweight, dbias = np.zeros((N, C), F32), np.zeros((OC, C), F32), np.zeros(OC, F32)
            matmul.matmul_backward(dinp, dweight, dbias, dout, inp, weight, scratch=matmul.MatmulScratch())
            return out, dinp, dweight, dbias
        finally:
            numba.set_num_threads(before)
    for one, two in zip(run(1), run(2)):
        assert np.array_equal(one, two)


def test_an_empty_batch_is_the_empty_sums():
    # no rows (N = 0): out has no rows to write; dinp none either; dweight and dbias are sums over
    # N = 0 rows and gain nothing (dweight's GEMM has K = 0). Before, _gemm divided by K = 0.
    rng = np.random.default_rng(11)
    N, C, OC = 0, 8, 16
    inp, weight, bias, dout = make_problem(rng, N, C, OC, True)
    out = np.empty((N, OC), F32)
    matmul.matmul_forward(out, inp, weight, bias, scratch=matmul.MatmulScratch())
    dinp, dweight, dbias = np.ones((N, C), F32), np.ones((OC, C), F32), np.ones(OC, F32)
    matmul.matmul_backward(dinp, dweight, dbias, dout, inp, weight, scratch=matmul.MatmulScratch())
    assert (dweight == 1).all() and (dbias == 1).all()
