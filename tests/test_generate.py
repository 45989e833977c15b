"""Generation over the model's KV cache: the same logits as the full forward, one token's work per step."""
import numpy as np
import pytest

from llmnb.config import GPT2Config
from llmnb.generate import generate, sample_mult
from llmnb.model import GPT2, Decoder, init_params
from llmnb.rand import Rng

CFG = GPT2Config(max_seq_len=12, vocab_size=40, padded_vocab_size=48, num_layers=2, num_heads=3, channels=24)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, seed=11) * 5  # sharper distributions than the 0.02 init


def assert_logits_close(got, want):
    # float32 sums in another order (the step's GEMV and one-query attention): 1e-5 relative to
    # the largest logit
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("n", [1, 2, 7, CFG.max_seq_len])
def test_cached_step_logits_equal_the_full_forward(params, n):
    # a prompt of n tokens fed one by one: the last position's logits and probs are the full
    # forward's over the n tokens (and every earlier position's are those of its prefix)
    tokens = np.random.default_rng(n).integers(0, CFG.vocab_size, n)
    model = GPT2(CFG, params)
    model.forward(tokens[None, :])
    full_logits, full_probs = model.acts.logits[0].copy(), model.probs[0].copy()
    dec = Decoder(model)
    for t, tok in enumerate(tokens):
        probs = dec.step(int(tok))
        assert probs.shape == (CFG.padded_vocab_size,)
        assert_logits_close(dec.acts.logits[0, 0], full_logits[t])
        np.testing.assert_allclose(probs, full_probs[t], rtol=1e-5, atol=1e-7)
    assert dec.pos == n
    if n == CFG.max_seq_len:
        with pytest.raises(ValueError, match="max_seq_len"):
            dec.step(0)


def test_a_new_sequence_forgets_the_last(params):
    # begin() reuses the cache: a sequence after a longer one sees none of its rows
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, CFG.max_seq_len)
    fresh = Decoder(GPT2(CFG, params))
    fresh.begin()
    want = [fresh.step(int(t)).copy() for t in tokens[:3]]
    used = Decoder(GPT2(CFG, params))
    used.begin()
    for t in tokens[::-1]:
        used.step(int(t))
    used.begin()
    for w, t in zip(want, tokens[:3]):
        np.testing.assert_array_equal(used.step(int(t)), w)


def test_generation_leaves_training_state_alone(params):
    # llmnb-train samples with the training model: its activations and gradients are untouched
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, CFG.vocab_size, (2, 2, 5))
    grads = []
    for sample_between in (False, True):
        model = GPT2(CFG, params)
        model.forward(x, y)
        if sample_between:
            generate(model, [1, 2], 5, Rng(3))
        model.zero_grad()
        model.backward()
        grads.append(model.grads.memory.copy())
    np.testing.assert_array_equal(grads[0], grads[1])


def test_generate_matches_llmc_style_full_forward_sampling(params):
    # llm.c's loop: re-run the whole forward, sample from probs[t-1] with one coin per token
    model = GPT2(CFG, params)
    rng = Rng(1337)
    tokens = [CFG.vocab_size - 1]
    for t in range(1, CFG.max_seq_len):
        model.forward(np.array([tokens + [0] * (CFG.max_seq_len - len(tokens))]))
        tokens.append(sample_mult(model.probs[0, t - 1], CFG.vocab_size, rng.f32()))
    got = generate(GPT2(CFG, params), [CFG.vocab_size - 1], CFG.max_seq_len - 1, Rng(1337))
    assert got == tokens[1:]


def test_generate_stops_at_max_seq_len_and_checks_tokens(params):
    out = generate(GPT2(CFG, params), [1, 2, 3], 100, Rng(5))
    assert len(out) == CFG.max_seq_len - 3 + 1  # the last sample needs no further forward
    with pytest.raises(ValueError, match="not a token id"):
        generate(GPT2(CFG, params), [CFG.vocab_size], 3, Rng(5))
    with pytest.raises(ValueError, match="prompt"):
        generate(GPT2(CFG, params), [], 3, Rng(5))


@pytest.mark.parametrize("OC,C", [(1, 5), (257, 33), (1000, 64)])
def test_matvec_forward_against_float64(OC, C):
    # one token's matmul: every row, with and without bias, rows past a block of MV_ROWS too
    from llmnb.kernels import matvec_forward
    rng = np.random.default_rng(OC)
    w = rng.standard_normal((OC, C), dtype=np.float32)
    x = rng.standard_normal(C, dtype=np.float32)
    b = rng.standard_normal(OC, dtype=np.float32)
    out = np.full(OC, np.nan, dtype=np.float32)
    matvec_forward(out, x, w, b)
    want = w.astype(np.float64) @ x + b
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(C))
    matvec_forward(out, x, w, None)
    np.testing.assert_allclose(out, want - b, rtol=1e-5, atol=1e-5 * np.sqrt(C))
    with pytest.raises(ValueError, match="inp"):
        matvec_forward(out, x[:-1], w, None)


def test_bfloat16_step_is_the_model_of_the_rounded_parameters(params):
    # streaming the matrices as bfloat16 bits == float32 generation on bf16-rounded parameters
    from llmnb.formats import bf16_to_fp32, fp32_to_bf16
    rounded = bf16_to_fp32(fp32_to_bf16(params))
    assert not np.array_equal(rounded, params)
    tokens = np.random.default_rng(3).integers(0, CFG.vocab_size, CFG.max_seq_len)
    trained = GPT2(CFG, params)
    half, full = Decoder(trained, "bfloat16"), Decoder(GPT2(CFG, rounded))
    np.testing.assert_array_equal(half.params.memory, rounded)  # the decoder's rounded copy
    np.testing.assert_array_equal(trained.params.memory, params)  # the model's weights untouched
    assert half.weights.qkvw.dtype == np.uint16
    for tok in tokens:
        np.testing.assert_allclose(half.step(int(tok)), full.step(int(tok)), rtol=1e-5, atol=1e-7)
        assert_logits_close(half.acts.logits, full.acts.logits)
    assert (generate(GPT2(CFG, params), [1], 8, Rng(3), dtype="bfloat16")
            == generate(GPT2(CFG, rounded), [1], 8, Rng(3)))
    with pytest.raises(ValueError, match="dtype"):
        Decoder(GPT2(CFG, params), "float16")
