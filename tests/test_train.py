"""llmnb-train end to end on tiny models and synthetic shards: loss goes down, resume equals an
uninterrupted run, gradient accumulation equals the big batch, and bad input gives one clear line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llmnb import rundir
from llmnb.config import GPT2Config, Tensors, param_shapes
from llmnb.formats import read_checkpoint, read_optimizer_state, write_checkpoint, write_shard
from llmnb.model import COMPILE_CONFIG, GPT2, init_params
from llmnb.train import main
from optional import needs_gpt2_encoding

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert rundir.latest(part) == 5
    assert run(workdir, part, *common, "-y", "1") == 0
    a = [(r["train_loss"], r["val_loss"]) for r in read_log(full)]
    b = [(r["train_loss"], r["val_loss"]) for r in read_log(part)]
    assert len(a) == 9 and a == b  # bit for bit: same data position, same AdamW state, same schedule
    # llm.c's main.log too: the lines written after the checkpoint, before Ctrl-C, are not repeated
    assert (part / "main.log").read_text() == (full / "main.log").read_text()
    np.testing.assert_array_equal(read_checkpoint(full / "model.bin")[1], read_checkpoint(part / "model.bin")[1])


LLMC_FILES = ("model_00000003.bin", "state_00000003_00000.bin", "DONE_00000003", "main.log")


def llmc_run_dir(full, out, model_dtype="float32"):
    """What llm.c's train_gpt2.cu leaves in -o at a checkpoint of step 3: model_N.bin (bf16, version
    5, in its default build), state_N_00000.bin (m, v, the fp32 master weights, the shuffle state),
    DONE_N and main.log; no state_N.json, no log.jsonl. Made from an llmnb run's files (their bytes
    are llm.c's layouts: tests/test_formats.py, tests/test_llmc_compat.py)."""
    import shutil
    out.mkdir()
    for name in LLMC_FILES:
        shutil.copy(full / name, out / name)
    if model_dtype == "bfloat16":
        config, params = read_checkpoint(full / LLMC_FILES[0])
        write_checkpoint(out / LLMC_FILES[0], config, params, dtype="bfloat16")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model_dtype", ["float32", "bfloat16"])
def test_resume_of_llmcs_own_checkpoint_continues_exactly(workdir, tmp_path, capsys, model_dtype):
    # -y 1 in llm.c's run directory: the weights from the master weights (its bf16 model file is not
    # read for them, as llm.c's resume), AdamW's m and v, the shuffled loader's state from the
    # state file; the epoch from the step; the log before it from main.log
    common = ("-x", "6", "-v", "3", "-m", "1", "-s", "0", "--wd", "0.1", "--warmup", "2", "-n", "3")
    full = tmp_path / "full"
    assert run(workdir, full, *common) == 0
    llmc = llmc_run_dir(full, tmp_path / "llmc", model_dtype)
    capsys.readouterr()
    assert run(workdir, llmc, *common, "-y", "1") == 0
    assert "resuming llm.c's checkpoint of step 3" in capsys.readouterr().out
    a = [(r["step"], r["train_loss"], r["val_loss"]) for r in read_log(full)]
    b = [(r["step"], r["train_loss"], r["val_loss"]) for r in read_log(llmc)]
    assert len(b) == 7 and b[3:] == a[3:]   # bit for bit from the checkpoint on
    for (_, la, va), (_, lb, vb) in zip(a[:3], b[:3]):   # before it: main.log's 4 decimals
        assert lb == pytest.approx(la, abs=5e-5) and (va is None) == (vb is None)
    np.testing.assert_array_equal(read_checkpoint(full / "model.bin")[1], read_checkpoint(llmc / "model.bin")[1])
    assert (llmc / "main.log").read_text() == (full / "main.log").read_text()
    # the directory is llmnb's run from here: its checkpoint of step 6 resumes as llmnb's own
    assert run(workdir, llmc, *common[2:], "-x", "8", "-y", "1") == 0
    assert [r["step"] for r in read_log(llmc) if r["train_loss"] is not None] == list(range(8))


@pytest.mark.slow
def test_resume_of_llmcs_checkpoint_in_its_second_epoch(workdir, tmp_path):
    # -d 2048 at B=1 T=8: 256 batches a step, 748 an epoch: the checkpoint of step 3 (768 batches)
    # is 20 batches into epoch 1, which llm.c's state file does not say: found from the step
    common = (*QUICK, "-d", "2048", "-x", "5", "-n", "3")
    full = tmp_path / "full"
    assert run(workdir, full, *common) == 0
    llmc = llmc_run_dir(full, tmp_path / "llmc")
    assert run(workdir, llmc, *common, "-y", "1") == 0
    assert [r["train_loss"] for r in read_log(llmc)][3:] == [r["train_loss"] for r in read_log(full)][3:]
    assert json.loads((llmc / "state_00000005.json").read_text())["train_loader"]["epoch"] == 1


def test_resume_of_llmcs_checkpoint_with_other_flags_or_no_log_is_one_line(workdir, tmp_path, capsys):
    full = tmp_path / "full"
    assert run(workdir, full, *QUICK, "-x", "3", "-n", "3") == 0
    llmc = llmc_run_dir(full, tmp_path / "llmc")
    capsys.readouterr()
    assert run(workdir, llmc, *QUICK, "-b", "2", "-x", "4", "-y", "1") == 2   # llm.c ran with -b 1
    assert "state_00000003_00000.bin" in one_error_line(capsys)
    assert run(workdir, llmc, *QUICK, "--no-shuffle", "-x", "4", "-y", "1") == 2
    assert "state_00000003_00000.bin" in one_error_line(capsys)
    state = llmc / "state_00000003_00000.bin"
    good = state.read_bytes()
    state.write_bytes(good[:8] + np.int32(0).tobytes() + good[12:])   # header[2]: 0 processes
    assert run(workdir, llmc, *QUICK, "-x", "4", "-y", "1") == 2
    assert "state_00000003_00000.bin: its header says rank 0 of 0 processes" in one_error_line(capsys)
    state.write_bytes(good)
    (llmc / "main.log").unlink()
    assert run(workdir, llmc, *QUICK, "-x", "4", "-y", "1") == 2
    err = one_error_line(capsys)
    assert "main.log: missing" in err and not (llmc / "log.jsonl").exists()


@pytest.mark.slow
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


@pytest.mark.slow
def test_missing_default_init_falls_back_to_a_fresh_model_offline(workdir, tmp_path, monkeypatch, capsys):
    from llmnb import download
    def no_network(url, path, **kw):
        raise download.DownloadError(f"download of {url} failed: no network")
    monkeypatch.setattr(download, "download", no_network)
    monkeypatch.chdir(tmp_path)
    argv = ["-i", str(workdir / "tiny_train_*.bin"), "-j", str(workdir / "tiny_val.bin"), "-o", "o",
            "-b", "1", "-t", "8", "-x", "1", "-v", "0", "-s", "0", "--data-dir", "d"]
    # a "d12" as small as TINY, to keep the test fast
    monkeypatch.setattr(GPT2Config, "depth", classmethod(lambda cls, L, **kw: TINY))
    assert main(argv) == 0
    assert "training a fresh d12 model instead" in capsys.readouterr().out


@needs_gpt2_encoding
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
    from llmnb.rundir import read_log
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 0, "train_loss": 5.0}\n{"step": 1, "train_lo')
    assert read_log(path) == [{"step": 0, "train_loss": 5.0}]
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="not JSON"):
        read_log(path)


# ----------------------------------------------------------------------------------------------
# issue 9: no way to lose or poison a run

QUICK = ("-b", "1", "-t", "8", "-v", "0", "-s", "0")


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def strict_json(line):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(line, parse_constant=refuse)


def test_a_second_run_into_the_same_directory_fails_at_once(workdir, tmp_path, capsys):
    from llmnb.rundir import RunDir
    out = tmp_path / "out"
    held = RunDir(str(out))  # as another run holds it (flock: per open file, so in-process too)
    held.lock()
    try:
        assert run(workdir, out, *QUICK, "-x", "1") == 2
        err = one_error_line(capsys)
        assert str(out) in err and f"pid {os.getpid()}" in err
        assert not (out / "log.jsonl").exists()
    finally:
        held.unlock()
    assert run(workdir, out, *QUICK, "-x", "1") == 0  # the lock goes with its holder


@pytest.mark.slow
def test_a_fresh_run_refuses_an_earlier_runs_checkpoints_or_overwrites_them(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(workdir, out, *QUICK, "-x", "2", "-n", "1") == 0
    before = rundir.files(out)
    assert len(before) == 8 and rundir.latest(out) == 2
    capsys.readouterr()
    assert run(workdir, out, *QUICK, "-x", "1") == 2
    err = one_error_line(capsys)
    assert str(out) in err and "-y 1" in err and "--overwrite" in err
    assert rundir.files(out) == before
    assert run(workdir, out, *QUICK, "-x", "1", "--overwrite") == 0
    assert rundir.files(out) == [] and len(read_log(out)) == 1
    with pytest.raises(SystemExit):
        run(workdir, out, *QUICK, "-x", "1", "--overwrite", "-y", "1")


@pytest.mark.parametrize("flag,value", [("-l", "nan"), ("-l", "-0.001"), ("--wd", "nan"), ("--wd", "inf"),
                                        ("--grad-clip", "nan"), ("--lr-min", "-1"), ("--temperature", "inf")])
def test_non_finite_or_negative_hyperparameters_are_refused(workdir, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        run(workdir, tmp_path / "o", *QUICK, "-x", "1", flag, value)
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_divergence_stops_at_once_and_writes_nothing_non_finite(workdir, tmp_path, capsys):
    # -l 1e10 blows the weights up within a few steps: the run must stop with one line naming the
    # step, every checkpoint it wrote must be finite, no final model, and the log strict JSON
    out = tmp_path / "out"
    assert run(workdir, out, "-b", "1", "-t", "8", "-s", "0", "-v", "1", "-m", "1", "-n", "1",
               "-x", "20", "-l", "1e10") == 2
    err = one_error_line(capsys)
    assert "diverged" in err and "step" in err
    assert not (out / "model.bin").exists()
    for step in range(1, 21):
        if (out / f"DONE_{step:08d}").exists():
            assert np.isfinite(read_checkpoint(out / f"model_{step:08d}.bin")[1]).all()
    with open(out / "log.jsonl") as f:
        records = [strict_json(line) for line in f]
    assert any(r["val_loss"] is None and r["train_loss"] is None for r in records)  # the NaN, as null


@pytest.mark.slow
def test_a_non_finite_gradient_stops_before_the_update(workdir, tmp_path, capsys, monkeypatch):
    from llmnb import optim
    real = optim.clip_grad_norm
    calls = []

    def poisoned(model, max_norm):  # step 3's gradient holds a NaN
        if model.config == COMPILE_CONFIG:
            return real(model, max_norm)   # (a first run's compile_kernels, on its tiny model: not a step)
        calls.append(1)
        if len(calls) == 3:
            model.grads.memory[5] = np.nan
        return real(model, max_norm)
    monkeypatch.setattr(optim, "clip_grad_norm", poisoned)
    updates = []
    real_update = GPT2.update
    monkeypatch.setattr(GPT2, "update", lambda self, *a, **k: (
        updates.append(1) if self.config != COMPILE_CONFIG else None, real_update(self, *a, **k)))
    out = tmp_path / "out"
    assert run(workdir, out, *QUICK, "-x", "5", "-n", "1") == 2
    err = one_error_line(capsys)
    assert "diverged at step 3" in err and "grad norm nan" in err
    assert len(updates) == 2 and rundir.latest(out) == 2


def test_outlier_detector_is_a_z_score_over_the_last_64_values():
    from llmnb.outlier import OutlierDetector
    rng = np.random.default_rng(5)
    xs = rng.normal(3.0, 0.5, 300)
    xs[200] = 40.0  # a spike
    det = OutlierDetector()
    zs = [det.update(x) for x in xs]
    assert all(np.isnan(zs[:64]))  # the window fills first
    for i in range(64, 300):
        win = xs[i - 63:i + 1]  # float64 reference, the window including the new value
        assert zs[i] == pytest.approx((xs[i] - win.mean()) / win.std(), rel=1e-9, abs=1e-9)
    assert zs[200] > 7 and max(abs(z) for i, z in enumerate(zs[64:], 64) if i != 200) < 7


@pytest.mark.slow
def test_the_step_line_and_log_carry_the_grad_norm_and_z_scores(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(workdir, out, "-b", "1", "-t", "4", "-v", "0", "-s", "0", "-x", "66") == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step")]
    # train_gpt2.cu's layout: "loss 5.123456 (+0.12z)| norm 1.2345 (+0.34z)| lr ..." (no z while the window fills)
    assert "| norm " in lines[0] and "z)" not in lines[0]
    assert "z)" not in lines[63] and "z)| norm" in lines[64] and lines[64].count("z)|") == 2
    log = read_log(out)
    assert log[63]["loss_z"] is None and isinstance(log[64]["loss_z"], float)
    assert all(r["grad_norm"] > 0 for r in log[:66])


def corrupt_copy(src, dst, name, edit):
    import shutil
    shutil.copytree(src, dst)
    path = dst / name
    path.write_bytes(edit(path.read_bytes()))
    return dst


@pytest.fixture(scope="module")
def checkpointed(workdir, tmp_path_factory):
    """An output dir with one checkpoint, at step 2."""
    out = tmp_path_factory.mktemp("ckpt") / "out"
    assert run(workdir, out, *QUICK, "-x", "2", "-n", "2") == 0
    return out


STATE_JSON_EDITS = {
    "invalid JSON": lambda b: b[:-5],
    "not UTF-8": lambda b: b"\xff\xfe" + b,
    "a list": lambda b: b"[1]",
    "no train_loader": lambda b: json.dumps({k: v for k, v in json.loads(b).items()
                                             if k != "train_loader"}).encode(),
    "rng_state a string": lambda b: json.dumps(dict(json.loads(b), rng_state="x")).encode(),
    "loader epoch a list": lambda b: json.dumps(dict(json.loads(b), train_loader=dict(
        json.loads(b)["train_loader"], epoch=[1]))).encode(),
    "loader sample a string": lambda b: json.dumps(dict(json.loads(b), train_loader=dict(
        json.loads(b)["train_loader"], sample="x"))).encode(),
    "loader without sample": lambda b: json.dumps(dict(json.loads(b), train_loader={
        k: v for k, v in json.loads(b)["train_loader"].items() if k != "sample"})).encode(),
}


@pytest.mark.parametrize("what", list(STATE_JSON_EDITS))
def test_a_damaged_state_json_is_one_line(workdir, checkpointed, tmp_path, capsys, what):
    out = corrupt_copy(checkpointed, tmp_path / "out", "state_00000002.json", STATE_JSON_EDITS[what])
    capsys.readouterr()
    assert run(workdir, out, *QUICK, "-x", "3", "-y", "1") == 2
    assert "state_00000002.json" in one_error_line(capsys)


LOG_EDITS = {"an empty object": (b"{}\n", "line 1"), "a list": (b"[1]\n", "line 1"),
             "not UTF-8": (b"\xff\xfe{}\n", "not UTF-8"), "a string step": (b'{"step": "1"}\n', "line 1")}


@pytest.mark.parametrize("what", list(LOG_EDITS))
def test_a_damaged_log_is_one_line(workdir, checkpointed, tmp_path, capsys, what):
    prefix, says = LOG_EDITS[what]
    out = corrupt_copy(checkpointed, tmp_path / "out", "log.jsonl", lambda b: prefix + b)
    capsys.readouterr()
    assert run(workdir, out, *QUICK, "-x", "3", "-y", "1") == 2
    assert f"log.jsonl: {says}" in one_error_line(capsys)


def _set_step(b, step):
    h = np.frombuffer(b[:1024], dtype="<i4").copy()
    h[10] = step
    return h.tobytes() + b[1024:]


STATE_EDITS = {
    "truncated": (lambda b: b[:-4], "truncated"),
    "padded": (lambda b: b + b"\0" * 8, "8 bytes too many"),
    # (the run shuffles, so llm.c's shuffle data follows v: 4 bytes inserted into m shift it)
    "inserted into": (lambda b: b[:5000] + b"\0" * 4 + b[5000:], "the shuffle data says"),
    "another step": (lambda b: _set_step(b, 7), "step 7"),
    "NaN in m": (lambda b: b[:1024] + np.float32(np.nan).tobytes() + b[1028:], "non-finite"),
    # the master weights (after m and v) are the model file's weights: one bit off, or a NaN
    "another master weight": (lambda b: _edit_master(b, lambda x: x.view("<u4") ^ np.uint32(1)),
                              "master weights are not the weights of"),
    "NaN in the master weights": (lambda b: _edit_master(b, lambda x: np.float32(np.nan)), "the master weights holds non-finite"),
}


def _edit_master(b, edit):
    at = 1024 + 8 * Tensors.count(param_shapes(TINY)) + 4 * 7   # the 8th master weight
    x = np.frombuffer(b[at:at + 4], "<f4")
    return b[:at] + np.asarray(edit(x)).tobytes()[:4] + b[at + 4:]


@pytest.mark.parametrize("what", list(STATE_EDITS))
def test_a_damaged_optimizer_state_is_one_line(workdir, checkpointed, tmp_path, capsys, what):
    edit, says = STATE_EDITS[what]
    out = corrupt_copy(checkpointed, tmp_path / "out", "state_00000002_00000.bin", edit)
    capsys.readouterr()
    assert run(workdir, out, *QUICK, "-x", "3", "-y", "1") == 2
    err = one_error_line(capsys)
    assert "state_00000002_00000.bin" in err and says in err


def test_a_full_disk_is_one_line_naming_the_file(workdir, tmp_path, capsys, monkeypatch):
    import errno
    from llmnb import formats
    real = os.fsync

    def full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".model_00000001.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(formats.os, "fsync", full)
    out = tmp_path / "out"
    assert run(workdir, out, *QUICK, "-x", "2", "-n", "1") == 2
    err = one_error_line(capsys)
    assert "No space left on device" in err and "model_00000001.bin" in err
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]

    import builtins

    def full_log(path, mode="r", *a, **k):  # the log is appended to, not written atomically
        if str(path).endswith("log.jsonl") and mode == "a":
            raise OSError(errno.ENOSPC, "No space left on device")
        return builtins.open(path, mode, *a, **k)
    monkeypatch.setattr(rundir, "open", full_log, raising=False)
    assert run(workdir, tmp_path / "out2", *QUICK, "-x", "1") == 2
    err = one_error_line(capsys)
    assert "No space left on device" in err and "log.jsonl" in err


def test_memory_is_counted_before_allocating(workdir, tmp_path, capsys, monkeypatch):
    from llmnb import memory
    # the count is exactly what a training step allocates
    model = GPT2(TINY, init_params(TINY, seed=1))
    x = np.zeros((2, 16), dtype=np.int32)
    model.forward(x, x)
    model.zero_grad()
    model.backward()
    model.update(1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    sizes = memory.run_memory(TINY, 2, 16)
    allocated = (model.params.memory.nbytes + model.grads.memory.nbytes + model.m_memory.nbytes
                 + model.v_memory.nbytes + model.acts.memory.nbytes + model.grads_acts.memory.nbytes)
    assert sum(sizes.values()) - sizes["sampler KV cache"] == allocated
    # it is printed, and a run that does not fit stops at once with one line
    assert run(workdir, tmp_path / "o", *QUICK, "-x", "1") == 0
    assert "memory: parameters" in capsys.readouterr().out
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1 << 20)
    assert run(workdir, tmp_path / "o2", *QUICK, "-x", "1") == 2
    err = one_error_line(capsys)
    assert "needs" in err and "0.00 GiB available" in err


@needs_gpt2_encoding
def test_prompt_works_in_the_default_layout(workdir, tmp_path, capsys, monkeypatch):
    # after a first run, data/gpt2_tokenizer.bin exists: --prompt decodes with it, encodes via tiktoken
    pytest.importorskip("tiktoken")
    from llmnb.prepro import ensure_tokenizer_file
    monkeypatch.chdir(tmp_path)
    ensure_tokenizer_file("data", log=lambda m: None)  # the default --data-dir
    argv = ["-i", str(workdir / "tiny_train_*.bin"), "-j", str(workdir / "tiny_val.bin"), "-e", str(workdir / "tiny.bin"),
            "-b", "1", "-t", "8", "-v", "0", "-s", "1", "-g", "4", "-x", "1", "--prompt", "Hello world"]
    assert main(argv) == 0
    assert "generating:\n---\nHello world" in capsys.readouterr().out


def test_a_token_outside_the_vocabulary_names_the_shard_and_offset(workdir, tmp_path, capsys):
    tokens = np.arange(500) % 300
    tokens[123] = 50300
    write_shard(tmp_path / "bad_000.bin", tokens)
    argv = ["-i", str(tmp_path / "bad_*.bin"), "-j", str(workdir / "tiny_val.bin"), "-e", str(workdir / "tiny.bin"),
            "-o", str(tmp_path / "o"), *QUICK, "-x", "1", "--data-dir", str(workdir / "data")]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert "bad_000.bin" in err and "token 123" in err and "byte offset 1270" in err and "50300" in err


def test_sigterm_is_like_ctrl_c_and_stale_temp_files_go(workdir, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".model_00000004.bin.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = out / "notes.tmp"
    keep.write_text("mine")
    # the run sends itself SIGTERM during step 3, after the checkpoint at step 2
    code = ("import os, signal, sys\n"
            "from llmnb.train import Run, main\n"
            "real = Run.train_step\n"
            "def step(self, s):\n"
            "    if s == 3:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return real(self, s)\n"
            "Run.train_step = step\n"
            "sys.exit(main(sys.argv[1:]))\n")
    argv = ["-i", str(workdir / "tiny_train_*.bin"), "-j", str(workdir / "tiny_val.bin"), "-e", str(workdir / "tiny.bin"),
            "-o", str(out), *QUICK, "-x", "6", "-n", "2", "--data-dir", str(workdir / "data")]
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    p = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 143, p.stderr
    assert "terminated (SIGTERM)" in p.stderr and "Traceback" not in p.stderr
    assert rundir.latest(out) == 2
    assert not stale.exists() and keep.exists()
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") and n != "notes.tmp"]


def test_resume_with_steps_below_the_checkpoint_says_so(workdir, checkpointed, tmp_path, capsys):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    capsys.readouterr()
    assert run(workdir, out, *QUICK, "-x", "1", "-y", "1") == 2
    err = one_error_line(capsys)
    assert "step 2" in err and "-x 1" in err and "nothing to train" in err


def test_loss_svg_survives_non_finite_values():
    from llmnb.plot import loss_svg
    records = [{"step": i, "train_loss": v, "val_loss": None} for i, v in
               enumerate([5.0, 4.0, float("nan"), float("inf"), 3.0])]
    records.append({"step": 5, "train_loss": None, "val_loss": float("-inf")})
    svg = loss_svg(records)
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert svg.count("<circle") == 1  # only the legend's: the -inf val loss is left out


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
    from llmnb.settings import build_parser
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
        state = read_optimizer_state(out / "state_00000001_00000.bin", model.num_parameters)
        assert state["shuffle"] is (not flags) and state["shuffle_tail"] == loader.llmc_state_tail()
        # the fp32 master weights, as llm.c's default -w 1 writes them: the model file's weights
        np.testing.assert_array_equal(state["master_weights"], read_checkpoint(out / "model_00000001.bin")[1])


@pytest.mark.slow
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


# ----------------------------------------------------------------------------------------------
# issue 23: a resume decides what to load before anything is built or downloaded

@pytest.mark.parametrize("init", [None, "d12", "gpt2"])
def test_a_resumed_run_neither_builds_nor_downloads_the_e_model(workdir, checkpointed, tmp_path, capsys,
                                                                 monkeypatch, init):
    import shutil
    from llmnb import convert, download, loading, memory
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    asked = []
    monkeypatch.setattr(download, "download", lambda url, path, **kw: asked.append(("download", url)))
    monkeypatch.setattr(convert, "download_hf", lambda name, log: asked.append(("hub", name)))
    monkeypatch.setattr(GPT2Config, "depth", classmethod(lambda cls, L, **kw: asked.append(("depth", L))))
    monkeypatch.setattr(loading, "init_params", lambda *a, **k: asked.append("init"))
    checked = []
    real_check = memory.run_memory
    monkeypatch.setattr(memory, "run_memory", lambda config, B, T, precision="fp32": checked.append(config) or real_check(config, B, T, precision))
    argv = ["-i", str(workdir / "tiny_train_*.bin"), "-j", str(workdir / "tiny_val.bin"), "-o", str(out),
            *QUICK, "-x", "3", "-y", "1", "--data-dir", str(tmp_path / "empty")]
    capsys.readouterr()
    assert main(argv + (["-e", init] if init else [])) == 0
    assert asked == []  # no starter pack, no hub, no fresh d12
    assert checked == [TINY]  # the memory check saw the checkpoint's model
    assert f"resumed from {out / 'model_00000002.bin'} at step 2" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# issue 27: what a user meets first

def test_offline_the_default_model_is_one_line(workdir, tmp_path, monkeypatch, capsys):
    # the starter pack out of reach (a closed port: the connection is refused, as offline): no
    # "fetching" line before a server answers, no line per retry, one line saying what happens
    from llmnb import loading
    monkeypatch.setattr(loading, "STARTER_PACK_URL", "http://127.0.0.1:9/")
    monkeypatch.setattr(GPT2Config, "depth", classmethod(lambda cls, L, **kw: TINY))
    monkeypatch.chdir(tmp_path)
    argv = ["-i", str(workdir / "tiny_train_*.bin"), "-j", str(workdir / "tiny_val.bin"), "-o", "o",
            *QUICK, "-x", "1", "--data-dir", "d"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = [l for l in (captured.out + captured.err).splitlines()  # (the parameter table's rows aside)
             if ("gpt2_124M" in l or "download" in l or "retr" in l or "d12" in l) and not l.startswith("|")]
    assert len(lines) == 2, lines  # the fallback, then the fresh model's own line
    assert "starter pack could not be fetched" in lines[0] and "Connection refused" in lines[0]
    assert lines[0].endswith("training a fresh d12 model instead")
    assert lines[1].startswith("initialising a fresh GPT-2 d12")


def snapshot(out):
    """{file name: bytes} of a run directory, its lock file aside."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != ".llmnb-train.lock"}


def test_resume_with_nothing_to_resume_says_so_or_starts_fresh_where_nothing_is(workdir, checkpointed, tmp_path, capsys):
    import shutil
    plain = tmp_path / "plain"  # the default -n 0: a log and a model, no checkpoint
    assert run(workdir, plain, *QUICK, "-x", "2") == 0
    cut = tmp_path / "cut"      # the only checkpoint's save was cut short: no DONE file
    shutil.copytree(checkpointed, cut)
    os.remove(cut / "DONE_00000002")
    for out, says in ((plain, "-n 0"), (cut, "DONE_00000002")):
        before = snapshot(out)
        capsys.readouterr()
        assert run(workdir, out, *QUICK, "-x", "3", "-y", "1") == 2
        err = one_error_line(capsys)
        assert "-y 1" in err and str(out) in err and says in err
        assert snapshot(out) == before  # not a byte of what survives is touched
    # an empty or missing -o holds nothing to lose: -y 1 starts a fresh run there, as llm.c's -y 1
    # (its scripts pass -y 1 on every launch)
    for out in (tmp_path / "none", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert run(workdir, out, *QUICK, "-x", "2", "-y", "1") == 0
        assert "-y 1: no checkpoint in" in capsys.readouterr().out
        assert [r["step"] for r in read_log(out)] == [0, 1]


def test_bad_input_leaves_no_output_dir_and_names_the_fix(workdir, tmp_path, capsys):
    # a run that stops before writing anything leaves no -o folder holding only its lock file
    out = tmp_path / "new"
    assert run(workdir, out, *QUICK, "-x", "1", "-e", str(tmp_path / "missing.bin")) == 2
    assert "missing.bin: no such model file" in one_error_line(capsys)
    assert not out.exists()
    out.mkdir()
    assert run(workdir, out, *QUICK, "-x", "1", "-t", "33") == 2
    one_error_line(capsys)
    assert list(out.iterdir()) == []  # an existing empty folder stays (empty)
    # text given as a shard: the message names the tool that makes shards
    (tmp_path / "book.txt").write_text("It was a dark and stormy night; the rain fell in torrents.\n" * 40)
    assert run(workdir, out, *QUICK, "-x", "1", "-i", str(tmp_path / "book.txt")) == 2
    err = one_error_line(capsys)
    assert "book.txt: a text file" in err and "llmnb-prepro" in err
    # -o naming a file
    (tmp_path / "afile").write_text("mine")
    assert run(workdir, tmp_path / "afile", *QUICK, "-x", "1") == 2
    err = one_error_line(capsys)
    assert "afile: a file, not a directory" in err and "Errno" not in err
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_negative_number_is_a_value_not_a_missing_argument(workdir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(workdir, tmp_path / "o", *QUICK, "-x", "1", "-l", "-1e-4")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "-l must be a finite number >= 0, got -0.0001" in err
    assert "expected one argument" not in err


@pytest.mark.parametrize("major,kept", [(0, [5, 6]), (2, [2, 4, 5, 6])])
def test_nk_keeps_the_last_checkpoints_as_llmc_and_the_size_is_printed(workdir, tmp_path, capsys, major, kept):
    # llm.c's -nk K: after the checkpoint of step s, the one of step s - K*N goes, unless -nm M
    # makes it a major one (a multiple of M); DONE and every file of it
    out = tmp_path / "out"
    assert run(workdir, out, *QUICK, "-x", "6", "-n", "1", "-nk", "2", "-nm", str(major)) == 0
    text = capsys.readouterr().out
    assert sorted(int(p.name[5:]) for p in out.glob("DONE_*")) == kept
    assert len(rundir.files(out)) == 4 * len(kept)  # model, state, json, DONE each
    assert text.count("deleted the checkpoint of step") == 6 - len(kept)
    line = next(l for l in text.splitlines() if l.startswith("checkpoints every 1 steps"))
    model_mb = f"{os.path.getsize(out / 'model_00000006.bin') / 1e6:,.1f} MB"
    state_mb = f"{os.path.getsize(out / 'state_00000006_00000.bin') / 1e6:,.1f} MB"
    assert f"model {model_mb} + optimizer state {state_mb} per rank" in line and "last 2 kept" in line


def test_the_first_run_says_it_compiles_and_how_long_it_took(workdir, tmp_path, capsys, monkeypatch):
    from llmnb import backend
    monkeypatch.setattr(backend, "kernels_cached", lambda: False)  # as on a first run
    assert run(workdir, tmp_path / "o", *QUICK, "-x", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, l in enumerate(lines) if l.startswith("compiling the kernels: first run only"))
    done = next(i for i, l in enumerate(lines) if l.startswith("compiled the kernels in "))
    step = next(i for i, l in enumerate(lines) if l.startswith("step    1/1"))
    assert first < done < step
    monkeypatch.setattr(backend, "kernels_cached", lambda: True)
    assert run(workdir, tmp_path / "o", *QUICK, "-x", "1") == 0
    assert "compil" not in capsys.readouterr().out


@pytest.mark.slow
def test_after_compile_kernels_the_cache_counts_as_warm(tmp_path):
    # kernels_cached() decides whether a run says "compiling the kernels": on an empty Numba cache it
    # is False, and after compile_kernels (what a first run does) it must be True, or every later
    # run would say it compiles (it did, while it looked for a kernel no step builds)
    code = ("from llmnb import backend, model\n"
            "print(backend.kernels_cached())\n"
            "model.compile_kernels(backend.CPUBackend())\n"
            "print(backend.kernels_cached())\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "True"]


def test_compile_kernels_builds_what_a_real_step_and_sample_call():
    # in a fresh process (no kernel loaded yet): after compile_kernels, a training step and a sample
    # of another model size add no build to any kernel, so the first step compiles nothing
    import subprocess
    import sys
    code = """
import numpy as np
from numba.core.dispatcher import Dispatcher
from llmnb import backend, kernels, matmul, optim
from llmnb.config import GPT2Config
from llmnb.model import GPT2, Decoder, compile_kernels
def builds():
    ds = [d for m in (kernels, matmul, optim) for d in vars(m).values() if isinstance(d, Dispatcher)]
    return {d.__name__: len(d.signatures) for d in ds + list(vars(backend.ROW).values())}
be = backend.CPUBackend()
compile_kernels(be)
before = builds()
cfg = GPT2Config(max_seq_len=32, vocab_size=300, padded_vocab_size=384, num_layers=2, num_heads=4, channels=128)
m = GPT2(cfg, backend=be)
x = np.random.default_rng(0).integers(0, 300, (4, 32))
m.forward(x, x); m.zero_grad(); m.backward(); optim.clip_grad_norm(m, 0.1)
m.update(1e-3, 0.9, 0.999, 1e-8, 0.1, 1, decay=optim.DECAYED); m.params_finite()
d = Decoder(m)
for t in range(5): d.step(t)
after = builds()
print(sorted(k for k in after if after[k] != before[k]), sum(before.values()) > 20)
"""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=src), capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[0] == "[] True"


def test_settings_are_fixed_once_and_a_resume_names_what_changed(workdir, checkpointed, tmp_path, capsys):
    import dataclasses
    import shutil
    from llmnb.settings import parse
    s = parse(["-l", "3e-3", "-x", "5"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 6
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    saved = json.loads((out / "state_00000002.json").read_text())["args"]
    assert saved["learning_rate"] == 3e-3 and saved["init"] == str(workdir / "tiny.bin")
    capsys.readouterr()
    assert run(workdir, out, *QUICK, "-x", "3", "-n", "2", "-y", "1", "-l", "1e-3", "--wd", "0.1") == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("resuming with settings"))
    assert line == "resuming with settings that differ from the checkpoint's: -l 0.001 (was 0.003), -c 0.1 (was 0.0)"
