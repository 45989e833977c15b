"""KV-cache generation: the same logits as the full forward, one token's work per step."""
import numpy as np
import pytest

from llmnb.config import GPT2Config
from llmnb.generate import KVCache, generate
from llmnb.model import GPT2, init_params
from llmnb.sampler import Rng, sample_mult

CFG = GPT2Config(max_seq_len=12, vocab_size=40, padded_vocab_size=48, num_layers=2, num_heads=3, channels=24)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, seed=11) * 5  # sharper distributions than the 0.02 init


def test_cached_logits_equal_the_full_forward(params):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, CFG.max_seq_len)
    model = GPT2(CFG, params)
    model.forward(tokens[None, :])
    full_logits = model.acts.logits[0]
    full_probs = model.acts.probs[0]
    cache = KVCache(CFG, params)
    for t, tok in enumerate(tokens):
        probs = cache.step(int(tok))
        np.testing.assert_allclose(cache.logits[0, 0], full_logits[t], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(probs, full_probs[t], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="max_seq_len"):
        cache.step(0)


def test_generate_matches_llmc_style_full_forward_sampling(params):
    # llm.c's loop: re-run the whole forward, sample from probs[t-1] with one coin per token
    model = GPT2(CFG, params)
    rng = Rng(1337)
    tokens = [CFG.vocab_size - 1]
    for t in range(1, CFG.max_seq_len):
        model.forward(np.array([tokens + [0] * (CFG.max_seq_len - len(tokens))]))
        tokens.append(sample_mult(model.acts.probs[0, t - 1], CFG.vocab_size, rng.f32()))
    got = generate(CFG, params, [CFG.vocab_size - 1], CFG.max_seq_len - 1, Rng(1337))
    assert got == tokens[1:]


def test_generate_stops_at_max_seq_len_and_checks_tokens(params):
    out = generate(CFG, params, [1, 2, 3], 100, Rng(5))
    assert len(out) == CFG.max_seq_len - 3 + 1  # the last sample needs no further forward
    with pytest.raises(ValueError, match="not a token id"):
        generate(CFG, params, [CFG.vocab_size], 3, Rng(5))


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


def test_bfloat16_cache_is_the_model_of_the_rounded_parameters(params):
    # streaming the matrices as bfloat16 bits == float32 generation on bf16-rounded parameters
    from llmnb.formats import bf16_to_fp32, fp32_to_bf16
    rounded = bf16_to_fp32(fp32_to_bf16(params))
    assert not np.array_equal(rounded, params)
    tokens = np.random.default_rng(3).integers(0, CFG.vocab_size, CFG.max_seq_len)
    half, full = KVCache(CFG, params, dtype="bfloat16"), KVCache(CFG, rounded)
    for tok in tokens:
        np.testing.assert_allclose(half.step(int(tok)), full.step(int(tok)), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(half.logits, full.logits, rtol=1e-5, atol=1e-5)
    assert generate(CFG, params, [1], 8, Rng(3), dtype="bfloat16") == generate(CFG, rounded, [1], 8, Rng(3))
    with pytest.raises(ValueError, match="dtype"):
        KVCache(CFG, params, dtype="float16")
