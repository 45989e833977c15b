"""Generation over the model's KV cache: the same logits as the full forward, one token's work per
step; the GEMVs of each weight precision, int8 quantization, batched decoding, and the quality
script (benchmarks/generate_loss.py)."""
import io

import numpy as np
import pytest

from benchmarks import generate_loss
from llmnb import kernels
from llmnb.backend import ROW
from llmnb.config import GPT2Config, Tensors, param_shapes
from llmnb.formats import bf16_to_fp32, fp32_to_bf16, write_checkpoint, write_shard
from llmnb.generate import generate, generate_batch, sample_mult, sequence_rngs
from llmnb.matmul import matvec_forward, matvec_forward_bf16, matvec_forward_int8, quantize_int8
from llmnb.model import GPT2, MATRICES, Decoder, init_params
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


# ----------------------------------------------------------------------------------------------
# the GEMVs over N rows, int8 weights, batched decoding

def dequantized64(w):
    # an Int8Weight's weight in float64: q * scale, exact (q has 8 bits, scale 24)
    return w.q.astype(np.float64) * w.scale.astype(np.float64)[..., None]


@pytest.mark.parametrize("N,OC,C", [(1, 257, 33), (3, 1000, 64), (8, 67, 200)])
def test_matvec_forward_of_each_dtype_over_n_rows_against_float64(N, OC, C):
    # out (N, OC) for N inputs at once: float32, bfloat16 bits and int8 weights, each against a
    # float64 product of the weight it stands for (float32 sums: 1e-5 relative, sqrt(C) absolute)
    rng = np.random.default_rng(OC + N)
    w = rng.standard_normal((OC, C), dtype=np.float32)
    x = rng.standard_normal((N, C), dtype=np.float32)
    b = rng.standard_normal(OC, dtype=np.float32)
    bits, q = fp32_to_bf16(w), quantize_int8(w)
    for fn, weight, w64 in ((matvec_forward, w, w.astype(np.float64)),
                            (matvec_forward_bf16, bits, bf16_to_fp32(bits).astype(np.float64)),
                            (matvec_forward_int8, q, dequantized64(q))):
        want = x.astype(np.float64) @ w64.T
        for bias in (b, None):
            out = np.full((N, OC), np.nan, dtype=np.float32)
            fn(out, x, weight, bias)
            np.testing.assert_allclose(out, want + (0 if bias is None else b), rtol=1e-5,
                                       atol=1e-5 * np.sqrt(C) * np.abs(w64).max(), err_msg=fn.__name__)
        # row n of a batch is the bits of that row alone (the same dot, whatever N)
        alone = np.zeros(OC, dtype=np.float32)
        fn(alone, x[N - 1], weight, b)
        out = np.zeros((N, OC), dtype=np.float32)
        fn(out, x, weight, b)
        np.testing.assert_array_equal(out[N - 1], alone)
    with pytest.raises(ValueError, match="out"):
        matvec_forward_int8(np.zeros((N + 1, OC), np.float32), x, q, None)


def test_int8_quantizer_error_bound():
    # per row: scale = max |w| / 127, |w - q scale| <= scale / 2 everywhere, q in [-127, 127] with
    # the row's largest weight at +-127; a row of zeros is scale 0, q 0
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((3, 50, 37)) * rng.uniform(1e-3, 10, (3, 50, 1))).astype(np.float32)
    w[1, 4] = 0.0
    w[2, 9, 5] = -50.0  # an outlier: its row's scale is set by it
    qw = quantize_int8(w)
    assert qw.q.dtype == np.int8 and qw.q.shape == w.shape and qw.scale.shape == (3, 50)
    s = qw.scale.astype(np.float64)
    np.testing.assert_allclose(s, np.abs(w).max(axis=-1) / 127, rtol=1e-7)
    err = np.abs(w.astype(np.float64) - dequantized64(qw))
    assert (err <= s[..., None] / 2 * (1 + 1e-12)).all()
    assert np.abs(qw.q.astype(int)).max() == 127 and (np.abs(qw.q.astype(int)).max(axis=-1)[s > 0] == 127).all()
    assert s[1, 4] == 0 and not qw.q[1, 4].any()
    assert qw.q[2, 9, 5] == -127
    assert qw[1].q.shape == (50, 37) and qw[1].scale.shape == (50,)  # layer l of a stack


def test_int8_step_is_the_model_of_the_dequantized_weights(params):
    # int8 generation == float32 generation on the parameters with the five matrices replaced by
    # q * scale (the embeddings read rows of the dequantized wte); the model's weights untouched
    deq = Tensors(params.copy(), param_shapes(CFG))
    for name in MATRICES:
        getattr(deq, name)[...] = quantize_int8(getattr(deq, name)).dequantize()
    trained = GPT2(CFG, params)
    quant, full = Decoder(trained, "int8"), Decoder(GPT2(CFG, deq.memory))
    np.testing.assert_array_equal(quant.params.memory, deq.memory)
    np.testing.assert_array_equal(trained.params.memory, params)
    assert quant.weights.qkvw[0].q.dtype == np.int8 and quant.weights.wte.q.shape == (CFG.padded_vocab_size, CFG.channels)
    for tok in np.random.default_rng(3).integers(0, CFG.vocab_size, CFG.max_seq_len):
        np.testing.assert_allclose(quant.step(int(tok)), full.step(int(tok)), rtol=1e-5, atol=1e-7)
        assert_logits_close(quant.acts.logits, full.acts.logits)


def test_int8_logits_are_close_to_float32():
    # the cost of int8 on a model of GPT-2's initialisation (C = 128, 2 layers): each weight moves
    # by at most scale/2, uniformly, so by scale/sqrt(12) = max|row| / 440 in rms, ~0.7% of a
    # Gaussian row's rms at C = 128; the logits move by ~1.5% of theirs after the five matmuls of
    # the path. Tolerance: 3% (rms of the difference over rms of the float32 logits, every
    # position), 4% of the largest logit, and next-token distributions within 0.01 in total
    # variation; and more than 0.1% (int8 is not float32)
    cfg = GPT2Config(max_seq_len=16, vocab_size=500, padded_vocab_size=512, num_layers=2, num_heads=2, channels=128)
    params = init_params(cfg, seed=2)
    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, cfg.max_seq_len)
    quant, full = Decoder(GPT2(cfg, params), "int8"), Decoder(GPT2(cfg, params))
    V = cfg.vocab_size
    rms = []
    for tok in tokens:
        pq, pf = quant.step(int(tok)), full.step(int(tok))
        lq, lf = quant.acts.logits.reshape(-1)[:V], full.acts.logits.reshape(-1)[:V]
        rms.append(np.sqrt(np.mean((lq - lf) ** 2) / np.mean(lf ** 2)))
        assert np.abs(lq - lf).max() < 0.04 * np.abs(lf).max()
        assert 0.5 * np.abs(pq - pf).sum() < 0.01
    assert 1e-3 < max(rms) < 0.03


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_a_batch_of_sequences_gives_each_the_bits_it_gets_alone(params, dtype):
    # Decoder(batch=3): three sequences of different tokens in one step each; each sequence's
    # probabilities are those of a batch-1 decoder fed that sequence alone, bit for bit
    B, n = 3, CFG.max_seq_len
    tokens = np.random.default_rng(9).integers(0, CFG.vocab_size, (B, n))
    batch = Decoder(GPT2(CFG, params), dtype, batch=B)
    got = np.stack([batch.step(tokens[:, t]) for t in range(n)], axis=1)  # (B, n, Vp)
    assert got.shape == (B, n, CFG.padded_vocab_size)
    for b in range(B):
        alone = Decoder(GPT2(CFG, params), dtype)
        want = np.stack([alone.step(int(tok)) for tok in tokens[b]])
        np.testing.assert_array_equal(got[b], want)
    with pytest.raises(ValueError, match="3 token id"):
        batch.begin()
        batch.step(1)
    with pytest.raises(ValueError, match="not a token id"):
        batch.step([1, 2, CFG.vocab_size])


def test_generate_batch_sequence_i_is_generate_with_its_rng(params):
    B = 4
    got = generate_batch(Decoder(GPT2(CFG, params), batch=B), [1, 2], 8, sequence_rngs(40, B), temperature=0.9)
    assert len(got) == B and all(len(seq) == 8 for seq in got)
    for i, seq in enumerate(got):
        assert seq == generate(GPT2(CFG, params), [1, 2], 8, Rng(40 + i), temperature=0.9)
    assert len({tuple(seq) for seq in got}) > 1  # different seeds, different samples
    assert [r.state for r in sequence_rngs(2**64 - 1, 2)] == [2**64 - 1, 0]
    with pytest.raises(ValueError, match="one per sequence"):
        generate_batch(Decoder(GPT2(CFG, params), batch=2), [1], 3, [Rng(1)])


@pytest.mark.parametrize("name", ["encoder_forward", "layernorm_forward", "residual_forward", "gelu_forward",
                                  "softmax_forward"])
def test_the_steps_serial_row_kernels_equal_the_parallel_ones(name):
    # backend.ROW: the serial builds the step runs (NumPy's error model, like the parallel build's
    # loops) give the parallel kernels' bits, on 5 rows of a step (B = 5, T = 1)
    rng = np.random.default_rng(len(name))
    B, C, Vp, V = 5, 48, 70, 61

    def r(*shape, scale=3.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)
    args = {"encoder_forward": lambda: (r(B, 1, C), rng.integers(0, Vp, (B, 1)).astype(np.int32), r(Vp, C), r(1, C)),
            "layernorm_forward": lambda: (r(B, 1, C), r(B, 1), r(B, 1), r(B, 1, C), r(C), r(C)),
            "residual_forward": lambda: (r(B, 1, C), r(B, 1, C), r(B, 1, C)),
            "gelu_forward": lambda: (r(B, 1, 4 * C), r(B, 1, 4 * C)),
            "softmax_forward": lambda: (r(B, 1, Vp), r(B, 1, Vp, scale=20.0), V)}[name]()
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    getattr(kernels, name)(*args)
    getattr(ROW, name)(*copies)
    for a, c in zip(args, copies):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a.view(np.uint8), c.view(np.uint8)), name


def test_weight_bytes_are_the_matrices_at_the_decoders_precision(params):
    shapes = param_shapes(CFG)
    floats = sum(int(np.prod(shapes[n])) for n in MATRICES)
    rows = sum(int(np.prod(shapes[n][:-1])) for n in MATRICES)
    got = {d: Decoder(GPT2(CFG, params), d).weight_bytes() for d in ("float32", "bfloat16", "int8")}
    assert got == {"float32": 4 * floats, "bfloat16": 2 * floats, "int8": floats + 4 * rows}


# ----------------------------------------------------------------------------------------------
# benchmarks/generate_loss.py: the val loss through the decoder, per precision

def test_generate_loss_measures_the_val_loss_of_each_precision(tmp_path):
    # GPT-2's vocabulary (the val tokens are GPT-2 ids), a tiny model of GPT-2's initialisation;
    # the decoder's float32 loss is the training forward's (float32 rounding), bfloat16 and int8
    # differ from it by little but by something
    cfg = GPT2Config(max_seq_len=16, vocab_size=50257, padded_vocab_size=50304, num_layers=2, num_heads=2, channels=32)
    write_checkpoint(tmp_path / "m.bin", cfg, init_params(cfg, seed=3) * 3)
    val = tmp_path / "val.bin"
    write_shard(val, np.random.default_rng(0).integers(0, 400, 200))  # a small alphabet: a loss far from log V
    wins = generate_loss.windows(np.arange(100), 8, 0, 4)
    assert wins.shape == (12, 9) and wins[1, 0] == 8 and wins[-1, -1] == 96  # 12 of the 12 that fit, one after another
    out = io.StringIO()
    args = generate_loss.parse_args(["--model", str(tmp_path / "m.bin"), "--val", str(val), "-t", "12", "-n", "3",
                                     "--windows", "7"])
    reference, rows = generate_loss.run(args, out)
    losses = {d: loss for d, loss, _ in rows}
    assert list(losses) == ["float32", "bfloat16", "int8"]
    assert abs(losses["float32"] - reference) < 1e-5 * reference
    for d in ("bfloat16", "int8"):
        assert 1e-7 < abs(losses[d] - losses["float32"]) < 0.02 * reference, d
    text = out.getvalue()
    assert "6 windows of 12 + 1 tokens, 3 at a time" in text and "| int8 |" in text and "training forward" in text
    assert generate_loss.main(["--model", str(tmp_path / "m.bin"), "--val", str(tmp_path / "none.bin")]) == 2
    assert generate_loss.main(["--model", str(tmp_path / "m.bin"), "--val", str(val), "-t", "17"]) == 2
