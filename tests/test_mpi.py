"""llmnb-train under `mpiexec -n 2` (llmnb.dist): two ranks of batch B train exactly like one process
of batch 2B (-z 0 and -z 1, with and without gradient accumulation), a 2-rank checkpoint resumes
like the uninterrupted run, and a failing rank ends the whole job with its error, never a hang.

The mpiexec tests skip without mpiexec and mpi4py (CI installs the mpi extra). Each runs 2 ranks
x 1 Numba thread under a timeout."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from llmnb import dist
from llmnb.config import GPT2Config
from llmnb.formats import read_checkpoint, read_optimizer_state, write_checkpoint, write_shard
from llmnb.model import GPT2, init_params
from llmnb.optim import DECAYED
from llmnb.train import main

TINY = GPT2Config(max_seq_len=32, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=2, channels=32)
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
MPIEXEC = dist.find_mpiexec()  # beside sys.executable (a venv run by its path), else on PATH
TIMEOUT = 180  # seconds for one mpiexec run (a few seconds each on 2 cores, but CI is slow)


def has_mpi4py():
    try:
        import mpi4py  # noqa: F401
        return True
    except ImportError:
        return False


def needs_mpi(test):
    """An mpiexec test: slow (a few seconds each), skipped without mpiexec and mpi4py."""
    skip = pytest.mark.skipif(MPIEXEC is None or not has_mpi4py(),
                              reason="needs mpiexec and mpi4py: pip install -e '.[mpi]'")
    return pytest.mark.slow(skip(test))


# ----------------------------------------------------------------------------------------------
# without MPI: shards, buckets, the sharded AdamW, no mpi4py import

def test_shards_and_buckets_cover_the_buffer_once():
    for n, size in ((10, 3), (1_623_520, 2), (7, 8), (1 << 23, 5)):
        pieces = [dist.shard_range(n, r, size) for r in range(size)]
        assert pieces[0][0] == 0 and pieces[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        assert max(hi - lo for lo, hi in pieces) - min(hi - lo for lo, hi in pieces) <= 1
    got = dist.buckets(3, 3 * dist.BUCKET + 5)
    assert got[0] == (3, 3 + dist.BUCKET) and got[-1][1] == 3 * dist.BUCKET + 5
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))


@pytest.mark.parametrize("decay", [None, DECAYED])
def test_adamw_on_three_shards_equals_the_whole_update(decay):
    """ZeRO-1's update: AdamW on each rank's slice (cut across tensors) with its own m, v is the
    whole-buffer update bit for bit, weight decay only on the 2-D weights' parts included."""
    rng = np.random.default_rng(5)
    n = GPT2(TINY).num_parameters
    params = init_params(TINY, seed=1)
    grads = rng.standard_normal(n).astype(np.float32)
    m0, v0 = rng.standard_normal(n).astype(np.float32), rng.random(n).astype(np.float32)
    whole = GPT2(TINY, params)
    whole.grads = type(whole.params)(grads.copy(), whole.params.shapes)
    whole.load_optimizer_state(m0, v0)
    whole.update(1e-3, 0.9, 0.999, 1e-8, 0.1, 3, decay=decay)
    m_whole, v_whole = whole.optimizer_state()
    p, m, v = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    for r in range(3):
        lo, hi = dist.shard_range(n, r, 3)
        rank = GPT2(TINY, params)  # every rank holds all the parameters, updates its shard
        rank.load_optimizer_state(m0[lo:hi], v0[lo:hi])
        rank.update(1e-3, 0.9, 0.999, 1e-8, 0.1, 3, decay=decay, shard=(lo, hi, grads[lo:hi].copy()))
        outside = np.r_[0:lo, hi:n]
        np.testing.assert_array_equal(rank.params.memory[outside], params[outside])
        p[lo:hi] = rank.params.memory[lo:hi]
        m[lo:hi], v[lo:hi] = (x.copy() for x in rank.optimizer_state())
    assert not np.array_equal(p, params)
    np.testing.assert_array_equal(p, whole.params.memory)
    np.testing.assert_array_equal(m, m_whole)
    np.testing.assert_array_equal(v, v_whole)


def test_mpiexec_is_found_beside_the_python_before_path(tmp_path, monkeypatch):
    # a venv's python run by its path: its bin is not on PATH, its mpiexec is the one mpi4py matches
    for d in ("venv", "elsewhere"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "mpiexec").write_text("#!/bin/sh\n")
        (tmp_path / d / "mpiexec").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert dist.find_mpiexec() == str(tmp_path / "venv" / "mpiexec")
    (tmp_path / "venv" / "mpiexec").unlink()
    assert dist.find_mpiexec() == str(tmp_path / "elsewhere" / "mpiexec")
    monkeypatch.setenv("PATH", str(tmp_path / "venv"))
    assert dist.find_mpiexec() is None


def test_plain_llmnb_train_never_imports_mpi4py():
    env = {k: v for k, v in os.environ.items() if k not in dist.SIZE_VARIABLES}
    env["PYTHONPATH"] = SRC
    code = ("import sys; from llmnb import train, dist; w = dist.world(1); "
            "print(type(w).__name__, 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["Single", "False"], out.stderr


# ----------------------------------------------------------------------------------------------
# under mpiexec -n 2

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mpi")
    rng = np.random.default_rng(0)
    stream = np.tile(rng.integers(0, 300, 37), 200)
    write_shard(d / "tiny_train_000.bin", stream[:3000])
    write_shard(d / "tiny_train_001.bin", stream[3000:6000])
    write_shard(d / "tiny_val.bin", stream[6000:7000])
    write_checkpoint(d / "tiny.bin", TINY, init_params(TINY, seed=3))
    return d


def argv(workdir, out, B, *extra):
    # --grad-clip 1 clips every step here (norms ~1.3-1.7) and --wd 0.1 decays the 2-D weights
    # only: both cut across ZeRO-1's shards
    return ["-i", str(workdir / "tiny_train_*.bin"), "-j", str(workdir / "tiny_val.bin"),
            "-e", str(workdir / "tiny.bin"), "-o", str(out), "-b", str(B), "-t", "16", "-l", "3e-3",
            "-v", "2", "-m", "2", "-s", "0", "--grad-clip", "1", "--wd", "0.1",
            "--data-dir", str(workdir / "data"), *extra]


def mpiexec(n, args, timeout=TIMEOUT, code=None):
    """Run llmnb-train (or the python code `code` with args as sys.argv) on n ranks x 1 thread."""
    env = dict(os.environ, PYTHONPATH=SRC, NUMBA_NUM_THREADS="1")
    prog = ["-c", code, *args] if code else ["-m", "llmnb.train", *args]
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *prog], env=env,
                          capture_output=True, text=True, timeout=timeout)


def records(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_run(got, want, rtol):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for key in ("train_loss", "val_loss", "grad_norm"):
        a = [r.get(key) for r in got]
        b = [r.get(key) for r in want]
        assert [x is None for x in a] == [x is None for x in b], key
        np.testing.assert_allclose([x for x in a if x is not None], [x for x in b if x is not None],
                                   rtol=rtol, err_msg=key)


SMALL_BUCKETS = """
import sys
from llmnb import dist, train
dist.BUCKET = 1 << 16
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def one_process(workdir, tmp_path_factory):
    """The references: one process, batch 4 (= 2 ranks x 2), in order; per grad_accum."""
    runs = {}
    for accum in (1, 2):
        out = tmp_path_factory.mktemp(f"single{accum}") / "out"
        assert main(argv(workdir, out, 4, "-x", "4", "--no-shuffle", "--grad-accum", str(accum))) == 0
        runs[accum] = out
    return runs


@needs_mpi
@pytest.mark.parametrize("accum", [1, 2])
@pytest.mark.parametrize("zero", [0, 1])
def test_two_ranks_train_like_one_process_with_twice_the_batch(workdir, one_process, tmp_path, zero, accum):
    """Same samples in the same order: per-step train loss, grad norm and val loss agree to
    rtol 1e-5 and the final weights to 1e-5 but for AdamW's near-zero gradients (see below) (only
    the fp32 summation order of the batch's
    gradient differs: one sum of 4 rows vs two sums of 2 rows added by MPI). Buckets of 65536
    floats: 25 collectives per reduction, the shard boundary inside one of them."""
    out = tmp_path / "out"
    p = mpiexec(2, argv(workdir, out, 2, "-x", "4", "--no-shuffle", "--grad-accum", str(accum), "-z", str(zero)),
                code=SMALL_BUCKETS)
    assert p.returncode == 0, p.stderr
    assert "comm" in p.stdout and p.stdout.count("step    1/4") == 1  # rank 0 alone prints
    n = GPT2(TINY).num_parameters
    per_rank = n if zero == 0 else n // 2  # rank 0's shard under -z 1: [0, n // 2)
    assert f"AdamW m+v per rank: {8 * per_rank / 2**20:,.1f} MiB ({per_rank:,} of {n:,} parameters)" in p.stdout
    want = one_process[accum]
    assert_same_run(records(out), records(want), rtol=1e-5)
    _, got_params = read_checkpoint(out / "model.bin")
    _, want_params = read_checkpoint(want / "model.bin")
    # AdamW divides each gradient by its own running magnitude, so a parameter whose gradient is
    # ~0 can move by up to lr (3e-3) per step on fp32-order noise alone: all but a handful of the
    # 1.6M weights agree to 1e-5, and none differs by more than the 4 steps' lr
    diff = np.abs(got_params.astype(np.float64) - want_params)
    assert np.count_nonzero(diff > 1e-5) <= 10 and diff.max() <= 4 * 3e-3, (np.count_nonzero(diff > 1e-5), diff.max())
    assert not np.array_equal(want_params, read_checkpoint(workdir / "tiny.bin")[1])  # it trained


@pytest.fixture(scope="module")
def two_rank_run(workdir, tmp_path_factory):
    """2 ranks, -z 1, shuffled (each rank's own mt19937), 6 steps, checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("two") / "out"
    p = mpiexec(2, argv(workdir, out, 2, "-x", "6", "-n", "3", "-z", "1"))
    assert p.returncode == 0, p.stderr
    return out


def checkpoint_at_3(two_rank_run, dst):
    """A copy of the output directory as a run killed after its step-3 checkpoint left it."""
    os.makedirs(dst)
    for name in ("model_00000003.bin", "state_00000003_00000.bin", "state_00000003_00001.bin",
                 "state_00000003.json", "DONE_00000003"):
        shutil.copy(two_rank_run / name, dst / name)
    with open(two_rank_run / "log.jsonl") as f, open(dst / "log.jsonl", "w") as g:
        g.writelines(line for line in f if json.loads(line)["step"] <= 3)
    return dst


@needs_mpi
def test_checkpoints_are_one_state_file_per_rank_and_resume_exactly(workdir, two_rank_run, tmp_path):
    names = sorted(os.listdir(two_rank_run))
    assert "state_00000003_00001.bin" in names and "state_00000006_00001.bin" in names
    assert "state_00000003_00002.bin" not in names
    n = GPT2(TINY).num_parameters
    for rank in (0, 1):  # the header says who wrote it; -z 1: m and v of this rank's shard only
        path = two_rank_run / f"state_00000003_{rank:05d}.bin"
        header = np.fromfile(path, dtype="<i4", count=256)
        assert (header[2], header[3]) == (2, rank)
        lo, hi = dist.shard_range(n, rank, 2)
        assert os.path.getsize(path) >= 1024 + 8 * (hi - lo) and os.path.getsize(path) < 1024 + 8 * n
        # and no master weights: llm.c shards them tensor by tensor, so its -w 1 must refuse this file
        assert header[4] == 0 and read_optimizer_state(path, hi - lo)["master_weights"] is None
    out = checkpoint_at_3(two_rank_run, tmp_path / "out")
    p = mpiexec(2, argv(workdir, out, 2, "-x", "6", "-n", "3", "-z", "1", "-y", "1"))
    assert p.returncode == 0, p.stderr
    assert_same_run(records(out), records(two_rank_run), rtol=0)
    np.testing.assert_array_equal(read_checkpoint(out / "model.bin")[1], read_checkpoint(two_rank_run / "model.bin")[1])


def error_lines(p):
    return [line for line in p.stderr.splitlines() if line.startswith("llmnb-train: error")]


@needs_mpi
def test_a_checkpoint_of_llmcs_zero_1_is_refused_in_one_line(workdir, two_rank_run, tmp_path):
    # llm.c's ZeRO-1 state files shard m and v tensor by tensor (llmnb's by one flat range): its
    # checkpoint (here a 2-rank -z 1 checkpoint without llmnb's state_N.json and log) is refused,
    # with -z 1 and with -z 0, in one line per rank, never misread
    out = checkpoint_at_3(two_rank_run, tmp_path / "out")
    os.remove(out / "state_00000003.json")
    os.remove(out / "log.jsonl")
    shutil.copy(two_rank_run / "main.log", out / "main.log")
    for zero in ("1", "0"):
        p = mpiexec(2, argv(workdir, out, 2, "-x", "6", "-z", zero, "-y", "1"), timeout=120)
        assert p.returncode != 0 and error_lines(p), p.stderr[-2000:]
        assert "a state file of llm.c's ZeRO-1 (-z 1)?" in error_lines(p)[0]


@needs_mpi
def test_resuming_with_another_number_of_processes_is_one_clear_line(workdir, two_rank_run, tmp_path, capsys):
    out = checkpoint_at_3(two_rank_run, tmp_path / "out")
    assert main(argv(workdir, out, 2, "-x", "6", "-z", "1", "-y", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by 2 processes, this run has 1" in err[0] and "mpiexec -n 2" in err[0]


@needs_mpi
def test_a_missing_rank_file_ends_the_job_with_its_name(workdir, two_rank_run, tmp_path):
    out = checkpoint_at_3(two_rank_run, tmp_path / "out")
    os.remove(out / "state_00000003_00001.bin")
    p = mpiexec(2, argv(workdir, out, 2, "-x", "6", "-z", "1", "-y", "1"), timeout=120)
    assert p.returncode != 0
    lines = error_lines(p)
    assert lines and "(rank 1 of 2)" in lines[0] and "state_00000003_00001.bin: missing" in lines[0]


@needs_mpi
def test_a_bad_file_on_every_rank_ends_the_job(workdir, tmp_path):
    p = mpiexec(2, argv(workdir, tmp_path / "out", 2, "-x", "2", "-e", str(tmp_path / "nope.bin")), timeout=120)
    assert p.returncode != 0 and "nope.bin: no such model file" in p.stderr


# one rank (rank 1) fails inside its third training step while rank 0 waits in the all-reduce
FAIL_ON_RANK_1 = """
import os, sys
from llmnb import train
how = sys.argv.pop(1)
step = train.Run.train_step
def failing(self, s):
    if self.world.rank == 1 and s == 2:
        if how == "kill":
            os.kill(os.getpid(), 9)
        raise ZeroDivisionError("a bug on rank 1")
    return step(self, s)
train.Run.train_step = failing
sys.exit(train.main(sys.argv[1:]))
"""


@needs_mpi
@pytest.mark.parametrize("how", ["exception", "kill"])
def test_a_rank_that_fails_mid_run_ends_the_whole_job(workdir, tmp_path, how):
    """The job ends with the failing rank's error; every checkpoint both ranks finished is
    complete (DONE), and a resume from it trains on exactly as the uninterrupted run."""
    out = tmp_path / "out"
    args = argv(workdir, out, 2, "-x", "4", "-n", "1")
    p = mpiexec(2, [how, *args], timeout=120, code=FAIL_ON_RANK_1)
    assert p.returncode != 0
    if how == "exception":
        assert "ZeroDivisionError: a bug on rank 1" in p.stderr
    done = sorted(n for n in os.listdir(out) if n.startswith("DONE_"))
    assert done == ["DONE_00000001", "DONE_00000002"]
    if how == "kill":
        p = mpiexec(2, [*args, "-y", "1"])
        assert p.returncode == 0, p.stderr
        assert "resumed from" in p.stdout and "model_00000002.bin" in p.stdout
        whole = tmp_path / "whole"
        p = mpiexec(2, argv(workdir, whole, 2, "-x", "4", "-n", "1"))
        assert p.returncode == 0, p.stderr
        assert_same_run(records(out), records(whole), rtol=0)
        np.testing.assert_array_equal(read_checkpoint(out / "model.bin")[1], read_checkpoint(whole / "model.bin")[1])
