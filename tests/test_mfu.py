"""MFU's two halves: the step's FLOP count (by hand for a small model) and the measured CPU peak."""
import math

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


@pytest.mark.parametrize("lanes", [8, 16])
def test_the_fma_chains_run_every_round_on_every_chain(lanes):
    # the peak counts n x CHAINS x lanes FMAs a thread: the loop must really do n rounds of
    # x = 0.999999 x + 1e-7 on CHAINS chains started at 1e-3 i, not fewer (the sum of the chains'
    # first lanes, against the same recurrence in float32 NumPy)
    fn = mfu.fma_chains_16 if lanes == 16 else mfu.fma_chains_8
    n = 1000
    got = _run_chains(fn, n)
    x = np.array([1e-3 * i for i in range(mfu.CHAINS)], np.float32)
    for _ in range(n):
        x = (np.float64(x) * np.float32(0.999999) + np.float32(1e-7)).astype(np.float32)  # one rounding: an FMA
    assert got == pytest.approx(float(x.sum(dtype=np.float32)), rel=1e-6)
    assert _run_chains(fn, n + 100) != got   # (and the round count is the argument's)


def _run_chains(fn, n):
    return (_chains_16 if fn is mfu.fma_chains_16 else _chains_8)(n)


@njit(cache=True)
def _chains_8(n):
    return mfu.fma_chains_8(n)


@njit(cache=True)
def _chains_16(n):
    return mfu.fma_chains_16(n)


def test_the_estimate_names_what_it_measured(monkeypatch):
    monkeypatch.delenv("LLMNB_PEAK_FLOPS", raising=False)
    peak, how = mfu.estimate_peak_flops(get_num_threads())
    assert peak > 0 and f"{matmul.LANES}-float vector FMAs" in how and f"{get_num_threads()} threads" in how
    with pytest.raises(ValueError):
        mfu.estimate_peak_flops(get_num_threads() + 1)


def test_the_environment_overrides_the_peak(monkeypatch):
    monkeypatch.setenv("LLMNB_PEAK_FLOPS", "123e9")
    assert mfu.estimate_peak_flops(get_num_threads()) == (123e9, "from $LLMNB_PEAK_FLOPS")




class FakeDevice:
    """What gpu_peak_flops reads of numba's CUDA device."""
    def __init__(self, name, cc, sms, boost_mhz):
        self.name, self.compute_capability = name.encode(), cc
        self.MULTIPROCESSOR_COUNT, self.CLOCK_RATE = sms, boost_mhz * 1000   # CLOCK_RATE in kHz


@pytest.mark.parametrize("name, cc, sms, mhz, fp32, tf32, bf16", [
    # NVIDIA's published dense peaks, TFLOP/s: fp32 on the CUDA cores, TF32 and BF16 tensor cores
    ("NVIDIA H100 80GB HBM3", (9, 0), 132, 1980, 66.9, 494.7, 989.4),
    ("NVIDIA H200", (9, 0), 132, 1980, 66.9, 494.7, 989.4),
    ("NVIDIA H100 PCIe", (9, 0), 114, 1755, 51.2, 378.0, 756.0),
    ("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1410, 19.5, 155.9, 311.9),
    ("NVIDIA L40S", (8, 9), 142, 2520, 91.6, 183.2, 362.1),   # (its BF16 figure: 1.2% under twice its TF32)
    ("NVIDIA GeForce RTX 4090", (8, 9), 128, 2520, 82.6, 82.6, 165.2),
    ("NVIDIA GeForce RTX 3090", (8, 6), 82, 1695, 35.6, 35.6, 71.2),
])
def test_gpu_peaks_are_the_published_ones(monkeypatch, name, cc, sms, mhz, fp32, tf32, bf16):
    monkeypatch.delenv("LLMNB_PEAK_FLOPS", raising=False)
    dev = FakeDevice(name, cc, sms, mhz)
    for precision, want in (("fp32", fp32), ("tf32", tf32), ("bf16", bf16)):
        got, how = mfu.gpu_peak_flops(precision, device=dev)
        assert got / 1e12 == pytest.approx(want, rel=1.5e-2), precision   # (a wrong table entry is 2x off)
        assert name in how


def test_a_gpu_without_known_tensor_cores_has_no_peak_but_runs(monkeypatch):
    # (llmnb-train prints "n/a" for the MFU: an unknown card is no reason to refuse TF32)
    monkeypatch.delenv("LLMNB_PEAK_FLOPS", raising=False)
    dev = FakeDevice("NVIDIA B200", (10, 0), 148, 1965)
    peak, how = mfu.gpu_peak_flops("tf32", device=dev)
    assert math.isnan(peak) and "no tf32 tensor-core peak known" in how and "LLMNB_PEAK_FLOPS" in how
    assert mfu.gpu_peak_flops("fp32", device=dev)[0] > 0
    monkeypatch.setenv("LLMNB_PEAK_FLOPS", "2.2e15")
    assert mfu.gpu_peak_flops("tf32", device=dev)[0] == 2.2e15
