"""llmnb-train end to end on tiny models and synthetic shards: loss goes down, resume equals an
uninterrupted run, gradient accumulation equals the big batch, and bad input gives one clear line."""
import json
import os

import numpy as np
import pytest

from llmnb import checkpoint
from llmnb.config import GPT2Config
from llmnb.formats import read_checkpoint, write_checkpoint, write_shard
from llmnb.model import GPT2, init_params
from llmnb.train import main

TINY = GPT2Config(max_seq_len=32, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=2, channels=32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Shards of a repetitive token stream (learnable fast) and a tiny random model file."""
    d = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 300, 37)
    stream = np.tile(pattern, 200)
    write_shard(d / "tiny_train_000.bin", stream[:3000])
    write_shard(d / "tiny_train_001.bin", stream[3000:6000])
    write_shard(d / "tiny_val.bin", stream[6000:7000])
    write_checkpoint(d / "tiny.bin", TINY, init_params(TINY, seed=3))
    return d


def run(workdir, out, *extra):
    argv = ["-i", str(workdir / "tiny_train_*.bin"), "-j", str(workdir / "tiny_val.bin"),
            "-e", str(workdir / "tiny.bin"), "-o", str(out), "-b", "2", "-t", "16",
            "-l", "3e-3", "--data-dir", str(workdir / "data"), *extra]
    return main(argv)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_a_short_run_learns_and_writes_its_outputs(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(workdir, out, "-x", "30", "-v", "10", "-m", "2", "-s", "15", "-g", "8") == 0
    text = capsys.readouterr().out
    assert "val loss" in text and "generating:" in text and "MFU" in text
    log = read_log(out)
    train = [r["train_loss"] for r in log if r["train_loss"] is not None]
    val = [r["val_loss"] for r in log if r["val_loss"] is not None]
    assert len(train) == 30 and len(val) == 4  # steps 0, 10, 20 and the last
    assert train[-1] < 0.7 * train[0] and val[-1] < val[0]
    assert set(log[0]) >= {"step", "train_loss", "val_loss", "lr", "ms"}
    config, params = read_checkpoint(out / "model.bin")
    assert config == TINY and not np.array_equal(params, init_params(TINY, seed=3))
    assert (out / "loss.svg").read_text().startswith("<svg")


def test_resume_continues_exactly_like_an_uninterrupted_run(workdir, tmp_path, monkeypatch):
    common = ("-x", "8", "-v", "3", "-m", "1", "-s", "0", "--shuffle", "--wd", "0.1", "--warmup", "2",
              "--lr-min", "1e-4", "-n", "5")
    full = tmp_path / "full"
    assert run(workdir, full, *common) == 0
    # the same run, interrupted by Ctrl-C during step 6 (after the checkpoint at step 5)
    from llmnb.train import Run
    real_step = Run.train_step

    def interrupted(self, step):
        if step == 6:
            raise KeyboardInterrupt
        return real_step(self, step)
    part = tmp_path / "part"
    with monkeypatch.context() as m:
        m.setattr(Run, "train_step", interrupted)
        assert run(workdir, part, *common) == 130
    assert checkpoint.latest(part) == 5
    assert run(workdir, part, *common, "-y", "1") == 0
    a = [(r["train_loss"], r["val_loss"]) for r in read_log(full)]
    b = [(r["train_loss"], r["val_loss"]) for r in read_log(part)]
    assert len(a) == 9 and a == b  # bit for bit: same data position, same AdamW state, same schedule
    np.testing.assert_array_equal(read_checkpoint(full / "model.bin")[1], read_checkpoint(part / "model.bin")[1])


def test_grad_accumulation_equals_the_big_batch():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 300, (4, 16)), rng.integers(0, 300, (4, 16))
    params = init_params(TINY, seed=4)
    big = GPT2(TINY, params)
    big.forward(x, y)
    big.zero_grad()
    big.backward()
    acc = GPT2(TINY, params)
    for micro in range(2):
        acc.forward(x[2 * micro:2 * micro + 2], y[2 * micro:2 * micro + 2])
        acc.zero_grad(params=(micro == 0))
        acc.backward(grad_scale=0.5)
    np.testing.assert_allclose(acc.grads.memory, big.grads.memory, rtol=1e-4, atol=1e-7)


def test_bad_input_is_one_clear_line(workdir, tmp_path, capsys):
    assert run(workdir, tmp_path / "o", "-e", str(tmp_path / "missing.bin")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.bin: no such model file" in err[0]
    assert run(workdir, tmp_path / "o", "-i", str(tmp_path / "nothing_*.bin")) == 2
    assert "no files match" in capsys.readouterr().err
    assert run(workdir, tmp_path / "o", "-t", "33") == 2
    assert "exceeds the model's max_seq_len=32" in capsys.readouterr().err
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 100)
    assert run(workdir, tmp_path / "o", "-e", str(bad)) == 2
    err = capsys.readouterr().err
    assert "bad.bin" in err and "Traceback" not in err


def test_missing_default_init_falls_back_to_a_fresh_model_offline(workdir, tmp_path, monkeypatch, capsys):
    from llmnb import data
    def no_network(url, path, **kw):
        raise data.DownloadError(f"download of {url} failed: no network")
    monkeypatch.setattr(data, "download", no_network)
    monkeypatch.chdir(tmp_path)
    argv = ["-i", str(workdir / "tiny_train_*.bin"), "-j", str(workdir / "tiny_val.bin"), "-o", "o",
            "-b", "1", "-t", "8", "-x", "1", "-v", "0", "-s", "0", "--data-dir", "d"]
    # a "d12" as small as TINY, to keep the test fast
    monkeypatch.setattr(GPT2Config, "depth", classmethod(lambda cls, L, **kw: TINY))
    assert main(argv) == 0
    assert "training a fresh d12 model instead" in capsys.readouterr().out


def test_sampling_from_a_model_with_a_small_vocabulary(tmp_path, capsys):
    # GPT-2's EOT (50256) is not a token of a 300-token model: samples start from its last token
    # (its ids are GPT-2 tokens, so they still decode); a --prompt it cannot represent is refused
    # before training starts
    small = GPT2Config(max_seq_len=16, vocab_size=300, padded_vocab_size=384, num_layers=1, num_heads=2,
                       channels=16)
    write_checkpoint(tmp_path / "small.bin", small, init_params(small, seed=1))
    rng = np.random.default_rng(2)
    write_shard(tmp_path / "tr.bin", rng.integers(0, 300, 500))
    argv = ["-e", str(tmp_path / "small.bin"), "-i", str(tmp_path / "tr.bin"), "-j", str(tmp_path / "tr.bin"),
            "-o", str(tmp_path / "o"), "-b", "1", "-t", "8", "-x", "1", "-v", "0", "-s", "1", "-g", "5",
            "--data-dir", str(tmp_path / "d")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "generating:\n---\n" in out and "wrote" in out
    assert main(argv + ["--prompt", "Hello world"]) == 2
    assert "outside the model's vocabulary" in capsys.readouterr().err


def test_read_log_skips_a_line_cut_by_a_kill(tmp_path):
    from llmnb.train import read_log
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 0, "train_loss": 5.0}\n{"step": 1, "train_lo')
    assert read_log(path) == [{"step": 0, "train_loss": 5.0}]
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="not JSON"):
        read_log(path)


def samples_printed(text):
    """The token ids of each sample printed (tokenizer off: samples are printed as ids)."""
    return [block.split() for block in text.split("generating:\n---\n")[1:]
            for block in [block.split("\n---")[0]]]


@pytest.fixture
def no_tokenizer(monkeypatch):
    from llmnb import tokenizer

    def missing(*a, **kw):
        raise OSError("no tokenizer in this test")
    monkeypatch.setattr(tokenizer, "load_tokenizer", missing)


def test_printing_is_llmcs_gen_t_and_num_batches(workdir, tmp_path, capsys, no_tokenizer):
    # -g counts the start token as llm.c's genT (64 -> 63 new tokens); num_batches is llm.c's
    # num_tokens / (B*T): 6000 // 32 = 187 for the train shards, which serve 2 * (2999 // 32) = 186
    assert run(workdir, tmp_path / "o", "-x", "2", "-v", "2", "-m", "1", "-s", "2", "-g", "8") == 0
    text = capsys.readouterr().out
    assert "train dataset num_batches: 187\n" in text and "val dataset num_batches: 31\n" in text
    assert [len(s) for s in samples_printed(text)] == [7]


def test_training_shuffles_like_llmc_by_default(workdir, tmp_path, capsys):
    # the default: llm.c's shuffle (seed 42), written into llm.c's state file with its tail;
    # --no-shuffle reads in order; --shuffle is accepted (the default)
    from llmnb.train import build_parser
    assert build_parser().parse_args([]).shuffle is True
    assert build_parser().parse_args(["--shuffle"]).shuffle is True
    assert build_parser().parse_args(["--no-shuffle"]).shuffle is False
    from llmnb.data import DataLoader
    llmc = DataLoader(str(workdir / "tiny_train_*.bin"), 2, 16, shuffle=True, seed=42)
    ordered = DataLoader(str(workdir / "tiny_train_*.bin"), 2, 16)
    model = GPT2(TINY, init_params(TINY, seed=3))
    for flags, loader in (((), llmc), (("--no-shuffle",), ordered)):
        out = tmp_path / ("s" if not flags else "n")
        assert run(workdir, out, "-x", "1", "-v", "0", "-s", "0", "-n", "1", *flags) == 0
        first = read_log(out)[0]["train_loss"]
        assert first == pytest.approx(model.forward(*loader.next_batch()), rel=1e-6)
        state = checkpoint.read_state(out / "state_00000001_00000.bin", model.num_parameters)
        assert state["shuffle"] is (not flags) and state["shuffle_tail"] == loader.llmc_state_tail()


def test_a_resumed_run_samples_the_same_text(workdir, tmp_path, monkeypatch, capsys, no_tokenizer):
    # a sample at the checkpoint step: the resumed run draws it again from the sampler state of
    # before it, then goes on like the uninterrupted run
    common = ("-x", "10", "-v", "0", "-s", "5", "-g", "6", "-n", "5")
    assert run(workdir, tmp_path / "full", *common) == 0
    full = samples_printed(capsys.readouterr().out)
    from llmnb.train import Run
    real_step = Run.train_step

    def interrupted(self, step):
        if step == 6:
            raise KeyboardInterrupt
        return real_step(self, step)
    with monkeypatch.context() as m:
        m.setattr(Run, "train_step", interrupted)
        assert run(workdir, tmp_path / "part", *common) == 130
    before = samples_printed(capsys.readouterr().out)
    assert run(workdir, tmp_path / "part", *common, "-y", "1") == 0
    after = samples_printed(capsys.readouterr().out)
    assert len(full) == 2 and full[0] != full[1]
    assert before == full[:1] and after == full
