"""llmnb-sample: streams the tokens generate() samples (same seed, same tokens), greedy top-k 1
equals the argmax of the full forward, the CUDA path samples what the CPU path does, bad input
is one clear line."""
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmnb import sample
from llmnb.config import GPT2Config
from llmnb.formats import write_checkpoint
from llmnb.generate import generate
from llmnb.model import GPT2, init_params
from llmnb.rand import Rng
from llmnb.tokenizer import Tokenizer
from optional import needs_numba_cuda

ROOT = Path(__file__).resolve().parent.parent
CFG = GPT2Config(max_seq_len=24, vocab_size=50257, padded_vocab_size=50304, num_layers=2, num_heads=2,
                 channels=16)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "m.bin"
    write_checkpoint(path, CFG, init_params(CFG, seed=4) * 6)  # sharp enough to say something
    return path


@pytest.fixture(scope="module")
def tok():
    try:
        return Tokenizer.tiktoken()
    except RuntimeError as e:
        pytest.skip(str(e))


class Recorder(io.StringIO):
    """stdout that counts its flushes: streaming means one flush per token."""
    flushes = 0

    def flush(self):
        self.flushes += 1


def run(model_file, tmp_path, *argv):
    out, err = Recorder(), io.StringIO()
    args = sample.build_parser().parse_args(["--model", str(model_file), "--data-dir", str(tmp_path), *argv])
    new = sample.run(args, out=out, err=err)
    return new, out, err.getvalue()


def test_streams_the_tokens_generate_samples(model_file, tmp_path, tok):
    prompt = "The king said"
    new, out, err = run(model_file, tmp_path, "--prompt", prompt, "-g", "11", "--seed", "42", "--top-k", "50",
                        "--temperature", "0.8")
    ids = [tok.eot_token] + tok.encode(prompt)
    want = generate(GPT2(CFG, init_params(CFG, seed=4) * 6), ids, 10, Rng(42), temperature=0.8, top_k=50)
    assert new == want
    assert out.getvalue() == prompt + b"".join(map(tok.decode, want)).decode("utf-8", errors="replace") + "\n"
    assert out.flushes >= 10 + 1  # the prompt, then every token as it comes
    assert "tokens/s" in err and "10 tokens" in err


def test_bfloat16_samples_the_bf16_rounded_model(model_file, tmp_path, tok):
    from llmnb.formats import bf16_to_fp32, fp32_to_bf16
    new, _, err = run(model_file, tmp_path, "-g", "9", "--dtype", "bfloat16", "--seed", "9")
    rounded = bf16_to_fp32(fp32_to_bf16(init_params(CFG, seed=4) * 6))
    assert new == generate(GPT2(CFG, rounded), [tok.eot_token], 8, Rng(9))
    assert "bfloat16 on cpu" in err


def test_int8_samples_the_int8_decoder(model_file, tmp_path, tok):
    from llmnb.model import Decoder
    new, _, err = run(model_file, tmp_path, "-g", "9", "--dtype", "int8", "--seed", "9")
    decoder = Decoder(GPT2(CFG, init_params(CFG, seed=4) * 6), "int8")
    assert new == generate(decoder, [tok.eot_token], 8, Rng(9))
    assert "int8 on cpu" in err


def test_n_sequences_are_the_texts_of_seeds_seed_plus_i(model_file, tmp_path, tok):
    # -n 3 --seed 5: sequence i is -n 1 --seed 5+i, printed one after the other under a header;
    # the speed counts the tokens of all three
    new, out, err = run(model_file, tmp_path, "-n", "3", "--seed", "5", "-g", "8", "--prompt", "Hi", "--top-k", "20")
    assert len(new) == 3
    text = out.getvalue()
    for i, seq in enumerate(new):
        alone, alone_out, _ = run(model_file, tmp_path, "--seed", str(5 + i), "-g", "8", "--prompt", "Hi", "--top-k", "20")
        assert seq == alone
        assert f"--- sequence {i + 1} of 3 (seed {5 + i})\n" + alone_out.getvalue() in text
    assert "3 sequences x 7 tokens" in err and "tokens/s over the 3 sequences" in err


def test_top_k_1_is_the_argmax_of_the_full_forward(model_file, tmp_path, tok):
    new, _, _ = run(model_file, tmp_path, "-g", "7", "--top-k", "1")
    model = GPT2(CFG, init_params(CFG, seed=4) * 6)
    seq = [tok.eot_token]
    for _ in range(6):
        model.forward(np.array([seq]))
        seq.append(int(np.argmax(model.acts.logits[0, -1, :CFG.vocab_size])))
    assert new == seq[1:]


def test_stops_at_max_seq_len(model_file, tmp_path, tok):
    new, _, err = run(model_file, tmp_path, "-g", "101")
    assert len(new) == CFG.max_seq_len  # EOT + 23 forwards, the last sample needs no forward
    assert "max_seq_len 24" in err


@needs_numba_cuda
@pytest.mark.slow
def test_cuda_device_samples_what_the_cpu_samples(tmp_path):
    # on Numba's CUDA simulator (a small vocabulary keeps it fast)
    small = GPT2Config(max_seq_len=12, vocab_size=64, padded_vocab_size=128, num_layers=1, num_heads=2,
                       channels=16)
    write_checkpoint(tmp_path / "s.bin", small, init_params(small, seed=1) * 8)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    outs = []
    for device in ("cpu", "cuda"):
        r = subprocess.run([sys.executable, "-m", "llmnb.sample", "--model", str(tmp_path / "s.bin"), "-g", "9",
                            "--device", device, "--data-dir", str(tmp_path)], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "8 tokens" in r.stderr and r.stderr.rstrip().endswith(f"on {device})")
        outs.append(r.stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 1


def test_cuda_without_numba_cuda_is_one_clear_line(model_file, tmp_path, capsys, monkeypatch):
    # numba's built-in CUDA target would import, then fail at the first kernel launch in a traceback
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    assert sample.main(["--model", str(model_file), "--device", "cuda", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "needs NVIDIA's numba-cuda" in err and "llmnb[cuda]" in err


def test_bad_input_is_one_clear_line(model_file, tmp_path, capsys, tok):
    def error(*argv):
        assert sample.main(list(argv) + ["--data-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return err
    assert "nope.bin: no such file" in error("--model", str(tmp_path / "nope.bin"))
    (tmp_path / "bad.bin").write_bytes(b"\0" * 100)
    assert "bad.bin: too short" in error("--model", str(tmp_path / "bad.bin"))
    assert "max_seq_len" in error("--model", str(model_file), "--prompt", "word " * 40)
    with pytest.raises(SystemExit):
        sample.main(["--model", str(model_file), "--temperature", "0"])
    with pytest.raises(SystemExit):
        sample.main(["--model", str(model_file), "-n", "0"])
    with pytest.raises(SystemExit):
        sample.main(["--model", str(model_file), "--dtype", "int8", "--device", "cuda"])
    assert "--dtype int8 is for --device cpu" in capsys.readouterr().err


def test_g_counts_the_start_token_here_as_in_llmnb_train(model_file, tmp_path, tok):
    # one meaning of -g in both CLIs: llm.c's genT, the start (EOT) token counted; each help says so
    from llmnb.settings import build_parser as train_parser

    def g_help(parser):
        return " ".join(next(a.help for a in parser._actions if "-g" in a.option_strings).split())
    assert "counting the start token" in g_help(sample.build_parser()) and "genT" in g_help(sample.build_parser())
    assert "counting the start token" in g_help(train_parser()) and "genT" in g_help(train_parser())
    new, _, err = run(model_file, tmp_path, "-g", "5", "--prompt", "Hello")
    assert len(new) == 4  # new tokens: -g minus the start token, whatever the prompt's length


def test_weights_are_checked_as_llmnb_train_checks_them(tmp_path, capsys):
    # a diverged run's weights: one line, exit 2, in llmnb-sample as in llmnb-train (no EOT tokens)
    params = init_params(CFG, seed=4)
    params[[3, 50, 7000]] = [np.nan, np.inf, np.nan]
    write_checkpoint(tmp_path / "nan.bin", CFG, params)
    assert sample.main(["--model", str(tmp_path / "nan.bin"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nan.bin: 3 of its" in err and "NaN or inf" in err
    from llmnb.train import main as train
    from llmnb.formats import write_shard
    write_shard(tmp_path / "t.bin", np.arange(200) % 100)
    assert train(["-e", str(tmp_path / "nan.bin"), "-i", str(tmp_path / "t.bin"), "-j", str(tmp_path / "t.bin"),
                  "-o", str(tmp_path / "o"), "-b", "1", "-t", "8", "-x", "1", "--data-dir", str(tmp_path)]) == 2
    assert "nan.bin: 3 of its" in capsys.readouterr().err


def test_a_truncated_model_says_truncated_whatever_its_header_claims(tmp_path, capsys):
    # a header claiming a huge maxT on a cut file: "truncated", not a memory estimate for that shape
    path = tmp_path / "cut.bin"
    write_checkpoint(path, CFG, init_params(CFG, seed=4))
    raw = bytearray(path.read_bytes()[:5000])
    raw[8:12] = np.int32(10_000_000).tobytes()  # header[2]: maxT
    path.write_bytes(bytes(raw))
    from llmnb.train import main as train
    assert train(["-e", str(path), "-o", str(tmp_path / "o"), "-x", "1", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cut.bin: truncated" in err and "GiB" not in err
    assert sample.main(["--model", str(path), "--data-dir", str(tmp_path)]) == 2
    assert "cut.bin: truncated" in capsys.readouterr().err
