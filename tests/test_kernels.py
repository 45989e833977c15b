"""Every CPU kernel of kernels.py and matmul.py, forward and backward, against float64 references.

Each test
- feeds float32 random inputs of odd sizes (B*T not a multiple of 8, C not a multiple of the
  matmul tiles, sizes below 4) and at least one GPT-2-sized shape,
- compares the kernel with tests/reference_numpy.py (float64), with the tolerance stated at each
  assertion (float32 rounding of the kernel's sums; exact equality where there is one rounding),
- starts every gradient buffer from random values, not zeros, and checks that the backward kernels
  accumulate: grad_after == grad_before + reference,
- runs a serial copy of the kernel (the same Python source compiled with parallel=False, same
  fastmath flag) on copies of the same arguments and asserts the two leave every argument
  bitwise identical: the parallel split never changes the order of any sum (with numba's thread
  count: NUMBA_NUM_THREADS=1 would make this check vacuous).
The nontrivial backward formulas of the reference are themselves checked against torch autograd
(float64) when torch is installed.
"""
import functools
import math

import numba
import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import reference_numpy as ref
from llmnb import kernels, matmul

F32 = np.float32


# ----------------------------------------------------------------------------------------------
# helpers

def randn(rng, *shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(F32)


def assert_close(actual, expected, rtol, atol, what):
    """float32 kernel output vs float64 reference: |actual - expected| <= atol + rtol * |expected|."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol, err_msg=what)


def assert_identical(a, b, what):
    """Bit-for-bit equality (distinguishes -0.0 from 0.0 and compares NaN payloads)."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    a8 = np.ascontiguousarray(a).view(np.uint8)
    b8 = np.ascontiguousarray(b).view(np.uint8)
    if not np.array_equal(a8, b8):
        diff = np.flatnonzero(np.ascontiguousarray(a).reshape(-1) != np.ascontiguousarray(b).reshape(-1))
        raise AssertionError(f"{what}: parallel and serial results differ at {diff.size} elements, "
                             f"e.g. flat index {diff[:5].tolist()}")


@functools.cache
def serial_copy(dispatcher):
    """The kernel's Python source compiled again with parallel=False (prange runs as range), every
    other option (fastmath) unchanged; not cached on disk, so it cannot pick up the parallel build."""
    opts = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}  # njit implies it
    opts["parallel"] = False
    return numba.njit(**opts)(dispatcher.py_func)


def run_checked(kernel, *args):
    """Run the parallel kernel on args (in place) and its serial copy on copies of args, then assert
    every array argument ended bitwise identical in the two runs."""
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    kernel(*args)
    serial_copy(kernel)(*copies)
    for i, (a, c) in enumerate(zip(args, copies)):
        if isinstance(a, np.ndarray):
            assert_identical(a, c, f"{kernel.__name__}: argument {i}")


def parallel_kernels(module):
    """The names of the module's njit functions compiled with parallel=True."""
    return [name for name, obj in vars(module).items()
            if isinstance(obj, CPUDispatcher) and obj.targetoptions.get("parallel")]


def run_checked_matmul(monkeypatch, wrapper, *args):
    """As run_checked for matmul_forward/backward (Python wrappers around private 2-D kernels):
    the wrapper runs once as is and once with every parallel kernel of matmul.py swapped for its
    serial copy."""
    names = parallel_kernels(matmul)
    assert names, "matmul.py has no parallel kernel to check"
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    wrapper(*args)
    with monkeypatch.context() as mp:
        for name in names:
            mp.setattr(matmul, name, serial_copy(getattr(matmul, name)))
        wrapper(*copies)
    for i, (a, c) in enumerate(zip(args, copies)):
        if isinstance(a, np.ndarray):
            assert_identical(a, c, f"{wrapper.__name__}: argument {i}")


# ----------------------------------------------------------------------------------------------
# encoder

@pytest.mark.parametrize("B,T,C,Vp,maxT,ntok", [
    (3, 5, 37, 50, 7, 3),       # few distinct tokens: many repeated ids; C not a multiple of 16
    (1, 1, 5, 4, 1, 4),         # C < CHUNK
    (8, 32, 40, 10, 32, 2),     # 256 positions, 2 token ids
    (4, 64, 768, 512, 128, 512),
])
def test_encoder(B, T, C, Vp, maxT, ntok):
    rng = np.random.default_rng(1)
    inp = rng.integers(0, ntok, size=(B, T)).astype(np.int32)
    wte, wpe = randn(rng, Vp, C), randn(rng, maxT, C)

    out = randn(rng, B, T, C)  # garbage: forward must overwrite it
    run_checked(kernels.encoder_forward, out, inp, wte, wpe)
    # one float32 addition per element: exact after rounding the float64 sum
    assert np.array_equal(out, ref.encoder_forward(inp, wte, wpe).astype(F32))

    dout = randn(rng, B, T, C)
    dwte0, dwpe0 = randn(rng, Vp, C), randn(rng, maxT, C)
    dwte, dwpe = dwte0.copy(), dwpe0.copy()
    run_checked(kernels.encoder_backward, dwte, dwpe, dout, inp)
    rdwte, rdwpe = ref.encoder_backward(dout, inp, Vp, maxT)
    assert_close(dwte, dwte0 + rdwte, 1e-5, 1e-5, "dwte")
    assert_close(dwpe, dwpe0 + rdwpe, 1e-5, 1e-5, "dwpe")
    # rows of tokens / positions never seen are untouched
    unseen = np.setdiff1d(np.arange(Vp), inp)
    assert np.array_equal(dwte[unseen], dwte0[unseen])
    assert np.array_equal(dwpe[T:], dwpe0[T:])


# ----------------------------------------------------------------------------------------------
# layernorm

@pytest.mark.parametrize("B,T,C", [(3, 5, 37), (1, 1, 3), (4, 64, 768)])
def test_layernorm(B, T, C):
    rng = np.random.default_rng(2)
    inp = randn(rng, B, T, C, scale=2.0, shift=0.5)
    weight, bias = randn(rng, C), randn(rng, C)

    out, mean, rstd = randn(rng, B, T, C), randn(rng, B, T), randn(rng, B, T)
    run_checked(kernels.layernorm_forward, out, mean, rstd, inp, weight, bias)
    rout, rmean, rrstd = ref.layernorm_forward(inp, weight, bias)
    assert_close(out, rout, 1e-5, 1e-5, "layernorm out")
    assert_close(mean, rmean, 1e-5, 1e-6, "layernorm mean")
    assert_close(rstd, rrstd, 1e-5, 0, "layernorm rstd")

    dout = randn(rng, B, T, C)
    dinp0, dweight0, dbias0 = randn(rng, B, T, C), randn(rng, C), randn(rng, C)
    dinp, dweight, dbias = dinp0.copy(), dweight0.copy(), dbias0.copy()
    run_checked(kernels.layernorm_backward, dinp, dweight, dbias, dout, inp, weight,
                rmean.astype(F32), rrstd.astype(F32))
    rdinp, rdweight, rdbias = ref.layernorm_backward(dout, inp, weight, rmean, rrstd)
    assert_close(dinp, dinp0 + rdinp, 1e-5, 1e-5, "layernorm dinp")
    assert_close(dweight, dweight0 + rdweight, 1e-5, 1e-4, "layernorm dweight")
    assert_close(dbias, dbias0 + rdbias, 1e-5, 1e-4, "layernorm dbias")


# ----------------------------------------------------------------------------------------------
# matmul

def check_matmul(monkeypatch, B, T, C, OC, with_bias, seed=3):
    rng = np.random.default_rng(seed)
    inp = randn(rng, B, T, C)
    weight = randn(rng, OC, C, scale=1.0 / math.sqrt(C))
    bias = randn(rng, OC) if with_bias else None

    out = randn(rng, B, T, OC)
    run_checked_matmul(monkeypatch, matmul.matmul_forward, out, inp, weight, bias)
    assert_close(out, ref.matmul_forward(inp, weight, bias), 1e-5, 1e-5, "matmul out")

    dout = randn(rng, B, T, OC)
    dinp0, dweight0 = randn(rng, B, T, C), randn(rng, OC, C)
    dbias0 = randn(rng, OC) if with_bias else None
    dinp, dweight = dinp0.copy(), dweight0.copy()
    dbias = dbias0.copy() if with_bias else None
    run_checked_matmul(monkeypatch, matmul.matmul_backward, dinp, dweight, dbias, dout, inp, weight)
    rdinp, rdweight, rdbias = ref.matmul_backward(dout, inp, weight)
    N = B * T
    # float32 sums of OC (dinp) or N (dweight, dbias) terms; outputs grow like sqrt(terms)
    assert_close(dinp, dinp0 + rdinp, 1e-5, 1e-5 * math.sqrt(OC / C), "matmul dinp")
    assert_close(dweight, dweight0 + rdweight, 1e-5, 1e-5 * math.sqrt(N), "matmul dweight")
    if with_bias:
        assert_close(dbias, dbias0 + rdbias, 1e-5, 1e-5 * math.sqrt(N), "matmul dbias")
    else:
        assert dbias is None


@pytest.mark.parametrize("B,T,C,OC", [
    (3, 5, 37, 67),      # N = 15, C and OC odd: leftover rows and columns of every register block
    (1, 3, 5, 3),        # N < 4, C < 8, OC < 4
    (2, 1, 70, 1),       # OC = 1
    (1, 9, 130, 133),    # several column tiles
    (7, 1, 1000, 5),     # long reduction (C = 1000) in the forward
    (8, 101, 20, 6),     # long reduction (N = 808) in dweight, dbias
    (4, 64, 768, 2304),  # GPT-2 small qkv
])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul(monkeypatch, B, T, C, OC, with_bias):
    check_matmul(monkeypatch, B, T, C, OC, with_bias)


def test_matmul_is_the_kernels_one():
    # the model calls kernels.matmul_*; they must be these tested functions
    assert kernels.matmul_forward is matmul.matmul_forward
    assert kernels.matmul_backward is matmul.matmul_backward


# ----------------------------------------------------------------------------------------------
# attention

ATTENTION_SHAPES = [  # B, T, C, NH, scale of the inputs (the kernels' tiles: kernels.ATT_TILE = 96)
    (3, 5, 36, 4, 1.0),      # hs = 9, one tile of 5: partial micro-tiles everywhere
    (3, 5, 36, 4, 6.0),      # scores ~ +-100: exp overflows unless the row max is subtracted
    (2, 7, 15, 3, 1.0),      # hs = 5
    (2, 15, 48, 3, 1.0),     # T = 15: whole panels of 6 keys (18) outnumber those of 16 (16)
    (1, 1, 4, 1, 1.0),       # T = 1
    (2, 96, 768, 12, 1.0),   # GPT-2 small, hs = 64, exactly one tile
    (1, 194, 96, 2, 1.0),    # T = 2 tiles + 2: a partial last tile, three diagonal tiles
    (2, 200, 48, 3, 4.0),    # T not a multiple of the tile, large scores across tiles
    (1, 1024, 64, 2, 1.0),   # T = max_seq_len of GPT-2: 11 x 11 tiles (the last of 64), 66 computed
]


def attention_run(B, T, C, NH, scale, seed):
    """Random inputs; kernel forward into garbage-filled out/lse, backward into a random dinp."""
    rng = np.random.default_rng(seed)
    r = dict(inp=randn(rng, B, T, 3 * C, scale=scale))
    r["out"], r["lse"] = np.full((B, T, C), np.nan, F32), np.full((B, NH, T), np.nan, F32)
    run_checked(kernels.attention_forward, r["out"], r["lse"], r["inp"])
    r["dout"] = randn(rng, B, T, C)
    r["dinp0"] = randn(rng, B, T, 3 * C)
    r["dinp"] = r["dinp0"].copy()
    run_checked(kernels.attention_backward, r["dinp"], r["dout"], r["inp"], r["out"], r["lse"])
    return r


@pytest.mark.parametrize("B,T,C,NH,scale", ATTENTION_SHAPES)
def test_attention(B, T, C, NH, scale):
    r = attention_run(B, T, C, NH, scale, seed=4)
    rout, rpreatt, ratt = ref.attention_forward(r["inp"], NH)
    # scores of size `scale^2 * hs`: float32 rounding of a score x is ~|x| 6e-8 and exp passes it
    # on as a relative error of att, so the tolerance grows with the scores' size
    big = max(1.0, float(np.abs(rpreatt).max()) / 10)
    assert_close(r["out"], rout, 1e-5 * big, 1e-5 * big, "attention out")
    masked = np.where(ref.causal_mask(T), rpreatt, -np.inf)
    mx = masked.max(axis=-1)
    rlse = mx + np.log(np.exp(masked - mx[..., None]).sum(axis=-1))
    assert_close(r["lse"], rlse, 1e-6, 1e-5 * big, "lse (log-sum-exp of each row's scores)")
    # backward recomputes att from lse; it adds its contribution to what dinp held
    rdinp, _, _ = ref.attention_backward(r["dout"], r["inp"], ratt, NH)
    assert_close(r["dinp"], r["dinp0"] + rdinp, 1e-5 * big, 1e-5 * big, "attention dinp")


@pytest.mark.parametrize("B,T,C,NH,scale", ATTENTION_SHAPES[:4] + ATTENTION_SHAPES[6:8])
def test_attention_backward_matches_torch_autograd(B, T, C, NH, scale):
    # the same causal attention in torch float64, differentiated by autograd
    torch = pytest.importorskip("torch")
    r = attention_run(B, T, C, NH, scale, seed=5)
    hs = C // NH
    low = torch.from_numpy(ref.causal_mask(T))
    inp = torch.tensor(r["inp"], dtype=torch.float64, requires_grad=True)
    q, k, v = (inp[..., i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(1, 2) for i in range(3))
    preatt = q @ k.transpose(-1, -2) / math.sqrt(hs)
    att = torch.softmax(preatt.masked_fill(~low, float("-inf")), dim=-1)
    out = (att @ v).transpose(1, 2).reshape(B, T, C)
    (out * torch.tensor(r["dout"], dtype=torch.float64)).sum().backward()
    big = max(1.0, float(preatt.detach().abs().max()) / 10)
    assert_close(r["out"], out.detach().numpy(), 1e-5 * big, 1e-5 * big, "out vs torch")
    assert_close(r["dinp"], r["dinp0"] + inp.grad.numpy(), 1e-5 * big, 1e-5 * big, "dinp vs torch")


def test_attention_reads_only_the_causal_past():
    # changing the keys and values of positions > t must leave out[:, :t+1] and the gradients of
    # positions <= t from dout[:, :t+1] unchanged: the skipped tiles and the mask really mask
    B, T, C, NH = 1, 300, 32, 2
    rng = np.random.default_rng(7)
    inp = randn(rng, B, T, 3 * C)
    t = kernels.ATT_TILE + 12   # inside the second tile
    outs = []
    for trial in range(2):
        x = inp.copy()
        if trial:
            x[:, t + 1:] = randn(rng, B, T - t - 1, 3 * C, scale=5.0)
        out, lse = np.zeros((B, T, C), F32), np.zeros((B, NH, T), F32)
        kernels.attention_forward(out, lse, x)
        outs.append((out[:, :t + 1].copy(), lse[..., :t + 1].copy()))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def test_attention_query_is_attention_forward():
    # generation's one-query kernel (every sequence and head, over a KV cache (maxT, B, 3C)) and
    # training's tiled kernel agree; rows past t (here NaN) are never read
    B, T, C, NH = 2, 200, 48, 3
    rng = np.random.default_rng(8)
    inp = randn(rng, B, T, 3 * C)
    out, lse = np.zeros((B, T, C), F32), np.zeros((B, NH, T), F32)
    kernels.attention_forward(out, lse, inp)
    att = np.zeros((B, NH, T), F32)
    for t in (0, kernels.ATT_TILE - 1, kernels.ATT_TILE, T - 1):
        cache = inp.transpose(1, 0, 2).copy()
        cache[t + 1:] = np.nan
        o = np.full((B, C), np.nan, F32)
        run_checked(kernels.attention_query, o, att, cache, t)
        assert_close(o, out[:, t].astype(np.float64), 1e-5, 1e-6, "query vs forward")
        # a sequence's result does not depend on the others: alone (B = 1), the same bits
        for b in range(B):
            alone = np.zeros((1, C), F32)
            kernels.attention_query(alone, att[:1], cache[:, b:b + 1].copy(), t)
            assert_identical(alone[0], o[b], "attention_query: sequence alone vs in a batch")


# ----------------------------------------------------------------------------------------------
# gelu

@pytest.mark.parametrize("shape", [(3, 5, 37), (7,), (4, 64, 3072)])
def test_gelu(shape):
    rng = np.random.default_rng(6)
    inp = randn(rng, *shape, scale=3.0)
    inp.reshape(-1)[:7] = [0.0, -0.0, 1e-6, -10.0, 10.0, -4.0, 20.0]
    rgelu = ref.gelu_forward(inp)

    out = randn(rng, *shape)
    run_checked(kernels.gelu_forward, out, inp)
    # llm.c's formula in float64; float32 rounding only. The absolute floor is for x < 0, where
    # 1 + tanh(...) cancels: its float32 error is ~|x| * 6e-8 while gelu(x) -> 0.
    assert_close(out, rgelu, 1e-6, 1e-6, "gelu out")

    dout = randn(rng, *shape)
    dinp0 = randn(rng, *shape)
    dinp = dinp0.copy()
    run_checked(kernels.gelu_backward, dinp, inp, dout)
    assert_close(dinp, dinp0 + ref.gelu_backward(inp, dout), 1e-6, 2e-6, "gelu dinp")


def test_gelu_stays_finite_and_exact_at_large_inputs():
    # the one-exp form must not overflow: gelu(x) -> x for large x, -> 0 for very negative x,
    # and the local gradient -> 1 and 0 (llm.c's tanh + cosh form gives NaN in cosh^2 here)
    x = np.array([-1e4, -3e3, -100.0, -30.0, -9.0, 9.0, 30.0, 100.0, 3e3, 1e4], dtype=F32)
    out = np.empty_like(x)
    kernels.gelu_forward(out, x)
    assert np.all(np.isfinite(out))
    assert_close(out, ref.gelu_forward(x), 1e-6, 1e-6, "gelu out at large |x|")
    dinp = np.zeros_like(x)
    kernels.gelu_backward(dinp, x, np.ones_like(x))
    assert np.all(np.isfinite(dinp))
    np.testing.assert_allclose(dinp, np.where(x > 0, 1.0, 0.0), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# residual

@pytest.mark.parametrize("shape", [(3, 5, 37), (1,), (4, 64, 768)])
def test_residual(shape):
    rng = np.random.default_rng(7)
    inp1, inp2 = randn(rng, *shape), randn(rng, *shape)
    out = randn(rng, *shape)
    run_checked(kernels.residual_forward, out, inp1, inp2)
    assert np.array_equal(out, ref.residual_forward(inp1, inp2).astype(F32))  # one rounding: exact

    dout = randn(rng, *shape)
    d10, d20 = randn(rng, *shape), randn(rng, *shape)
    d1, d2 = d10.copy(), d20.copy()
    run_checked(kernels.residual_backward, d1, d2, dout)
    r1, r2 = ref.residual_backward(dout)
    assert np.array_equal(d1, (d10 + r1).astype(F32))
    assert np.array_equal(d2, (d20 + r2).astype(F32))


# ----------------------------------------------------------------------------------------------
# softmax + cross-entropy over the padded vocabulary

@pytest.mark.parametrize("B,T,V,Vp,scale,shift", [
    (3, 5, 37, 64, 3.0, 0.0),
    (3, 5, 37, 64, 100.0, 0.0),   # logits ~ +-300: exp overflows unless the max is subtracted
    (3, 5, 37, 64, 3.0, 200.0),   # logits ~ 200 + 3 N(0,1): exp(logit) is inf in float32
    (2, 3, 5, 5, 3.0, 0.0),       # no padding
    (1, 1, 1, 4, 3.0, 0.0),       # a single real token: p = 1, loss = 0
    (2, 3, 50257, 50304, 3.0, 0.0),  # GPT-2's vocabulary
])
def test_softmax_and_fused_crossentropy(B, T, V, Vp, scale, shift):
    rng = np.random.default_rng(8)
    logits = randn(rng, B, T, Vp, scale=scale, shift=shift)
    logits[..., V:] = 1e4  # junk in the padded columns must not matter
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)

    # the kernels sum the V exponentials in one float32 running sum per row, as llm.c does: over
    # 50257 terms its relative error reaches ~6e-5 (shared by the whole row), hence the looser rtol
    # there; float32 rounding of logit - max (or - lse) is ~1e-7 of the logits' size, absolute
    big = float(np.abs(logits[..., :V]).max())
    rtol = 1e-5 if V < 1000 else 2e-4
    rtol *= max(1.0, big / 30.0)
    probs = randn(rng, B, T, Vp)
    run_checked(kernels.softmax_forward, probs, logits, V)
    rprobs = ref.softmax_forward(logits, V)
    assert_close(probs[..., :V], rprobs[..., :V], rtol, 1e-9, "probs")
    assert np.all(probs[..., V:] == 0.0) and not np.any(np.signbit(probs[..., V:])), "padded probs not 0"

    # the fused classifier's forward: lse per row, losses = lse - logit[target] == the old
    # formula -log softmax[target] (float64), logits left alone
    losses, lse = randn(rng, B, T), randn(rng, B, T)
    before = logits.copy()
    run_checked(kernels.crossentropy_forward, losses, lse, logits, targets, V)
    assert np.array_equal(logits, before), "crossentropy_forward wrote the logits"
    lse_tol = (1e-6 if V < 1000 else 1e-5) + 2e-7 * big  # the sum's rounding + max's ulp
    assert_close(lse, ref.logsumexp(logits, V), 0, lse_tol, "lse")
    rlosses = ref.crossentropy_forward(rprobs, targets)
    assert_close(losses, rlosses, 0, lse_tol + 2e-7 * big, "losses = -log probs[target]")
    assert np.all(np.isfinite(losses)) and np.all(losses > -lse_tol), "losses finite and >= 0"

    # the fused backward, in place over the logits: dlogits == the old formula (probs -
    # onehot(target)) * dloss from float64 probs; 0 in the padded columns (where the logits held
    # junk); from the kernel's own lse
    dlosses = randn(rng, B, T)
    run_checked(kernels.crossentropy_softmax_backward, logits, dlosses, lse, targets, V)
    rdlogits = ref.crossentropy_softmax_backward(dlosses, rprobs, targets, V)
    dl_rtol = (1e-5 if V < 1000 else 2e-5) * max(1.0, big / 30.0)  # exp(logit - lse): lse's error
    assert_close(logits[..., :V], rdlogits[..., :V], dl_rtol, 1e-9 + 1e-7 * big, "dlogits")
    assert np.all(logits[..., V:] == 0.0) and not np.any(np.signbit(logits[..., V:])), "padded dlogits not 0"
    # each row's gradient sums to 0 (the softmax's sum is 1, the onehot's too)
    np.testing.assert_allclose(logits.astype(np.float64).sum(-1), 0.0, atol=10 * dl_rtol * np.abs(dlosses).max())


def test_fused_classifier_gradient_matches_finite_differences():
    # the pair as one function of the logits: d(sum dlosses * losses)/d logit from the backward
    # kernel vs central differences of the forward kernel's losses (float64 steps of a float32
    # function: h = 1e-2, error O(h^2) ~ 1e-4 of the curvature's size)
    rng = np.random.default_rng(11)
    B, T, V, Vp = 2, 3, 11, 16
    logits = randn(rng, B, T, Vp, scale=2.0)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    dlosses = randn(rng, B, T)
    losses, lse = np.empty((B, T), F32), np.empty((B, T), F32)

    def objective(lg):
        kernels.crossentropy_forward(losses, lse, lg, targets, V)
        return float((losses.astype(np.float64) * dlosses).sum())

    objective(logits)
    grad = logits.copy()
    kernels.crossentropy_softmax_backward(grad, dlosses, lse, targets, V)
    h = 1e-2
    for idx in [(0, 0, 0), (1, 2, int(targets[1, 2])), (0, 1, V - 1), (1, 0, 5)]:
        up, down = logits.copy(), logits.copy()
        up[idx] += h
        down[idx] -= h
        fd = (objective(up) - objective(down)) / (2 * h)
        assert math.isclose(grad[idx], fd, rel_tol=2e-3, abs_tol=2e-4), (idx, grad[idx], fd)


# ----------------------------------------------------------------------------------------------
# AdamW

@pytest.mark.parametrize("n", [1, 1001])
def test_adamw_three_steps(n):
    rng = np.random.default_rng(9)
    lr, beta1, beta2, eps, weight_decay = 1e-3, 0.9, 0.95, 1e-8, 0.1
    params = randn(rng, n)
    p0 = params[:1].astype(np.float64)
    m, v = np.zeros(n, F32), np.zeros(n, F32)  # llm.c's calloc'd moments
    rparams, rm, rv = params.astype(np.float64), np.zeros(n), np.zeros(n)
    for t in (1, 2, 3):
        grads = randn(rng, n)
        if n > 1:
            grads[0] = 0.0  # from m = v = 0 at t = 1: only the weight decay moves it
        run_checked(kernels.adamw_update, params, grads, m, v, lr, beta1, beta2, eps, weight_decay, t)
        rparams, rm, rv = ref.adamw_update(rparams, grads, rm, rv, lr, beta1, beta2, eps, weight_decay, t)
        assert_close(m, rm, 1e-5, 1e-7, f"m at t={t}")
        assert_close(v, rv, 1e-5, 1e-9, f"v at t={t}")
        # the update is ~lr; float32 rounding of params (~1e-7) dominates the error
        assert_close(params, rparams, 1e-6, 1e-7, f"params at t={t}")
    # weight decay included: a parameter whose gradient is always 0 shrinks by (1 - lr * wd) per step
    if n > 1:
        assert_close(params[:1], p0 * (1.0 - lr * weight_decay) ** 3, 1e-6, 0, "decayed parameter")


@pytest.mark.parametrize("n", [1, 1001])
def test_adamw_zero_grad_zeroes_the_gradient_and_changes_nothing_else(n):
    # zero_grad=True: the same params, m, v bit for bit, and every gradient element +0.0 after;
    # the plain call leaves the gradient as it was
    rng = np.random.default_rng(12)
    params, grads = randn(rng, n), randn(rng, n)
    m, v = randn(rng, n, scale=0.1), np.abs(randn(rng, n, scale=0.1))
    plain = [a.copy() for a in (params, grads, m, v)]
    run_checked(kernels.adamw_update, *plain, 1e-3, 0.9, 0.999, 1e-8, 0.1, 3)
    np.testing.assert_array_equal(plain[1], grads)
    fused = [a.copy() for a in (params, grads, m, v)]
    run_checked(kernels.adamw_update, *fused, 1e-3, 0.9, 0.999, 1e-8, 0.1, 3, True)
    for i in (0, 2, 3):
        assert_identical(fused[i], plain[i], f"argument {i} with zero_grad")
    assert np.all(fused[1] == 0) and not np.any(np.signbit(fused[1]))


def llmc_gpt2_update(params, grads, m, v, learning_rate, beta1, beta2, eps, weight_decay, t):
    """train_gpt2.c's gpt2_update transcribed in NumPy float32 scalars, element by element order of
    operations kept; powf is NumPy's float32 power (the C library's powf). -> new params, m, v."""
    f = F32
    lr, b1, b2, ep, wd = f(learning_rate), f(beta1), f(beta2), f(eps), f(weight_decay)
    one = f(1.0)
    bc1 = one - b1 ** f(t)
    bc2 = one - b2 ** f(t)
    m = b1 * m + (one - b1) * grads
    v = b2 * v + (one - b2) * grads * grads
    m_hat = m / bc1
    v_hat = v / bc2
    return params - lr * (m_hat / (np.sqrt(v_hat) + ep) + wd * params), m, v


@pytest.mark.parametrize("t", [1, 2, 10, 1000])
def test_adamw_is_llmc_float32_arithmetic(t):
    # params 0 and no weight decay: the new params are minus the update itself (~lr), so a relative
    # error of the update shows at float32 precision; bias corrections from double betas (while the
    # moments use float32 betas) made it 6e-6 too large at beta2=0.999
    rng = np.random.default_rng(t)
    n = 4096
    params, grads = np.zeros(n, F32), randn(rng, n)
    m, v = randn(rng, n, scale=0.1), np.abs(randn(rng, n, scale=0.1))
    want_p, want_m, want_v = llmc_gpt2_update(params, grads, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, t)
    kernels.adamw_update(params, grads, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, t)
    np.testing.assert_array_equal(m, want_m)
    np.testing.assert_array_equal(v, want_v)
    # the same float32 operations; one ulp of slack for the powf rounding
    np.testing.assert_allclose(params, want_p, rtol=2.5e-7, atol=0)


# ----------------------------------------------------------------------------------------------
# the reference's own backward formulas vs torch autograd (float64)

@pytest.mark.parametrize("layer", ["layernorm", "matmul", "gelu", "crossentropy"])
def test_reference_backward_matches_torch_autograd(layer):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    B, T, C, OC, V, Vp = 3, 5, 37, 67, 37, 64
    t64 = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)  # noqa: E731
    if layer == "layernorm":
        x, w, b, dout = rng.standard_normal((B, T, C)), rng.standard_normal(C), rng.standard_normal(C), \
            rng.standard_normal((B, T, C))
        tx, tw, tb = t64(x), t64(w), t64(b)
        y = torch.nn.functional.layer_norm(tx, (C,), tw, tb, eps=ref.LAYERNORM_EPS)
        (y * torch.from_numpy(dout)).sum().backward()
        ry, mean, rstd = ref.layernorm_forward(x, w, b)
        got, want = (ry, *ref.layernorm_backward(dout, x, w, mean, rstd)), (y, tx.grad, tw.grad, tb.grad)
    elif layer == "matmul":
        x, w, b, dout = rng.standard_normal((B, T, C)), rng.standard_normal((OC, C)), rng.standard_normal(OC), \
            rng.standard_normal((B, T, OC))
        tx, tw, tb = t64(x), t64(w), t64(b)
        y = torch.nn.functional.linear(tx, tw, tb)
        (y * torch.from_numpy(dout)).sum().backward()
        got, want = (ref.matmul_forward(x, w, b), *ref.matmul_backward(dout, x, w)), (y, tx.grad, tw.grad, tb.grad)
    elif layer == "gelu":
        x, dout = rng.standard_normal((B, T, C)) * 3, rng.standard_normal((B, T, C))
        tx = t64(x)
        y = torch.nn.functional.gelu(tx, approximate="tanh")
        (y * torch.from_numpy(dout)).sum().backward()
        got, want = (ref.gelu_forward(x), ref.gelu_backward(x, dout)), (y, tx.grad)
    else:
        logits, dlosses = rng.standard_normal((B, T, Vp)) * 3, rng.standard_normal((B, T))
        targets = rng.integers(0, V, size=(B, T))
        tl = t64(logits)
        logp = torch.log_softmax(tl[..., :V], dim=-1)
        tlosses = -logp.gather(-1, torch.from_numpy(targets)[..., None])[..., 0]
        (tlosses * torch.from_numpy(dlosses)).sum().backward()
        probs = ref.softmax_forward(logits, V)
        got = (ref.crossentropy_forward(probs, targets), ref.crossentropy_softmax_backward(dlosses, probs, targets, V),
               ref.logsumexp(logits, V))
        want = (tlosses, tl.grad, torch.logsumexp(tl[..., :V], dim=-1))
    for i, (g, w_) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w_.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{layer} output {i}")


def test_exp_f32_is_within_an_ulp_of_exp():
    # attention's vectorisable exp against float64 exp: < 1 ulp (rel 1.2e-7) on float32's normal
    # range, 0 below it, inf above 88.72, NaN kept, exact at 0
    @numba.njit
    def run(out, x):
        for i in range(x.shape[0]):
            out[i] = kernels.exp_f32(x[i])

    x = np.concatenate([np.linspace(-87.3, 88.3, 1_000_001, dtype=np.float32),
                        np.random.default_rng(0).uniform(-20, 0, 100_000).astype(np.float32)])
    got = np.empty_like(x)
    run(got, x)
    want = np.exp(x.astype(np.float64))
    assert (np.abs(got - want) / want).max() < 1.2e-7
    edge = np.array([0.0, -0.0, -87.4, -100.0, -np.inf, 88.8, np.inf, np.nan], np.float32)
    got = np.empty_like(edge)
    run(got, edge)
    assert got[:2].tolist() == [1.0, 1.0] and got[2:5].tolist() == [0.0] * 3
    assert np.isposinf(got[5:7]).all() and np.isnan(got[7])
