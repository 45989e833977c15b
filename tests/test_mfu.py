"""MFU's two halves: the step's FLOP count (by hand for a small model) and the measured CPU peak."""
import time

import numpy as np
import pytest
from numba import get_num_threads, njit

from llmnb import matmul, mfu
from llmnb.config import GPT2Config


def test_flops_per_step_counts_the_matmuls_and_causal_attention_three_times():
    cfg = GPT2Config(max_seq_len=16, vocab_size=100, padded_vocab_size=128, num_layers=2, num_heads=2,
                     channels=32)
    B, T, C, L, Vp = 3, 5, 32, 2, 128
    # per token and layer: qkv 3C^2, attproj C^2, fc 4C^2, fcproj 4C^2 multiply-adds; the classifier Vp C
    matmul_macs = B * T * (L * 12 * C * C + Vp * C)
    # causal attention: q k^T and att v over the T(T+1)/2 (query, key) pairs of each sequence, C each
    attention_macs = L * B * 2 * (T * (T + 1) // 2) * C
    assert mfu.flops_per_step(cfg, B, T) == 3 * 2 * (matmul_macs + attention_macs)


def test_measured_fma_flops_are_what_the_fma_chains_do():
    # the timed work is CHAINS x lanes FMAs per round per thread: the rate must match a direct timing
    # of the same function on one round count (best of 3), within the noise of a shared machine
    for lanes in (8, 16):
        flops = mfu.measure_fma_flops(lanes)
        n, threads = 200_000, get_num_threads()
        fn = mfu._fma_all_threads_16 if lanes == 16 else mfu._fma_all_threads_8
        fn(10, threads)
        best = min(_timed(fn, n, threads) for _ in range(3))
        direct = threads * n * mfu.CHAINS * lanes * 2 / best
        assert 0.4 < flops / direct < 2.5, (lanes, flops, direct)


def test_peak_is_at_least_what_the_matmul_micro_kernel_reaches(monkeypatch):
    # the peak MFU is measured against cannot be below the GEMM's own micro-kernel on L1-resident
    # data (that would make MFU over 100%); the estimate names the vector width it measured
    monkeypatch.delenv("LLMNB_PEAK_FLOPS", raising=False)
    peak, how = mfu.estimate_peak_flops(get_num_threads())
    assert f"{matmul.LANES}-float" in how
    a = np.ones(256 * matmul.MR, np.float32)
    b = np.full(256 * matmul.NR, 1e-3, np.float32)
    out = np.zeros((matmul.MR, matmul.NR), np.float32)
    _micro_kernel_loop(out, a, b, 10)
    reps = 20_000
    best = min(_timed(_micro_kernel_loop, out, a, b, reps) for _ in range(3))
    one_thread = reps * 2 * matmul.MR * matmul.NR * 256 / best
    assert one_thread <= 1.15 * peak / get_num_threads(), (one_thread, peak)


def test_the_environment_overrides_the_peak(monkeypatch):
    monkeypatch.setenv("LLMNB_PEAK_FLOPS", "123e9")
    assert mfu.estimate_peak_flops(get_num_threads()) == (123e9, "from $LLMNB_PEAK_FLOPS")


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


@njit(cache=True)
def _micro_kernel_loop(out, a, b, reps):
    for _ in range(reps):
        matmul.micro_kernel(a, 0, 1, matmul.MR, b, 0, matmul.NR, 256, out, 0, 0, True)
