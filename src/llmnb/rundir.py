"""A run's output directory (-o): one run at a time, and the files it owns.

    .llmnb-train.lock          the lock: a second run into the directory stops at once
    log.jsonl                  one JSON record per step (train loss, val loss, lr, ms, grad norm...)
    main.log                   llm.c's log of the same (logger.py), for llm.c's own tooling
    model_00000020.bin         a checkpoint's weights (llm.c's model file, readable by llm.c)
    state_00000020_00000.bin   its optimizer state, one per rank (llm.c's state file: header, AdamW
                               m and v, then the data loader's shuffle state when it shuffles)
    state_00000020.json        what llm.c's header cannot hold (CheckpointState): the data
                               loader's position, the sampler's rng, the run's settings
    DONE_00000020              written last: a checkpoint without it is incomplete and ignored
    model.bin, loss.svg        the final model and the loss curve

Every file but the log is written atomically, so a run killed mid-save leaves the previous
checkpoint intact; the log is appended to, one flushed line per step (a line cut by a kill is
skipped when read). Under MPI (N ranks) as train_gpt2.cu: rank 0 writes the model and the JSON,
every rank R writes its own state_00000020_0000R.bin (its m and v shard under -z 1), and rank 0
writes DONE only after a barrier, once every rank has written.
"""
import contextlib
import errno
import fcntl
import glob
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from .fileio import TEMP_NAME, FormatError, atomic_write, disk_error, open_regular
from . import logger
from .formats import read_optimizer_header, read_optimizer_state, write_optimizer_state

LOCK_NAME = ".llmnb-train.lock"
CHECKPOINT_NAME = r"model_\d{8}\.bin|state_\d{8}_\d{5}\.bin|state_\d{8}\.json|DONE_\d{8}"


# the data loader's state in state_N.json (data.DataLoader.state()): (key, type, least value)
LOADER_FIELDS = (("epoch", int, 0), ("shard", int, 0), ("sample", int, 0), ("draws", int, 0),
                 ("B", int, 1), ("T", int, 1), ("shuffle", bool, None), ("seed", int, 0),
                 ("num_shards", int, 1), ("process_rank", int, 0), ("num_processes", int, 1))


@dataclass(frozen=True)
class CheckpointState:
    """state_N.json: what resuming needs besides the weights and AdamW's m and v.

    train_loader: data.DataLoader.state() (the position: epoch, shard, sample; the shuffle's draw
    count; the shape it was saved with). rng_state: the sampler's xorshift state from before the
    step's sample (a resumed run draws that sample again). settings: Settings.as_json() of the
    run that wrote it (saved as "args")."""
    step: int
    train_loader: dict
    rng_state: int
    settings: dict

    def to_json(self):
        return json.dumps({"train_loader": self.train_loader, "rng_state": self.rng_state,
                           "args": self.settings, "step": self.step}, indent=1).encode()

    @classmethod
    def from_json(cls, path, raw, step):
        """Parse and check state_N.json's bytes (FormatError naming path for anything else)."""
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise FormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        if not isinstance(d, dict):
            raise FormatError(f"{path}: expected a JSON object, found {type(d).__name__}")
        for key, kind in (("train_loader", dict), ("rng_state", int)):
            if key not in d:
                raise FormatError(f"{path}: missing the key {key!r}")
            if not isinstance(d[key], kind) or isinstance(d[key], bool):
                raise FormatError(f"{path}: {key!r} must be {'an object' if kind is dict else 'an integer'}, "
                                  f"found {json.dumps(d[key])[:40]}")
        if "step" in d and d["step"] != step:
            raise FormatError(f"{path}: says step {d['step']!r}, but belongs to the checkpoint of step {step}")
        if not 0 <= d["rng_state"] < 2 ** 64:
            raise FormatError(f"{path}: 'rng_state' {d['rng_state']} is not a uint64 (the sampler's xorshift state)")
        loader = d["train_loader"]
        for key, kind, low in LOADER_FIELDS:
            if key not in loader:
                if key == "draws" and not loader.get("shuffle", True):
                    continue  # (an unshuffled loader draws nothing)
                raise FormatError(f"{path}: 'train_loader' is missing {key!r}")
            v = loader[key]
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)) or (low is not None and v < low):
                want = "true or false" if kind is bool else f"an integer >= {low}"
                raise FormatError(f"{path}: 'train_loader' {key!r} must be {want}, found {json.dumps(v)[:40]}")
        if loader["shard"] >= loader["num_shards"] or loader["process_rank"] >= loader["num_processes"]:
            raise FormatError(f"{path}: 'train_loader' is at shard {loader['shard']} of {loader['num_shards']}, "
                              f"rank {loader['process_rank']} of {loader['num_processes']}: out of range")
        settings = d.get("args", {})
        if not isinstance(settings, dict):
            raise FormatError(f"{path}: 'args' must be an object, found {json.dumps(settings)[:40]}")
        for key, values in (("zero_stage", (0, 1)), ("resume", (0, 1))):
            if key in settings and (settings[key] not in values or isinstance(settings[key], bool)):
                raise FormatError(f"{path}: 'args' {key!r} must be one of {values}, found {json.dumps(settings[key])[:40]}")
        accum = settings.get("grad_accum", 1)
        if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
            raise FormatError(f"{path}: 'args' 'grad_accum' must be an integer >= 1, found {json.dumps(accum)[:40]}")
        return cls(step=step, train_loader=loader, rng_state=d["rng_state"], settings=settings)


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint found in a run directory: its files for this rank, and its state."""
    step: int
    model_path: str
    state_path: str   # this rank's optimizer state
    json_path: str
    state: CheckpointState
    llmc: dict | None = None   # llm.c's own (no state_N.json): its state file's header (formats.read_optimizer_header)


class RunDir:
    """The output directory of one run (see the module's docstring)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.log_path = os.path.join(self.path, "log.jsonl")
        self.main_log_path = os.path.join(self.path, logger.NAME)
        self.model_path = os.path.join(self.path, "model.bin")
        self.loss_svg_path = os.path.join(self.path, "loss.svg")
        self.lock_path = os.path.join(self.path, LOCK_NAME)
        self._lock = None
        self._made = []  # what lock() created: removed again if the run leaves nothing else

    # -- one run at a time

    def lock(self):
        """Take the directory's lock (flock on a file in it, released by the kernel when this
        process ends, however it ends). A directory locked by another run: RuntimeError naming it
        and that run's pid."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RuntimeError(f"{self.path}: a file, not a directory (-o names the run's output directory)")
        self._made = [p for p in (self.path, self.lock_path) if not os.path.exists(p)]
        os.makedirs(self.path, exist_ok=True)
        f = open(self.lock_path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise RuntimeError(f"{self.path}: another llmnb-train (pid {pid}) is writing to this directory; "
                               "wait for it, or use another -o") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            self._lock = f  # a filesystem without locks (some NFS): the run goes on unguarded
            return
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def unlock(self):
        """Release the lock. A run that stopped before writing anything leaves the directory as it
        found it: the lock file, and the directory itself, go again if lock() made them."""
        if self._lock is None:
            return
        self._lock.close()
        self._lock = None
        with contextlib.suppress(OSError):
            if self.lock_path in self._made and os.listdir(self.path) == [LOCK_NAME]:
                os.remove(self.lock_path)
                if self.path in self._made:
                    os.rmdir(self.path)

    def remove_temporaries(self, log):
        """Remove the temporary files a killed run left (atomic_write's, never anyone else's)."""
        stale = [n for n in os.listdir(self.path) if re.fullmatch(TEMP_NAME, n)]
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.path, name))
        if stale:
            log(f"removed {len(stale)} temporary file{'s' if len(stale) > 1 else ''} left in {self.path} "
                "by a stopped run")

    def prepare_fresh(self, overwrite, log):
        """A fresh run must not mix with an earlier run's checkpoints: refuse, or delete them
        under --overwrite."""
        old = files(self.path)
        if old and not overwrite:
            raise RuntimeError(f"{self.path} holds checkpoints of an earlier run ({old[0]}...): use -y 1 to "
                               "resume it, another -o, or --overwrite to delete them")
        for path in old:
            os.remove(path)
        if old:
            log(f"--overwrite: deleted {len(old)} checkpoint files of an earlier run in {self.path}")

    # -- checkpoints

    def paths(self, step, rank=0):
        return paths(self.path, step, rank)

    def latest(self):
        return latest(self.path)

    def holds_a_run(self):
        """Whether the directory holds anything an earlier run writes (checkpoint files, a log, a
        final model): -y 1 with no checkpoint starts a fresh run only where it holds none."""
        outputs = (self.log_path, self.main_log_path, self.model_path, self.loss_svg_path)
        return bool(files(self.path)) or any(os.path.exists(p) for p in outputs)

    def without_checkpoint(self):
        """What a directory with no complete checkpoint but an earlier run's files (holds_a_run) holds,
        and what to do, in one line."""
        partial = files(self.path)
        if partial:
            step = int(re.search(r"_(\d{8})", os.path.basename(partial[-1])).group(1))
            return (f"{self.path} holds no complete checkpoint to resume from: the one of step {step} has no "
                    f"DONE_{step:08d} (its save was cut short); nothing was changed: start a fresh run with "
                    "--overwrite (it deletes them) or into another -o")
        return (f"{self.path} holds a run without checkpoints (-n 0, the default, writes none): nothing to "
                f"resume; to train its model further, start from it: -e {self.model_path} -o <another dir>")

    def save(self, step, model, state, shuffle_tail=b"", world=None):
        """Save model + optimizer state at `step` (the number of updates done) with `state` (a
        CheckpointState); shuffle_tail: the train loader's llmc_state_tail(); world: dist's."""
        rank = world.rank if world is not None else 0
        model_path, state_path, json_path, done_path = self.paths(step, rank)
        if rank == 0:
            model.save_checkpoint(model_path)
        lo, hi = world.shard(model.num_parameters) if world is not None else (0, model.num_parameters)
        m, v = model.optimizer_state() or (np.zeros(hi - lo, np.float32), np.zeros(hi - lo, np.float32))
        loader = state.train_loader
        # the fp32 weights are the master weights: written as llm.c's -w 1 (its default) writes them, so
        # that llm.c's train_gpt2.cu resumes this run (in either precision: it takes its weights from them).
        # Not under ZeRO-1's shards: llm.c shards m, v and the master weights tensor by tensor, llmnb
        # by one flat range, so llm.c must refuse that state file (no master weights), not misread it
        sharded = (lo, hi) != (0, model.num_parameters)
        write_optimizer_state(state_path, step, m, v, rng_state=state.rng_state, shard=loader["shard"],
                              sample=loader["sample"], shuffle=loader["shuffle"], shuffle_tail=shuffle_tail,
                              num_processes=loader["num_processes"], process_rank=loader["process_rank"],
                              master_weights=None if sharded else model.params_host(),
                              rng_last_update=getattr(model, "rng_state_last_update", None))
        if world is not None:
            world.barrier()  # every rank's state is written (a rank that failed has aborted the world)
        if rank == 0:
            with atomic_write(json_path) as f:
                f.write(state.to_json())
            with atomic_write(done_path) as f:
                f.write(b"")
        if world is not None:
            world.barrier()  # and no rank goes on (to fail and abort the world) before DONE is written
        return model_path

    def delete(self, step, world=None):
        """Delete the checkpoint of step, as train_gpt2.cu's delete_checkpoint (-nk), DONE first: a
        deletion cut short leaves an incomplete checkpoint, never a complete one with files
        missing. -> whether there was one."""
        rank = world.rank if world is not None else 0
        model_path, state_path, json_path, done_path = self.paths(step, rank)
        existed = os.path.exists(done_path) or os.path.exists(state_path)
        if rank == 0:
            with contextlib.suppress(FileNotFoundError):
                os.remove(done_path)
        if world is not None:
            world.barrier()
        for path in ([model_path, json_path] if rank == 0 else []) + [state_path]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return existed

    def load(self, step, num_processes, zero_stage, rank=0):
        """The checkpoint at step, for this rank of a world of num_processes with zero_stage: its
        state_N.json read and checked, and the world checked to be the one that wrote it."""
        model_path, state_path, json_path, _ = self.paths(step, rank)
        if not os.path.exists(json_path):
            return self._load_llmc(step, num_processes, rank)
        with open_regular(json_path, "rb") as f:
            state = CheckpointState.from_json(json_path, f.read(), step)
        saved = state.train_loader.get("num_processes", 1)
        if saved != num_processes:
            raise FormatError(f"{json_path}: the checkpoint of step {step} was written by {saved} process"
                              f"{'es' if saved != 1 else ''}, this run has {num_processes}: resume with "
                              f"mpiexec -n {saved} (llm.c's state files are one per rank)")
        if not os.path.exists(state_path):
            states = glob.glob(os.path.join(self.path, f"state_{step:08d}_[0-9][0-9][0-9][0-9][0-9].bin"))
            raise FormatError(f"{state_path}: missing: the checkpoint of step {step} has {len(states)} of its "
                              f"{num_processes} per-rank state files")
        saved_zero = state.settings.get("zero_stage", 0)
        if num_processes > 1 and saved_zero != zero_stage:
            raise FormatError(f"{json_path}: the checkpoint of step {step} was written with -z {saved_zero}, "
                              f"this run has -z {zero_stage}: resume with -z {saved_zero}")
        return Checkpoint(step, model_path, state_path, json_path, state)

    def _load_llmc(self, step, num_processes, rank):
        """A checkpoint of llm.c's train_gpt2.cu (the same file names, no state_N.json): its state
        from rank `rank`'s state file header. llm.c saves no settings and no sampler state: the
        run's flags stand for its settings, and the epoch is found once the data is read (train.py)."""
        model_path, state_path, json_path, _ = self.paths(step, rank)
        if not os.path.exists(state_path):
            raise FormatError(f"{state_path}: missing: llm.c's checkpoint of step {step} has no state file for "
                              f"rank {rank} (it was written by another number of processes?)")
        h = read_optimizer_header(state_path)
        if h["num_processes"] != num_processes:
            raise FormatError(f"{state_path}: llm.c's checkpoint of step {step} was written by {h['num_processes']} "
                              f"process{'es' if h['num_processes'] != 1 else ''}, this run has {num_processes}: "
                              f"resume with mpiexec -n {h['num_processes']} (llm.c's state files are one per rank)")
        loader = {k: h[k] for k in ("shard", "sample", "shuffle", "num_processes", "process_rank")}
        return Checkpoint(step, model_path, state_path, json_path,
                          CheckpointState(step=step, train_loader=loader, rng_state=None, settings={}), llmc=h)

    def read_optimizer(self, ckpt, num_parameters, rank=0):
        """This rank's state file (num_parameters: its shard's size) -> formats.read_optimizer_state's
        dict: AdamW's m and v, and the rank's data loader position (shard, sample) and shuffle state
        (shuffle_tail), as llm.c's load_state reads them. What its header repeats of state_N.json
        (rank 0's: the sampler's rng and the loader's position; every rank's: the world) must agree."""
        state = read_optimizer_state(ckpt.state_path, num_parameters, step=ckpt.step)
        loader = ckpt.state.train_loader
        same = [("shuffle", loader["shuffle"]), ("num_processes", loader["num_processes"]), ("process_rank", rank)]
        if rank == 0 and not ckpt.llmc:  # (the JSON is rank 0's: the other ranks have their own position,
            # and no sampler; llm.c's checkpoint has no JSON: its state came from this header)
            same += [("rng_state", ckpt.state.rng_state), ("shard", loader["shard"]), ("sample", loader["sample"])]
        for key, saved in same:
            if state[key] != saved:
                raise FormatError(f"{ckpt.state_path}: its header says {key} {state[key]}, but "
                                  f"{'its name' if key == 'process_rank' else ckpt.json_path} says {saved}: "
                                  "the files of one checkpoint disagree")
        return state

    def check_log(self, records, step, path=None):
        """-> the log's records before a resumed step, which must be steps 0..step-1, once each,
        in order, each with its train loss (the spike detectors' windows are rebuilt from them).
        path: the file they came from, for messages (log.jsonl unless said)."""
        path = path or self.log_path
        kept = [r for r in records if r["step"] < step]
        for i, r in enumerate(kept + [None]):
            if i == step:
                break
            if r is None or r["step"] != i:
                what = f"no record of step {i}" if r is None else f"a record of step {r['step']} where step {i}'s belongs"
                raise FormatError(f"{path}: {what} (the records before the resumed step {step} must be "
                                  f"steps 0 to {step - 1}, once each, in order)")
            for key in ("train_loss", "grad_norm"):
                v = r.get(key)
                if (key == "train_loss" or v is not None) and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                    raise FormatError(f"{path}: step {i}'s {key} is {json.dumps(v)[:40]}, not a number")
        if len(kept) > step:
            raise FormatError(f"{path}: repeats a step before the resumed step {step} (its records "
                              f"before it must be steps 0 to {step - 1}, once each, in order)")
        return kept

    # -- the log

    def read_log(self):
        return read_log(self.log_path)

    def write_log(self, records):
        """The log holding `records` (none, or those before a resumed step), written atomically."""
        with atomic_write(self.log_path) as f:
            for r in records:
                f.write((log_line(r) + "\n").encode())

    def append_log(self, record):
        """One JSON line, appended and flushed (read_log skips a line cut by a kill)."""
        try:
            with open(self.log_path, "a") as f:
                f.write(log_line(record) + "\n")
        except OSError as e:
            raise disk_error(e, self.log_path) if not e.filename else e from None


def paths(out_dir, step, rank=0):
    """(model, rank's state, state json, DONE) paths of the checkpoint at step."""
    return (os.path.join(out_dir, f"model_{step:08d}.bin"),
            os.path.join(out_dir, f"state_{step:08d}_{rank:05d}.bin"),
            os.path.join(out_dir, f"state_{step:08d}.json"),
            os.path.join(out_dir, f"DONE_{step:08d}"))


def files(out_dir):
    """The checkpoint files in out_dir (complete or not), sorted."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(os.path.join(out_dir, n) for n in os.listdir(out_dir) if re.fullmatch(CHECKPOINT_NAME, n))


def latest(out_dir):
    """The step of the newest complete checkpoint in out_dir (one with its DONE file, its model and
    rank 0's state; its state_N.json too, but for llm.c's own checkpoints, which have none), or None."""
    steps = []
    for path in glob.glob(os.path.join(out_dir, "DONE_*")):
        m = re.fullmatch(r"DONE_(\d{8})", os.path.basename(path))
        if m and all(os.path.exists(p) for p in paths(out_dir, int(m.group(1)))[:2]):
            steps.append(int(m.group(1)))
    return max(steps) if steps else None


def log_line(record):
    """A record as one line of strict JSON: NaN and inf become null (json.dumps would write NaN)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)


def read_log(path):
    """The records of a log.jsonl; a last line cut short by a killed run is skipped. Every other
    line must be a JSON object with an integer "step" (else ValueError naming file and line)."""
    if not os.path.exists(path):
        return []
    with open_regular(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    records = []
    for i, line in enumerate(text.splitlines(keepends=True), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            if line.endswith("\n"):
                raise ValueError(f"{path}: line {i} is not JSON: {line[:60]!r}") from None
            continue
        if not isinstance(r, dict) or not isinstance(r.get("step"), int) or isinstance(r["step"], bool):
            raise ValueError(f"{path}: line {i} is not a step record (a JSON object with an integer "
                             f"\"step\"): {line.strip()[:60]!r}")
        records.append(r)
    return records
