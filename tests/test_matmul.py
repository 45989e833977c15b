"""The fast matmuls of src/llmnb/matmul.py against float64 NumPy.

- forward overwrites `out` (it starts as NaN garbage), with and without bias;
- backward accumulates: every gradient buffer starts random and must end as before + reference;
- odd shapes: N, C, OC not multiples of the micro-kernel (6x4 or 4x2), N < 6, OC < 4, long rows, and the
  classifier's chunked path (small DINP_CHUNK and DW_CHUNK_FLOATS force several chunks);
- the parallel kernels equal their serial copies bit for bit (each output element is summed by one
  thread in a fixed order);
- scratch buffers are reused, not reallocated, from one call to the next;
- bad arguments raise ValueError naming the argument.
Tolerances: float32 sums of C (or OC, or N) terms of unit-scale values against float64:
|err| <= 1e-5 * |ref| + 1e-5 * sqrt(K / 768), K the length of the sum.
"""
import functools
import math

import numba
import numpy as np
import pytest

from llmnb import matmul

F32 = np.float32
PARALLEL_KERNELS = ("_matmul_forward_2d", "_matmul_backward_dinp", "_matmul_backward_dweight",
                    "transpose")


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def assert_close(got, want, K, what):
    atol = 1e-5 * max(1.0, math.sqrt(K / 768))
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-5, atol=atol, err_msg=what)


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
    (5, 3, 2),         # N < 6, OC < 4
    (6, 16, 4),        # exactly one micro-kernel
    (7, 37, 67),       # one leftover row, 3 leftover columns, C not a multiple of 16
    (13, 130, 133),    # several column tiles, leftovers everywhere
    (20, 1700, 9),     # long rows: C = 1700
    (50, 48, 1000),    # dweight: several 48-row tasks and a partial one
    (256, 768, 768),   # GPT-2 124M attproj at B*T = 256
]


@pytest.mark.parametrize("N,C,OC", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_matches_float64(N, C, OC, with_bias):
    rng = np.random.default_rng(N * 1000 + C + OC)
    inp, weight, bias, dout = make_problem(rng, N, C, OC, with_bias)
    rout, rdinp, rdweight, rdbias = reference(inp, weight, bias, dout)

    out = np.full((N, OC), np.nan, F32)
    matmul.matmul_forward(out, inp, weight, bias)
    assert_close(out, rout, C, "out")

    start, (dinp, dweight, dbias) = run_backward(rng, inp, weight, dout, with_bias)
    assert_close(dinp, start[0] + rdinp, OC, "dinp")
    assert_close(dweight, start[1] + rdweight, N, "dweight")
    if with_bias:
        assert_close(dbias, start[2] + rdbias, N, "dbias")


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


def test_chunked_backward(monkeypatch):
    # the classifier's path: OC split into passes (dinp: 100 columns of dout per pass) and chunks
    # (dweight: 4000 floats of dout^T, 400 rows)
    monkeypatch.setattr(matmul, "DINP_CHUNK", 100)
    monkeypatch.setattr(matmul, "DW_CHUNK_FLOATS", 4000)
    rng = np.random.default_rng(3)
    N, C, OC = 10, 40, 1001
    inp, weight, _, dout = make_problem(rng, N, C, OC, True)
    _, rdinp, rdweight, rdbias = reference(inp, weight, None, dout)
    start, (dinp, dweight, dbias) = run_backward(rng, inp, weight, dout, True,
                                                 scratch=matmul.MatmulScratch())
    assert_close(dinp, start[0] + rdinp, OC, "dinp")
    assert_close(dweight, start[1] + rdweight, N, "dweight")
    assert_close(dbias, start[2] + rdbias, N, "dbias")


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
    assert set(buffers) == {"weightT", "inpT", "doutT"}
    size = scratch.nbytes()
    # the same shapes and a smaller one: no new buffer
    matmul.matmul_backward(*grads, dout, inp, weight, scratch=scratch)
    matmul.matmul_backward(grads[0][:5], grads[1][:30], None, np.ascontiguousarray(dout[:5, :30]), inp[:5],
                           np.ascontiguousarray(weight[:30]), scratch=scratch)
    assert all(scratch._buffers[name] is buf for name, buf in buffers.items())
    assert scratch.nbytes() == size


def test_scratch_apart_from():
    # a view placed 2 KB apart (mod 4 KB) from another array, whatever that array's offset
    scratch = matmul.MatmulScratch()
    base = np.zeros(5000, F32)
    for off in (0, 1, 17, 600):
        other = base[off:off + 1000]
        view = scratch.get("x", (10, 30), apart_from=other)
        assert view.shape == (10, 30) and view.flags.c_contiguous
        assert (view.ctypes.data - other.ctypes.data) % 4096 == 2048


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


def test_the_other_micro_kernel(tmp_path):
    # the micro-kernel follows the CPU (matmul.WIDE: 6x4 with AVX-512, 4x2 without); run this
    # file's float64 comparisons with the one this machine does not pick, in a subprocess with its
    # own Numba cache (the cache keys on the CPU, not on LLMNB_MATMUL_KERNEL)
    import os
    import subprocess
    import sys
    other = "4x2" if matmul.WIDE else "6x4"
    env = dict(os.environ, LLMNB_MATMUL_KERNEL=other, NUMBA_CACHE_DIR=str(tmp_path))
    probe = "from llmnb import matmul; print(matmul.RB, matmul.CB)"
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == other.split("x"), r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "matches_float64 or batched or accumulates or chunked"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def test_bad_micro_kernel_choice():
    import os
    import subprocess
    import sys
    env = dict(os.environ, LLMNB_MATMUL_KERNEL="8x8")
    r = subprocess.run([sys.executable, "-c", "import llmnb.matmul"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "LLMNB_MATMUL_KERNEL='8x8': expected 6x4 or 4x2" in r.stderr
