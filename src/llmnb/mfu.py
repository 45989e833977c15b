"""MFU's two halves: the FLOPs of a training step (the one count of the project) and the machine's
fp32 peak: threads x FLOP per cycle per core x the clock (or a GPU's SMs x lanes x 2 x clock).

The clock is measured, not read from /proc/cpuinfo (which shows the base clock, not the boost the
cores run at): a chain of dependent float32 additions runs at one add per `latency` cycles.
FLOP per cycle comes from LLVM's name for the host CPU. $LLMNB_PEAK_FLOPS overrides it all.
"""
import os
import time

import llvmlite.binding as ll
import numpy as np
from numba import njit


def flops_per_step(config, B, T):
    """FLOPs of one training step of GPT-2 on B x T tokens: 3x the forward (the backward does twice
    the forward's matmul work), counting the matmuls with the padded vocabulary (2 x B*T x
    (12 L C^2 + Vp C)) and attention's real causal work (Q K^T and att @ V over the T(T+1)/2 pairs of
    each sequence: 2 x B x T(T+1) x C per layer). The one count used by llmnb-train's MFU, the
    benchmarks and the README."""
    C, L, Vp = config.channels, config.num_layers, config.padded_vocab_size
    matmuls = 2 * B * T * (L * 12 * C * C + Vp * C)
    attention = L * 2 * B * T * (T + 1) * C
    return 3 * (matmuls + attention)


# LLVM host CPU name -> (fp32 FLOP per cycle per core, float add latency in cycles)
# Zen 4 runs AVX-512 on two 256-bit FMA pipes (32 FLOP/cycle); Zen 5 and Intel's AVX-512 cores
# have two 512-bit FMA units (64).
CPU_MODELS = {
    "znver3": (32, 3), "znver4": (32, 3), "znver5": (64, 2),
    "haswell": (32, 3), "broadwell": (32, 3), "skylake": (32, 4), "alderlake": (32, 3),
    "skylake-avx512": (64, 4), "cascadelake": (64, 4), "icelake-server": (64, 4),
    "sapphirerapids": (64, 3),
}


@njit(cache=True)
def _fadd_chain(x, n):
    # n dependent float32 additions (no fastmath: they must stay in order)
    s = np.float32(0.0)
    for _ in range(n):
        s = s + x
    return s


def measure_clock_ghz(add_latency, n=20_000_000, runs=5):
    x = np.float32(1e-9)
    _fadd_chain(x, 10)  # compile (or load from cache)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        _fadd_chain(x, n)
        best = min(best, time.perf_counter() - t0)
    return add_latency * n / best / 1e9


# CUDA compute capability (major, minor) -> fp32 lanes (CUDA cores) per SM; FMA = 2 FLOP per lane
# per cycle. Volta, Turing and A100 have 64, the Ampere consumer cards, Ada, Hopper and Blackwell 128.
FP32_LANES_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
                     (9, 0): 128, (10, 0): 128, (12, 0): 128}


def gpu_peak_flops():
    """-> (FLOP/s, a line saying how) for the current CUDA device: SMs x fp32 lanes x 2 x boost clock
    (the CUDA cores, no tensor cores: llmnb's matmuls are plain fp32 FMAs)."""
    env = os.environ.get("LLMNB_PEAK_FLOPS")
    if env:
        return float(env), "from $LLMNB_PEAK_FLOPS"
    from numba import cuda
    dev = cuda.get_current_device() if hasattr(cuda, "get_current_device") else None
    if not hasattr(dev, "MULTIPROCESSOR_COUNT"):  # Numba's CUDA simulators have no SMs or clock
        return 1e12, "Numba's CUDA simulator: no real peak, 1 TFLOP/s assumed"
    cc = tuple(dev.compute_capability)
    sms = dev.MULTIPROCESSOR_COUNT
    ghz = dev.CLOCK_RATE / 1e6  # kHz
    lanes = FP32_LANES_PER_SM.get(cc, 128)
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return (sms * lanes * 2 * ghz * 1e9,
            f"{name} (sm_{cc[0]}{cc[1]}): {sms} SMs x {lanes} fp32 lanes x 2 x {ghz:.2f} GHz boost clock")


def estimate_peak_flops(threads, device="cpu"):
    """-> (FLOP/s, a line saying how it was estimated) for the CPU's `threads` or a CUDA device."""
    if device == "cuda":
        return gpu_peak_flops()
    env = os.environ.get("LLMNB_PEAK_FLOPS")
    if env:
        return float(env), "from $LLMNB_PEAK_FLOPS"
    cpu = ll.get_host_cpu_name()
    if cpu in CPU_MODELS:
        per_cycle, latency = CPU_MODELS[cpu]
        ghz = measure_clock_ghz(latency)
        return (threads * per_cycle * ghz * 1e9,
                f"{threads} threads x {per_cycle} FLOP/cycle ({cpu}) x {ghz:.2f} GHz (clock measured now)")
    features = ll.get_host_cpu_features()
    per_cycle = 64 if features.get("avx512f") else 32 if features.get("fma") else 8
    ghz = measure_clock_ghz(4)  # an unknown core: assume a 4-cycle add, a lower bound on the clock
    return (threads * per_cycle * ghz * 1e9,
            f"{threads} threads x {per_cycle} FLOP/cycle (unknown CPU {cpu}, guessed from its vector "
            f"units) x {ghz:.2f} GHz (clock measured assuming a 4-cycle add)")
