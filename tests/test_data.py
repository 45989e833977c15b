"""Data: the downloader (requests + urllib3 Retry + tqdm, against a local HTTP server), tinyshakespeare
tokenization, DataLoader."""
import http.server
import json
import os
import re
import socket
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tiktoken reads its cache dir when an encoding is first loaded: point it at the offline copy
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from llmnb import formats, prepro  # noqa: E402
from llmnb.data import DataLoader  # noqa: E402
from llmnb.download import DownloadError, download  # noqa: E402
from llmnb.rundir import read_log  # noqa: E402

TINYSHAKESPEARE = Path(os.environ.get("LLMNB_TINYSHAKESPEARE", "")
                       or REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")


def leftovers(directory):
    """Everything in a directory (temp files of an atomic write would show up here)."""
    return sorted(p.name for p in Path(directory).iterdir())


# ----------------------------------------------------------------------------
# a local HTTP server

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    flaky_hits = {}

    def log_message(self, *args):
        pass

    def _send(self, status, body, length=None):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/ok":
            self._send(200, PAYLOAD)
        elif self.path == "/missing":
            self._send(404, b"not here")
        elif self.path == "/drop":
            # promise the whole payload, send a third of it, hang up
            self._send(200, PAYLOAD[:100_000], length=len(PAYLOAD))
            self.close_connection = True
        elif self.path.startswith("/flaky"):
            # a 503 on the first request for each /flaky... path, then the payload
            n = self.flaky_hits.get(self.path, 0)
            self.flaky_hits[self.path] = n + 1
            self._send(503, b"busy") if n == 0 else self._send(200, PAYLOAD)
        elif self.path == "/always500":
            self._send(500, b"broken")
        elif self.path == "/shakespeare":
            self._send(200, TINYSHAKESPEARE.read_bytes())
        else:
            self._send(404, b"?")


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that hang up early (after a 5xx, say) are expected here


@pytest.fixture(scope="module")
def server():
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


FAST = dict(timeout=5, retries=2, backoff=0.01)


def test_download_ok(server, tmp_path, capsys):
    path = tmp_path / "sub" / "file.bin"
    assert download(f"{server}/ok", path, chunk=4096, **FAST) == str(path)
    assert path.read_bytes() == PAYLOAD
    assert leftovers(path.parent) == ["file.bin"]
    err = capsys.readouterr().err  # tqdm's bar: the file's name, ending at 100% of the size
    assert "file.bin" in err and "100%" in err and "293k/293k" in err


def test_download_quiet_and_replaces(server, tmp_path, capsys):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    download(f"{server}/ok", path, progress=False, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert capsys.readouterr().err == ""


def test_download_404_no_retry(server, tmp_path, capsys):
    path = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as e:
        download(f"{server}/missing", path, **FAST)
    msg = str(e.value)
    assert f"{server}/missing" in msg and "404" in msg and "\n" not in msg
    assert "retrying" not in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_download_dropped_connection(server, tmp_path, capsys):
    # a body cut short is not retried (urllib3's Retry ends when the response starts): one clear
    # line, and no partial file or temp file left
    path = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as e:
        download(f"{server}/drop", path, **FAST)
    msg = str(e.value)
    assert f"{server}/drop" in msg and "\n" not in msg
    assert re.search(r"connection (broken|closed)", msg)
    assert "retrying" not in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_download_existing_file_kept_on_failure(server, tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(DownloadError):
        download(f"{server}/drop", path, **FAST)
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == ["file.bin"]


def test_download_retries_5xx(server, tmp_path, capsys):
    path = tmp_path / "file.bin"
    download(f"{server}/flaky-1", path, progress=False, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert "HTTP 503" in capsys.readouterr().err  # said that it retried, and why
    with pytest.raises(DownloadError, match="after 3 attempts: HTTP 500"):
        download(f"{server}/always500", tmp_path / "other.bin", **FAST)
    assert capsys.readouterr().err.count("retrying") == 2
    assert leftovers(tmp_path) == ["file.bin"]


def test_download_connection_refused(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"
    with pytest.raises(DownloadError) as e:
        download(url, tmp_path / "x", **FAST)
    assert url in str(e.value) and "after 3 attempts" in str(e.value) and "\n" not in str(e.value)
    assert capsys.readouterr().err.count("retrying") == 2  # connection errors are retried too
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------
# tinyshakespeare

@pytest.fixture(scope="module")
def shakespeare_text():
    if not TINYSHAKESPEARE.is_file():
        pytest.skip(f"tinyshakespeare text not found at {TINYSHAKESPEARE}")
    pytest.importorskip("tiktoken")
    return TINYSHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shakespeare_tokens(shakespeare_text):
    try:
        return prepro.tokenize_text(shakespeare_text)
    except RuntimeError as e:  # tiktoken's gpt2 files unavailable offline
        pytest.skip(str(e))


def test_tinyshakespeare_tokens(shakespeare_text, shakespeare_tokens):
    tokens = shakespeare_tokens
    # llm.c's dev/data/tinyshakespeare.py: 32,768 val + 305,260 train tokens
    assert tokens.dtype == np.uint16 and len(tokens) == 32768 + 305260
    sections = shakespeare_text.split("\n\n")
    eot = tokens == 50256
    assert eot.sum() == len(sections) == 7222
    assert tokens[0] == 50256
    # an EOT before each section, and the rest decodes back to the text exactly
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    assert enc.decode(tokens[1:5].tolist()) == "First Citizen:\n"
    assert enc.decode(tokens[~eot].tolist()) == shakespeare_text
    starts = np.flatnonzero(eot)
    assert enc.decode(tokens[starts[1] + 1:starts[2]].tolist()) == sections[1] + "\n\n"
    # sections keep their trailing "\n\n" ("\n\n" is GPT-2 token 628), except the last
    assert all(tokens[s - 1] == 628 for s in starts[1:])


def test_ensure_tinyshakespeare(shakespeare_tokens, tmp_path):
    logs = []
    train, val = prepro.ensure_tinyshakespeare(tmp_path, source=TINYSHAKESPEARE, log=logs.append)
    assert Path(train) == tmp_path / "tinyshakespeare" / "tiny_shakespeare_train.bin"
    assert Path(val) == tmp_path / "tinyshakespeare" / "tiny_shakespeare_val.bin"
    v, t = formats.read_shard(val), formats.read_shard(train)
    assert len(v) == 32768 and len(t) == 305260
    assert os.path.getsize(val) == 66560 and os.path.getsize(train) == 611544  # as llm.c prints
    assert v[0] == 50256
    np.testing.assert_array_equal(np.concatenate([v, t]), shakespeare_tokens)
    assert (tmp_path / "tinyshakespeare" / "tiny_shakespeare.txt").read_bytes() == \
        TINYSHAKESPEARE.read_bytes()
    assert formats.read_tokenizer(tmp_path / "gpt2_tokenizer.bin")[1] == 50256
    assert any("32,768 tokens" in line for line in logs)
    # a second call finds the files and does nothing
    mtime = os.path.getmtime(train)
    logs.clear()
    assert prepro.ensure_tinyshakespeare(tmp_path, log=logs.append) == (train, val)
    assert logs == [] and os.path.getmtime(train) == mtime
    assert sorted(leftovers(tmp_path / "tinyshakespeare")) == [
        "tiny_shakespeare.txt", "tiny_shakespeare_train.bin", "tiny_shakespeare_val.bin"]


def test_prepro_downloads(shakespeare_tokens, server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LLMNB_TINYSHAKESPEARE", raising=False)
    monkeypatch.setattr(prepro, "TINYSHAKESPEARE_URL", f"{server}/shakespeare")
    assert prepro.main(["tinyshakespeare", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "downloading" in out and "305,260 tokens" in out
    t = formats.read_shard(tmp_path / "tinyshakespeare" / "tiny_shakespeare_train.bin")
    np.testing.assert_array_equal(t, shakespeare_tokens[32768:])
    # the text is there now: a second run skips the download (a dead URL proves it)
    monkeypatch.setattr(prepro, "TINYSHAKESPEARE_URL", f"{server}/missing")
    assert prepro.main(["tinyshakespeare", "--data-dir", str(tmp_path)]) == 0
    assert "skipping download" in capsys.readouterr().out


def test_prepro_env_source_and_errors(shakespeare_tokens, server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepro, "TINYSHAKESPEARE_URL", f"{server}/missing")
    monkeypatch.setenv("LLMNB_TINYSHAKESPEARE", str(tmp_path / "nope.txt"))
    assert prepro.main(["tinyshakespeare", "--data-dir", str(tmp_path / "d")]) == 1
    assert "nope.txt" in capsys.readouterr().err
    monkeypatch.delenv("LLMNB_TINYSHAKESPEARE")
    assert prepro.main(["tinyshakespeare", "--data-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert f"{server}/missing" in err and "404" in err
    assert not (tmp_path / "d" / "tinyshakespeare" / "tiny_shakespeare.txt").exists()
    monkeypatch.setenv("LLMNB_TINYSHAKESPEARE", str(TINYSHAKESPEARE))
    assert prepro.main(["tinyshakespeare", "--data-dir", str(tmp_path / "d")]) == 0


def test_prepro_input(tmp_path, capsys):
    pytest.importorskip("tiktoken")
    text = "".join(f"Paragraph {i}: some words, {i * i} of them.\nA second line.\n\n"
                   for i in range(40))
    src = tmp_path / "mine.txt"
    src.write_text(text, encoding="utf-8")
    try:
        expected = prepro.tokenize_text(text)
    except RuntimeError as e:
        pytest.skip(str(e))
    rc = prepro.main(["--input", str(src), "--data-dir", str(tmp_path / "data"),
                      "--val-tokens", "100"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "tokenizing" in err and "100%" in err  # tqdm's bar, in characters of text
    out_dir = tmp_path / "data" / "mine"
    v = formats.read_shard(out_dir / "mine_val.bin")
    t = formats.read_shard(out_dir / "mine_train.bin")
    assert len(v) == 100 and len(t) == len(expected) - 100
    np.testing.assert_array_equal(np.concatenate([v, t]), expected)
    assert (tmp_path / "data" / "gpt2_tokenizer.bin").exists()
    # too few tokens for the split: a clear error
    assert prepro.main(["--input", str(src), "--out-dir", str(tmp_path / "o"),
                        "--data-dir", str(tmp_path / "data"), "--val-tokens", "100000"]) == 1
    assert "pass a smaller --val-tokens" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------
# DataLoader on small synthetic shards

def make_shards(directory, sizes, seed=0):
    rng = np.random.default_rng(seed)
    shards = []
    for i, n in enumerate(sizes):
        tokens = rng.integers(0, 50257, size=n).astype(np.uint16)
        formats.write_shard(directory / f"x_{i:03d}.bin", tokens)
        shards.append(tokens)
    return shards, str(directory / "x_*.bin")


def batches_of(tokens, B, T):
    """Every batch llm.c reads from one shard, in order: windows of B*T+1 at multiples of B*T."""
    BT = B * T
    return [tokens[i * BT: i * BT + BT + 1].astype(np.int32) for i in range((len(tokens) - 1) // BT)]


def take(loader, n):
    out = []
    for _ in range(n):
        x, y = loader.next_batch()
        assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == y.shape == (loader.B, loader.T)
        np.testing.assert_array_equal(x.reshape(-1)[1:], y.reshape(-1)[:-1])  # shifted by one
        out.append(np.concatenate([x.reshape(-1), y.reshape(-1)[-1:]]))
    return out


def as_keys(batches):
    return [b.tobytes() for b in batches]


def test_loader_sequential_across_shards(tmp_path):
    B, T = 2, 3
    # 20 tokens: 3 batches (19 // 6); 13 tokens: 2 batches; 7 tokens: exactly one
    shards, pattern = make_shards(tmp_path, [20, 13, 7])
    loader = DataLoader(pattern, B, T)
    expected = sum((batches_of(s, B, T) for s in shards), [])
    assert len(expected) == 6 and len(loader) == 6 and loader.num_tokens == 40
    got = take(loader, 14)
    assert as_keys(got) == as_keys(expected + expected + expected[:2])  # wraps into epoch 2
    loader.reset()
    assert as_keys(take(loader, 6)) == as_keys(expected)


def test_loader_single_file_and_sorted_glob(tmp_path):
    shards, pattern = make_shards(tmp_path, [50, 30])
    loader = DataLoader(tmp_path / "x_001.bin", 1, 4)  # a plain path works too
    assert as_keys(take(loader, 7)) == as_keys(batches_of(shards[1], 1, 4))
    assert DataLoader(pattern, 1, 4).files == [str(tmp_path / "x_000.bin"), str(tmp_path / "x_001.bin")]


def test_loader_shuffle(tmp_path):
    B, T = 2, 4
    shards, pattern = make_shards(tmp_path, [81, 65, 97])  # 10, 8, 12 batches
    all_batches = sorted(as_keys(sum((batches_of(s, B, T) for s in shards), [])))
    a = DataLoader(pattern, B, T, shuffle=True, seed=7)
    b = DataLoader(pattern, B, T, shuffle=True, seed=7)
    c = DataLoader(pattern, B, T, shuffle=True, seed=8)
    n = len(a)
    assert n == 30
    ea1, ea2 = as_keys(take(a, n)), as_keys(take(a, n))
    assert [ea1, ea2] == [as_keys(take(b, n)), as_keys(take(b, n))]  # deterministic
    assert sorted(ea1) == sorted(ea2) == all_batches  # each epoch is every batch once
    assert ea1 != ea2  # re-shuffled each epoch
    assert as_keys(take(c, n)) != ea1  # another seed, another order
    sequential = as_keys(take(DataLoader(pattern, B, T), n))
    assert ea1 != sequential
    # batches of one shard stay together (shards are visited one at a time)
    owner = {k: i for i, s in enumerate(shards) for k in as_keys(batches_of(s, B, T))}
    runs = [owner[k] for k in ea1]
    assert sum(1 for i in range(1, n) if runs[i] != runs[i - 1]) == 2


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("k", [0, 3, 10, 11, 30, 47])
def test_loader_state_resume(tmp_path, shuffle, k):
    B, T = 2, 4
    _, pattern = make_shards(tmp_path, [81, 65, 97])
    a = DataLoader(pattern, B, T, shuffle=shuffle, seed=3)
    take(a, k)
    if k == 47:
        a.reset()  # a reset is part of the state too
    state = json.loads(json.dumps(a.state()))  # plain JSON-able values
    tail = a.llmc_state_tail()
    expected = as_keys(take(a, 40))
    b = DataLoader(pattern, B, T, shuffle=shuffle, seed=3)
    take(b, 5)  # wherever it was, load_state moves it
    if shuffle and k == 47:
        # a mid-epoch reset cannot be replayed from the position: refused, not wrong
        with pytest.raises(ValueError, match="cannot be replayed"):
            b.load_state(state)
    else:
        b.load_state(state)
        assert as_keys(take(b, 40)) == expected
    # from the state file's tail (as llm.c resumes) always
    c = DataLoader(pattern, B, T, shuffle=shuffle, seed=3)
    c.load_state(state, llmc_tail=tail)
    assert as_keys(take(c, 40)) == expected


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no files match '.*x_\*\.bin'"):
        DataLoader(str(tmp_path / "x_*.bin"), 4, 64)
    _, pattern = make_shards(tmp_path, [300, 200])
    with pytest.raises(ValueError) as e:
        DataLoader(pattern, 4, 64)
    msg = str(e.value)
    assert "x_001.bin" in msg and "200 tokens" in msg and "B*T+1 = 257" in msg
    with pytest.raises(ValueError, match="B must be a positive integer"):
        DataLoader(pattern, 0, 4)
    a = DataLoader(pattern, 2, 4)
    b = DataLoader(pattern, 3, 4)
    with pytest.raises(ValueError, match="B=2"):
        b.load_state(a.state())
    with pytest.raises(ValueError, match="sample=99"):
        a.load_state({**a.state(), "sample": 99})
    # a file that is not a shard: the format reader's error names it
    (tmp_path / "x_002.bin").write_bytes(b"\0" * 2048)
    with pytest.raises(formats.FormatError, match="x_002.bin"):
        DataLoader(pattern, 2, 4)


def test_loader_checks_the_token_range_of_every_shard(tmp_path):
    # a token id >= V is found when the shard is opened, with its file and position
    shards, pattern = make_shards(tmp_path, [300, 200])
    bad = shards[1].copy()
    bad[77] = 50300
    formats.write_shard(tmp_path / "x_001.bin", bad)
    with pytest.raises(formats.FormatError) as e:
        DataLoader(pattern, 2, 4, vocab_size=50257)
    msg = str(e.value)
    assert "x_001.bin" in msg and "token 77" in msg and "byte offset 1178" in msg and "50300" in msg
    assert len(DataLoader(pattern, 2, 4, vocab_size=50301)) == 299 // 8 + 199 // 8  # in range: fine


# ----------------------------------------------------------------------------
# a damaged cached copy, and files that are not regular files

def test_prepro_refetches_a_damaged_cached_copy(shakespeare_tokens, tmp_path, capsys):
    cached = tmp_path / "d" / "tinyshakespeare" / "tiny_shakespeare.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(TINYSHAKESPEARE.read_bytes()[:50_000])  # a download cut short, kept by an old run
    assert prepro.main(["tinyshakespeare", "--data-dir", str(tmp_path / "d"), "--source", str(TINYSHAKESPEARE)]) == 0
    assert "damaged" in capsys.readouterr().out
    assert cached.read_bytes() == TINYSHAKESPEARE.read_bytes()
    t = formats.read_shard(tmp_path / "d" / "tinyshakespeare" / "tiny_shakespeare_train.bin")
    np.testing.assert_array_equal(t, shakespeare_tokens[32768:])


def test_prepro_refuses_a_source_that_is_not_tinyshakespeare(tmp_path, capsys, shakespeare_text):
    wrong = tmp_path / "wrong.txt"
    wrong.write_bytes(TINYSHAKESPEARE.read_bytes().replace(b"First Citizen", b"First Citizem", 1))
    assert prepro.main(["tinyshakespeare", "--data-dir", str(tmp_path / "d"), "--source", str(wrong)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wrong.txt" in err[0] and "sha256" in err[0]
    assert not (tmp_path / "d" / "tinyshakespeare" / "tiny_shakespeare.txt").exists()


def _returns_promptly(fn, fifo):
    """fn() in a thread: it must finish within 10 s (a blocked open of a FIFO would not); the
    FIFO's write end is opened afterwards to release a reader that did block."""
    result = {}

    def call():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(10)
        pytest.fail(f"{fn} blocked on a FIFO")
    return result.get("error")


@pytest.mark.parametrize("reader", ["read_checkpoint", "read_shard", "read_tokenizer", "read_text", "loader",
                                    "read_state", "read_log"])
def test_a_fifo_is_refused_not_waited_on(tmp_path, reader):
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    fn = {"read_checkpoint": lambda: formats.read_checkpoint(fifo),
          "read_shard": lambda: formats.read_shard(fifo),
          "read_tokenizer": lambda: formats.read_tokenizer(fifo),
          "read_text": lambda: prepro.read_text(fifo),
          "loader": lambda: DataLoader(fifo, 1, 4),
          "read_state": lambda: formats.read_optimizer_state(fifo, 10),
          "read_log": lambda: read_log(fifo)}[reader]
    e = _returns_promptly(fn, fifo)
    assert isinstance(e, formats.FormatError) and str(fifo) in str(e) and "FIFO" in str(e)


def test_loader_bad_shuffle_tail_is_one_clear_error(tmp_path):
    _, pattern = make_shards(tmp_path, [81, 65, 97])
    a = DataLoader(pattern, 2, 4, shuffle=True)
    take(a, 12)
    state, tail = a.state(), a.llmc_state_tail()
    b = DataLoader(pattern, 2, 4, shuffle=True)
    for bad, what in ((tail[:-4], "not for"), (tail[:4], "too short"),
                      (tail[:8] + b"\1\0\0\0" * 3 + tail[20:], "permutation of the shards"),
                      (tail[:-8] + b"\0" * 8, "MATRIX_A")):
        with pytest.raises(ValueError, match=what):
            b.load_state(state, llmc_tail=bad)
    # an older llmnb's shuffled state (NumPy's permutations) has no draw count: refused
    with pytest.raises(ValueError, match="older llmnb"):
        b.load_state({k: v for k, v in state.items() if k != "draws"})
