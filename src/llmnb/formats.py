"""llm.c's binary files, read and written byte for byte as llm.c does.

Every file starts with a header of 256 little-endian int32 (1024 bytes); header[0] is a magic
number naming the kind of file, header[1] its version. What follows the header:

  model checkpoint   20240326  v3: float32 params, v5: bfloat16 params (train_gpt2.py write_model)
                     [2]=maxT [3]=V [4]=L [5]=NH [6]=C [7]=Vp, then the 16 parameter tensors in
                     llm.c's order, wte padded from V to Vp rows
  debug state        20240327  v2 (train_gpt2.py write_state, read by test_gpt2.c)
                     [2]=B [3]=T, then x (B,T) int32, y (B,T) int32, logits (B,T,V) float32,
                     loss float32, grads float32 in the parameter layout (Vp rows of wte)
  optimizer state    20240527  v1 (train_gpt2.cu save_state / load_state)
                     [2]=processes [3]=rank [4]=master weights? [5]=shuffle? [10]=step
                     [20:22]=sampler rng (u64) [30:32]=shard [32:34]=sample (u64), then AdamW's m
                     and v (float32), then with shuffle the DataLoader's shuffle state
  tokenizer          20240328  v1/v2 (train_gpt2.py write_tokenizer, llmc/tokenizer.h)
                     [2]=number of tokens [3]=EOT id (v2 only; v1 means GPT-2's 50256), then
                     per token: 1 byte length, then that many bytes
  data shard         20240520  v1 (dev/data/data_common.py write_datafile, llmc/dataloader.h)
                     [2]=number of tokens, then the tokens as uint16
  eval file          20240522  v1 (dev/data/data_common.py write_evalfile, llmc/dataloader.h)
                     [2]=examples [3]=longest example in bytes, then each example as uint16:
                     65535, its bytes, index, label, 4, context and endings each length-prefixed

Every problem with a file raises FormatError (fileio.py), whose message starts with the file's path.
"""
import os

import numpy as np

from .config import GPT2Config, param_sizes
from .fileio import FormatError, atomic_write, open_regular

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4

MODEL_MAGIC = 20240326
DEBUG_STATE_MAGIC = 20240327
TOKENIZER_MAGIC = 20240328
SHARD_MAGIC = 20240520
OPTIMIZER_STATE_MAGIC = 20240527
EVAL_MAGIC = 20240522

MODEL_VERSION_FP32 = 3
MODEL_VERSION_BF16 = 5
DEBUG_STATE_VERSION = 2
OPTIMIZER_STATE_VERSION = 1
TOKENIZER_VERSION = 2
SHARD_VERSION = 1
EVAL_VERSION = 1

# what each magic number means, to say what a wrong file looks like
KNOWN_MAGICS = {
    MODEL_MAGIC: "an llm.c model checkpoint",
    DEBUG_STATE_MAGIC: "an llm.c debug state",
    TOKENIZER_MAGIC: "an llm.c tokenizer",
    SHARD_MAGIC: "an llm.c data shard (GPT-2, uint16 tokens)",
    OPTIMIZER_STATE_MAGIC: "an llm.c optimizer state",
    20240801: "an llm.c data shard (LLaMA-3, uint32 tokens)",
    EVAL_MAGIC: "an llm.c eval file (HellaSwag/MMLU)",
}


# ----------------------------------------------------------------------------------------------
# headers

def _read_header(f, path, magic, versions):
    """Read and check the 256-int header; return it as an int64 array.

    versions: {version number: description} of the versions we understand.
    """
    raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise FormatError(f"{path}: too short for a header: {len(raw)} bytes "
                          f"(an llm.c header is {HEADER_BYTES} bytes)")
    header = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if header[0] != magic:
        msg = f"{path}: bad magic {header[0]} (expected {magic}, {KNOWN_MAGICS[magic]})"
        if int(header[0]) in KNOWN_MAGICS:
            msg += f"; this file looks like {KNOWN_MAGICS[int(header[0])]}"
        raise FormatError(msg)
    if int(header[1]) not in versions:
        known = ", ".join(f"{v} ({d})" for v, d in versions.items())
        raise FormatError(f"{path}: unknown version {header[1]} of {KNOWN_MAGICS[magic]} "
                          f"(this reader knows {known})")
    return header


def _make_header(magic, version, *values):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = magic
    header[1] = version
    for i, v in enumerate(values):
        if not 0 <= v < 2**31:
            raise ValueError(f"header value {v} does not fit an int32")
        header[2 + i] = v
    return header


def _file_size(f):
    return os.fstat(f.fileno()).st_size


def _check_size(path, actual, expected, what):
    """The file must hold exactly `expected` bytes; `what` says what the header promised."""
    if actual < expected:
        raise FormatError(f"{path}: truncated: header says {what}, which needs {expected} bytes, "
                          f"file holds {actual}")
    if actual > expected:
        raise FormatError(f"{path}: {actual - expected} extra bytes after the data: header says "
                          f"{what}, which needs {expected} bytes, file holds {actual}")


def _read_array(f, dtype, count):
    """Read `count` items of `dtype` from the current position (the size is checked already)."""
    out = np.empty(count, dtype=dtype)
    n = f.readinto(memoryview(out).cast("B"))
    if n != out.nbytes:
        raise FormatError(f"{f.name}: file shrank while being read")
    return out


def _write_array(f, array, dtype):
    f.write(memoryview(np.ascontiguousarray(array, dtype=dtype)).cast("B"))


# ----------------------------------------------------------------------------------------------
# bfloat16

def bf16_to_fp32(bits):
    """bfloat16 bit patterns (uint16) -> float32: the bf16 bits are the top half of the float."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def fp32_to_bf16(x):
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (as torch does)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounding_bias = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding_bias) >> 16).astype(np.uint16)  # NaNs may wrap around: fixed below
    nan = np.isnan(x)
    if nan.any():  # keep NaNs NaN (rounding could carry a NaN's mantissa into inf)
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


# ----------------------------------------------------------------------------------------------
# model checkpoint

def num_parameters(config):
    return sum(param_sizes(config))


def _config_from_header(path, header):
    maxT, V, L, NH, C, Vp = (int(v) for v in header[2:8])
    try:
        return GPT2Config(max_seq_len=maxT, vocab_size=V, padded_vocab_size=Vp, num_layers=L,
                          num_heads=NH, channels=C)
    except ValueError as e:
        raise FormatError(f"{path}: nonsense header: {e} (header[2:8] = maxT V L NH C Vp)") from None


def read_checkpoint_config(path):
    """The GPT2Config in an llm.c model checkpoint's header, checked against the file's size (the
    parameters are not read): a header that promises more than the file holds is a truncated
    file, whatever memory its shape would take."""
    path = os.fspath(path)
    with open_regular(path) as f:
        header = _read_header(f, path, MODEL_MAGIC, {MODEL_VERSION_FP32: "float32",
                                                     MODEL_VERSION_BF16: "bfloat16"})
        config = _config_from_header(path, header)
        _check_params_size(path, f, header, config)
    return config


def _check_params_size(path, f, header, config):
    n = num_parameters(config)
    bf16 = header[1] == MODEL_VERSION_BF16
    _check_size(path, _file_size(f), HEADER_BYTES + n * (2 if bf16 else 4),
                f"{n} {'bfloat16' if bf16 else 'floats'} of parameters")


def check_finite_params(path, params):
    """A model's parameters must all be finite (a diverged run's NaN would sample only EOT tokens
    or train on nothing): FormatError naming path and how many are not. One float64 sum, which
    no float32 can overflow and any NaN or inf makes non-finite."""
    if not np.isfinite(np.sum(params, dtype=np.float64)):
        bad = int(np.count_nonzero(~np.isfinite(params)))
        raise FormatError(f"{path}: {bad:,} of its {params.size:,} parameters are NaN or inf (the weights of "
                          "a run that diverged?)")


def read_checkpoint(path):
    """Read an llm.c model checkpoint -> (GPT2Config, params: 1-D float32 in llm.c's layout).

    bfloat16 checkpoints (version 5) are upcast to float32 exactly. Every parameter must be finite.
    """
    path = os.fspath(path)
    with open_regular(path) as f:
        header = _read_header(f, path, MODEL_MAGIC, {MODEL_VERSION_FP32: "float32",
                                                     MODEL_VERSION_BF16: "bfloat16"})
        config = _config_from_header(path, header)
        _check_params_size(path, f, header, config)
        n = num_parameters(config)
        if header[1] == MODEL_VERSION_BF16:
            params = bf16_to_fp32(_read_array(f, "<u2", n))
        else:
            params = _read_array(f, "<f4", n).astype(np.float32, copy=False)
    check_finite_params(path, params)
    return config, params


def write_checkpoint(path, config, params, dtype="float32"):
    """Write an llm.c model checkpoint: version 3 (float32) or 5 (bfloat16, rounded to nearest even)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"checkpoint dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    params = np.asarray(params)
    n = num_parameters(config)
    if params.ndim != 1 or params.shape[0] != n:
        raise ValueError(f"params must be a 1-D array of {n} floats for this config, "
                         f"got shape {params.shape}")
    version = MODEL_VERSION_FP32 if dtype == "float32" else MODEL_VERSION_BF16
    header = _make_header(MODEL_MAGIC, version, config.max_seq_len, config.vocab_size,
                          config.num_layers, config.num_heads, config.channels,
                          config.padded_vocab_size)
    with atomic_write(path) as f:
        f.write(header.tobytes())
        if dtype == "float32":
            _write_array(f, params, "<f4")
        else:
            _write_array(f, fp32_to_bf16(params), "<u2")


# ----------------------------------------------------------------------------------------------
# debug state (test_gpt2.c's reference: a batch, its logits, loss and gradients)

def _check_token_ids(path, name, ids, V):
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise FormatError(f"{path}: {name} holds token id {bad}, outside [0, {V}) of the model")


def read_debug_state(path, config):
    """Read an llm.c debug state written for a model of `config`.

    Returns dict(B, T, x (B,T) int32, y (B,T) int32, logits (B,T,V) float32, loss float,
    grads 1-D float32 in the parameter layout (Vp rows of wte)).
    """
    path = os.fspath(path)
    with open_regular(path) as f:
        header = _read_header(f, path, DEBUG_STATE_MAGIC, {DEBUG_STATE_VERSION: "padded vocab"})
        B, T = int(header[2]), int(header[3])
        if B <= 0 or T <= 0:
            raise FormatError(f"{path}: nonsense header: B = {B}, T = {T} (must be positive)")
        if T > config.max_seq_len:
            raise FormatError(f"{path}: T = {T} is longer than the model's max_seq_len "
                              f"{config.max_seq_len}")
        V, n = config.vocab_size, num_parameters(config)
        floats = B * T * V + 1 + n
        _check_size(path, _file_size(f), HEADER_BYTES + 4 * (2 * B * T + floats),
                    f"B={B}, T={T}, which with V={V} and {n} parameters")
        x = _read_array(f, "<i4", B * T).astype(np.int32, copy=False).reshape(B, T)
        y = _read_array(f, "<i4", B * T).astype(np.int32, copy=False).reshape(B, T)
        data = _read_array(f, "<f4", floats).astype(np.float32, copy=False)
    _check_token_ids(path, "x", x, V)
    _check_token_ids(path, "y", y, V)
    return dict(B=B, T=T, x=x, y=y,
                logits=data[:B * T * V].reshape(B, T, V),
                loss=float(data[B * T * V]),
                grads=data[B * T * V + 1:])


def write_debug_state(path, config, x, y, logits, loss, grads):
    """Write an llm.c debug state. logits may be (B,T,V) or (B,T,Vp) (the padding is dropped)."""
    x, y = np.asarray(x), np.asarray(y)
    logits, grads = np.asarray(logits), np.asarray(grads)
    V, Vp, n = config.vocab_size, config.padded_vocab_size, num_parameters(config)
    if x.ndim != 2 or y.shape != x.shape:
        raise ValueError(f"x and y must both be (B,T), got {x.shape} and {y.shape}")
    B, T = x.shape
    for name, ids in (("x", x), ("y", y)):
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{name} must hold integer token ids, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"{name} holds token ids outside [0, {V})")
    if logits.shape == (B, T, Vp):
        logits = logits[:, :, :V]
    if logits.shape != (B, T, V):
        raise ValueError(f"logits must be (B,T,V) = {(B, T, V)}, got {logits.shape}")
    if grads.ndim != 1 or grads.shape[0] != n:
        raise ValueError(f"grads must be a 1-D array of {n} floats, got shape {grads.shape}")
    with atomic_write(path) as f:
        f.write(_make_header(DEBUG_STATE_MAGIC, DEBUG_STATE_VERSION, B, T).tobytes())
        _write_array(f, x, "<i4")
        _write_array(f, y, "<i4")
        _write_array(f, logits, "<f4")
        _write_array(f, np.array([loss]), "<f4")
        _write_array(f, grads, "<f4")


# ----------------------------------------------------------------------------------------------
# optimizer state (train_gpt2.cu's state_*.bin)

MT19937_STATE_BYTES = 2520  # llm.c's mt19937_state struct, as data.DataLoader writes it


def write_optimizer_state(path, step, m, v, rng_state=0, shard=0, sample=0, shuffle=False,
                          shuffle_tail=b"", num_processes=1, process_rank=0, master_weights=None,
                          rng_last_update=None):
    """llm.c's optimizer state file (train_gpt2.cu's save_state): the header, m and v (float32),
    then the fp32 master weights when given (header[4] = 1, as llm.c's default -w 1 writes them),
    then with shuffle the loader's shuffle_tail (DataLoader.llmc_state_tail()). rng_last_update: a
    bf16 model's rounding rng before its last update (llm.c's header[22]); None: rng_state there."""
    if bool(shuffle) != bool(shuffle_tail):
        raise ValueError("write_optimizer_state: a shuffling loader's state needs its shuffle_tail, and only it")
    if master_weights is not None and np.shape(master_weights) != np.shape(m):
        raise ValueError(f"write_optimizer_state: master weights {np.shape(master_weights)} are not m's {np.shape(m)}")
    header = _make_header(OPTIMIZER_STATE_MAGIC, OPTIMIZER_STATE_VERSION, num_processes, process_rank,
                          int(master_weights is not None), int(shuffle))
    header[10] = step
    # [20] the rng; [22] llm.c's rng before its last update, from which its resume re-rounds the
    # master weights to bf16: a bf16 model's (rng_last_update); an fp32 one rounds nothing, the same
    # state serves
    header[20:22] = np.array([rng_state], dtype="<u8").view("<i4")
    header[22:24] = np.array([rng_state if rng_last_update is None else rng_last_update], dtype="<u8").view("<i4")
    header[30:32] = np.array([shard], dtype="<u8").view("<i4")
    header[32:34] = np.array([sample], dtype="<u8").view("<i4")
    with atomic_write(path) as f:
        f.write(header.tobytes())
        _write_array(f, m, "<f4")
        _write_array(f, v, "<f4")
        if master_weights is not None:
            _write_array(f, master_weights, "<f4")
        f.write(shuffle_tail)


def check_shuffle_tail(path, tail):
    """The shuffle data after v must be exactly llm.c's layout: size_t shards, int32 shard order,
    size_t samples, int32 sample order, the generator (whose contents DataLoader.load_state checks)."""
    pos = 0
    for what in ("shards", "samples"):
        if len(tail) < pos + 8:
            raise FormatError(f"{path}: truncated: the shuffle data after m and v ends before its "
                              f"number of {what}")
        n = int(np.frombuffer(tail[pos:pos + 8], "<u8")[0])
        if n > len(tail):
            raise FormatError(f"{path}: the shuffle data says {n} {what}, more than the file holds")
        pos += 8 + 4 * n
    need = pos + MT19937_STATE_BYTES
    if len(tail) != need:
        what = "truncated" if len(tail) < need else f"{len(tail) - need} bytes too many"
        raise FormatError(f"{path}: {what}: the shuffle data after m and v is {len(tail)} bytes, "
                          f"its layout needs {need}")


def _u64(header, i):
    return int(np.asarray(header[i:i + 2], dtype="<i4").view("<u8")[0])


def _optimizer_header(f, path):
    """Read and check an optimizer state file's header -> dict(step, rng_state, rng_last_update,
    master, shuffle, num_processes, process_rank, shard, sample)."""
    header = _read_header(f, path, OPTIMIZER_STATE_MAGIC, {OPTIMIZER_STATE_VERSION: "fp32 m and v"})
    if header[2] < 1 or not 0 <= header[3] < header[2] or header[4] not in (0, 1) or header[5] not in (0, 1):
        raise FormatError(f"{path}: its header says rank {header[3]} of {header[2]} processes, master-weights "
                          f"flag is {header[4]}, shuffle {header[5]}: not a header llm.c writes")
    return {"step": int(header[10]), "rng_state": _u64(header, 20), "rng_last_update": _u64(header, 22),
            "master": bool(header[4]),
            "shuffle": bool(header[5]), "num_processes": int(header[2]), "process_rank": int(header[3]),
            "shard": _u64(header, 30), "sample": _u64(header, 32)}


def read_optimizer_header(path):
    """-> the dict of _optimizer_header: an llm.c optimizer state file's header alone (what a
    checkpoint of llm.c's own, which has no state_N.json, says of its run)."""
    path = os.fspath(path)
    with open_regular(path) as f:
        return _optimizer_header(f, path)


def read_optimizer_state(path, num_parameters, step=None):
    """-> dict(step, rng_state, m, v, master_weights, shuffle, shuffle_tail, num_processes,
    process_rank, shard, sample) from an llm.c optimizer state file.

    The file must hold the header, m and v of num_parameters floats, then the fp32 master weights
    if its header says so (llm.c's -w 1, the default; else master_weights is None), all finite, and
    nothing more unless the header's shuffle flag is set: then the bytes after them are the
    loader's shuffle state (shuffle_tail, whose exact layout DataLoader.load_state checks). With
    step given, the header's step must be that step (the checkpoint's)."""
    path = os.fspath(path)
    with open_regular(path) as f:
        h = _optimizer_header(f, path)
        master = h["master"]
        arrays = "m, v and the master weights" if master else "m and v"
        size, need = _file_size(f), HEADER_BYTES + (3 if master else 2) * 4 * num_parameters
        if size < need or (size != need and not h["shuffle"]):
            what = "truncated" if size < need else f"{size - need} bytes too many"
            raise FormatError(f"{path}: {what}: {size} bytes, the header and {arrays} of "
                              f"{num_parameters} parameters are {need}")
        if step is not None and h["step"] != step:
            raise FormatError(f"{path}: its header says step {h['step']}, but it belongs to the "
                              f"checkpoint of step {step}")
        m = _read_array(f, "<f4", num_parameters).astype(np.float32, copy=False)
        v = _read_array(f, "<f4", num_parameters).astype(np.float32, copy=False)
        master_weights = _read_array(f, "<f4", num_parameters).astype(np.float32, copy=False) if master else None
        tail = f.read() if h["shuffle"] else b""
    if h["shuffle"]:
        check_shuffle_tail(path, tail)
    named = (("AdamW's m", m), ("AdamW's v", v)) + ((("the master weights", master_weights),) if master else ())
    for name, x in named:
        if not np.isfinite(x).all():
            raise FormatError(f"{path}: {name} holds non-finite values (NaN or inf) at "
                              f"{int(np.count_nonzero(~np.isfinite(x)))} parameters")
    if (v < 0).any():
        raise FormatError(f"{path}: AdamW's v holds negative values (a mean of squares cannot be)")
    return dict(h, m=m, v=v, master_weights=master_weights, shuffle_tail=tail)


# ----------------------------------------------------------------------------------------------
# tokenizer (token id -> bytes, for decoding)

GPT2_EOT = 50256  # version 1 files carry no EOT id; llm.c assumes GPT-2's


def read_tokenizer(path):
    """Read an llm.c tokenizer -> (tokens: list of bytes, one per id, eot_token: int)."""
    path = os.fspath(path)
    with open_regular(path) as f:
        header = _read_header(f, path, TOKENIZER_MAGIC, {1: "no EOT id", 2: "with EOT id"})
        size = _file_size(f)
        body = f.read()
    n = int(header[2])
    if n <= 0:
        raise FormatError(f"{path}: nonsense header: {n} tokens")
    if header[1] == 1:
        if n != 50257:
            raise FormatError(f"{path}: version 1 tokenizer with {n} tokens: version 1 is "
                              f"only defined for GPT-2's 50257 tokens (EOT 50256)")
        eot = GPT2_EOT
    else:
        eot = int(header[3])
        if not 0 <= eot < n:
            raise FormatError(f"{path}: EOT token {eot} outside the {n} tokens")
    tokens, pos = [], 0
    for i in range(n):
        if pos >= len(body):
            raise FormatError(f"{path}: truncated: header says {n} tokens, file ends "
                              f"({size} bytes) after {i}")
        length = body[pos]
        if length == 0:
            raise FormatError(f"{path}: token {i} has length 0 (every token is at least one byte)")
        if pos + 1 + length > len(body):
            raise FormatError(f"{path}: truncated: header says {n} tokens, file ends "
                              f"({size} bytes) inside token {i}")
        tokens.append(bytes(body[pos + 1:pos + 1 + length]))
        pos += 1 + length
    if pos != len(body):
        raise FormatError(f"{path}: {len(body) - pos} extra bytes after the {n} tokens")
    return tokens, eot


def write_tokenizer(path, tokens, eot_token):
    """Write an llm.c tokenizer (version 2): tokens is a list of bytes, 1 to 255 bytes each."""
    tokens = [bytes(t) for t in tokens]
    n = len(tokens)
    if n == 0:
        raise ValueError("a tokenizer needs at least one token")
    if not 0 <= eot_token < n:
        raise ValueError(f"eot_token {eot_token} outside the {n} tokens")
    for i, t in enumerate(tokens):
        if not 1 <= len(t) <= 255:
            raise ValueError(f"token {i} is {len(t)} bytes long (must be 1 to 255)")
    with atomic_write(path) as f:
        f.write(_make_header(TOKENIZER_MAGIC, TOKENIZER_VERSION, n, eot_token).tobytes())
        f.write(b"".join(bytes([len(t)]) + t for t in tokens))


# ----------------------------------------------------------------------------------------------
# data shard (a stream of GPT-2 token ids)

def read_shard(path):
    """Read an llm.c data shard -> read-only uint16 array of its tokens (memory-mapped)."""
    path = os.fspath(path)
    with open_regular(path) as f:
        if _is_text(f.read(HEADER_BYTES)):
            raise FormatError(f"{path}: a text file, not an llm.c data shard of tokens: make shards of it "
                              f"with llmnb-prepro --input {path}")
        f.seek(0)
        header = _read_header(f, path, SHARD_MAGIC, {SHARD_VERSION: "uint16 tokens"})
        ntok = int(header[2])
        if ntok <= 0:
            raise FormatError(f"{path}: header says {ntok} tokens (a shard holds at least one)")
        _check_size(path, _file_size(f), HEADER_BYTES + 2 * ntok, f"{ntok} tokens")
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))


def _is_text(head):
    """Whether a file's first bytes read as text (UTF-8, no NUL, the last character maybe cut):
    an llm.c header never does (its unused ints are zero bytes)."""
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # only a character cut by the end of the read
    return True


def _check_shard_tokens(tokens):
    """tokens as a 1-D integer array whose ids fit uint16 (llm.c's "token dictionary too large")."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence, got shape {tokens.shape}")
    if tokens.size == 0:
        return tokens
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got {tokens.dtype}")
    if tokens.min() < 0 or tokens.max() >= 2**16:
        bad = tokens.min() if tokens.min() < 0 else tokens.max()
        raise ValueError(f"token id {bad} does not fit the shard's uint16 (0 to 65535)")
    return tokens


def write_shard(path, tokens):
    """Write an llm.c data shard (GPT-2 format: uint16 tokens, so ids must be < 65536)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens must be a non-empty 1-D sequence, got shape {tokens.shape}")
    write_shard_parts(path, [tokens])


def write_shard_parts(path, parts):
    """Write an llm.c data shard whose tokens are the arrays of `parts` in turn (an iterable, read
    once: a split too large for memory streams through) -> the number of tokens. The header's
    count is written last; the file appears only when complete."""
    n = 0
    with atomic_write(path) as f:
        f.write(bytes(HEADER_BYTES))
        for part in parts:
            part = _check_shard_tokens(part)
            _write_array(f, part, "<u2")
            n += part.size
        if n == 0:
            raise ValueError(f"{path}: no tokens to write (a shard holds at least one)")
        f.seek(0)
        f.write(_make_header(SHARD_MAGIC, SHARD_VERSION, n).tobytes())
    return n


# ----------------------------------------------------------------------------------------------
# eval file (multiple-choice examples: HellaSwag)

EVAL_START = 2**16 - 1  # <START_EXAMPLE>: the uint16 that opens every example


def write_eval_file(path, examples):
    """Write llm.c's eval file (dev/data/data_common.py write_evalfile) -> number of examples.

    examples: (label, context tokens, [ending tokens] * 4) each. After the header ([2] = number
    of examples, [3] = the longest example in bytes) every example is a stream of uint16:
    EVAL_START, its size in bytes, its index, label, number of endings, then the context and
    each ending as a length followed by its tokens.
    """
    if not 0 < len(examples) < 2**16:
        raise ValueError(f"{path}: {len(examples)} examples (an eval file holds 1 to 65535)")
    streams = []
    for i, (label, ctx, endings) in enumerate(examples):
        if len(endings) != 4 or not 0 <= label < 4:
            raise ValueError(f"{path}: example {i} has {len(endings)} endings and label {label} "
                             "(needs 4 endings, label 0 to 3)")
        stream = [EVAL_START, 0, i, label, len(endings), len(ctx), *ctx]
        for end in endings:
            stream += [len(end), *end]
        if not all(0 <= t < EVAL_START for t in stream[5:]):
            raise ValueError(f"{path}: example {i} has a token id outside 0 to {EVAL_START - 1}")
        stream[1] = 2 * len(stream)
        if stream[1] >= 2**16:
            raise ValueError(f"{path}: example {i} is {stream[1]:,} bytes (at most 65,535)")
        streams.append(stream)
    longest = max(s[1] for s in streams)
    with atomic_write(path) as f:
        f.write(_make_header(EVAL_MAGIC, EVAL_VERSION, len(streams), longest).tobytes())
        _write_array(f, np.concatenate([np.array(s, dtype=np.int64) for s in streams]), "<u2")
    return len(streams)
