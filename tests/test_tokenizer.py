"""The GPT-2 tokenizer: llm.c's gpt2_tokenizer.bin against tiktoken, and printing tokens as safe_printf."""
import os
from pathlib import Path

# tiktoken reads its cache dir when an encoding is first loaded: point it at the offline copy
os.environ.setdefault("TIKTOKEN_CACHE_DIR",
                      str(Path(__file__).resolve().parents[1].parent / "shared" / "tiktoken"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from llmnb import formats  # noqa: E402
from llmnb.prepro import ensure_tokenizer_file  # noqa: E402
from llmnb.tokenizer import StreamDecoder, Tokenizer, load_tokenizer  # noqa: E402


def text(tok, ids):
    """The text of a sequence of ids (invalid UTF-8 replaced with U+FFFD)."""
    return b"".join(tok.decode(int(i)) for i in ids).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def enc():
    tiktoken = pytest.importorskip("tiktoken")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline without a cache
        pytest.skip(f"tiktoken gpt2 encoding unavailable: {e}")


@pytest.fixture(scope="module")
def tokenizer_file(enc, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return Path(ensure_tokenizer_file(str(d), log=lambda *a: None))


def test_file_is_llmc_format(tokenizer_file, enc):
    raw = tokenizer_file.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:4]) == [20240328, 2, 50257, 50256]
    # first token: b"!" (id 0) as length byte + bytes
    assert raw[1024:1026] == bytes([1]) + enc.decode_bytes([0])
    assert len(raw) == 1024 + sum(1 + len(enc.decode_bytes([i])) for i in range(enc.n_vocab))


def test_file_decode_equals_tiktoken(tokenizer_file, enc):
    tok = Tokenizer.from_file(tokenizer_file)
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert not tok.can_encode
    ids = np.random.default_rng(0).integers(0, 50257, size=3000)
    for i in list(ids) + [0, 50255, 50256]:
        assert tok.decode(int(i)) == enc.decode_bytes([int(i)])
    seq = [int(i) for i in ids[:400]]
    assert text(tok, seq) == enc.decode(seq)  # both replace invalid UTF-8 with U+FFFD


def test_tiktoken_tokenizer_roundtrip(enc):
    tok = Tokenizer.tiktoken()
    assert tok.vocab_size == 50257 and tok.eot_token == 50256 and tok.can_encode
    text_in = "First Citizen:\nBefore we proceed — any further, hear me speak. 日本語 <|endoftext|>"
    ids = tok.encode(text_in)
    assert ids == enc.encode_ordinary(text_in)
    assert 50256 not in ids  # the special token's text is ordinary text
    assert text(tok, ids) == text_in
    assert tok.decode(50256) == b"<|endoftext|>"


def test_errors(tokenizer_file, tmp_path):
    tok = Tokenizer.from_file(tokenizer_file)
    with pytest.raises(RuntimeError, match="can only decode"):
        tok.encode("hello")
    with pytest.raises(ValueError, match="invalid token id 50257"):
        tok.decode(50257)
    with pytest.raises(ValueError, match="invalid token id -1"):
        tok.decode(-1)
    with pytest.raises(formats.FormatError, match="no such file"):
        Tokenizer.from_file(tmp_path / "missing.bin")


def test_load_tokenizer(tokenizer_file, tmp_path, enc):
    from_file = load_tokenizer(str(tokenizer_file.parent))
    assert from_file.source == str(tokenizer_file) and not from_file.can_encode
    fallback = load_tokenizer(str(tmp_path))  # no gpt2_tokenizer.bin there
    assert fallback.can_encode
    assert fallback.token_table == from_file.token_table


def test_small_table():
    tok = Tokenizer([b"a", b"bc", b"\xe2\x80", b"\x99", b"<eot>"], eot_token=4)
    assert tok.vocab_size == 5 and tok.eot_token == 4
    assert text(tok, [1, 0, 2, 3]) == "bca\u2019"
    with pytest.raises(ValueError, match="eot token 5"):
        Tokenizer([b"a"] * 5, eot_token=5)


def test_stream_decoder_filters_single_bytes_as_safe_printf():
    def printed(piece):
        d = StreamDecoder()
        return d.feed(piece) + d.flush()
    assert printed(b"") == ""
    assert printed(b"a") == "a"
    assert printed(b" ") == " "
    for ws in b"\t\n\v\f\r":
        assert printed(bytes([ws])) == chr(ws)
    for bad in (0x00, 0x07, 0x08, 0x1B, 0x7F):  # lone unprintable ASCII bytes print nothing
        assert printed(bytes([bad])) == "", hex(bad)
    # only single bytes are filtered: longer pieces print whole
    assert printed(b" hello") == " hello"
    assert printed(b"\x1b[") == "\x1b["
    assert printed("é".encode()) == "é"
    assert printed(b"\xe2\x80") == "\ufffd"  # half a character, never completed


def test_stream_decoder_joins_split_characters():
    d = StreamDecoder()
    pieces = [b"It", b"\xe2\x80", b"\x99", b"s", b"\x07", b" \xe6\x97", b"\xa5", b"\n"]
    out = "".join(d.feed(p) for p in pieces) + d.flush()
    assert out == "It\u2019s \u65e5\n"
    d = StreamDecoder()
    assert d.feed(b"\xe2\x80") == "" and d.flush() == "\ufffd"
