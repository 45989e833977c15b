"""llm.c's file formats: round trips, byte layouts, bfloat16, and every bad-file error."""
import os
import re
import struct

import numpy as np
import pytest

from llmnb.config import GPT2Config, param_sizes
from llmnb.formats import (
    FormatError, atomic_write, bf16_to_fp32, fp32_to_bf16, read_checkpoint, read_debug_state,
    read_optimizer_state, read_shard, read_tokenizer, write_checkpoint, write_debug_state,
    write_optimizer_state, write_shard, write_shard_parts, write_tokenizer,
)

CONFIG = GPT2Config(max_seq_len=16, vocab_size=100, padded_vocab_size=128, num_layers=2,
                    num_heads=2, channels=8)
NPARAMS = sum(param_sizes(CONFIG))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def header_ints(path):
    with open(path, "rb") as f:
        return struct.unpack("<256i", f.read(1024))


def write_raw(path, header_values, payload=b""):
    """A file with a hand-made llm.c header (the given leading ints, zeros after) and payload."""
    ints = list(header_values) + [0] * (256 - len(header_values))
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *ints))
        f.write(payload)
    return path


def chop(path, nbytes):
    """Drop the last nbytes of a file."""
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - nbytes)


def append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def config_header(config, version=3):
    c = config
    return [20240326, version, c.max_seq_len, c.vocab_size, c.num_layers, c.num_heads,
            c.channels, c.padded_vocab_size]


# ----------------------------------------------------------------------------------------------
# atomic_write

def test_atomic_write_replaces_on_success(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new contents")
        assert path.read_bytes() == b"old"  # nothing visible until the block ends
    assert path.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_exception_leaves_nothing(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_write_exception_keeps_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failed_write_leaves_nothing(tmp_path):
    """A writer that rejects its input midway (inside atomic_write) leaves no files either."""
    with pytest.raises(ValueError):
        write_shard(tmp_path / "s.bin", np.array([1, 2, 70000]))
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# model checkpoint

def test_checkpoint_round_trip_fp32(tmp_path, rng):
    params = rng.standard_normal(NPARAMS).astype(np.float32)
    path = tmp_path / "model.bin"
    write_checkpoint(path, CONFIG, params)
    config, back = read_checkpoint(path)
    assert config == CONFIG
    assert back.dtype == np.float32 and back.shape == (NPARAMS,)
    np.testing.assert_array_equal(back, params)


def test_checkpoint_layout_bytes(tmp_path, rng):
    """The file is exactly llm.c's: 256 int32 header with the config at [2..7], then fp32."""
    params = rng.standard_normal(NPARAMS).astype(np.float32)
    path = tmp_path / "model.bin"
    write_checkpoint(path, CONFIG, params)
    assert os.path.getsize(path) == 1024 + 4 * NPARAMS
    h = header_ints(path)
    assert h[:8] == (20240326, 3, 16, 100, 2, 2, 8, 128)
    assert not any(h[8:])
    raw = path.read_bytes()
    np.testing.assert_array_equal(np.frombuffer(raw[1024:], dtype="<f4"), params)


def test_checkpoint_round_trip_bf16(tmp_path, rng):
    params = rng.standard_normal(NPARAMS).astype(np.float32)
    path = tmp_path / "model_bf16.bin"
    write_checkpoint(path, CONFIG, params, dtype="bfloat16")
    assert os.path.getsize(path) == 1024 + 2 * NPARAMS
    assert header_ints(path)[1] == 5
    config, back = read_checkpoint(path)
    assert config == CONFIG
    # bf16 keeps 8 significant bits: round-to-nearest is off by at most 2^-8 relative
    np.testing.assert_allclose(back, params, rtol=2.0**-8, atol=0)
    np.testing.assert_array_equal(back, bf16_to_fp32(fp32_to_bf16(params)))
    assert not np.array_equal(back, params)


def test_bf16_read_of_handmade_file(tmp_path, rng):
    """Write a version-5 file by hand, as llm.c does, and check the exact upcast (bits << 16)."""
    bits = rng.integers(0, 2**16, NPARAMS, dtype=np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] = 0x3F80  # no inf/NaN, so values compare with ==
    path = write_raw(tmp_path / "bf16.bin", config_header(CONFIG, version=5),
                     bits.astype("<u2").tobytes())
    _, params = read_checkpoint(path)
    expected = np.array([struct.unpack("<f", struct.pack("<I", int(b) << 16))[0]
                         for b in bits[:200]], dtype=np.float32)
    np.testing.assert_array_equal(params[:200], expected)
    np.testing.assert_array_equal(params.view(np.uint32) >> 16, bits)
    np.testing.assert_array_equal(params.view(np.uint32) & 0xFFFF, 0)


def test_fp32_to_bf16_rounds_to_nearest_even():
    one = 0x3F800000
    cases = {
        one: 0x3F80,              # exact
        one + 0x7FFF: 0x3F80,     # below half: down
        one + 0x8000: 0x3F80,     # exactly half, even below: stays
        one + 0x8001: 0x3F81,     # above half: up
        one + 0x18000: 0x3F82,    # exactly half, odd below: up to even
        0x7F7FFFFF: 0x7F80,       # float max rounds to inf, as torch does
        0xC0490FDB: 0xC049,       # -pi
    }
    x = np.array(list(cases), dtype=np.uint32).view(np.float32)
    np.testing.assert_array_equal(fp32_to_bf16(x), np.array(list(cases.values()), np.uint16))
    nan = fp32_to_bf16(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bf16_to_fp32(nan)).all()


def test_write_checkpoint_rejects_wrong_size(tmp_path):
    with pytest.raises(ValueError, match=str(NPARAMS)):
        write_checkpoint(tmp_path / "m.bin", CONFIG, np.zeros(NPARAMS - 1, np.float32))
    with pytest.raises(ValueError, match="dtype"):
        write_checkpoint(tmp_path / "m.bin", CONFIG, np.zeros(NPARAMS, np.float32), "float16")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def good_checkpoint(tmp_path, rng):
    path = tmp_path / "model.bin"
    write_checkpoint(path, CONFIG, rng.standard_normal(NPARAMS).astype(np.float32))
    return path


def test_checkpoint_missing(tmp_path):
    with pytest.raises(FormatError, match=r"nothere\.bin: no such file"):
        read_checkpoint(tmp_path / "nothere.bin")


def test_checkpoint_too_short_for_header(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(FormatError, match=r"short\.bin: too short for a header: 100 bytes"):
        read_checkpoint(path)


def test_checkpoint_bad_magic(tmp_path):
    path = write_raw(tmp_path / "model.bin", [123, 3])
    with pytest.raises(FormatError, match=r"model\.bin: bad magic 123 \(expected 20240326"):
        read_checkpoint(path)


def test_checkpoint_magic_of_another_llmc_file(tmp_path):
    path = tmp_path / "shard.bin"
    write_shard(path, np.arange(10))
    with pytest.raises(FormatError, match=r"shard\.bin: bad magic 20240520.*looks like an llm.c "
                                          r"data shard"):
        read_checkpoint(path)


def test_checkpoint_bad_version(tmp_path):
    path = write_raw(tmp_path / "model.bin", config_header(CONFIG, version=4))
    with pytest.raises(FormatError, match=r"model\.bin: unknown version 4"):
        read_checkpoint(path)


@pytest.mark.parametrize("index,value,what", [
    (2, 0, "max_seq_len"), (3, -5, "vocab_size"), (4, 0, "num_layers"), (5, 0, "num_heads"),
    (6, -1, "channels"), (7, 0, "padded_vocab_size"), (7, 99, "padded_vocab_size 99 < vocab"),
    (5, 3, "not divisible"),
])
def test_checkpoint_nonsense_header(tmp_path, index, value, what):
    h = config_header(CONFIG)
    h[index] = value
    path = write_raw(tmp_path / "model.bin", h)
    with pytest.raises(FormatError, match=rf"model\.bin: nonsense header: .*{what}"):
        read_checkpoint(path)
    # the one check of a model shape is GPT2Config's: the header's error is its message
    fields = dict(zip(["max_seq_len", "vocab_size", "num_layers", "num_heads", "channels",
                       "padded_vocab_size"], h[2:8]))
    with pytest.raises(ValueError) as e:
        GPT2Config(**fields)
    with pytest.raises(FormatError, match=re.escape(str(e.value))):
        read_checkpoint(path)


def test_checkpoint_truncated(good_checkpoint):
    chop(good_checkpoint, 4)
    with pytest.raises(FormatError, match=rf"model\.bin: truncated: header says {NPARAMS} floats "
                                          rf"of parameters.*file holds {1024 + 4 * NPARAMS - 4}"):
        read_checkpoint(good_checkpoint)


def test_checkpoint_header_only(tmp_path):
    path = write_raw(tmp_path / "model.bin", config_header(CONFIG))
    with pytest.raises(FormatError, match=r"model\.bin: truncated.*file holds 1024"):
        read_checkpoint(path)


def test_checkpoint_extra_bytes(good_checkpoint):
    append(good_checkpoint, b"\x01\x02\x03")
    with pytest.raises(FormatError, match=r"model\.bin: 3 extra bytes"):
        read_checkpoint(good_checkpoint)


def test_checkpoint_bf16_truncated(tmp_path, rng):
    path = tmp_path / "m16.bin"
    write_checkpoint(path, CONFIG, rng.standard_normal(NPARAMS), dtype="bfloat16")
    chop(path, 2)
    with pytest.raises(FormatError, match=rf"m16\.bin: truncated: header says {NPARAMS} bfloat16"):
        read_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# debug state

def random_state(rng, B=3, T=5):
    V = CONFIG.vocab_size
    return dict(
        x=rng.integers(0, V, (B, T)).astype(np.int32),
        y=rng.integers(0, V, (B, T)).astype(np.int32),
        logits=rng.standard_normal((B, T, V)).astype(np.float32),
        loss=float(np.float32(rng.uniform(1, 5))),
        grads=rng.standard_normal(NPARAMS).astype(np.float32),
    )


@pytest.fixture
def good_state(tmp_path, rng):
    path = tmp_path / "state.bin"
    write_debug_state(path, CONFIG, **random_state(rng))
    return path


def test_debug_state_round_trip(tmp_path, rng):
    s = random_state(rng)
    path = tmp_path / "state.bin"
    write_debug_state(path, CONFIG, **s)
    back = read_debug_state(path, CONFIG)
    assert (back["B"], back["T"]) == (3, 5)
    for name in ("x", "y"):
        assert back[name].dtype == np.int32
        np.testing.assert_array_equal(back[name], s[name])
    assert back["logits"].dtype == np.float32 and back["logits"].shape == (3, 5, 100)
    np.testing.assert_array_equal(back["logits"], s["logits"])
    assert back["loss"] == s["loss"]
    assert back["grads"].dtype == np.float32 and back["grads"].shape == (NPARAMS,)
    np.testing.assert_array_equal(back["grads"], s["grads"])


def test_debug_state_layout_bytes(tmp_path, rng):
    s = random_state(rng)
    path = tmp_path / "state.bin"
    write_debug_state(path, CONFIG, **s)
    B, T, V = 3, 5, 100
    assert os.path.getsize(path) == 1024 + 4 * (2 * B * T + B * T * V + 1 + NPARAMS)
    h = header_ints(path)
    assert h[:4] == (20240327, 2, B, T) and not any(h[4:])
    raw = path.read_bytes()
    ints = np.frombuffer(raw[1024:1024 + 8 * B * T], dtype="<i4")
    np.testing.assert_array_equal(ints[:B * T], s["x"].ravel())
    np.testing.assert_array_equal(ints[B * T:], s["y"].ravel())
    floats = np.frombuffer(raw[1024 + 8 * B * T:], dtype="<f4")
    np.testing.assert_array_equal(floats[:B * T * V], s["logits"].ravel())
    assert floats[B * T * V] == np.float32(s["loss"])
    np.testing.assert_array_equal(floats[B * T * V + 1:], s["grads"])


def test_debug_state_accepts_padded_logits(tmp_path, rng):
    s = random_state(rng)
    padded = rng.standard_normal((3, 5, CONFIG.padded_vocab_size)).astype(np.float32)
    padded[:, :, :100] = s["logits"]
    s["logits"] = padded
    write_debug_state(tmp_path / "state.bin", CONFIG, **s)
    back = read_debug_state(tmp_path / "state.bin", CONFIG)
    np.testing.assert_array_equal(back["logits"], padded[:, :, :100])


def test_write_debug_state_rejects_bad_shapes(tmp_path, rng):
    s = random_state(rng)
    with pytest.raises(ValueError, match="logits"):
        write_debug_state(tmp_path / "s.bin", CONFIG, **{**s, "logits": s["logits"][:, :, :50]})
    with pytest.raises(ValueError, match="grads"):
        write_debug_state(tmp_path / "s.bin", CONFIG, **{**s, "grads": s["grads"][:-1]})
    with pytest.raises(ValueError, match="x and y"):
        write_debug_state(tmp_path / "s.bin", CONFIG, **{**s, "y": s["y"][:, :4]})
    bad_x = s["x"].copy()
    bad_x[0, 0] = 100
    with pytest.raises(ValueError, match="outside"):
        write_debug_state(tmp_path / "s.bin", CONFIG, **{**s, "x": bad_x})
    assert os.listdir(tmp_path) == []


def test_debug_state_missing(tmp_path):
    with pytest.raises(FormatError, match=r"gone\.bin: no such file"):
        read_debug_state(tmp_path / "gone.bin", CONFIG)


def test_debug_state_bad_magic(good_checkpoint):
    with pytest.raises(FormatError, match=r"model\.bin: bad magic 20240326 \(expected 20240327"):
        read_debug_state(good_checkpoint, CONFIG)


def test_debug_state_bad_version(tmp_path):
    path = write_raw(tmp_path / "state.bin", [20240327, 1, 3, 5])
    with pytest.raises(FormatError, match=r"state\.bin: unknown version 1"):
        read_debug_state(path, CONFIG)


def test_debug_state_too_short(tmp_path):
    path = tmp_path / "state.bin"
    path.write_bytes(struct.pack("<4i", 20240327, 2, 3, 5))
    with pytest.raises(FormatError, match=r"state\.bin: too short for a header: 16 bytes"):
        read_debug_state(path, CONFIG)


def test_debug_state_truncated(good_state):
    chop(good_state, 1)
    with pytest.raises(FormatError, match=r"state\.bin: truncated: header says B=3, T=5"):
        read_debug_state(good_state, CONFIG)


def test_debug_state_extra_bytes(good_state):
    append(good_state, b"\x00" * 8)
    with pytest.raises(FormatError, match=r"state\.bin: 8 extra bytes"):
        read_debug_state(good_state, CONFIG)


def test_debug_state_for_another_model(good_state):
    """The size depends on the model: a state read with the wrong config is a size mismatch."""
    other = GPT2Config(max_seq_len=16, vocab_size=100, padded_vocab_size=128, num_layers=3,
                       num_heads=2, channels=8)
    with pytest.raises(FormatError, match=r"state\.bin: truncated"):
        read_debug_state(good_state, other)


@pytest.mark.parametrize("B,T,what", [(0, 5, "B = 0"), (3, -1, "T = -1"), (1, 17, "T = 17")])
def test_debug_state_nonsense_header(tmp_path, B, T, what):
    path = write_raw(tmp_path / "state.bin", [20240327, 2, B, T])
    with pytest.raises(FormatError, match=rf"state\.bin: .*{what}"):
        read_debug_state(path, CONFIG)


def test_debug_state_token_out_of_range(good_state):
    with open(good_state, "r+b") as f:
        f.seek(1024 + 4 * 15 + 4 * 2)  # y[0, 2]
        f.write(struct.pack("<i", 100))
    with pytest.raises(FormatError, match=r"state\.bin: y holds token id 100, outside \[0, 100\)"):
        read_debug_state(good_state, CONFIG)


# ----------------------------------------------------------------------------------------------
# tokenizer

def random_tokens(rng, n):
    return [bytes(rng.integers(0, 256, rng.integers(1, 20)).astype(np.uint8)) for _ in range(n)]


def test_tokenizer_round_trip(tmp_path, rng):
    tokens = random_tokens(rng, 300)
    tokens[7] = bytes(range(255))  # the longest a token can be
    tokens[8] = b"\x00"            # a NUL byte is a fine token
    write_tokenizer(tmp_path / "tok.bin", tokens, eot_token=299)
    back, eot = read_tokenizer(tmp_path / "tok.bin")
    assert back == tokens and eot == 299


def test_tokenizer_layout_bytes(tmp_path):
    write_tokenizer(tmp_path / "tok.bin", [b"a", b"bc", b"<|end|>"], eot_token=2)
    h = header_ints(tmp_path / "tok.bin")
    assert h[:4] == (20240328, 2, 3, 2) and not any(h[4:])
    assert (tmp_path / "tok.bin").read_bytes()[1024:] == b"\x01a\x02bc\x07<|end|>"


def test_tokenizer_version1_means_gpt2_eot(tmp_path):
    tokens = [bytes([i % 256]) * (1 + i % 3) for i in range(50257)]
    payload = b"".join(bytes([len(t)]) + t for t in tokens)
    path = write_raw(tmp_path / "tok1.bin", [20240328, 1, 50257, 777], payload)
    back, eot = read_tokenizer(path)
    assert back == tokens and eot == 50256


def test_tokenizer_version1_other_size(tmp_path):
    path = write_raw(tmp_path / "tok1.bin", [20240328, 1, 2], b"\x01a\x01b")
    with pytest.raises(FormatError, match=r"tok1\.bin: version 1 tokenizer with 2 tokens"):
        read_tokenizer(path)


def test_write_tokenizer_rejects_bad_tokens(tmp_path):
    with pytest.raises(ValueError, match="256 bytes"):
        write_tokenizer(tmp_path / "t.bin", [b"a", b"x" * 256], 0)
    with pytest.raises(ValueError, match="0 bytes"):
        write_tokenizer(tmp_path / "t.bin", [b"a", b""], 0)
    with pytest.raises(ValueError, match="eot_token"):
        write_tokenizer(tmp_path / "t.bin", [b"a", b"b"], 2)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def good_tokenizer(tmp_path, rng):
    path = tmp_path / "tok.bin"
    write_tokenizer(path, random_tokens(rng, 50), eot_token=49)
    return path


def test_tokenizer_missing(tmp_path):
    with pytest.raises(FormatError, match=r"tok\.bin: no such file"):
        read_tokenizer(tmp_path / "tok.bin")


def test_tokenizer_bad_magic(tmp_path):
    path = write_raw(tmp_path / "tok.bin", [20240327, 2, 1, 0], b"\x01a")
    with pytest.raises(FormatError, match=r"tok\.bin: bad magic 20240327 \(expected 20240328"):
        read_tokenizer(path)


def test_tokenizer_bad_version(tmp_path):
    path = write_raw(tmp_path / "tok.bin", [20240328, 3, 1, 0], b"\x01a")
    with pytest.raises(FormatError, match=r"tok\.bin: unknown version 3"):
        read_tokenizer(path)


def test_tokenizer_too_short(tmp_path):
    path = tmp_path / "tok.bin"
    path.write_bytes(b"")
    with pytest.raises(FormatError, match=r"tok\.bin: too short for a header: 0 bytes"):
        read_tokenizer(path)


def test_tokenizer_truncated(good_tokenizer):
    chop(good_tokenizer, 1)
    with pytest.raises(FormatError, match=r"tok\.bin: truncated: header says 50 tokens"):
        read_tokenizer(good_tokenizer)


def test_tokenizer_truncated_at_token_boundary(tmp_path):
    path = write_raw(tmp_path / "tok.bin", [20240328, 2, 3, 0], b"\x01a\x02bc")
    with pytest.raises(FormatError, match=r"tok\.bin: truncated: header says 3 tokens.*after 2"):
        read_tokenizer(path)


def test_tokenizer_extra_bytes(good_tokenizer):
    append(good_tokenizer, b"\x01z")
    with pytest.raises(FormatError, match=r"tok\.bin: 2 extra bytes"):
        read_tokenizer(good_tokenizer)


def test_tokenizer_zero_length_token(tmp_path):
    path = write_raw(tmp_path / "tok.bin", [20240328, 2, 2, 0], b"\x01a\x00")
    with pytest.raises(FormatError, match=r"tok\.bin: token 1 has length 0"):
        read_tokenizer(path)


def test_tokenizer_eot_out_of_range(tmp_path):
    path = write_raw(tmp_path / "tok.bin", [20240328, 2, 2, 5], b"\x01a\x01b")
    with pytest.raises(FormatError, match=r"tok\.bin: EOT token 5"):
        read_tokenizer(path)


# ----------------------------------------------------------------------------------------------
# data shard

def test_shard_round_trip(tmp_path, rng):
    tokens = rng.integers(0, 2**16, 1000)
    tokens[:2] = [0, 65535]
    write_shard(tmp_path / "shard.bin", tokens)
    back = read_shard(tmp_path / "shard.bin")
    assert back.dtype == np.uint16 and back.shape == (1000,)
    np.testing.assert_array_equal(back, tokens)
    with pytest.raises(ValueError):  # read-only
        back[0] = 1


def test_shard_layout_bytes(tmp_path):
    write_shard(tmp_path / "shard.bin", [50256, 1, 2, 3, 40000])
    assert os.path.getsize(tmp_path / "shard.bin") == 1024 + 2 * 5
    h = header_ints(tmp_path / "shard.bin")
    assert h[:3] == (20240520, 1, 5) and not any(h[3:])
    assert (tmp_path / "shard.bin").read_bytes()[1024:] == struct.pack("<5H", 50256, 1, 2, 3, 40000)


def test_write_shard_rejects_bad_tokens(tmp_path):
    with pytest.raises(ValueError, match="65536"):
        write_shard(tmp_path / "s.bin", [1, 65536])
    with pytest.raises(ValueError, match="-1"):
        write_shard(tmp_path / "s.bin", [1, -1])
    with pytest.raises(ValueError, match="non-empty"):
        write_shard(tmp_path / "s.bin", [])
    with pytest.raises(ValueError, match="integers"):
        write_shard(tmp_path / "s.bin", [1.5])
    assert os.listdir(tmp_path) == []


def test_write_shard_parts_streams_one_shard(tmp_path, rng):
    tokens = rng.integers(0, 2**16, 1000)
    parts = (tokens[i:j] for i, j in [(0, 300), (300, 300), (300, 999), (999, 1000)])
    assert write_shard_parts(tmp_path / "parts.bin", parts) == 1000
    write_shard(tmp_path / "whole.bin", tokens)
    assert (tmp_path / "parts.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()
    # a bad part, or no tokens at all: nothing written
    with pytest.raises(ValueError, match="65536"):
        write_shard_parts(tmp_path / "bad.bin", iter([tokens[:5], np.array([65536])]))
    with pytest.raises(ValueError, match="no tokens"):
        write_shard_parts(tmp_path / "none.bin", [np.zeros(0, dtype=np.uint16)])
    assert sorted(os.listdir(tmp_path)) == ["parts.bin", "whole.bin"]


@pytest.fixture
def good_shard(tmp_path, rng):
    path = tmp_path / "shard.bin"
    write_shard(path, rng.integers(0, 50257, 100))
    return path


def test_shard_missing(tmp_path):
    with pytest.raises(FormatError, match=r"shard\.bin: no such file"):
        read_shard(tmp_path / "shard.bin")


def test_shard_bad_magic(good_tokenizer):
    with pytest.raises(FormatError, match=r"tok\.bin: bad magic 20240328 \(expected 20240520"):
        read_shard(good_tokenizer)


def test_shard_llama3_magic(tmp_path):
    path = write_raw(tmp_path / "llama.bin", [20240801, 7, 2], b"\x00" * 8)
    with pytest.raises(FormatError, match=r"llama\.bin: bad magic 20240801.*LLaMA-3"):
        read_shard(path)


def test_shard_bad_version(tmp_path):
    path = write_raw(tmp_path / "shard.bin", [20240520, 2, 1], b"\x00\x00")
    with pytest.raises(FormatError, match=r"shard\.bin: unknown version 2"):
        read_shard(path)


def test_shard_too_short(tmp_path):
    path = tmp_path / "shard.bin"
    path.write_bytes(b"\x00" * 1023)
    with pytest.raises(FormatError, match=r"shard\.bin: too short for a header: 1023 bytes"):
        read_shard(path)


def test_shard_truncated(good_shard):
    chop(good_shard, 2)
    with pytest.raises(FormatError, match=r"shard\.bin: truncated: header says 100 tokens.*"
                                          r"needs 1224 bytes, file holds 1222"):
        read_shard(good_shard)


def test_shard_extra_bytes(good_shard):
    append(good_shard, b"\x00\x00")
    with pytest.raises(FormatError, match=r"shard\.bin: 2 extra bytes"):
        read_shard(good_shard)


@pytest.mark.parametrize("ntok", [0, -3])
def test_shard_count_nonsense(tmp_path, ntok):
    path = write_raw(tmp_path / "shard.bin", [20240520, 1, ntok])
    with pytest.raises(FormatError, match=rf"shard\.bin: header says {ntok} tokens"):
        read_shard(path)


def test_shard_count_mismatch(tmp_path):
    path = write_raw(tmp_path / "shard.bin", [20240520, 1, 10], b"\x01\x00" * 12)
    with pytest.raises(FormatError, match=r"shard\.bin: 4 extra bytes after the data: header says "
                                          r"10 tokens"):
        read_shard(path)


def test_format_error_is_value_error():
    assert issubclass(FormatError, ValueError)


# ----------------------------------------------------------------------------------------------
# optimizer state (train_gpt2.cu's save_state): header, m, v

def test_optimizer_state_round_trip_and_layout_bytes(tmp_path, rng):
    n = 37
    m, v = rng.standard_normal(n).astype(np.float32), rng.random(n).astype(np.float32)
    path = tmp_path / "state.bin"
    write_optimizer_state(path, 12, m, v, rng_state=2**40 + 3, shard=2, sample=5, num_processes=4,
                          process_rank=3)
    h = header_ints(path)
    assert h[:6] == (20240527, 1, 4, 3, 0, 0) and h[10] == 12
    assert struct.unpack("<3Q", struct.pack("<6i", *h[20:22], *h[30:34])) == (2**40 + 3, 2, 5)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 8 * n
    assert raw[1024:1024 + 4 * n] == m.tobytes() and raw[1024 + 4 * n:] == v.tobytes()
    st = read_optimizer_state(path, n, step=12)
    assert st["step"] == 12 and st["rng_state"] == 2**40 + 3 and not st["shuffle"]
    np.testing.assert_array_equal(st["m"], m)
    np.testing.assert_array_equal(st["v"], v)


def test_optimizer_state_with_master_weights_round_trip_and_layout_bytes(tmp_path, rng, monkeypatch):
    # llm.c's -w 1 (its default): header[4] = 1 and the fp32 master weights after v, before the
    # shuffle data; header[22] (the rng before the last update) beside header[20]
    n = 29
    m, v, w = rng.standard_normal(n).astype(np.float32), rng.random(n).astype(np.float32), \
        rng.standard_normal(n).astype(np.float32)
    tail = b"shuffle data"
    path = tmp_path / "state.bin"
    with pytest.raises(ValueError, match="master weights"):
        write_optimizer_state(path, 3, m, v, master_weights=w[:-1])
    write_optimizer_state(path, 3, m, v, rng_state=77, master_weights=w, shuffle=True, shuffle_tail=tail)
    h = header_ints(path)
    assert h[:6] == (20240527, 1, 1, 0, 1, 1) and h[10] == 3 and h[20:24] == (77, 0, 77, 0)
    raw = path.read_bytes()
    assert raw[1024:] == m.tobytes() + v.tobytes() + w.tobytes() + tail
    from llmnb import formats   # (the tail's own layout is DataLoader's test: any bytes here)
    monkeypatch.setattr(formats, "check_shuffle_tail", lambda path, tail: None)
    st = read_optimizer_state(path, n, step=3)
    np.testing.assert_array_equal(st["master_weights"], w)
    np.testing.assert_array_equal(st["v"], v)
    assert st["shuffle_tail"] == tail
    write_optimizer_state(path, 3, m, v, master_weights=w)
    assert read_optimizer_state(path, n)["master_weights"] is not None
    with pytest.raises(FormatError, match="truncated.*m, v and the master weights of 30 parameters"):
        read_optimizer_state(path, n + 1)
    write_optimizer_state(path, 3, m, v)
    assert read_optimizer_state(path, n)["master_weights"] is None
    w[5] = np.inf
    write_optimizer_state(path, 3, m, v, master_weights=w)
    with pytest.raises(FormatError, match="the master weights holds non-finite values.*at 1 parameters"):
        read_optimizer_state(path, n)
    write_raw(path, [20240527, 1, 1, 0, 2])
    with pytest.raises(FormatError, match="master-weights flag is 2"):
        read_optimizer_state(path, 0)


def test_optimizer_state_is_told_from_a_debug_state(tmp_path, rng, good_state):
    # llm.c has two state files with two magics (20240327 debug, 20240527 optimizer): one reader
    # each, and each names the other when handed it
    with pytest.raises(FormatError, match="expected 20240527.*looks like an llm.c debug state"):
        read_optimizer_state(good_state, NPARAMS)
    path = tmp_path / "state.bin"
    write_optimizer_state(path, 1, np.zeros(NPARAMS, np.float32), np.zeros(NPARAMS, np.float32))
    with pytest.raises(FormatError, match="expected 20240327.*looks like an llm.c optimizer state"):
        read_debug_state(path, CONFIG)


def test_optimizer_state_errors(tmp_path):
    path = tmp_path / "state.bin"
    write_optimizer_state(path, 3, np.zeros(10, np.float32), np.ones(10, np.float32))
    with pytest.raises(FormatError, match="truncated"):
        read_optimizer_state(path, 11)
    with pytest.raises(FormatError, match="8 bytes too many"):
        read_optimizer_state(path, 9)
    with pytest.raises(FormatError, match="says step 3.*step 4"):
        read_optimizer_state(path, 10, step=4)
    write_raw(path, [20240527, 2])
    with pytest.raises(FormatError, match="unknown version 2"):
        read_optimizer_state(path, 0)
