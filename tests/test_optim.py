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
    from llmnb.checkpoint import read_state, write_state
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
