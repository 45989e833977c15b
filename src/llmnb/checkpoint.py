"""Training checkpoints in an output directory, laid out like llm.c's train_gpt2.cu:

    model_00000020.bin         the weights (llm.c model checkpoint, readable by llm.c)
    state_00000020_00000.bin   the optimizer state (llm.c's state format: header + AdamW m + v, then
                               the data loader's shuffle state when it shuffles)
    state_00000020.json        what llm.c's header cannot hold: the data loader's position, the
                               sampler's rng, the run's settings
    DONE_00000020              written last: a checkpoint without it is incomplete and ignored

Every file is written atomically, so a run killed mid-save leaves the previous checkpoint intact.
Under MPI (N ranks) as train_gpt2.cu: rank 0 writes the model and the JSON, every rank R writes
its own state_00000020_0000R.bin (its m and v shard under -z 1), and rank 0 writes DONE only after
a barrier, once every rank has written.
"""
import glob
import json
import os
import re

import numpy as np

from .formats import FormatError, atomic_write, open_regular
# the optimizer state file is one of llm.c's formats (formats.py); the names the code below uses
from .formats import read_optimizer_state as read_state, write_optimizer_state as write_state


def paths(out_dir, step, rank=0):
    """(model, rank's state, state json, DONE) paths of the checkpoint at step."""
    return (os.path.join(out_dir, f"model_{step:08d}.bin"),
            os.path.join(out_dir, f"state_{step:08d}_{rank:05d}.bin"),
            os.path.join(out_dir, f"state_{step:08d}.json"),
            os.path.join(out_dir, f"DONE_{step:08d}"))


def save(out_dir, step, model, extra, shuffle_tail=b"", world=None):
    """Save model + optimizer state at `step` (the number of updates done); extra is JSON-able;
    shuffle_tail: the train loader's llmc_state_tail(); world: dist.Single() or dist.MPIWorld."""
    rank = world.rank if world is not None else 0
    os.makedirs(out_dir, exist_ok=True)
    model_path, state_path, json_path, done_path = paths(out_dir, step, rank)
    if rank == 0:
        model.save_checkpoint(model_path)
    lo, hi = world.shard(model.num_parameters) if world is not None else (0, model.num_parameters)
    m, v = model.optimizer_state() or (np.zeros(hi - lo, np.float32), np.zeros(hi - lo, np.float32))
    loader = extra.get("train_loader", {})
    write_state(state_path, step, m, v, rng_state=extra.get("rng_state", 0),
                shard=loader.get("shard", 0), sample=loader.get("sample", 0),
                shuffle=loader.get("shuffle", False), shuffle_tail=shuffle_tail,
                num_processes=loader.get("num_processes", 1), process_rank=loader.get("process_rank", 0))
    if world is not None:
        world.barrier()  # every rank's state is written (a rank that failed has aborted the world)
    if rank == 0:
        with atomic_write(json_path) as f:
            f.write(json.dumps(dict(extra, step=step), indent=1).encode())
        with atomic_write(done_path) as f:
            f.write(b"")
    if world is not None:
        world.barrier()  # and no rank goes on (to fail and abort the world) before DONE is written
    return model_path


CHECKPOINT_NAME = r"model_\d{8}\.bin|state_\d{8}_\d{5}\.bin|state_\d{8}\.json|DONE_\d{8}"


def files(out_dir):
    """The checkpoint files in out_dir (complete or not), sorted."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(os.path.join(out_dir, n) for n in os.listdir(out_dir) if re.fullmatch(CHECKPOINT_NAME, n))


def latest(out_dir):
    """The step of the newest complete checkpoint in out_dir (one with its DONE file), or None."""
    steps = []
    for path in glob.glob(os.path.join(out_dir, "DONE_*")):
        m = re.fullmatch(r"DONE_(\d{8})", os.path.basename(path))
        if m and all(os.path.exists(p) for p in paths(out_dir, int(m.group(1)))[:3]):
            steps.append(int(m.group(1)))
    return max(steps) if steps else None


def load(out_dir, step, rank=0):
    """-> (model_path, rank's state_path, extra dict) of the checkpoint at step.

    extra is checked for what resuming reads: a JSON object with a "train_loader" object and an
    integer "rng_state"; anything else is a FormatError naming the file.
    """
    model_path, state_path, json_path, _ = paths(out_dir, step, rank)
    with open_regular(json_path, "rb") as f:
        raw = f.read()
    try:
        extra = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(f"{json_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{json_path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(extra, dict):
        raise FormatError(f"{json_path}: expected a JSON object, found {type(extra).__name__}")
    for key, kind in (("train_loader", dict), ("rng_state", int)):
        if key not in extra:
            raise FormatError(f"{json_path}: missing the key {key!r}")
        if not isinstance(extra[key], kind) or isinstance(extra[key], bool):
            raise FormatError(f"{json_path}: {key!r} must be {'an object' if kind is dict else 'an integer'}, "
                              f"found {json.dumps(extra[key])[:40]}")
    if "step" in extra and extra["step"] != step:
        raise FormatError(f"{json_path}: says step {extra['step']!r}, but belongs to the checkpoint of step {step}")
    return model_path, state_path, extra


def check_world(out_dir, step, extra, num_processes, zero_stage, rank=0):
    """A checkpoint resumes only in a world like the one that wrote it: the same number of
    processes (one state file per rank) and the same ZeRO stage (-z 1 files hold a shard)."""
    json_path = paths(out_dir, step)[2]
    loader = extra.get("train_loader", {})
    saved = loader.get("num_processes", 1)
    states = glob.glob(os.path.join(out_dir, f"state_{step:08d}_[0-9][0-9][0-9][0-9][0-9].bin"))
    if saved != num_processes:
        raise FormatError(f"{json_path}: the checkpoint of step {step} was written by {saved} process"
                          f"{'es' if saved != 1 else ''}, this run has {num_processes}: resume with "
                          f"mpiexec -n {saved} (llm.c's state files are one per rank)")
    state_path = paths(out_dir, step, rank)[1]
    if not os.path.exists(state_path):
        raise FormatError(f"{state_path}: missing: the checkpoint of step {step} has {len(states)} of its "
                          f"{num_processes} per-rank state files")
    saved_zero = extra.get("args", {}).get("zero_stage", 0) if isinstance(extra.get("args"), dict) else 0
    if num_processes > 1 and saved_zero != zero_stage:
        raise FormatError(f"{json_path}: the checkpoint of step {step} was written with -z {saved_zero}, "
                          f"this run has -z {zero_stage}: resume with -z {saved_zero}")
