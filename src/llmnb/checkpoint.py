"""Training checkpoints in an output directory, laid out like llm.c's train_gpt2.cu:

    model_00000020.bin         the weights (llm.c model checkpoint, readable by llm.c)
    state_00000020_00000.bin   the optimizer state (llm.c's state format: header + AdamW m + v, then
                               the data loader's shuffle state when it shuffles)
    state_00000020.json        what llm.c's header cannot hold: the data loader's position, the
                               sampler's rng, the run's settings
    DONE_00000020              written last: a checkpoint without it is incomplete and ignored

Every file is written atomically, so a run killed mid-save leaves the previous checkpoint intact.
"""
import glob
import json
import os
import re

import numpy as np

from .formats import FormatError, atomic_write

STATE_MAGIC = 20240527
STATE_VERSION = 1


def _paths(out_dir, step):
    return (os.path.join(out_dir, f"model_{step:08d}.bin"),
            os.path.join(out_dir, f"state_{step:08d}_00000.bin"),
            os.path.join(out_dir, f"state_{step:08d}.json"),
            os.path.join(out_dir, f"DONE_{step:08d}"))


def write_state(path, step, m, v, rng_state=0, shard=0, sample=0, shuffle=False, shuffle_tail=b"",
                num_processes=1, process_rank=0):
    """llm.c's optimizer state file (train_gpt2.cu's save_state): 256 int32 header, m and v
    (float32), then with shuffle the loader's shuffle_tail (DataLoader.llmc_state_tail())."""
    if bool(shuffle) != bool(shuffle_tail):
        raise ValueError("write_state: a shuffling loader's state needs its shuffle_tail, and only it")
    header = np.zeros(256, dtype="<i4")
    header[0], header[1] = STATE_MAGIC, STATE_VERSION
    header[2], header[3] = num_processes, process_rank
    header[4] = 0                        # no separate fp32 master weights: the weights are fp32
    header[5] = int(shuffle)
    header[10] = step
    header[20:22] = np.array([rng_state], dtype="<u8").view("<i4")
    header[30:32] = np.array([shard], dtype="<u8").view("<i4")
    header[32:34] = np.array([sample], dtype="<u8").view("<i4")
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(m, dtype="<f4").tobytes())
        f.write(np.ascontiguousarray(v, dtype="<f4").tobytes())
        f.write(shuffle_tail)


def read_state(path, num_parameters):
    """-> dict(step, rng_state, m, v, shuffle, shuffle_tail) from an llm.c optimizer state file
    (shuffle_tail: the bytes after v, the loader's shuffle state, checked by DataLoader.load_state)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(1024), dtype="<i4")
            if header.size < 256:
                raise FormatError(f"{path}: truncated: {size} bytes, too short for the 1024-byte header")
            if header[0] != STATE_MAGIC:
                raise FormatError(f"{path}: bad magic {header[0]} (expected {STATE_MAGIC}, an llm.c state file)")
            if header[1] != STATE_VERSION:
                raise FormatError(f"{path}: unknown state version {header[1]} (expected {STATE_VERSION})")
            if header[4] != 0:
                raise FormatError(f"{path}: holds fp32 master weights (a mixed-precision llm.c run); "
                                  "llmnb trains in fp32 and cannot use them")
            need = 1024 + 2 * 4 * num_parameters
            if size < need:
                raise FormatError(f"{path}: truncated: {size} bytes, m and v of {num_parameters} "
                                  f"parameters need {need}")
            m = np.fromfile(f, dtype="<f4", count=num_parameters)
            v = np.fromfile(f, dtype="<f4", count=num_parameters)
            tail = f.read() if header[5] else b""
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file")
    return {"step": int(header[10]), "rng_state": int(header[20:22].view("<u8")[0]), "m": m, "v": v,
            "shuffle": bool(header[5]), "shuffle_tail": tail}


def save(out_dir, step, model, extra, shuffle_tail=b""):
    """Save model + optimizer state at `step` (the number of updates done); extra is JSON-able;
    shuffle_tail: the train loader's llmc_state_tail()."""
    os.makedirs(out_dir, exist_ok=True)
    model_path, state_path, json_path, done_path = _paths(out_dir, step)
    model.save_checkpoint(model_path)
    k = model.backend
    m = k.to_host(model.m_memory) if model.m_memory is not None else np.zeros(model.num_parameters, np.float32)
    v = k.to_host(model.v_memory) if model.v_memory is not None else np.zeros(model.num_parameters, np.float32)
    loader = extra.get("train_loader", {})
    write_state(state_path, step, m, v, rng_state=extra.get("rng_state", 0),
                shard=loader.get("shard", 0), sample=loader.get("sample", 0),
                shuffle=loader.get("shuffle", False), shuffle_tail=shuffle_tail,
                num_processes=loader.get("num_processes", 1), process_rank=loader.get("process_rank", 0))
    with atomic_write(json_path) as f:
        f.write(json.dumps(dict(extra, step=step), indent=1).encode())
    with atomic_write(done_path) as f:
        f.write(b"")
    return model_path


def latest(out_dir):
    """The step of the newest complete checkpoint in out_dir (one with its DONE file), or None."""
    steps = []
    for path in glob.glob(os.path.join(out_dir, "DONE_*")):
        m = re.fullmatch(r"DONE_(\d{8})", os.path.basename(path))
        if m and all(os.path.exists(p) for p in _paths(out_dir, int(m.group(1)))[:3]):
            steps.append(int(m.group(1)))
    return max(steps) if steps else None


def load(out_dir, step):
    """-> (model_path, state_path, extra dict) of the checkpoint at step."""
    model_path, state_path, json_path, _ = _paths(out_dir, step)
    with open(json_path) as f:
        extra = json.load(f)
    return model_path, state_path, extra
