"""llm.c's DataLoader over data shards, as llmc/dataloader.h: shards found by a glob pattern, batches of B*T+1 consecutive
tokens read at multiples of B*T, split into inputs and targets shifted by one, shards and samples
optionally shuffled by llm.c's mt19937 (rand.py).
"""
import glob
import os

import numpy as np

from . import formats
from .rand import MT19937, STRUCT_BYTES as MT19937_BYTES


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
        for key in ("epoch", "shard", "sample", "draws"):  # "3" or 3.0 would pass int(): not a position
            if key in d and (not isinstance(d[key], (int, np.integer)) or isinstance(d[key], bool)):
                raise ValueError(f"DataLoader state's {key} must be an integer, got {d[key]!r}")
        epoch, shard, sample = int(d["epoch"]), int(d["shard"]), int(d["sample"])
        if self.shuffle and int(d.get("draws", 0)) < 0:
            raise ValueError(f"DataLoader state has draws={d['draws']}: a count of draws cannot be negative")
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

    def batches_served(self):
        """The batches served since the start (of epoch 0), from the position and the current
        epoch's shard order: epoch * len(self) + the batches of the shards before this one + sample."""
        before = sum(self._samples_in(self.shard_tokens[i]) for i in self.shard_indices[:self.current_shard])
        return self.epoch * self.num_batches + before + self.current_sample

    def draws_at_position(self):
        """The generator's draws a shuffling loader has made to reach its position without a
        reset(): a shard order per epoch, and a sample order per shard opened (every shard of the
        epochs before, this epoch's up to the current one)."""
        if not self.shuffle:
            return 0
        samples = [max(self._samples_in(n) - 1, 0) for n in self.shard_tokens]
        opened = sum(samples[i] for i in self.shard_indices[:self.current_shard + 1])
        return (self.epoch + 1) * max(len(self.files) - 1, 0) + self.epoch * sum(samples) + opened

    def _replay(self, epoch, shard, draws):
        self._seed_shuffle()
        self.epoch = 0
        self._reset(load=False)
        if not self.shuffle:  # every epoch is the same order: no need to walk through them
            self.epoch, self.current_shard = epoch, shard
            self._open_shard(load=False)
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
