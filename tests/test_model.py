"""The model's orchestration: input checks, (B, T) re-allocation, views into flat buffers, init."""
import math

import numpy as np
import pytest

from llmnb.config import (ACT_NAMES, GPT2Config, Tensors, act_shapes, act_sizes, grad_act_shapes, param_shapes,
                          param_sizes)
from llmnb.model import GPT2, init_params

TINY = GPT2Config(max_seq_len=16, vocab_size=50, padded_vocab_size=64, num_layers=2, num_heads=2, channels=16)


@pytest.fixture(scope="module")
def model():
    return GPT2(TINY, init_params(TINY, seed=1))


def batch(rng, B, T, V=TINY.vocab_size):
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def test_sizes_match_llmc_fill_in_functions():
    # GPT-2 124M: the numbers llm.c prints
    cfg = GPT2Config()
    assert sum(param_sizes(cfg)) == 124475904
    assert len(param_sizes(cfg)) == 16
    # llm.c's CPU trainer: 23 tensors, 73,347,840 floats; here its preatt and att (2 x L*B*NH*T*T)
    # are replaced by lse (L*B*NH*T), as its cuDNN trainer keeps its softmax statistics, and its
    # probs (B*T*Vp) by lse_logits (B*T), as its CUDA trainer's fused classifier
    assert len(act_sizes(cfg, 4, 64)) == 22
    assert tuple(act_shapes(cfg, 4, 64)) == ACT_NAMES
    assert sum(act_sizes(cfg, 4, 64)) == (73347840 - 2 * 12 * 4 * 12 * 64 * 64 + 12 * 4 * 12 * 64
                                          - 4 * 64 * 50304 + 4 * 64)


def test_activation_gradients_are_one_layers_worth():
    # llm.c's CUDA trainer, not its CPU one: the activation gradients do not grow with the depth
    # (a buffer per layer would be ~18 B*T*C floats for each of the L layers)
    B, T = 2, 64
    counts = [Tensors.count(grad_act_shapes(GPT2Config.depth(L), B, T)) for L in (2, 12, 24)]
    C12 = GPT2Config.depth(12).channels
    assert counts[1] == 2 * B * T * C12 + B * T + 14 * B * T * C12  # no B*T*Vp dlogits
    assert counts[0] < counts[1] < counts[2]  # through C only (128, 768, 1024)
    assert Tensors.count(grad_act_shapes(GPT2Config(num_layers=2), B, T)) == \
        Tensors.count(grad_act_shapes(GPT2Config(num_layers=48), B, T))


def test_training_buffers_hold_no_vocabulary_sized_probs_or_dlogits():
    # the fused classifier: of the (B, T, Vp) tensors only the logits remain (dlogits is written over
    # them), so a training step's activations and their gradients are 2 B*T*Vp - B*T floats smaller
    # than with probs and dlogits: 402,428 bytes per position at GPT-2's vocabulary
    from llmnb.memory import run_memory
    cfg, B, T = GPT2Config(), 4, 64
    C, Vp = cfg.channels, cfg.padded_vocab_size
    acts, grads = act_shapes(cfg, B, T), grad_act_shapes(cfg, B, T)
    assert [n for n, s in acts.items() if Vp in s] == ["logits"]
    assert not [n for n, s in grads.items() if Vp in s]
    # the counts before the fused classifier (this file's numbers then): acts with probs, grads
    # with dlogits
    old_acts = 73347840 - 2 * 12 * B * 12 * T * T + 12 * B * 12 * T
    old_grads = 2 * B * T * C + B * T * Vp + B * T + 14 * B * T * C
    sizes = run_memory(cfg, B, T)
    saved = 4 * (old_acts + old_grads) - sizes["activations"] - sizes["activation gradients"]
    assert saved == 4 * (2 * B * T * Vp - B * T) and saved / (B * T) == 402428
    # and the model allocates exactly those layouts
    m = GPT2(TINY)
    x = np.zeros((2, 5), dtype=np.int32)
    m.forward(x, x)
    m.zero_grad()
    m.backward()
    assert m.acts.memory.size == Tensors.count(act_shapes(TINY, 2, 5))
    assert m.grads_acts.memory.size == Tensors.count(grad_act_shapes(TINY, 2, 5))
    assert m.probs is None and not hasattr(m.acts, "probs")


def test_views_share_the_flat_buffer(model):
    p = model.params
    p.qkvw[1, 2, 3] = 7.5
    off = sum(param_sizes(TINY)[:4]) + (1 * 3 * TINY.channels + 2) * TINY.channels + 3
    assert p.memory[off] == np.float32(7.5)
    assert p.qkvw.base is not None and np.shares_memory(p.qkvw, p.memory)


def test_token_out_of_range_is_a_clear_value_error(model):
    x = np.zeros((2, 4), dtype=np.int64)
    x[1, 3] = TINY.vocab_size
    with pytest.raises(ValueError, match=r"inputs\[1, 3\] = 50 is not a token id in \[0, 50\)"):
        model.forward(x)
    x[1, 3] = -1
    with pytest.raises(ValueError, match=r"= -1 is not a token id"):
        model.forward(x)
    y = np.full((2, 4), TINY.vocab_size + 3)
    with pytest.raises(ValueError, match=r"targets\[0, 0\] = 53"):
        model.forward(np.zeros((2, 4), dtype=np.int32), y)


def test_sequence_longer_than_max_seq_len(model):
    with pytest.raises(ValueError, match="T=17 exceeds the model's max_seq_len=16"):
        model.forward(np.zeros((1, 17), dtype=np.int32))


def test_bad_shapes(model):
    with pytest.raises(ValueError, match="shape"):
        model.forward(np.zeros(5, dtype=np.int32))
    with pytest.raises(ValueError, match="targets has shape"):
        model.forward(np.zeros((2, 4), dtype=np.int32), np.zeros((2, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="integer"):
        model.forward(np.zeros((2, 4), dtype=np.float32))


def test_backward_needs_targets():
    m = GPT2(TINY)
    m.forward(np.zeros((1, 4), dtype=np.int32))
    with pytest.raises(RuntimeError, match="targets"):
        m.backward()


def test_new_shape_reallocates_and_gives_the_same_answer(model):
    rng = np.random.default_rng(0)
    x, y = batch(rng, 2, 5)
    loss_a = model.forward(x, y)
    logits_a = model.acts.logits.copy()
    model.forward(*batch(rng, 3, 9))          # a different (B, T): re-allocated
    assert model.acts.logits.shape == (3, 9, TINY.padded_vocab_size)
    loss_b = model.forward(x, y)             # back again
    assert loss_a == loss_b
    np.testing.assert_array_equal(model.acts.logits, logits_a)


def test_probs_rows_sum_to_one_and_padding_is_zero(model):
    # a forward without targets leaves the softmax in model.probs; one with targets, whose loss is
    # -log of those probabilities at the targets, leaves the logits intact and keeps no probs
    rng = np.random.default_rng(3)
    x, y = batch(rng, 3, 5)
    assert model.forward(x) is None
    probs = model.probs.copy()
    np.testing.assert_allclose(probs[:, :, :TINY.vocab_size].sum(-1), 1.0, rtol=1e-5)
    assert np.all(probs[:, :, TINY.vocab_size:] == 0)
    logits = model.acts.logits.copy()
    loss = model.forward(x, y)
    assert model.probs is None
    np.testing.assert_array_equal(model.acts.logits, logits)
    expect = -np.log(np.take_along_axis(probs.astype(np.float64), y[..., None], axis=-1)).mean()
    assert math.isclose(loss, expect, rel_tol=1e-5)
    V = TINY.vocab_size
    lse = np.log(np.exp(logits[..., :V].astype(np.float64)).sum(-1))
    np.testing.assert_allclose(model.acts.lse_logits, lse, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.acts.losses, lse - np.take_along_axis(logits, y[..., None], -1)[..., 0],
                               rtol=1e-5, atol=1e-6)


def test_backward_writes_dlogits_over_the_logits_and_runs_once_per_forward():
    # after backward acts.logits holds dlogits = (softmax - onehot(target)) / (B*T), 0 in the
    # padded columns; a second backward of the same forward would read them as logits: refused
    m = GPT2(TINY, init_params(TINY, seed=1))
    rng = np.random.default_rng(6)
    x, y = batch(rng, 2, 7)
    m.forward(x)
    probs = m.probs.astype(np.float64)
    m.forward(x, y)
    m.zero_grad()
    m.backward(grad_scale=0.5)
    onehot = np.zeros_like(probs)
    np.put_along_axis(onehot, y[..., None], 1.0, axis=-1)
    want = (probs - onehot) * 0.5 / (2 * 7)
    np.testing.assert_allclose(m.acts.logits, want, rtol=1e-5, atol=1e-9)
    assert np.all(m.acts.logits[..., TINY.vocab_size:] == 0)
    with pytest.raises(RuntimeError, match="already called after this forward"):
        m.backward()
    m.forward(x, y)  # a new forward: backward again, accumulating
    m.backward()


def test_padded_rows_get_zero_gradient_and_stay_zero(model):
    rng = np.random.default_rng(4)
    for step in range(2):
        model.forward(*batch(rng, 2, 6))
        model.zero_grad()
        model.backward()
        assert np.all(model.grads.wte[TINY.vocab_size:] == 0)
        model.update(1e-3, 0.9, 0.999, 1e-8, 0.01, step + 1)
        assert np.all(model.params.wte[TINY.vocab_size:] == 0)


def test_training_drives_the_loss_down():
    m = GPT2(TINY, init_params(TINY, seed=2))
    rng = np.random.default_rng(5)
    x, y = batch(rng, 2, 8)
    losses = []
    for step in range(20):
        losses.append(m.forward(x, y))
        m.zero_grad()
        m.backward()
        m.update(1e-2, 0.9, 0.999, 1e-8, 0.0, step + 1)
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_matches_finite_differences():
    # an independent check of the whole backward: d loss / d param along a random direction
    cfg = GPT2Config(max_seq_len=8, vocab_size=20, padded_vocab_size=24, num_layers=1, num_heads=2, channels=8)
    params = init_params(cfg, seed=7) * 10  # larger weights: a loss surface with real curvature
    params = params.astype(np.float32)
    rng = np.random.default_rng(8)
    x, y = rng.integers(0, 20, (2, 5)), rng.integers(0, 20, (2, 5))
    m = GPT2(cfg, params)
    m.forward(x, y)
    m.zero_grad()
    m.backward()
    grad = m.grads.memory.astype(np.float64).copy()
    direction = rng.normal(size=params.shape)
    direction = (direction / np.linalg.norm(direction)).astype(np.float32)  # a unit step
    h = 1e-2
    lp = GPT2(cfg, params + h * direction).forward(x, y)
    lm = GPT2(cfg, params - h * direction).forward(x, y)
    fd = (lp - lm) / (2 * h)
    assert math.isclose(fd, float(grad @ direction), rel_tol=1e-3)


def test_init_params_follow_gpt2():
    cfg = GPT2Config(max_seq_len=64, vocab_size=1000, padded_vocab_size=1024, num_layers=4, num_heads=4, channels=64)
    from llmnb.config import Tensors
    p = Tensors(init_params(cfg, seed=0), param_shapes(cfg))
    assert np.all(p.ln1w == 1) and np.all(p.lnfw == 1) and np.all(p.qkvb == 0) and np.all(p.fcprojb == 0)
    assert np.all(p.wte[1000:] == 0)
    assert abs(p.qkvw.std() - 0.02) < 1e-3
    assert abs(p.fcprojw.std() - 0.02 / math.sqrt(8)) < 1e-3


def test_twenty_adamw_steps_track_pytorch_within_2e_6():
    # llm.c's gpt2_update and PyTorch's AdamW are each consistent in their betas, and agree to
    # float32 noise (~3e-7 here). At lr 1e-2 the loss falls fast enough that an update 6e-6 too
    # large (bias corrections from double betas, moments from float32 ones) drifts to ~7e-6.
    torch = pytest.importorskip("torch")
    from llmnb import reference_torch
    lr, wd = 1e-2, 0.01
    params = init_params(TINY, seed=1)
    rng = np.random.default_rng(0)
    x, y = (a.astype(np.int32) for a in batch(rng, 4, 16))
    torch.manual_seed(0)
    ref = reference_torch.define_gpt2(torch)(TINY)
    reference_torch.load_llmc_(torch, ref, params.copy())
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    ours = GPT2(TINY, params.copy(), copy=False)
    tx, ty = torch.from_numpy(x).long(), torch.from_numpy(y).long()
    for step in range(20):
        _, loss_ref = ref(tx, ty)
        opt.zero_grad()
        loss_ref.backward()
        opt.step()
        loss = ours.forward(x, y)
        ours.zero_grad()
        ours.backward()
        ours.update(lr, 0.9, 0.999, 1e-8, wd, step + 1)
        assert math.isclose(loss, loss_ref.item(), rel_tol=2e-6), f"step {step}: {loss} vs {loss_ref.item()}"


def test_training_is_bit_for_bit_reproducible_whatever_the_thread_count():
    # the same steps give the same bits run to run and with 1 or 2 Numba threads: every reduction
    # has one owner and a fixed order (T=200 spans two attention tiles, the last one partial)
    import numba
    config = GPT2Config(max_seq_len=256, vocab_size=300, padded_vocab_size=384, num_layers=2, num_heads=4,
                        channels=64)
    tokens = np.random.default_rng(0).integers(0, 300, (2, 201))
    x, y = tokens[:, :200], tokens[:, 1:]

    def train(threads):
        before = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            m = GPT2(config, init_params(config, seed=1), copy=False)
            losses = []
            for t in range(1, 4):
                losses.append(m.forward(x, y))
                m.zero_grad()
                m.backward()
                m.update(3e-3, 0.9, 0.999, 1e-8, 0.1, t)
            return losses, m.params_host().copy()
        finally:
            numba.set_num_threads(before)
    first, again, serial = train(2), train(2), train(1)
    assert first[0] == again[0] == serial[0]
    assert np.array_equal(first[1], again[1]) and np.array_equal(first[1], serial[1])
    assert first[0][2] < first[0][0]  # it trained
