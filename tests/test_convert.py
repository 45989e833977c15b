"""llmnb-convert: a random Hugging Face GPT-2 saved locally (no network) converts to llm.c and
gives transformers' logits; an llm.c checkpoint exported to an HF folder loads in transformers
with llmnb's logits; the round trip keeps every weight; bad input is one clear line."""
import json
import os

import numpy as np
import pytest

from llmnb import convert
from llmnb.config import GPT2Config
from llmnb.formats import read_checkpoint, write_checkpoint, write_shard
from llmnb.model import GPT2, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

TOL = dict(rtol=1e-5, atol=2e-5)


def hf_model(V, C=24, L=2, NH=3, maxT=16, seed=0):
    """A random GPT2LMHeadModel with non-trivial biases and layernorms (HF inits those to 0 and 1)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=maxT, n_embd=C, n_layer=L, n_head=NH)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, t in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                t.add_(0.1 * torch.randn_like(t))
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def llmnb_logits(config, params, tokens):
    model = GPT2(config, params)
    model.forward(np.asarray(tokens))
    return model.acts.logits[..., :config.vocab_size].copy()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny"
    hf_model(V=100).save_pretrained(d)
    return d


def test_hf_to_llmc_gives_transformers_logits(hf_dir, tmp_path):
    out = tmp_path / "tiny.bin"
    assert convert.main(["--from-hf", str(hf_dir), "--out", str(out)]) == 0
    config, params = read_checkpoint(out)
    assert config == GPT2Config(max_seq_len=16, vocab_size=100, padded_vocab_size=128,
                                num_layers=2, num_heads=3, channels=24)
    tokens = np.random.default_rng(1).integers(0, 100, (2, 16))
    want = hf_logits(transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval(), tokens)
    np.testing.assert_allclose(llmnb_logits(config, params, tokens), want, **TOL)
    wte = params[:128 * 24].reshape(128, 24)
    assert not wte[100:].any()  # padded rows are zero, as llm.c's write_model pads


def test_llmc_to_hf_loads_in_transformers_with_llmnb_logits(tmp_path):
    config = GPT2Config(max_seq_len=16, vocab_size=100, padded_vocab_size=128, num_layers=2,
                        num_heads=4, channels=32)
    params = init_params(config, seed=5) * 4  # sharper than the 0.02 init
    params[:] += np.random.default_rng(2).normal(0, 0.05, params.shape).astype(np.float32)
    write_checkpoint(tmp_path / "m.bin", config, params)
    assert convert.main(["--model", str(tmp_path / "m.bin"), "--to-hf", str(tmp_path / "hf")]) == 0
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tokens = np.random.default_rng(3).integers(0, 100, (2, 16))
    np.testing.assert_allclose(hf_logits(model, tokens), llmnb_logits(config, params, tokens), **TOL)
    # and back: every weight as it was (the padded rows of wte are zero again)
    assert convert.main(["--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back.bin")]) == 0
    config2, params2 = read_checkpoint(tmp_path / "back.bin")
    assert config2 == config
    wte = params.copy()[:128 * 32].reshape(128, 32)
    wte[100:] = 0
    expected = params.copy()
    expected[:128 * 32] = wte.reshape(-1)
    np.testing.assert_array_equal(params2, expected)


def test_gpt2_vocabulary_gets_a_tokenizer_that_encodes_like_tiktoken(tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    try:
        files = convert.gpt2_tokenizer_files()
    except RuntimeError as e:
        pytest.skip(str(e))  # tiktoken's gpt2 files are not cached here and there is no network
    config = GPT2Config(max_seq_len=8, vocab_size=50257, padded_vocab_size=50304, num_layers=1,
                        num_heads=1, channels=8)
    write_checkpoint(tmp_path / "m.bin", config, init_params(config, seed=0))
    assert convert.main(["--model", str(tmp_path / "m.bin"), "--to-hf", str(tmp_path / "hf")]) == 0
    assert set(files) <= set(os.listdir(tmp_path / "hf"))
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello world, it's llmnb!\n  Ünïcode too <|endoftext|>"
    assert tok.encode(text) == tiktoken.get_encoding("gpt2").encode(text, allowed_special="all")


def test_train_a_converted_model_and_convert_back(hf_dir, tmp_path):
    """The issue's end to end: HF -> llm.c -> llmnb-train a few steps -> HF, equal logits."""
    from llmnb.train import main as train
    src = tmp_path / "hf_src"
    hf_model(V=50257, C=32, L=1, NH=2, maxT=32, seed=7).save_pretrained(src)
    assert convert.main(["--from-hf", str(src), "--out", str(tmp_path / "init.bin")]) == 0
    stream = np.tile(np.random.default_rng(0).integers(0, 300, 37), 40)
    write_shard(tmp_path / "train.bin", stream[:1200])
    write_shard(tmp_path / "val.bin", stream[1200:])
    out = tmp_path / "out"
    assert train(["-i", str(tmp_path / "train.bin"), "-j", str(tmp_path / "val.bin"),
                  "-e", str(tmp_path / "init.bin"), "-o", str(out), "-b", "2", "-t", "16", "-x", "3",
                  "-v", "0", "-s", "0", "--data-dir", str(tmp_path / "data")]) == 0
    config, params = read_checkpoint(out / "model.bin")
    _, init = read_checkpoint(tmp_path / "init.bin")
    assert not np.array_equal(params, init)  # it trained
    assert convert.main(["--model", str(out / "model.bin"), "--to-hf", str(tmp_path / "hf_out")]) == 0
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf_out").eval()
    tokens = stream[None, :32]
    np.testing.assert_allclose(hf_logits(model, tokens), llmnb_logits(config, params, tokens), **TOL)


def test_bad_input_is_one_clear_line(hf_dir, tmp_path, capsys):
    def error(*argv):
        assert convert.main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return err
    bad = tmp_path / "bad"
    bad.mkdir()
    assert "config.json: no such file" in error("--from-hf", str(bad), "--out", str(tmp_path / "x.bin"))
    cfg = json.loads((hf_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, activation_function="relu")))
    assert "activation_function 'relu'" in error("--from-hf", str(bad), "--out", str(tmp_path / "x.bin"))
    (bad / "config.json").write_text(json.dumps(dict(cfg, n_embd=48)))
    (bad / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    assert "has shape" in error("--from-hf", str(bad), "--out", str(tmp_path / "x.bin"))
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes()[:500])
    assert "model.safetensors: cannot read" in error("--from-hf", str(bad), "--out", str(tmp_path / "x.bin"))
    assert not (tmp_path / "x.bin").exists()
    assert "no such file" in error("--model", str(tmp_path / "nope.bin"), "--to-hf", str(tmp_path / "o"))


def _train_argv(tmp_path, init):
    stream = np.tile(np.random.default_rng(0).integers(0, 300, 37), 20)
    write_shard(tmp_path / "train.bin", stream[:600])
    write_shard(tmp_path / "val.bin", stream[600:])
    return ["-i", str(tmp_path / "train.bin"), "-j", str(tmp_path / "val.bin"), "-e", init,
            "-o", str(tmp_path / "out"), "-b", "1", "-t", "8", "-x", "1", "-v", "0", "-s", "0",
            "--data-dir", str(tmp_path / "data")]


def test_train_e_gpt2_converts_from_hugging_face_when_the_starter_pack_is_absent(tmp_path, monkeypatch, capsys):
    from llmnb.train import main as train
    hub = tmp_path / "hub_gpt2"
    hf_model(V=50257, C=32, L=1, NH=2, maxT=16, seed=9).save_pretrained(hub)
    fetched = []
    monkeypatch.setattr(convert, "download_hf", lambda name, log: fetched.append(name) or str(hub))
    assert train(_train_argv(tmp_path, "gpt2")) == 0
    assert fetched == ["gpt2"]
    assert "converted Hugging Face's gpt2" in capsys.readouterr().out
    config, params = read_checkpoint(tmp_path / "data" / "gpt2_124M.bin")  # train_gpt2.py's name
    want_config, want = convert.read_hf(str(hub))
    assert config == want_config and np.array_equal(params, want)
    assert train(_train_argv(tmp_path, "gpt2")) == 0  # the second run finds the file
    assert fetched == ["gpt2"]


def test_train_e_gpt2_offline_is_one_line_then_a_fresh_d12(tmp_path, monkeypatch, capsys):
    from llmnb.train import main as train
    def offline(name, log):
        raise convert.ConvertError(f"could not download {name} from the Hugging Face hub: no network")
    monkeypatch.setattr(convert, "download_hf", offline)
    tiny = GPT2Config(max_seq_len=16, vocab_size=50257, padded_vocab_size=50304, num_layers=1,
                      num_heads=1, channels=16)
    monkeypatch.setattr(GPT2Config, "depth", classmethod(lambda cls, L, **kw: tiny))
    assert train(_train_argv(tmp_path, "gpt2-medium")) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "gpt2-medium" in line]
    assert len(lines) == 1 and "no network" in lines[0] and "fresh d12" in lines[0]
    assert read_checkpoint(tmp_path / "out" / "model.bin")[0] == tiny


def test_the_hubs_gpt2_layout_converts_too(hf_dir, tmp_path):
    # HF's own gpt2 files name tensors without "transformer." and carry the causal-mask buffers
    from safetensors.numpy import load_file, save_file
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(hf_dir / "model.safetensors").items()}
    for l in range(2):
        tensors[f"h.{l}.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), dtype=np.float32))
    save_file(tensors, hub / "model.safetensors", metadata={"format": "pt"})
    assert convert.read_hf(str(hub))[1].tolist() == convert.read_hf(str(hf_dir))[1].tolist()
    tensors["h.0.mlp.c_extra.weight"] = np.zeros((2, 2), dtype=np.float32)
    save_file(tensors, hub / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(convert.ConvertError, match="no place for: h.0.mlp.c_extra.weight"):
        convert.read_hf(str(hub))


def test_a_bfloat16_hf_model_converts_exactly(tmp_path):
    # llm.c's export_hf.py writes bfloat16 by default; NumPy has no bfloat16, so these are read apart
    model = hf_model(V=100, seed=3).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    config, params = convert.read_hf(str(tmp_path / "bf16"))
    model32 = model.to(torch.float32)
    model32.save_pretrained(tmp_path / "f32")
    assert np.array_equal(params, convert.read_hf(str(tmp_path / "f32"))[1])


def test_from_hf_a_missing_folder_is_named_not_looked_up_on_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(convert, "download_hf", lambda name, log: pytest.fail(f"asked the hub for {name}"))
    for source in ("./no_such_folder", str(tmp_path / "nope"), "a/b/c"):
        assert convert.main(["--from-hf", source, "--out", str(tmp_path / "x.bin")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{source}: no such folder" in err
    (tmp_path / "f.bin").write_bytes(b"x")
    assert convert.main(["--from-hf", str(tmp_path / "f.bin"), "--out", str(tmp_path / "x.bin")]) == 2
    assert "f.bin: a file, not a folder" in capsys.readouterr().err

