"""Getting token data: downloading files, and llm.c's DataLoader over data shards.

DataLoader follows llmc/dataloader.h (single process): shards found by a glob pattern, batches of
B*T+1 consecutive tokens read at multiples of B*T, split into inputs and targets shifted by one.
"""
import glob
import os
import re
import sys
import time

import numpy as np
import requests

from . import formats


class DownloadError(RuntimeError):
    """A download that failed; the message is one line naming the URL and what went wrong."""


# ----------------------------------------------------------------------------
# download

def _one_line(e):
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _reason(e):
    """A short one-line reason for a requests exception (requests' own text nests several)."""
    text = " ".join(str(e).split())
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        m = re.search(r"IncompleteRead\([^)]*\)", text)
        return f"connection broken mid-body ({m.group(0) if m else text})"
    if isinstance(e, requests.Timeout):
        return "timed out"
    if isinstance(e, requests.ConnectionError):
        m = re.search(r"\[Errno -?\d+\][^'\")]*", text)
        return f"connection failed ({m.group(0).strip() if m else text})"
    return _one_line(e)


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class _Progress:
    """Bytes done / total on stderr: one updating line on a terminal, else a line every ~10%
    (every 10 MiB when the total is unknown), so it reads well in a log file too."""

    def __init__(self, name, total, stream=None):
        self.name, self.total = name, total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.step = 0.1 * total if total else 10 << 20
        self.done = 0
        self.next_mark = self.step
        self.shown = 0  # bytes done at the last line printed
        self.last_draw = 0.0

    def _text(self):
        if self.total:
            return (f"{self.name}: {_human(self.done)} / {_human(self.total)} "
                    f"({100 * self.done / self.total:.0f}%)")
        return f"{self.name}: {_human(self.done)}"

    def _show(self, end="\n"):
        prefix = "\r" if self.tty else ""
        print(prefix + self._text(), end=end, file=self.stream, flush=True)
        self.shown = self.done

    def update(self, n):
        self.done += n
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= 0.1:
                self.last_draw = now
                self._show(end="")
        elif self.done >= self.next_mark:
            self._show()
            while self.next_mark <= self.done:
                self.next_mark += self.step

    def finish(self):
        if self.tty or self.shown != self.done:
            self._show()

    def abort(self):
        if self.tty:
            print(file=self.stream, flush=True)


class _Retryable(Exception):
    """A failure worth another attempt (connection trouble, a 5xx, a short body)."""


def _fetch_once(url, path, timeout, chunk, progress):
    """One attempt: stream url into path atomically. Raises _Retryable or DownloadError."""
    try:
        # identity: Content-Length then counts the bytes we write (no transparent gunzip)
        resp = requests.get(url, stream=True, timeout=timeout,
                            headers={"Accept-Encoding": "identity"})
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _Retryable(_reason(e)) from e
    except requests.RequestException as e:
        raise DownloadError(f"download of {url} failed: {_one_line(e)}") from e
    with resp:
        if resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code} {resp.reason}")
        if resp.status_code >= 400:
            raise DownloadError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}")
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        bar = _Progress(os.path.basename(path), total) if progress else None
        try:
            with formats.atomic_write(path) as f:
                for data in resp.iter_content(chunk_size=chunk):
                    f.write(data)
                    if bar:
                        bar.update(len(data))
                received = resp.raw.tell() if encoded else f.tell()
                if total is not None and received != total:
                    raise _Retryable(f"connection closed after {received} of {total} bytes")
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as e:
            if bar:
                bar.abort()
            raise _Retryable(_reason(e)) from e
        except _Retryable:
            if bar:
                bar.abort()
            raise
        except requests.RequestException as e:  # (an OSError too: catch it before the next)
            if bar:
                bar.abort()
            raise DownloadError(f"download of {url} failed: {_one_line(e)}") from e
        except OSError as e:
            if bar:
                bar.abort()
            raise DownloadError(f"download of {url} failed: cannot write {path}: {_one_line(e)}") from e
        if bar:
            bar.finish()


def download(url, path, *, timeout=30, retries=3, chunk=1 << 20, progress=True, backoff=1.0):
    """Download url to path: streamed, with a progress display on stderr (progress=False: none).

    Connection errors, timeouts, 5xx responses and bodies shorter than their Content-Length are
    retried up to `retries` times, waiting backoff, 2*backoff, 4*backoff... seconds; a 4xx is not.
    The file appears at path only when complete (temp file + os.replace); on failure nothing is
    left behind and DownloadError says what went wrong.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    attempts = retries + 1
    for attempt in range(attempts):
        try:
            _fetch_once(url, path, timeout, chunk, progress)
            return path
        except _Retryable as e:
            reason = str(e)
            if attempt + 1 < attempts:
                wait = backoff * 2 ** attempt
                print(f"download of {url} failed ({reason}); retrying in {wait:g}s "
                      f"(attempt {attempt + 2} of {attempts})", file=sys.stderr, flush=True)
                time.sleep(wait)
    raise DownloadError(f"download of {url} failed after {attempts} attempt"
                        f"{'s' if attempts > 1 else ''}: {reason}")


# ----------------------------------------------------------------------------
# DataLoader

def check_token_range(path, tokens, V):
    """Every token of a shard must be a token id of the model, < V: one vectorised max, and the
    first bad token's position only when there is one."""
    if tokens.size and int(tokens.max()) >= V:
        i = int(np.argmax(tokens >= V))
        raise formats.FormatError(f"{path}: token {i} (byte offset {formats.HEADER_BYTES + 2 * i}) "
                                  f"is {int(tokens[i])}, not a token id of the model's vocabulary [0, {V})")


class DataLoader:
    """Batches of (inputs, targets), each int32 (B,T), from llm.c data shards matching a pattern.

    Batch i of a shard is tokens[i*B*T : i*B*T + B*T + 1]; a shard serves (ntok - 1) // (B*T)
    batches, then the loader moves to the next shard, and after the last shard starts a new
    epoch. With shuffle=True the shard order and the order of the batches within each shard are
    random permutations, different every epoch and determined by (seed, epoch, shard position),
    so the position (epoch, shard, sample) is all that state() needs to resume exactly.
    (The permutations come from NumPy's generator, not llm.c's mt19937: same idea, other numbers.)
    With vocab_size=V every shard's tokens are checked to be < V when it is opened.
    """

    def __init__(self, pattern, B, T, *, shuffle=False, seed=42, vocab_size=None):
        for name, v in (("B", B), ("T", T)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"DataLoader: {name} must be a positive integer, got {v!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"DataLoader: seed must be a non-negative integer, got {seed!r}")
        self.pattern = os.fspath(pattern)
        self.B, self.T = int(B), int(T)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.files = sorted(glob.glob(self.pattern))
        if not self.files:
            raise FileNotFoundError(f"no files match {self.pattern!r}")
        # validate every shard now (header, size, enough tokens) so training never trips later
        need = self.B * self.T + 1
        self.shard_tokens = []
        for path in self.files:
            tokens = formats.read_shard(path)
            ntok = len(tokens)
            if vocab_size is not None:
                check_token_range(path, tokens, vocab_size)
            if ntok < need:
                raise ValueError(f"{path}: {ntok} tokens, fewer than B*T+1 = {need} "
                                 f"(B={self.B}, T={self.T}) needed for one batch")
            self.shard_tokens.append(ntok)
        self.num_tokens = sum(self.shard_tokens)
        self.num_batches = sum(self._samples_in(n) for n in self.shard_tokens)
        self.inputs = self.targets = None
        self.epoch = 0
        self._start_epoch()

    def __len__(self):
        """Batches in one epoch (over all shards)."""
        return self.num_batches

    def __repr__(self):
        return (f"DataLoader({self.pattern!r}, B={self.B}, T={self.T}, shuffle={self.shuffle}: "
                f"{len(self.files)} shards, {self.num_tokens:,} tokens, {self.num_batches} batches)")

    # -- positions and permutations

    def _samples_in(self, ntok):
        # -1: a batch reads B*T+1 tokens but moves on by B*T
        return (ntok - 1) // (self.B * self.T)

    def _shard_order(self):
        if not self.shuffle:
            return np.arange(len(self.files))
        return np.random.default_rng([self.seed, 0, self.epoch]).permutation(len(self.files))

    def _load_shard(self):
        self.current_file = self.files[self.shard_order[self.current_shard]]
        self.tokens = formats.read_shard(self.current_file)
        self.shard_num_samples = self._samples_in(len(self.tokens))
        if self.shuffle:
            rng = np.random.default_rng([self.seed, 1, self.epoch, self.current_shard])
            self.sample_order = rng.permutation(self.shard_num_samples)
        else:
            self.sample_order = None

    def _start_epoch(self):
        self.shard_order = self._shard_order()
        self.current_shard = 0
        self.current_sample = 0
        self._load_shard()

    def _advance(self):
        """Next shard, or a new epoch after the last one."""
        if self.current_shard == len(self.files) - 1:
            self.epoch += 1
            self._start_epoch()
            return
        self.current_shard += 1
        self.current_sample = 0
        self._load_shard()

    # -- the public interface

    def reset(self):
        """Back to the first batch, like dataloader_reset. With shuffle this is a new epoch (new
        permutations, as the C re-shuffles on reset); without, the same batches as at the start."""
        if self.shuffle:
            self.epoch += 1
        self._start_epoch()

    def next_batch(self):
        """The next (inputs, targets): int32 arrays of shape (B,T), targets = inputs shifted by one."""
        if self.current_sample >= self.shard_num_samples:
            self._advance()
        idx = self.current_sample
        if self.sample_order is not None:
            idx = int(self.sample_order[idx])
        BT = self.B * self.T
        buf = np.asarray(self.tokens[idx * BT: idx * BT + BT + 1], dtype=np.int32)
        self.inputs = buf[:-1].reshape(self.B, self.T)
        self.targets = buf[1:].reshape(self.B, self.T)
        self.current_sample += 1
        return self.inputs, self.targets

    def state(self):
        """The position, as a small dict of plain ints/bools (JSON-able), for load_state."""
        return {"epoch": self.epoch, "shard": self.current_shard, "sample": self.current_sample,
                "B": self.B, "T": self.T, "shuffle": self.shuffle, "seed": self.seed,
                "num_shards": len(self.files)}

    def load_state(self, d):
        """Resume at a position from state(): the next batches are those that followed it."""
        for key in ("B", "T", "shuffle", "seed", "num_shards"):
            mine = self.state()[key]
            if key in d and d[key] != mine:
                raise ValueError(f"DataLoader state was saved with {key}={d[key]!r}, but this "
                                 f"loader ({self.pattern!r}) has {key}={mine!r}")
        missing = [k for k in ("epoch", "shard", "sample") if k not in d]
        if missing:
            raise ValueError(f"DataLoader state is missing {', '.join(missing)}")
        epoch, shard, sample = int(d["epoch"]), int(d["shard"]), int(d["sample"])
        if epoch < 0 or not 0 <= shard < len(self.files):
            raise ValueError(f"DataLoader state has epoch={epoch}, shard={shard}: out of range "
                             f"for {len(self.files)} shards")
        self.epoch = epoch
        self.shard_order = self._shard_order()
        self.current_shard = shard
        self._load_shard()
        if not 0 <= sample <= self.shard_num_samples:
            raise ValueError(f"DataLoader state has sample={sample}, but {self.current_file} "
                             f"holds {self.shard_num_samples} batches")
        self.current_sample = sample
