"""A real run directory, each of its files damaged in several ways, one at a time: resuming from it
says what is wrong in one line naming the file (exit 2), prints no traceback, and changes nothing
(issue 27's fuzzer). And the checks' other side: an undamaged directory resumes."""
import json
import os
import shutil

import numpy as np
import pytest

from llmnb.config import GPT2Config
from llmnb.formats import num_parameters, write_checkpoint, write_shard
from llmnb.model import init_params
from llmnb.train import main

TINY = GPT2Config(max_seq_len=32, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=2, channels=32)
STEP = 3
QUICK = ("-b", "1", "-t", "8", "-v", "0", "-s", "0")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rundir")
    stream = np.tile(np.random.default_rng(0).integers(0, 300, 37), 100)
    write_shard(d / "train_000.bin", stream[:1500])
    write_shard(d / "train_001.bin", stream[1500:2500])  # two shards of different sizes
    write_checkpoint(d / "tiny.bin", TINY, init_params(TINY, seed=3))
    return d


def argv(data, out, *extra):
    return ["-i", str(data / "train_*.bin"), "-j", str(data / "train_000.bin"), "-e", str(data / "tiny.bin"),
            "-o", str(out), *QUICK, "--data-dir", str(data / "d"), *extra]


@pytest.fixture(scope="module")
def run_dirs(data, tmp_path_factory):
    """Run directories holding a checkpoint at step 3 (and the log of steps 0-2): shuffled (the
    default, so the state file carries llm.c's shuffle state) and --no-shuffle."""
    dirs = {}
    for name, flags in (("shuffle", ()), ("ordered", ("--no-shuffle",))):
        out = tmp_path_factory.mktemp(name) / "out"
        assert main(argv(data, out, "-x", str(STEP), "-n", str(STEP), *flags)) == 0
        dirs[name] = out
    return dirs


def snapshot(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != ".llmnb-train.lock"}


# ----------------------------------------------------------------------------------------------
# the damages

def ints(b, **at):
    """b with int32 header fields set: ints(b, i10=7) sets header[10]."""
    h = np.frombuffer(b[:1024], dtype="<i4").copy()
    for k, v in at.items():
        h[int(k[1:])] = v
    return h.tobytes() + b[1024:]


def float_at(b, i, value):
    """b with the float32 at byte 1024 + 4 i set (the i-th float after the header)."""
    o = 1024 + 4 * i
    return b[:o] + np.float32(value).tobytes() + b[o + 4:]


def edit_json(**changes):
    def edit(b):
        d = json.loads(b)
        for key, v in changes.items():
            if key.startswith("loader_"):
                d["train_loader"][key[7:]] = v
            elif key.startswith("args_"):
                d["args"][key[5:]] = v
            else:
                d[key] = v
        return json.dumps(d).encode()
    return edit


def drop_json(outer, key):
    def edit(b):
        d = json.loads(b)
        (d[outer] if outer else d).pop(key)
        return json.dumps(d).encode()
    return edit


def loader_plus(key, delta):
    def edit(b):
        d = json.loads(b)
        d["train_loader"][key] += delta
        return json.dumps(d).encode()
    return edit


def log_lines(edit_lines):
    def edit(b):
        lines = b.decode().splitlines(keepends=True)
        return "".join(edit_lines(lines)).encode()
    return edit


MODEL, STATE, JSON, LOG, DONE = (f"model_{STEP:08d}.bin", f"state_{STEP:08d}_00000.bin", f"state_{STEP:08d}.json",
                                 "log.jsonl", f"DONE_{STEP:08d}")
NPARAMS = num_parameters(TINY)


def shuffle_order(b, order):
    """The state file b with its shuffle data's shard order replaced (it follows m and v)."""
    o = 1024 + 8 * NPARAMS + 8
    return b[:o] + np.array(order, dtype="<i4").tobytes() + b[o + 4 * len(order):]


DAMAGES = {
    # the weights
    "model empty": (MODEL, lambda b: b""),
    "model truncated": (MODEL, lambda b: b[:-4]),
    "model padded": (MODEL, lambda b: b + b"\0" * 4),
    "model bad magic": (MODEL, lambda b: ints(b, i0=1234)),
    "model another shape": (MODEL, lambda b: ints(b, i4=7)),
    "model NaN": (MODEL, lambda b: float_at(b, 400, np.nan)),
    # this rank's optimizer state (llm.c's header, m, v, the shuffle state)
    "state empty": (STATE, lambda b: b""),
    "state truncated": (STATE, lambda b: b[:-4]),
    "state padded": (STATE, lambda b: b + b"\0" * 8),
    "state bad magic": (STATE, lambda b: ints(b, i0=20240326)),
    "state step": (STATE, lambda b: ints(b, i10=9)),
    "state rng": (STATE, lambda b: ints(b, i20=7)),
    "state sample": (STATE, lambda b: ints(b, i32=np.frombuffer(b[128:132], "<i4")[0] + 1)),
    "state world": (STATE, lambda b: ints(b, i2=2)),
    "state rank": (STATE, lambda b: ints(b, i3=1)),
    "state NaN in m": (STATE, lambda b: float_at(b, 5, np.nan)),
    "state negative v": (STATE, lambda b: float_at(b, NPARAMS + 5, -1.0)),
    "state shard order": (STATE, lambda b: shuffle_order(b, [1, 1])),
    "state generator": (STATE, lambda b: b[:-8] + b"\0" * 8),
    # state_N.json: what llm.c's header cannot hold
    "json empty": (JSON, lambda b: b""),
    "json cut": (JSON, lambda b: b[:-5]),
    "json a list": (JSON, lambda b: b"[1]"),
    "json epoch Infinity": (JSON, lambda b: b.replace(b'"epoch": 0', b'"epoch": Infinity')),
    "json epoch 10**12": (JSON, edit_json(loader_epoch=10 ** 12)),
    "json epoch -1": (JSON, edit_json(loader_epoch=-1)),
    "json sample a string": (JSON, edit_json(loader_sample="3")),
    "json sample huge": (JSON, edit_json(loader_sample=10 ** 6)),
    "json shard out of range": (JSON, edit_json(loader_shard=5)),
    "json draws negative": (JSON, edit_json(loader_draws=-1)),
    "json draws missing": (JSON, drop_json("train_loader", "draws")),
    "json draws one more": (JSON, loader_plus("draws", 1)),
    "json rng negative": (JSON, edit_json(rng_state=-1)),
    "json rng too big": (JSON, edit_json(rng_state=2 ** 64)),
    "json rng another": (JSON, lambda b: edit_json(rng_state=json.loads(b)["rng_state"] ^ 1)(b)),
    "json step": (JSON, edit_json(step=9)),
    "json B": (JSON, edit_json(loader_B=3)),
    "json no loader": (JSON, drop_json(None, "train_loader")),
    "json args a list": (JSON, edit_json(args=[1])),
    "json grad_accum 0": (JSON, edit_json(args_grad_accum=0)),
    "json grad_accum 2": (JSON, edit_json(args_grad_accum=2)),  # 3 steps of 2 batches: not where it is
    # the log: the spike detectors' windows are rebuilt from it
    "log empty": (LOG, lambda b: b""),
    "log a record dropped": (LOG, log_lines(lambda ls: ls[:1] + ls[2:])),
    "log a record twice": (LOG, log_lines(lambda ls: ls[:2] + ls[1:])),
    "log records swapped": (LOG, log_lines(lambda ls: [ls[1], ls[0]] + ls[2:])),
    "log train loss a string": (LOG, log_lines(lambda ls: [ls[0].replace('"train_loss": ', '"train_loss": "x", "_": ', 1)] + ls[1:])),
    "log not UTF-8": (LOG, lambda b: b"\xff\xfe" + b),
    "log step a string": (LOG, log_lines(lambda ls: ['{"step": "0"}\n'] + ls[1:])),
    # the checkpoint's last file
    "DONE removed": (DONE, None),
}


@pytest.mark.parametrize("what", list(DAMAGES))
def test_a_damaged_run_directory_is_one_line_and_left_as_it_was(data, run_dirs, tmp_path, capsys, what):
    name, edit = DAMAGES[what]
    out = tmp_path / "out"
    shutil.copytree(run_dirs["shuffle"], out)
    if edit is None:
        os.remove(out / name)
    else:
        damaged = edit((out / name).read_bytes())
        assert damaged != (out / name).read_bytes(), "the damage changed nothing"
        (out / name).write_bytes(damaged)
    before = snapshot(out)
    capsys.readouterr()
    assert main(argv(data, out, "-x", str(STEP + 2), "-n", str(STEP), "-y", "1")) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmnb-train: error: ") and "Traceback" not in captured.err, err
    assert name in err[0], err[0]
    assert snapshot(out) == before


def test_an_undamaged_copy_resumes(data, run_dirs, tmp_path):
    # the checks' other side: the directories above, as written, resume (shuffled and in order)
    for name, flags in (("shuffle", ()), ("ordered", ("--no-shuffle",))):
        out = tmp_path / name
        shutil.copytree(run_dirs[name], out)
        assert main(argv(data, out, "-x", str(STEP + 2), "-n", str(STEP), "-y", "1", *flags)) == 0


def test_an_epoch_far_ahead_in_order_is_refused_at_once(data, run_dirs, tmp_path, capsys):
    # --no-shuffle used to replay 10**12 epochs one by one (a hang): now a jump, and refused, since
    # the run that wrote the checkpoint (started fresh) read exactly 3 steps x 1 batch
    out = tmp_path / "out"
    shutil.copytree(run_dirs["ordered"], out)
    (out / JSON).write_bytes(edit_json(loader_epoch=10 ** 12)((out / JSON).read_bytes()))
    capsys.readouterr()
    assert main(argv(data, out, "-x", str(STEP + 2), "-y", "1", "--no-shuffle")) == 2
    err = capsys.readouterr().err
    assert JSON in err and "batches in" in err and "3 steps" in err
