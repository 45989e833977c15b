"""llmnb-reference: its files parse, and agree with the float64 GPT-2 of tests/reference_numpy.py."""
import json
import math
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from llmnb.config import PARAM_NAMES, GPT2Config, Tensors, param_shapes  # noqa: E402
from llmnb.formats import read_checkpoint, read_debug_state, write_checkpoint, write_shard  # noqa: E402
from llmnb.reference_torch import NO_TORCH, main  # noqa: E402
from reference_numpy import gpt2_forward  # noqa: E402  (tests/reference_numpy.py)

L, NH, C, V, MAXT, B, T = 1, 2, 32, 100, 16, 2, 8
STEPS = 5
TINY = ["--layers", str(L), "--heads", str(NH), "--channels", str(C), "--vocab", str(V),
        "--max-seq-len", str(MAXT)]
RUN = ["--batch", str(B), "--seq-len", str(T), "--steps", str(STEPS), "--threads", "1"]


def run_reference(out, *extra, shape=TINY):
    assert main(["--out", str(out), *shape, *RUN, *extra]) == 0
    config, params = read_checkpoint(out / "model.bin")
    state = read_debug_state(out / "debug_state.bin", config)
    losses = json.loads((out / "expected_losses.json").read_text())
    return config, params, state, losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return (out, *run_reference(out, "--seed", "7"))


@pytest.fixture(scope="module")
def strong(tmp_path_factory, reference):
    """A run from large random weights (N(0, 0.5) everywhere), where every layer matters: the
    GPT-2 init leaves the MLP and attention too small for a wrong GELU or mask to show."""
    out = tmp_path_factory.mktemp("strong")
    config = reference[1]
    params = np.random.default_rng(5).normal(0, 0.5, reference[2].shape).astype(np.float32)
    Tensors(params, param_shapes(config)).wte[V:] = 0.0
    write_checkpoint(out / "in.bin", config, params)
    return (out, *run_reference(out / "out", "--model", str(out / "in.bin"), shape=[]))


# ----------------------------------------------------------------------------------------------

def test_files_parse_with_the_right_shapes(reference):
    out, config, params, state, losses = reference
    assert config == GPT2Config(max_seq_len=MAXT, vocab_size=V, padded_vocab_size=128,
                                num_layers=L, num_heads=NH, channels=C)
    assert params.shape == (sum(np.prod(s) for s in param_shapes(config).values()),)
    assert (state["B"], state["T"]) == (B, T)
    assert state["logits"].shape == (B, T, V)
    assert state["grads"].shape == params.shape
    assert len(losses) == STEPS and all(isinstance(v, float) for v in losses)
    assert sorted(p.name for p in out.iterdir()) == ["debug_state.bin", "expected_losses.json",
                                                     "model.bin"]  # no temp files left


def test_gpt2_init(reference):
    _, config, params, _, _ = reference
    p = Tensors(params, param_shapes(config))
    for name in ("ln1w", "ln2w", "lnfw"):
        np.testing.assert_array_equal(getattr(p, name), 1.0)
    for name in ("ln1b", "ln2b", "lnfb", "qkvb", "attprojb", "fcb", "fcprojb"):
        np.testing.assert_array_equal(getattr(p, name), 0.0)
    for name, std in (("wte", 0.02), ("qkvw", 0.02), ("fcw", 0.02),
                      ("fcprojw", 0.02 / math.sqrt(2 * L))):
        w = getattr(p, name)[:V] if name == "wte" else getattr(p, name)
        assert abs(w.std() - std) < 0.1 * std, name


def test_padded_rows_are_zero(reference):
    _, config, params, state, _ = reference
    wte = Tensors(params, param_shapes(config)).wte
    dwte = Tensors(state["grads"], param_shapes(config)).wte
    np.testing.assert_array_equal(wte[V:], 0.0)
    np.testing.assert_array_equal(dwte[V:], 0.0)
    assert np.all(np.abs(wte[:V]).sum(1) > 0) and np.all(np.abs(dwte[:V]).sum(1) > 0)


@pytest.mark.parametrize("run", ["reference", "strong"])
def test_logits_and_loss_match_numpy_float64(run, request):
    _, config, params, state, losses = request.getfixturevalue(run)
    logits, loss = gpt2_forward(config, params, state["x"], state["y"])
    np.testing.assert_allclose(state["logits"], logits, rtol=1e-4, atol=1e-4)
    assert abs(state["loss"] - loss) < 1e-5 * max(1.0, loss)
    assert losses[0] == pytest.approx(state["loss"], rel=1e-7)  # the same step-0 forward


@pytest.mark.parametrize("run", ["reference", "strong"])
def test_grads_match_numpy_finite_differences(run, request):
    """Central differences of the float64 loss at a few entries of each of the 16 tensors:
    checks the gradients and that each lands at its llm.c offset."""
    _, config, params, state, _ = request.getfixturevalue(run)
    rng = np.random.default_rng(0)
    shapes = param_shapes(config)
    grads = Tensors(state["grads"], shapes)
    base = params.astype(np.float64)
    offset = 0
    for name in PARAM_NAMES:
        n = int(np.prod(shapes[name]))
        rows = V * C if name == "wte" else n  # only real vocab rows
        for i in rng.choice(rows, size=3, replace=False):
            h = 1e-5
            plus, minus = base.copy(), base.copy()
            plus[offset + i] += h
            minus[offset + i] -= h
            numeric = (gpt2_forward(config, plus, state["x"], state["y"])[1]
                       - gpt2_forward(config, minus, state["x"], state["y"])[1]) / (2 * h)
            stored = getattr(grads, name).ravel()[i]
            assert abs(stored - numeric) < 1e-5 + 1e-3 * abs(numeric), (name, i, stored, numeric)
        offset += n


def test_losses_decrease(reference):
    losses = reference[-1]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_model_option_reproduces_the_run(reference, tmp_path):
    """Starting from the written model.bin with the same seed gives the same files."""
    out = reference[0]
    _, params, state, losses = run_reference(tmp_path, "--seed", "7", "--model",
                                             str(out / "model.bin"), shape=[])
    np.testing.assert_array_equal(params, reference[2])
    np.testing.assert_array_equal(state["x"], reference[3]["x"])
    np.testing.assert_allclose(state["grads"], reference[3]["grads"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(losses, reference[4], rtol=1e-6)


def test_model_option_uses_the_checkpoint_weights(reference, tmp_path):
    _, config, params, _, _ = reference
    changed = params.copy()
    p = Tensors(changed, param_shapes(config))
    p.qkvw[0] *= 3.0
    p.wte[V:] = 1.0  # the padding is not part of the model: it must come out zero again
    write_checkpoint(tmp_path / "in.bin", config, changed)
    _, params2, state2, _ = run_reference(tmp_path / "out", "--seed", "7", "--model",
                                          str(tmp_path / "in.bin"), shape=[])
    expected = changed.copy()
    Tensors(expected, param_shapes(config)).wte[V:] = 0.0
    np.testing.assert_array_equal(params2, expected)
    logits, _ = gpt2_forward(config, params2, state2["x"], state2["y"])
    np.testing.assert_allclose(state2["logits"], logits, rtol=0, atol=1e-4)


def test_data_shard_batch(tmp_path):
    tokens = np.random.default_rng(3).integers(0, V, B * T + 10)
    write_shard(tmp_path / "shard.bin", tokens)
    _, _, state, _ = run_reference(tmp_path / "out", "--data", str(tmp_path / "shard.bin"))
    np.testing.assert_array_equal(state["x"], tokens[:B * T].reshape(B, T))
    np.testing.assert_array_equal(state["y"], tokens[1:B * T + 1].reshape(B, T))


def fails_with(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    fails_with(capsys, out + TINY + ["--seq-len", "17"], "--seq-len 17 is longer than the "
               "model's max_seq_len 16")
    write_shard(tmp_path / "short.bin", np.arange(B * T))
    fails_with(capsys, out + TINY + RUN + ["--data", str(tmp_path / "short.bin")],
               f"short.bin: holds {B * T} tokens")
    write_shard(tmp_path / "big.bin", np.full(B * T + 1, V))
    fails_with(capsys, out + TINY + RUN + ["--data", str(tmp_path / "big.bin")],
               f"big.bin: token 0 is id {V}, not below the model's vocab_size {V}")
    fails_with(capsys, out + ["--model", str(tmp_path / "nope.bin")], "nope.bin: no such file")
    fails_with(capsys, out + ["--model", str(tmp_path / "x.bin"), "--layers", "2"], "drop --layers")
    fails_with(capsys, out + TINY[:-4] + ["--channels", "33"], "not divisible")
    fails_with(capsys, out + TINY + ["--heads", "0"], "num_heads = 0 (must be positive)")  # GPT2Config's words
    fails_with(capsys, out + TINY + ["--steps", "0"], "--steps must be at least 1")
    assert not (tmp_path / "out").exists()


def test_missing_torch_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == NO_TORCH
