"""llm.c compatibility at the bit level, checked without an llm.c checkout.

Each file is built here byte by byte the way llm.c's own code writes it (train_gpt2.py's
write_model / write_state / write_tokenizer, dev/data/data_common.py's write_datafile): a header
of 256 little-endian int32 packed with struct at the offsets llm.c uses, then the payload in
llm.c's order (write_tensors: wte, wpe, then each per-layer tensor for layer 0..L-1 in turn).
llmnb must read those bytes back to the same numbers, and write exactly the same bytes.

The last test holds a few numbers produced by llm.c's own C (train_gpt2.c's gpt2_forward,
gpt2_backward, gpt2_update, built with gcc -O2, no OpenMP) on the deterministic tiny model and
batch made by tiny_model_and_batch() below; llmnb's model must reproduce them.
"""
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmnb.config import PARAM_NAMES, GPT2Config, Tensors, param_shapes
from llmnb.data import DataLoader
from llmnb.formats import (
    fp32_to_bf16, read_checkpoint, read_debug_state, read_shard, read_tokenizer, write_checkpoint,
    write_debug_state, write_shard, write_tokenizer,
)
from llmnb.model import GPT2

# a tiny GPT-2 whose six header fields are all different, so a swapped offset cannot pass
MAXT, V, VP, L, NH, C = 24, 257, 384, 2, 4, 16
CONFIG = GPT2Config(max_seq_len=MAXT, vocab_size=V, padded_vocab_size=VP, num_layers=L,
                    num_heads=NH, channels=C)

# train_gpt2.py's write_tensors order: PyTorch names, "{}" = written once per layer, in turn
TRAIN_GPT2_ORDER = [
    ("transformer.wte.weight", "wte"), ("transformer.wpe.weight", "wpe"),
    ("transformer.h.{}.ln_1.weight", "ln1w"), ("transformer.h.{}.ln_1.bias", "ln1b"),
    ("transformer.h.{}.attn.c_attn.weight", "qkvw"), ("transformer.h.{}.attn.c_attn.bias", "qkvb"),
    ("transformer.h.{}.attn.c_proj.weight", "attprojw"),
    ("transformer.h.{}.attn.c_proj.bias", "attprojb"),
    ("transformer.h.{}.ln_2.weight", "ln2w"), ("transformer.h.{}.ln_2.bias", "ln2b"),
    ("transformer.h.{}.mlp.c_fc.weight", "fcw"), ("transformer.h.{}.mlp.c_fc.bias", "fcb"),
    ("transformer.h.{}.mlp.c_proj.weight", "fcprojw"),
    ("transformer.h.{}.mlp.c_proj.bias", "fcprojb"),
    ("transformer.ln_f.weight", "lnfw"), ("transformer.ln_f.bias", "lnfb"),
]


def header(*ints):
    """llm.c's header: 256 little-endian int32, the given ones first, the rest zero."""
    return struct.pack("<256i", *ints, *([0] * (256 - len(ints))))


def torch_style_tensors(rng):
    """Random float32 tensors named and shaped as train_gpt2.py's model.named_parameters()
    (nn.Linear weights are (out, in)); wte already padded to Vp rows with zeros, as write_model."""
    shapes = {
        "transformer.wte.weight": (VP, C), "transformer.wpe.weight": (MAXT, C),
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,),
        "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,),
    }
    out = {}
    for name, shape in shapes.items():
        names = [name] if name.startswith("transformer.") else \
            [f"transformer.h.{l}.{name}" for l in range(L)]
        for n in names:
            out[n] = rng.standard_normal(shape).astype(np.float32)
    out["transformer.wte.weight"][V:] = 0.0
    return out


def tensor_bytes(tensors, encode):
    """The payload of write_tensors: every tensor encoded, in train_gpt2.py's order."""
    parts = []
    for torch_name, _ in TRAIN_GPT2_ORDER:
        names = [torch_name.format(l) for l in range(L)] if "{}" in torch_name else [torch_name]
        parts += [encode(tensors[n]) for n in names]
    return b"".join(parts)


def fp32_bytes(a):
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def check_llmnb_views(flat, tensors):
    """llmnb's named views of a flat buffer hold exactly the PyTorch-named tensors."""
    views = Tensors(flat, param_shapes(CONFIG))
    for torch_name, name in TRAIN_GPT2_ORDER:
        view = getattr(views, name)
        if "{}" in torch_name:
            for l in range(L):
                np.testing.assert_array_equal(view[l], tensors[torch_name.format(l)], err_msg=name)
        else:
            np.testing.assert_array_equal(view, tensors[torch_name], err_msg=name)


# ----------------------------------------------------------------------------------------------
# model checkpoint, version 3 (float32)

def test_fp32_checkpoint_bytes_both_ways(tmp_path):
    assert tuple(name for _, name in TRAIN_GPT2_ORDER) == PARAM_NAMES
    tensors = torch_style_tensors(np.random.default_rng(1))
    raw = header(20240326, 3, MAXT, V, L, NH, C, VP) + tensor_bytes(tensors, fp32_bytes)
    assert len(raw) == 1024 + 4 * sum(np.prod(s) for s in param_shapes(CONFIG).values())
    path = tmp_path / "llmc.bin"
    path.write_bytes(raw)

    config, params = read_checkpoint(path)
    assert config == CONFIG
    assert params.dtype == np.float32
    check_llmnb_views(params, tensors)

    write_checkpoint(tmp_path / "ours.bin", config, params)
    assert (tmp_path / "ours.bin").read_bytes() == raw


# ----------------------------------------------------------------------------------------------
# model checkpoint, version 5 (bfloat16): torch's fp32 -> bf16, round to nearest, ties to even

def bf16_round_reference(x):
    """bf16 bits of float32 x, chosen as the nearer of the two bf16 neighbours in float64
    arithmetic (the even one on a tie). Finite inputs only."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    lo = (bits >> 16) & 0xFFFF                     # truncation: toward zero
    hi = lo + 1                                    # one bf16 ulp further from zero
    def as_f64(b16):  # the value of bf16 bits; the all-ones exponent (inf) counts as 2^128
        f = (b16 << 16).astype(np.uint32).view(np.float32).astype(np.float64)
        return np.where(np.isinf(f), np.copysign(2.0**128, f), f)
    xd = np.asarray(x, dtype=np.float64)
    d_lo, d_hi = np.abs(xd - as_f64(lo)), np.abs(as_f64(hi) - xd)
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (lo % 2 == 1))
    return np.where(pick_hi, hi, lo).astype(np.uint16)


def test_bf16_checkpoint_is_fp32_rounded_to_nearest_even(tmp_path):
    tensors = torch_style_tensors(np.random.default_rng(2))
    # plant exact ties and near-ties in wpe: 1 + k * 2^-8 sit halfway between bf16 values
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), -(1 + 3 * 2**-8),
                     1 + 2**-8 + 2**-20, 1 + 2**-8 - 2**-20, 2.0**-130, 3.0e38], dtype=np.float32)
    # ties go to the even bf16 mantissa; 2^-130 (subnormal) is exact; 3e38 = 0x7F61B1E6 -> 0x7F62
    rounded = np.array([1.0, 1 + 2**-6, -1.0, -(1 + 2**-6), 1 + 2**-7, 1.0, 2.0**-130,
                        226 * 2.0**120], dtype=np.float32)
    tensors["transformer.wpe.weight"].reshape(-1)[:ties.size] = ties
    fp32 = header(20240326, 3, MAXT, V, L, NH, C, VP) + tensor_bytes(tensors, fp32_bytes)
    bf16 = header(20240326, 5, MAXT, V, L, NH, C, VP) + tensor_bytes(
        tensors, lambda a: bf16_round_reference(a).astype("<u2").tobytes())
    (tmp_path / "fp32.bin").write_bytes(fp32)
    (tmp_path / "bf16.bin").write_bytes(bf16)
    assert len(bf16) - 1024 == (len(fp32) - 1024) // 2

    config16, p16 = read_checkpoint(tmp_path / "bf16.bin")
    config32, p32 = read_checkpoint(tmp_path / "fp32.bin")
    assert config16 == config32 == CONFIG
    # the upcast is exact: bf16 bits become the top half of the float32
    expected = (bf16_round_reference(p32).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(p16.view(np.uint32), expected.view(np.uint32))
    wpe16 = Tensors(p16, param_shapes(CONFIG)).wpe.reshape(-1)[:ties.size]
    np.testing.assert_array_equal(wpe16, rounded)
    assert np.all(np.abs(p16 - p32) <= np.abs(p32) * 2**-8)  # half a bf16 ulp at most

    write_checkpoint(tmp_path / "ours16.bin", config32, p32, dtype="bfloat16")
    assert (tmp_path / "ours16.bin").read_bytes() == bf16


def test_bf16_rounding_matches_torch():
    """train_gpt2.py's write_bf16 is torch's .to(torch.bfloat16): the reference above and
    llmnb's rounding must both give its bits, at every scale and at the edges."""
    torch = pytest.importorskip("torch")
    scales = 10.0 ** np.arange(-30, 30, 4).repeat(2000)
    x = (np.random.default_rng(3).standard_normal(scales.size) * scales).astype(np.float32)
    x[:4] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, 2.0**-149, 1 + 2**-8]
    torch_bits = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_round_reference(x), torch_bits)
    np.testing.assert_array_equal(fp32_to_bf16(x), torch_bits)


# ----------------------------------------------------------------------------------------------
# debug state, version 2 (train_gpt2.py write_state, read by test_gpt2.c)

def test_debug_state_bytes_both_ways(tmp_path):
    rng = np.random.default_rng(4)
    B, T = 3, 5
    x = rng.integers(0, V, (B, T)).astype(np.int32)
    y = rng.integers(0, V, (B, T)).astype(np.int32)
    logits = rng.standard_normal((B, T, V)).astype(np.float32)  # V, not Vp, columns
    loss = np.float32(5.4321)
    grads = torch_style_tensors(rng)                              # dwte padded with zero rows
    raw = (header(20240327, 2, B, T) + x.astype("<i4").tobytes() + y.astype("<i4").tobytes()
           + fp32_bytes(logits) + fp32_bytes(loss) + tensor_bytes(grads, fp32_bytes))
    (tmp_path / "state.bin").write_bytes(raw)

    state = read_debug_state(tmp_path / "state.bin", CONFIG)
    assert (state["B"], state["T"]) == (B, T)
    np.testing.assert_array_equal(state["x"], x)
    np.testing.assert_array_equal(state["y"], y)
    np.testing.assert_array_equal(state["logits"], logits)
    assert state["loss"] == float(loss)
    check_llmnb_views(state["grads"], grads)

    # write_debug_state drops the padded columns of (B,T,Vp) logits, as the C never reads them
    padded = np.concatenate([logits, np.full((B, T, VP - V), 7.0, np.float32)], axis=2)
    write_debug_state(tmp_path / "ours.bin", CONFIG, x, y, padded, float(loss), state["grads"])
    assert (tmp_path / "ours.bin").read_bytes() == raw


# ----------------------------------------------------------------------------------------------
# tokenizer, versions 2 (with EOT id) and 1 (GPT-2's, EOT 50256 implied)

def tokenizer_bytes(version, tokens, eot=None):
    ints = (20240328, version, len(tokens)) + ((eot,) if version == 2 else ())
    return header(*ints) + b"".join(struct.pack("<B", len(t)) + t for t in tokens)


def test_tokenizer_bytes_both_ways(tmp_path):
    rng = np.random.default_rng(5)
    tokens = [bytes(rng.integers(0, 256, rng.integers(1, 256)).tolist()) for _ in range(300)]
    tokens[0], tokens[1] = b"\x00", bytes(range(1, 256))  # a NUL token and the longest one
    raw = tokenizer_bytes(2, tokens, eot=299)
    (tmp_path / "tok.bin").write_bytes(raw)
    assert read_tokenizer(tmp_path / "tok.bin") == (tokens, 299)
    write_tokenizer(tmp_path / "ours.bin", tokens, 299)
    assert (tmp_path / "ours.bin").read_bytes() == raw

    v1 = [bytes([i % 256]) * (1 + i % 3) for i in range(50257)]
    (tmp_path / "v1.bin").write_bytes(tokenizer_bytes(1, v1))
    assert read_tokenizer(tmp_path / "v1.bin") == (v1, 50256)


# ----------------------------------------------------------------------------------------------
# data shards (data_common.py write_datafile, GPT-2: magic 20240520, version 1, uint16 tokens)

def shard_bytes(tokens):
    return header(20240520, 1, len(tokens)) + np.asarray(tokens, dtype="<u2").tobytes()


def test_shard_bytes_both_ways(tmp_path):
    tokens = np.random.default_rng(6).integers(0, 65536, 1001)
    tokens[:3] = [0, 65535, 50256]
    raw = shard_bytes(tokens)
    (tmp_path / "s.bin").write_bytes(raw)
    np.testing.assert_array_equal(read_shard(tmp_path / "s.bin"), tokens)
    write_shard(tmp_path / "ours.bin", tokens)
    assert (tmp_path / "ours.bin").read_bytes() == raw


def test_dataloader_walks_shards_like_llmc(tmp_path):
    """llmc/dataloader.h without shuffling: a shard of ntok tokens serves (ntok-1)//(B*T)
    batches, batch i = tokens[i*B*T : i*B*T + B*T + 1], then the next shard, then shard 0 again."""
    rng = np.random.default_rng(7)
    B, T = 2, 4
    shards = [rng.integers(0, 65536, n) for n in (41, 8 * 3 + 1, 8 * 5)]  # 5, 3, 4 batches
    for i, s in enumerate(shards):
        (tmp_path / f"shard_{i:02d}.bin").write_bytes(shard_bytes(s))
    expected = []
    for s in shards:
        for i in range((len(s) - 1) // (B * T)):
            expected.append(s[i * B * T: i * B * T + B * T + 1])
    assert len(expected) == 12
    loader = DataLoader(str(tmp_path / "shard_*.bin"), B, T)
    for buf in expected + expected[:3]:  # past the end: back to shard 0
        x, y = loader.next_batch()
        np.testing.assert_array_equal(x, buf[:-1].reshape(B, T))
        np.testing.assert_array_equal(y, buf[1:].reshape(B, T))


# llmc/rand.h and llmc/dataloader.h's shuffle, written again here on CPython's own mt19937
# (random.Random with its state set to llm.c's manual_seed): an independent implementation

def llmc_mt19937(seed):
    """random.Random in the state of rand.h's manual_seed(seed): getrandbits(32) is randint32."""
    mt = [seed & 0xFFFFFFFF]
    for j in range(1, 624):
        mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + j) & 0xFFFFFFFF)
    r = random.Random()
    r.setstate((3, tuple(mt) + (624,), None))  # index 624: the first draw regenerates
    return r


def llmc_random_permutation(data, r):
    for i in range(len(data) - 1, 0, -1):
        j = r.getrandbits(32) % (i + 1)
        data[i], data[j] = data[j], data[i]


def llmc_shuffled_batches(shards, B, T, n, rank=0, nproc=1):
    """The first n token buffers (B*T+1) dataloader_next_batch gives with should_shuffle=1."""
    r = llmc_mt19937(42 + rank)
    order = list(range(len(shards)))
    pos = {}

    def open_shard(k):
        pos.update(shard=k, sample=0)
        pos["samples"] = (len(shards[order[k]]) - 1) // (nproc * B * T)
        pos["intra"] = list(range(pos["samples"]))
        llmc_random_permutation(pos["intra"], r)

    def reset():
        llmc_random_permutation(order, r)
        open_shard(0)
    reset()
    out = []
    for _ in range(n):
        if pos["sample"] >= pos["samples"]:
            reset() if pos["shard"] == len(shards) - 1 else open_shard(pos["shard"] + 1)
        start = (pos["intra"][pos["sample"]] * nproc + rank) * B * T
        out.append(shards[order[pos["shard"]]][start:start + B * T + 1])
        pos["sample"] += 1
    return out


def test_reference_mt19937_is_llmc_and_torch():
    # rand.h's own example output for manual_seed(137), and torch's generator (randint below 2^32)
    r = llmc_mt19937(137)
    assert [r.getrandbits(32) for _ in range(5)] == [4053805790, 2173880614, 380293709, 1237255315, 2986595568]
    torch = pytest.importorskip("torch")
    torch.manual_seed(42)
    r = llmc_mt19937(42)
    assert torch.randint(0, 1000, [700]).tolist() == [r.getrandbits(32) % 1000 for _ in range(700)]


@pytest.mark.parametrize("seed", [42, 137, 2**32 - 1])
def test_mt19937_matches_the_reference(seed):
    from llmnb.rand import MT19937
    g, r = MT19937(seed), llmc_mt19937(seed)
    assert [g.randint32() for _ in range(1500)] == [r.getrandbits(32) for _ in range(1500)]  # 2 twists
    for n in (1, 2, 10, 1000):
        data, want = np.arange(n, dtype=np.int32), list(range(n))
        g.random_permutation(data)
        llmc_random_permutation(want, r)
        assert data.tolist() == want


@pytest.mark.parametrize("rank,nproc", [(0, 1), (1, 2), (2, 3)])
def test_dataloader_shuffles_like_llmc(tmp_path, rank, nproc):
    """should_shuffle=1: seed 42 + rank, the shard order permuted at each reset, each shard's
    samples permuted when it is opened; three epochs, batch by batch."""
    rng = np.random.default_rng(8)
    B, T = 2, 4
    shards = [rng.integers(0, 65536, n) for n in (8 * nproc * 5 + 1, 8 * nproc * 3 + 5, 8 * nproc * 4 + 1, 8 * nproc + 1)]
    for i, s in enumerate(shards):
        (tmp_path / f"shard_{i:02d}.bin").write_bytes(shard_bytes(s))
    loader = DataLoader(str(tmp_path / "shard_*.bin"), B, T, process_rank=rank, num_processes=nproc, shuffle=True)
    assert len(loader) == 13
    expected = llmc_shuffled_batches(shards, B, T, 3 * 13, rank, nproc)
    got = [np.concatenate([x.reshape(-1), y.reshape(-1)[-1:]]) for x, y in (loader.next_batch() for _ in expected)]
    for i, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(g, e, err_msg=f"batch {i}")
    epochs = [[b.tobytes() for b in got[i * 13:(i + 1) * 13]] for i in range(3)]
    assert epochs[0] != epochs[1] != epochs[2] and sorted(epochs[0]) == sorted(epochs[2])


def test_shuffle_state_tail_is_llmc_save_state(tmp_path):
    """train_gpt2.cu's save_state appends: size_t gl_pathc, int shard_indices[gl_pathc], size_t
    shard_num_samples, int intra_shard_indices[...], mt19937_state (u64 seed_, int left_, uint
    next_, uint state_[624], uint MATRIX_A[2])."""
    rng = np.random.default_rng(9)
    B, T = 2, 4
    shards = [rng.integers(0, 65536, n) for n in (41, 33, 57)]
    for i, s in enumerate(shards):
        (tmp_path / f"shard_{i:02d}.bin").write_bytes(shard_bytes(s))
    loader = DataLoader(str(tmp_path / "shard_*.bin"), B, T, shuffle=True)
    for _ in range(9):  # into the second shard
        loader.next_batch()
    tail = loader.llmc_state_tail()
    n, k = struct.unpack_from("<Q", tail, 0)[0], loader.shard_num_samples
    assert n == 3 and list(struct.unpack_from("<3i", tail, 8)) == loader.shard_indices.tolist()
    assert struct.unpack_from("<Q", tail, 20)[0] == k
    assert list(struct.unpack_from(f"<{k}i", tail, 28)) == loader.intra_shard_indices.tolist()
    rest = tail[28 + 4 * k:]
    assert len(rest) == 8 + 4 + 4 + 4 * 624 + 8
    left, nxt = struct.unpack_from("<iI", rest, 8)
    assert struct.unpack_from("<2I", rest, 16 + 4 * 624) == (0, 0x9908B0DF)
    # the generator it holds continues as llm.c's would: 9 batches drew 2 + 4 + 3 numbers
    r = llmc_mt19937(42)
    for _ in range(2 + (len(shards[loader.shard_indices[0]]) - 1) // 8 - 1 + k - 1):
        r.getrandbits(32)
    mt = struct.unpack_from("<624I", rest, 16)
    assert r.getstate()[1] == tuple(mt) + (nxt,) and left + nxt == 625


# ----------------------------------------------------------------------------------------------
# numbers from llm.c's own C code

def splitmix_uniform(n, seed):
    """n deterministic floats in [-1, 1), each exactly k/2^23 - 1, from splitmix64 of the index
    (plain integer arithmetic, so the same on every machine and NumPy version)."""
    z = (np.arange(n, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / 2**23 - 1.0).astype(np.float32)


def tiny_model_and_batch():
    """CONFIG's parameters = 0.1 * uniform (layernorm weights 1 + that, wte padding rows zero) and
    a B=2, T=8 batch of token ids, all from splitmix_uniform: what llm.c's C was run on."""
    n = sum(int(np.prod(s)) for s in param_shapes(CONFIG).values())
    params = Tensors((0.1 * splitmix_uniform(n, seed=1)).astype(np.float32), param_shapes(CONFIG))
    for name in ("ln1w", "ln2w", "lnfw"):
        getattr(params, name)[...] += np.float32(1.0)
    params.wte[V:] = 0.0
    B, T = 2, 8
    ids = ((splitmix_uniform(2 * B * T, seed=2) + 1.0) * 2**23).astype(np.int64) % V
    return params.memory, ids[:B * T].reshape(B, T), ids[B * T:].reshape(B, T)


# printed by llm.c's train_gpt2.c code on tiny_model_and_batch() (see the module docstring):
# forward + backward, then gpt2_update(lr 1e-3, 0.9, 0.999, 1e-8, wd 0.01, t = step + 1), 3 times.
# Rebuild them (and the LLMC_SHUFFLED_* below) with `python tests/llmc/regenerate.py [--llmc DIR]`:
# it compiles our harness tests/llmc/llmc_constants.c against llm.c's train_gpt2.c at commit f1e2ace
LLMC_LOGITS_000 = (-0.153217092, 0.171133965, 0.532784939)  # logits[0, 0, 0:3]
LLMC_LOGITS_LAST = 0.0344310552                             # logits[B-1, T-1, V-1]
LLMC_PROBS_000 = 0.00321848015                              # probs[0, 0, 0]
LLMC_DWTE = (-0.00168539956, -0.0623800047)                 # dwte[x[0, 0], 0:2]
LLMC_DQKVW_000 = -0.00045182812                             # dqkvw[0, 0, 0]
LLMC_DLNFB_0 = 0.00888840295                                # dlnfb[0]
LLMC_LOSSES = (5.56394577, 5.47207546, 5.38402367)          # mean loss of steps 0, 1, 2
TINY_BIN_SHA256 = "0fe23a6aca1f69dda7f3ebe1562194bec7b388947ccd1665bf34eceb91ac8bcb"


def test_tiny_model_matches_llmc_numbers(tmp_path):
    params, x, y = tiny_model_and_batch()
    write_checkpoint(tmp_path / "tiny.bin", CONFIG, params)
    # the very bytes of the checkpoint the C read (and x[0] of its batch)
    assert hashlib.sha256((tmp_path / "tiny.bin").read_bytes()).hexdigest() == TINY_BIN_SHA256
    assert x[0].tolist() == [148, 160, 36, 107, 39, 68, 84, 210]
    model = GPT2.from_checkpoint(tmp_path / "tiny.bin")
    losses = []
    for step in range(3):
        losses.append(model.forward(x, y))
        if step == 0:  # before backward, which writes dlogits over the logits
            logits = model.acts.logits
            np.testing.assert_allclose(logits[0, 0, :3], LLMC_LOGITS_000, rtol=0, atol=1e-5)
            assert abs(logits[-1, -1, V - 1] - LLMC_LOGITS_LAST) < 1e-5
            # the C's probs, from the fused classifier's log-sum-exp
            assert abs(np.exp(logits[0, 0, 0] - model.acts.lse_logits[0, 0]) - LLMC_PROBS_000) < 1e-7
        model.zero_grad()
        model.backward()
        if step == 0:
            np.testing.assert_allclose(model.grads.wte[x[0, 0], :2], LLMC_DWTE, rtol=1e-4, atol=1e-9)
            assert model.grads.qkvw[0, 0, 0] == pytest.approx(LLMC_DQKVW_000, rel=1e-4, abs=1e-9)
            assert model.grads.lnfb[0] == pytest.approx(LLMC_DLNFB_0, rel=1e-4, abs=1e-9)
        model.update(1e-3, 0.9, 0.999, 1e-8, 0.01, step + 1)
    # (llmnb and the C agree to ~1.5e-6 here; each step moves the loss by ~0.09)
    np.testing.assert_allclose(losses, LLMC_LOSSES, rtol=0, atol=1e-5)


# printed by tests/llmc/llmc_constants.c, built on llm.c's train_gpt2.c (#define TESTING, #include
# "train_gpt2.c", gcc -O2, no OpenMP): gpt2_build_from_checkpoint of tiny_model_and_batch()'s model, then
# dataloader_init(&loader, "shard_*.bin", B=2, T=8, 0, 1, should_shuffle=1) over the three shards of
# llmc_shuffle_shards(), and 14 times: dataloader_next_batch, forward, zero_grad, backward,
# gpt2_update(1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, step + 1); printed inputs[0] and mean_loss
LLMC_SHUFFLED_X0 = (104, 143, 12, 21, 224, 211, 191, 183, 131, 20, 52, 241, 131, 52)
LLMC_SHUFFLED_LOSSES = (5.59793139, 5.59655857, 5.49339771, 5.55995703, 5.46742916, 5.486588, 5.36516142,
                        5.35362816, 5.40099716, 5.50421143, 5.25915384, 5.59973526, 5.31474638, 5.21847391)


def llmc_shuffle_shards(d):
    """Three shards of 81, 53, 65 token ids < V (5, 3 and 4 batches of B*T = 16)."""
    for i, n in enumerate((81, 53, 65)):
        ids = ((splitmix_uniform(n, seed=10 + i) + 1.0) * 2**23).astype(np.int64) % V
        (d / f"shard_{i:02d}.bin").write_bytes(shard_bytes(ids))
    return str(d / "shard_*.bin")


def test_shuffled_training_matches_llmc_numbers(tmp_path):
    # llm.c's shuffled batches (into a second epoch) and its losses; in order, the batches differ
    params, _, _ = tiny_model_and_batch()
    pattern = llmc_shuffle_shards(tmp_path)
    model = GPT2(CONFIG, params.copy())
    loader = DataLoader(pattern, 2, 8, shuffle=True)
    x0, losses = [], []
    for step in range(14):
        x, y = loader.next_batch()
        x0.append(int(x[0, 0]))
        losses.append(model.forward(x, y))
        model.zero_grad()
        model.backward()
        model.update(1e-3, 0.9, 0.999, 1e-8, 0.0, step + 1)
    assert tuple(x0) == LLMC_SHUFFLED_X0
    # (agreement ~6e-7; one batch for another moves the loss by ~0.05)
    np.testing.assert_allclose(losses, LLMC_SHUFFLED_LOSSES, rtol=0, atol=5e-6)
    in_order = DataLoader(pattern, 2, 8)
    assert [int(in_order.next_batch()[0][0, 0]) for _ in range(14)] != list(LLMC_SHUFFLED_X0)


def test_the_llmc_constants_rebuild_from_llmc_itself():
    # the harness compiled against an llm.c checkout prints exactly the constants above
    llmc = os.environ.get("LLMNB_LLMC_DIR")
    if not llmc:
        pytest.skip("set LLMNB_LLMC_DIR to an llm.c checkout (commit f1e2ace) to rebuild the LLMC_* "
                    "constants from its C")
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build tests/llmc/llmc_constants.c")
    script = Path(__file__).parent / "llmc" / "regenerate.py"
    r = subprocess.run([sys.executable, str(script), "--llmc", llmc, "--check"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
