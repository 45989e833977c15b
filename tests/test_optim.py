"""The optimizer side: lr schedule, global-norm clipping."""
import math

import numpy as np
import pytest

from llmnb.config import GPT2Config
from llmnb.model import GPT2, init_params
from llmnb.optim import clip_grad_norm, global_norm_squared, learning_rate


def test_learning_rate_schedule():
    assert learning_rate(0, 1e-3) == learning_rate(99, 1e-3) == 1e-3            # constant by default
    assert learning_rate(0, 1e-3, warmup=4) == pytest.approx(2.5e-4)           # linear warmup
    assert learning_rate(3, 1e-3, warmup=4) == pytest.approx(1e-3)
    assert learning_rate(4, 1e-3, warmup=4, total=14, lr_min=1e-4) == pytest.approx(1e-3)
    assert learning_rate(9, 1e-3, warmup=4, total=14, lr_min=1e-4) == pytest.approx(5.5e-4)  # half way
    assert learning_rate(14, 1e-3, warmup=4, total=14, lr_min=1e-4) == pytest.approx(1e-4)


def test_global_norm_is_exact_and_thread_independent():
    g = np.random.default_rng(0).normal(size=300_001).astype(np.float32)
    assert global_norm_squared(g) == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-12)


def test_clip_grad_norm_scales_to_the_max_norm():
    cfg = GPT2Config(max_seq_len=8, vocab_size=30, padded_vocab_size=32, num_layers=1, num_heads=2, channels=8)
    m = GPT2(cfg, init_params(cfg, seed=0))
    rng = np.random.default_rng(1)
    m.forward(rng.integers(0, 30, (2, 8)), rng.integers(0, 30, (2, 8)))
    m.zero_grad()
    m.backward()
    before = m.grads.memory.copy()
    norm = clip_grad_norm(m, 0.0)  # measure only
    assert norm == pytest.approx(float(np.linalg.norm(before.astype(np.float64))), rel=1e-9)
    np.testing.assert_array_equal(m.grads.memory, before)
    clip_grad_norm(m, norm / 4)
    np.testing.assert_allclose(m.grads.memory, before / 4, rtol=1e-5)
    assert math.sqrt(global_norm_squared(m.grads.memory)) == pytest.approx(norm / 4, rel=1e-5)


def test_optimizer_state_out_and_in_continues_adamw_bit_for_bit(tmp_path):
    # what a checkpoint saves (optimizer_state) and a resume loads (load_optimizer_state), through
    # llm.c's state file: the next AdamW step is the uninterrupted model's, bit for bit
    from llmnb.formats import read_optimizer_state as read_state, write_optimizer_state as write_state
    cfg = GPT2Config(max_seq_len=8, vocab_size=30, padded_vocab_size=32, num_layers=1, num_heads=2, channels=8)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 30, (2, 2, 8))
    m = GPT2(cfg, init_params(cfg, seed=0))
    assert m.optimizer_state() is None
    for t in (1, 2):
        m.forward(x, y)
        m.zero_grad()
        m.backward()
        m.update(1e-2, 0.9, 0.999, 1e-8, 0.1, t)
        if t == 1:
            write_state(tmp_path / "s.bin", 1, *m.optimizer_state())
            resumed = GPT2(cfg, m.params_host())
    state = read_state(tmp_path / "s.bin", m.num_parameters, step=1)
    resumed.load_optimizer_state(state["m"], state["v"])
    state["m"][:] = np.nan  # loaded as a copy
    resumed.forward(x, y)
    resumed.zero_grad()
    resumed.backward()
    resumed.update(1e-2, 0.9, 0.999, 1e-8, 0.1, 2)
    np.testing.assert_array_equal(resumed.params_host(), m.params_host())
    for a, b in zip(resumed.optimizer_state(), m.optimizer_state()):
        np.testing.assert_array_equal(a, b)
    assert resumed.params_finite()
    resumed.params.memory[5] = np.inf
    assert not resumed.params_finite()
    with pytest.raises(ValueError, match="flat"):
        resumed.load_optimizer_state(np.zeros(3, np.float32), np.zeros(4, np.float32))


# ----------------------------------------------------------------------------------------------
# the gradient fill fused into AdamW: update() zeroes the gradient as it reads it, zero_grad()
# then skips its fill of the whole buffer; what must stay true around it

CFG = GPT2Config(max_seq_len=8, vocab_size=30, padded_vocab_size=32, num_layers=1, num_heads=2, channels=8)


def fresh_grads(params, x, y, grad_scale=1.0):
    """The gradient of a new model at params: what a step's backward must give, nothing left over."""
    m = GPT2(CFG, params)
    m.forward(x, y)
    m.zero_grad()
    m.backward(grad_scale)
    return m.grads.memory.copy()


class FillCounter:
    """Counts the backend's fills of the parameter-gradient buffer."""

    def __init__(self, model, monkeypatch):
        self.n = 0
        real = model.backend.fill

        def fill(arr, value):
            if model.grads is not None and arr is model.grads.memory:
                self.n += 1
            real(arr, value)
        monkeypatch.setattr(model.backend, "fill", fill)


@pytest.mark.parametrize("decay", [None, ("wte", "qkvw")])
def test_update_zeroes_the_gradient_and_zero_grad_skips_its_fill(monkeypatch, decay):
    rng = np.random.default_rng(3)
    m = GPT2(CFG, init_params(CFG, seed=0))
    fills = FillCounter(m, monkeypatch)
    for t in (1, 2, 3):
        x, y = rng.integers(0, 30, (2, 2, 8))
        m.forward(x, y)
        m.zero_grad()   # step 1: no buffer yet; then: zeroed by the update before
        m.backward()
        assert not m.grads_are_zero and np.any(m.grads.memory != 0)
        want = fresh_grads(m.params_host().copy(), x, y)
        np.testing.assert_array_equal(m.grads.memory, want)  # nothing left over from the step before
        m.update(1e-2, 0.9, 0.999, 1e-8, 0.1, t, decay=decay)
        assert m.grads_are_zero and np.all(m.grads.memory == 0) and not np.any(np.signbit(m.grads.memory))
    assert fills.n == 0  # three steps, no fill of the 'gradients' buffer


def test_fused_zeroing_trains_bit_for_bit_as_the_fill():
    # the same steps, once with update's zeroing, once with zero_grad's fill forced every step
    rng = np.random.default_rng(4)
    batches = rng.integers(0, 30, (4, 2, 2, 8))
    runs = []
    for force_fill in (False, True):
        m = GPT2(CFG, init_params(CFG, seed=1))
        for t, (x, y) in enumerate(batches, 1):
            m.forward(x, y)
            if force_fill:
                m.grads_are_zero = False
            m.zero_grad()
            m.backward()
            m.update(1e-2, 0.9, 0.999, 1e-8, 0.0, t)
        runs.append(m.params_host().copy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_gradient_accumulation_and_clipping_across_fused_updates():
    # two micro-steps a step (zero_grad(params=False) between them: the gradient adds up), the
    # global norm clipped before each update, three steps: every step's gradient is the fresh
    # mean of its micro-batches, clipped; nothing of the step before survives the update
    rng = np.random.default_rng(5)
    m = GPT2(CFG, init_params(CFG, seed=2))
    for t in (1, 2, 3):
        xs, ys = rng.integers(0, 30, (2, 2, 2, 8))
        for micro in range(2):
            m.forward(xs[micro], ys[micro])
            m.zero_grad(params=(micro == 0))
            m.backward(grad_scale=0.5)
        p = m.params_host().copy()
        want = fresh_grads(p, xs[0], ys[0], 0.5) + fresh_grads(p, xs[1], ys[1], 0.5)
        # (float32 sums in another order: ~1e-6 relative; a stale gradient would be ~1e-2 off)
        np.testing.assert_allclose(m.grads.memory, want, rtol=1e-5, atol=1e-8)
        norm = clip_grad_norm(m, 0.5)
        assert norm > 0.5  # it clipped
        np.testing.assert_allclose(m.grads.memory, want * (0.5 / (norm + 1e-6)), rtol=1e-5, atol=1e-9)
        m.update(1e-2, 0.9, 0.999, 1e-8, 0.1, t)
        assert m.grads_are_zero and np.all(m.grads.memory == 0)


def test_zero1_update_leaves_the_gradient_and_the_fill_to_zero_grad(monkeypatch):
    # update(shard=...) reads a separate reduced gradient: self.grads keeps its values, the model
    # must not take them for zero, and the next zero_grad fills them
    rng = np.random.default_rng(6)
    m = GPT2(CFG, init_params(CFG, seed=3))
    x, y = rng.integers(0, 30, (2, 2, 8))
    m.forward(x, y)
    m.zero_grad()
    m.backward()
    g = m.grads.memory.copy()
    lo, hi = 5, m.num_parameters - 7
    reduced = g[lo:hi].copy()
    m.update(1e-2, 0.9, 0.999, 1e-8, 0.1, 1, shard=(lo, hi, reduced))
    np.testing.assert_array_equal(m.grads.memory, g)       # untouched
    np.testing.assert_array_equal(reduced, g[lo:hi])       # the shard's buffer too
    assert not m.grads_are_zero
    fills = FillCounter(m, monkeypatch)
    x2, y2 = rng.integers(0, 30, (2, 2, 8))
    m.forward(x2, y2)
    m.zero_grad()
    assert fills.n == 1 and np.all(m.grads.memory == 0)
    m.backward()
    np.testing.assert_array_equal(m.grads.memory, fresh_grads(m.params_host().copy(), x2, y2))


def test_backward_twice_accumulates_and_zero_grad_after_backward_fills():
    # two forward+backward pairs with no update between add up (zero_grad(params=False) clears
    # only the activation gradients, which backward needs zeroed); a zero_grad after a backward
    # (no update in between) must fill, whatever an earlier update left
    rng = np.random.default_rng(7)
    params = init_params(CFG, seed=4)
    (x1, y1), (x2, y2) = rng.integers(0, 30, (2, 2, 2, 8))
    m = GPT2(CFG, params)
    m.forward(x1, y1)
    m.zero_grad()
    m.backward()
    m.update(1e-2, 0.9, 0.999, 1e-8, 0.0, 1)   # grads zero, known to be
    p = m.params_host().copy()
    m.forward(x1, y1)
    m.zero_grad()
    m.backward()
    m.forward(x2, y2)
    m.zero_grad(params=False)
    m.backward()                                # accumulates
    np.testing.assert_allclose(m.grads.memory, fresh_grads(p, x1, y1) + fresh_grads(p, x2, y2),
                               rtol=1e-5, atol=1e-8)
    m.zero_grad()                               # after a backward: a real fill
    assert m.grads_are_zero and np.all(m.grads.memory == 0)
