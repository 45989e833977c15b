"""The optimizer side: lr schedule, global-norm clipping."""
import math
import platform

import numpy as np
import pytest

from llmnb.config import GPT2Config
from llmnb.model import GPT2, init_params
from llmnb.optim import clip_grad_norm, global_norm_squared, learning_rate


# printed by llm.c's llmc/schedulers.h (get_learning_rate) for each schedule of SCHEDULES: built with
# gcc -O2 by tests/llmc/llmc_schedulers.c, our harness; rebuild with `python tests/llmc/regenerate.py`
LLMC_LR_RECIPE = (0.000200000009, 0.000400000019, 0.000600000028, 0.000600000028, 0.000542705122,
                  0.000392705115, 0.000207294885, 5.72948848e-05)
LLMC_LR_COSINE = (0.000500000024, 0.00100000005, 0.00100000005, 0.000965745829, 0.000868198113,
                  0.000722207536, 0.000549999997, 0.000377792487, 0.000231801969, 0.000134254224)
LLMC_LR_LINEAR = (0.000500000024, 0.00100000005, 0.00100000005, 0.000887500064, 0.000775000022,
                  0.000662500039, 0.000549999997, 0.000437500014, 0.00032500003, 0.000212499988)
LLMC_LR_CONSTANT = (0.00100000005, 0.00100000005, 0.00100000005, 0.00100000005, 0.00100000005)
LLMC_LR_WSD = (0.000333333359, 0.000666666718, 0.00100000005, 0.00100000005, 0.00100000005, 0.00100000005,
               0.00100000005, 0.00100000005, 0.00100000005, 0.000422649755, 0.000183503391)
LLMC_LR_DEFAULT = (9.99999975e-05, 9.99999975e-05, 9.99999975e-05, 9.99999975e-05, 9.99999975e-05,
                   9.99999975e-05)
LLMC_LR_124M = (8.57142879e-07, 1.71428576e-06, 0.000300857151, 0.000599142862, 0.000600000028,
                0.000600000028, 0.000600000028, 0.000520795758, 0.000499812129, 0.000300025975,
                3.35075879e-06, 0)
LLMC_LR_350M = (4.2857144e-07, 0.000300000014, 0.000300000014, 0.000149999993, 0)

# name: (-k, -l, -u, train_num_batches, -q, the steps printed: None = every step)
SCHEDULES = {
    "LLMC_LR_RECIPE": ("cosine", 6e-4, 3, 8, 0.0, None),
    "LLMC_LR_COSINE": ("cosine", 1e-3, 2, 10, 0.1, None),
    "LLMC_LR_LINEAR": ("linear", 1e-3, 2, 10, 0.1, None),
    "LLMC_LR_CONSTANT": ("constant", 1e-3, 2, 5, 0.1, None),
    "LLMC_LR_WSD": ("wsd", 1e-3, 3, 11, 0.0, None),
    "LLMC_LR_DEFAULT": ("cosine", 1e-4, 0, 6, 1.0, None),
    "LLMC_LR_124M": ("cosine", 6e-4, 700, 18865, 0.0, (0, 1, 350, 698, 699, 700, 701, 5000, 5568, 9782, 18000, 18864)),
    "LLMC_LR_350M": ("cosine", 3e-4, 700, 60000, 0.0, (0, 699, 700, 30350, 59999)),
}
# glibc's cosf is llm.c's (the constants were made with it); another C library's may differ by 1 ulp
GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_learning_rate_schedule_is_llmcs_float_for_float(name):
    kind, lr, warmup, total, frac, steps = SCHEDULES[name]
    steps = steps or range(total)
    mine = np.array([learning_rate(s, lr, warmup, total, frac, kind) for s in steps], np.float64)
    want = np.array(globals()[name], np.float32).astype(np.float64)
    assert mine.shape == want.shape and np.array_equal(mine.astype(np.float32), mine)  # float32 values
    if GLIBC:
        np.testing.assert_array_equal(mine, want)
    else:
        np.testing.assert_array_max_ulp(mine.astype(np.float32), want.astype(np.float32), maxulp=1)


def test_learning_rate_schedule_shapes_and_refusals():
    # a float64 reference of each shape (the C's float32 within 1e-6 relative)
    lr, w, n = 1e-3, 4, 14
    assert learning_rate(0, lr, warmup=w) == pytest.approx(lr / 4, rel=1e-6)        # warmup, no end
    assert learning_rate(99, lr, warmup=w) == pytest.approx(lr, rel=1e-6)           # then constant
    assert learning_rate(9, lr, w, n, 0.1) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-6)  # cosine, half way
    assert learning_rate(9, lr, w, n, 0.1, "linear") == pytest.approx(1e-3 - 0.5 * 9e-4, rel=1e-6)
    assert learning_rate(14, lr, w, 16, 0.0, "wsd") == pytest.approx(lr * (1 - 0.5 ** 0.5), rel=1e-6)  # 12 + half of 4
    assert learning_rate(0, lr, w, n, 0.1, "constant") == pytest.approx(lr, rel=1e-6)  # llm.c: no warmup
    with pytest.raises(ValueError, match="past the schedule"):
        learning_rate(15, lr, w, n, 0.1)
    with pytest.raises(ValueError, match="unknown learning rate scheduler"):
        learning_rate(0, lr, kind="step")
    with pytest.raises(ValueError, match="needs the number of steps"):
        learning_rate(5, lr, warmup=w, final_frac=0.1)


def test_global_norm_is_exact_and_thread_independent():
    import numba
    g = np.random.default_rng(0).normal(size=300_001).astype(np.float32)
    assert global_norm_squared(g) == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-12)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = global_norm_squared(g)
    finally:
        numba.set_num_threads(threads)
    assert one == global_norm_squared(g)  # bit for bit, whatever the thread count


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_global_norm_is_not_finite_when_an_element_is_not(bad):
    # params_finite() and the divergence check rely on it: the vectorized sum keeps IEEE inf and NaN
    g = np.random.default_rng(1).normal(size=200_003).astype(np.float32)
    g[123_457] = bad
    assert not math.isfinite(global_norm_squared(g))


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
