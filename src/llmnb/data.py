"""Getting token data: downloading files, and llm.c's DataLoader over data shards.

DataLoader follows llmc/dataloader.h: shards found by a glob pattern, batches of B*T+1 consecutive
tokens read at multiples of B*T, split into inputs and targets shifted by one, shards and samples
optionally shuffled by llm.c's mt19937 (rand.py).
"""
import glob
import os
import re
import sys
import time

import numpy as np
import requests

from . import formats
from .rand import MT19937, STRUCT_BYTES as MT19937_BYTES


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
    """Batches of (inputs, targets), each int32 (B,T), from llm.c data shards matching a pattern:
    llmc/dataloader.h's DataLoader.

    With num_processes P, a global batch is P*B*T tokens; batch i of a shard starts at token
    i*P*B*T, and process `process_rank` reads its B*T+1 tokens at offset process_rank*B*T in it.
    A shard serves (ntok - 1) // (P*B*T) batches, then the loader moves to the next shard; after
    the last shard, reset() starts a new epoch. With shuffle (llm.c's should_shuffle), an mt19937
    seeded with seed + process_rank (llm.c: 42 + rank) permutes, in this order, the shard order
    at each reset (the previous order permuted again) and the samples of each shard when the
    shard is opened (identity permuted), exactly as the C; state() is the position (epoch, shard,
    sample) and the generator's draw count, from which load_state replays it (or takes it from the
    state file's tail, as llm.c's load_state does).
    With vocab_size=V every shard's tokens are checked to be < V when it is opened.
    """

    def __init__(self, pattern, B, T, *, process_rank=0, num_processes=1, shuffle=False, seed=42,
                 vocab_size=None):
        for name, v in (("B", B), ("T", T), ("num_processes", num_processes)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"DataLoader: {name} must be a positive integer, got {v!r}")
        if not isinstance(process_rank, (int, np.integer)) or not 0 <= process_rank < num_processes:
            raise ValueError(f"DataLoader: process_rank must be in [0, {num_processes}), got {process_rank!r}")
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed + process_rank < 2 ** 32:
            raise ValueError(f"DataLoader: seed must be an integer in [0, 2**32), got {seed!r}")
        self.pattern = os.fspath(pattern)
        self.B, self.T = int(B), int(T)
        self.process_rank, self.num_processes = int(process_rank), int(num_processes)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.files = sorted(glob.glob(self.pattern))
        if not self.files:
            raise FileNotFoundError(f"no files match {self.pattern!r}")
        # validate every shard now (header, size, enough tokens) so training never trips later
        need = self.num_processes * self.B * self.T + 1
        self.shard_tokens = []
        for path in self.files:
            tokens = formats.read_shard(path)
            ntok = len(tokens)
            if vocab_size is not None:
                check_token_range(path, tokens, vocab_size)
            if ntok < need:
                raise ValueError(f"{path}: {ntok} tokens, fewer than num_processes*B*T+1 = {need} "
                                 f"(B={self.B}, T={self.T}) needed for one batch")
            self.shard_tokens.append(ntok)
        self.num_tokens = sum(self.shard_tokens)
        self.num_batches = sum(self._samples_in(n) for n in self.shard_tokens)
        self.inputs = self.targets = None
        self._seed_shuffle()
        self.epoch = 0
        self._reset()

    def __len__(self):
        """Batches in one epoch (over all shards)."""
        return self.num_batches

    def __repr__(self):
        return (f"DataLoader({self.pattern!r}, B={self.B}, T={self.T}, shuffle={self.shuffle}: "
                f"{len(self.files)} shards, {self.num_tokens:,} tokens, {self.num_batches} batches)")

    # -- positions and permutations, as dataloader.h

    def _samples_in(self, ntok):
        # -1: a batch reads B*T+1 tokens but moves on by B*T
        return (ntok - 1) // (self.num_processes * self.B * self.T)

    def _seed_shuffle(self):
        """dataloader_init: the generator seeded, the shard order the identity."""
        self.shard_indices = np.arange(len(self.files), dtype=np.int32)
        self.shuffle_rng = MT19937(self.seed + self.process_rank) if self.shuffle else None
        self.intra_shard_indices = None
        self.draws = 0  # randint32 calls so far: what a replay must end on

    def _permute(self, data):
        self.shuffle_rng.random_permutation(data)
        self.draws += max(len(data) - 1, 0)

    def _open_shard(self, load=True):
        """dataloader_load_shard_ (+ prepare_intra_shard_indices_ when shuffling): the shard at
        position current_shard, its samples permuted. load=False only replays the generator."""
        self.current_file = self.files[self.shard_indices[self.current_shard]]
        self.shard_num_samples = self._samples_in(self.shard_tokens[self.shard_indices[self.current_shard]])
        if self.shuffle:
            self.intra_shard_indices = np.arange(self.shard_num_samples, dtype=np.int32)
            self._permute(self.intra_shard_indices)
        if load:
            self.tokens = formats.read_shard(self.current_file)

    def _reset(self, load=True):
        """dataloader_reset: the first shard of a new order (the old order permuted again)."""
        self.current_shard = 0
        self.current_sample = 0
        if self.shuffle:
            self._permute(self.shard_indices)
        self._open_shard(load)

    def _advance(self, load=True):
        """dataloader_advance_: the next shard, or a new epoch after the last one."""
        if self.current_shard == len(self.files) - 1:
            self.epoch += 1
            self._reset(load)
            return
        self.current_shard += 1
        self.current_sample = 0
        self._open_shard(load)

    # -- the public interface

    def reset(self):
        """Back to the first batch, like dataloader_reset. With shuffle this is a new epoch (new
        permutations, as the C re-shuffles on reset); without, the same batches as at the start."""
        self.epoch += 1
        self._reset()

    def next_batch(self):
        """The next (inputs, targets): int32 arrays of shape (B,T), targets = inputs shifted by one."""
        if self.current_sample >= self.shard_num_samples:
            self._advance()
        idx = self.current_sample
        if self.shuffle:
            idx = int(self.intra_shard_indices[idx])
        BT = self.B * self.T
        start = idx * self.num_processes * BT + self.process_rank * BT
        buf = np.asarray(self.tokens[start: start + BT + 1], dtype=np.int32)
        self.inputs = buf[:-1].reshape(self.B, self.T)
        self.targets = buf[1:].reshape(self.B, self.T)
        self.current_sample += 1
        return self.inputs, self.targets

    def state(self):
        """The position, as a small dict of plain ints/bools (JSON-able), for load_state."""
        return {"epoch": self.epoch, "shard": self.current_shard, "sample": self.current_sample,
                "B": self.B, "T": self.T, "shuffle": self.shuffle, "seed": self.seed,
                "num_shards": len(self.files), "process_rank": self.process_rank,
                "num_processes": self.num_processes, "draws": self.draws}

    def load_state(self, d, llmc_tail=None):
        """Resume at a position from state(): the next batches are those that followed it. With
        shuffle, the generator and permutations come from llmc_tail (llmc_state_tail()'s bytes, as
        llm.c's state file holds them) when given, else the generator is replayed from its seed
        through the permutations of every epoch and shard up to the position; a replay that ends
        on another draw count than the saved one (a reset() in mid-epoch) is refused."""
        for key in ("B", "T", "shuffle", "seed", "num_shards", "process_rank", "num_processes"):
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
        if self.shuffle and llmc_tail is not None:
            self._restore_tail(llmc_tail, shard, int(d.get("draws", 0)))
            self.epoch = epoch
        else:
            self._replay(epoch, shard, d.get("draws"))
        self.tokens = formats.read_shard(self.current_file)
        if not 0 <= sample <= self.shard_num_samples:
            raise ValueError(f"DataLoader state has sample={sample}, but {self.current_file} "
                             f"holds {self.shard_num_samples} batches")
        self.current_sample = sample

    def llmc_state_tail(self):
        """What train_gpt2.cu's save_state appends to the optimizer state when shuffling (b"" when
        not): size_t number of shards, int32 shard order, size_t samples in the current shard, int32
        sample order, the mt19937_state struct; all little-endian."""
        if not self.shuffle:
            return b""
        return b"".join([np.array([len(self.files)], "<u8").tobytes(), self.shard_indices.astype("<i4").tobytes(),
                         np.array([self.shard_num_samples], "<u8").tobytes(),
                         self.intra_shard_indices.astype("<i4").tobytes(), self.shuffle_rng.to_bytes()])

    def _replay(self, epoch, shard, draws):
        self._seed_shuffle()
        self.epoch = 0
        self._reset(load=False)
        while (self.epoch, self.current_shard) != (epoch, shard):
            self._advance(load=False)
        if self.shuffle and draws is None:
            raise ValueError(f"DataLoader state ({self.pattern!r}) has no shuffle draw count: it was "
                             f"saved by an older llmnb, whose shuffle was not llm.c's")
        if self.shuffle and int(draws) != self.draws:
            raise ValueError(f"DataLoader state ({self.pattern!r}, epoch {epoch}, shard {shard}) cannot "
                             f"be replayed: {draws} shuffle draws saved, {self.draws} replayed")

    def _restore_tail(self, tail, shard, draws):
        """The shard order, sample order and generator from llmc_state_tail()'s bytes."""
        n = len(self.files)
        def bad(what):
            return ValueError(f"the shuffle state of the optimizer state file is {what} "
                              f"(for {n} shards of {self.pattern!r})")
        head = 8 + 4 * n + 8
        if len(tail) < head:
            raise bad(f"{len(tail)} bytes, too short")
        if int(np.frombuffer(tail[:8], "<u8")[0]) != n:
            raise bad(f"for {int(np.frombuffer(tail[:8], '<u8')[0])} shards")
        order = np.frombuffer(tail[8:8 + 4 * n], "<i4").astype(np.int32)
        if not np.array_equal(np.sort(order), np.arange(n)):
            raise bad("not holding a permutation of the shards")
        samples = self._samples_in(self.shard_tokens[order[shard]])
        if int(np.frombuffer(tail[8 + 4 * n:head], "<u8")[0]) != samples or \
                len(tail) != head + 4 * samples + MT19937_BYTES:
            raise bad(f"not for {samples} samples of {self.files[order[shard]]}")
        intra = np.frombuffer(tail[head:head + 4 * samples], "<i4").astype(np.int32)
        if not np.array_equal(np.sort(intra), np.arange(samples)):
            raise bad("not holding a permutation of the samples")
        try:
            rng = MT19937.from_bytes(tail[head + 4 * samples:])
        except ValueError as e:
            raise bad(str(e))
        self.shuffle_rng, self.shard_indices, self.intra_shard_indices = rng, order, intra
        self.draws = draws
        self.current_shard = shard
        self.current_file = self.files[order[shard]]
        self.shard_num_samples = samples
