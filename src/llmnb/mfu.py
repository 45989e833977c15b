"""MFU's two halves: the FLOPs of a training step (the one count of the project) and the machine's
fp32 peak (or a GPU's SMs x lanes x 2 x clock).

The CPU's peak is measured, not computed from a table: every thread runs independent vector FMAs
for ~0.1 s, so the clock the cores really hold under that load (turbo, AVX-512 licence), the FMA
units per core and the vector width are all in it. A table keyed by the CPU's name was wrong where
the name was (a VM reporting an Intel Xeon as "rocketlake" gave 2.3x its peak), and /proc/cpuinfo
shows the base clock, not the one the cores run at. $LLMNB_PEAK_FLOPS overrides it all.
"""
import math
import os
import time

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .matmul import LANES


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


def _fma_chains(lanes):
    """An intrinsic fma_chains(n) -> float32: CHAINS independent chains of n fused multiply-adds on
    vectors of `lanes` floats (llvm.fma, which LLVM neither folds nor reorders), then one float of
    their sum so that none is dead. Enough independent chains that the FMA units, not the latency,
    set the pace (CHAINS >= latency x units on every core we know: 4 x 2, 2 x 4)."""
    def fma_chains(typingctx, n):
        sig = types.float32(n)

        def codegen(context, builder, signature, args):
            f32, i32 = ir.FloatType(), ir.IntType(32)
            vec = ir.VectorType(f32, lanes)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                                 f"llvm.fma.v{lanes}f32")
            x, y = ir.Constant(vec, [0.999999] * lanes), ir.Constant(vec, [1e-7] * lanes)
            acc = [cgutils.alloca_once_value(builder, ir.Constant(vec, [1e-3 * i] * lanes)) for i in range(CHAINS)]
            with cgutils.for_range(builder, args[0]):
                for a in acc:
                    builder.store(builder.call(fma, [builder.load(a), x, y]), a)
            total = ir.Constant(f32, 0.0)
            for a in acc:
                total = builder.fadd(total, builder.extract_element(builder.load(a), ir.Constant(i32, 0)))
            return total

        return sig, codegen

    fma_chains.__name__ = f"fma_chains_{lanes}"
    return intrinsic(fma_chains)


CHAINS = 16
fma_chains_8, fma_chains_16 = _fma_chains(8), _fma_chains(16)


@njit(parallel=True, cache=True)
def _fma_all_threads_8(n, threads):
    # each of `threads` tasks (one per Numba thread) runs n rounds of CHAINS FMAs on vectors of 8 floats
    out = np.zeros(threads, np.float32)
    for t in prange(threads):
        out[t] = fma_chains_8(n)
    return out.sum()


@njit(parallel=True, cache=True)
def _fma_all_threads_16(n, threads):
    # each of `threads` tasks (one per Numba thread) runs n rounds of CHAINS FMAs on vectors of 16 floats
    out = np.zeros(threads, np.float32)
    for t in prange(threads):
        out[t] = fma_chains_16(n)
    return out.sum()


def measure_fma_flops(lanes, seconds=0.05, runs=3):
    """FLOP/s of fused multiply-adds on vectors of `lanes` floats (8 or 16), on all Numba threads at
    once: the machine's fp32 peak at the clock the cores hold under that load (a 512-bit load can
    run at a lower clock than a 256-bit one)."""
    threads = get_num_threads()
    fma = _fma_all_threads_16 if lanes == 16 else _fma_all_threads_8

    def run(n):
        fma(n, threads)
    run(10)  # compile (or load from cache), and wake the threads
    n = 100_000
    while True:  # rounds enough for `seconds` a run, so the parallel region's start is nothing
        t0 = time.perf_counter()
        run(n)
        dt = time.perf_counter() - t0
        if dt >= seconds / 4:
            break
        n *= 4
    n = int(n * seconds / dt)
    best = min(_timed(run, n) for _ in range(runs))
    return threads * n * CHAINS * lanes * 2 / best


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# CUDA compute capability (major, minor) -> fp32 lanes (CUDA cores) per SM; FMA = 2 FLOP per lane
# per cycle. Volta, Turing and A100 have 64, the Ampere consumer cards, Ada, Hopper and Blackwell 128.
FP32_LANES_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
                     (9, 0): 128, (10, 0): 128, (12, 0): 128}


# Dense TF32 tensor-core FLOP per clock per SM with fp32 accumulation, by compute capability (BF16:
# twice that). From NVIDIA's published dense peaks over SMs x the clock they assume: A100 156 TFLOP/s
# (108 SMs, 1.41 GHz), H100 SXM 495 (132, 1.83), H100 PCIe 378 (114, 1.62); sm_86/sm_89 data-centre
# and workstation parts (A10, A40, RTX A6000, L4, L40S) 512, their GeForce cards half that (RTX 3090
# 35.6, RTX 4090 82.6). The same arithmetic as llm.c's llmc/mfu.h.
TF32_FLOP_PER_SM_CLOCK = {(8, 0): 1024, (8, 6): 512, (8, 7): 512, (8, 9): 512, (9, 0): 2048}


def tensor_flop_per_sm_clock(cc, name, precision):
    """Dense tensor-core FLOP a clock an SM for tf32 or bf16 (fp32 accumulation), or None."""
    tf32 = TF32_FLOP_PER_SM_CLOCK.get(cc)
    if tf32 is None:
        return None
    if "GeForce" in name and cc in ((8, 6), (8, 9)):
        tf32 //= 2
    return tf32 * (2 if precision == "bf16" else 1)


def tensor_spec_ghz(cc, name, ghz):
    """The clock NVIDIA's tensor-core peaks assume: Hopper's are at 1.83 GHz (PCIe: 1.62), below the
    1.98 GHz boost its CUDA cores are quoted at; elsewhere the boost clock the device reports."""
    if cc == (9, 0):
        return min(ghz, 1.62 if "PCIe" in name else 1.83)
    return ghz


def gpu_peak_flops(precision="fp32", device=None):
    """-> (FLOP/s, a line saying how) for the current CUDA device (or `device`, an object with
    numba's device attributes): fp32, SMs x fp32 lanes x 2 x boost clock (the CUDA cores: llmnb's
    fp32 matmuls are plain FMAs); tf32 or bf16, the dense tensor-core peak of that precision, NaN
    for a card whose tensor cores are not in the table above (the MFU is then not printed)."""
    env = os.environ.get("LLMNB_PEAK_FLOPS")
    if env:
        return float(env), "from $LLMNB_PEAK_FLOPS"
    if device is None:
        from numba import cuda
        device = cuda.get_current_device() if hasattr(cuda, "get_current_device") else None
    if not hasattr(device, "MULTIPROCESSOR_COUNT"):  # Numba's CUDA simulators have no SMs or clock
        return 1e12, "Numba's CUDA simulator: no real peak, 1 TFLOP/s assumed"
    cc = tuple(device.compute_capability)
    sms = device.MULTIPROCESSOR_COUNT
    ghz = device.CLOCK_RATE / 1e6  # kHz
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    if precision == "fp32":
        lanes = FP32_LANES_PER_SM.get(cc, 128)
        return (sms * lanes * 2 * ghz * 1e9,
                f"{name} (sm_{cc[0]}{cc[1]}): {sms} SMs x {lanes} fp32 lanes x 2 x {ghz:.2f} GHz boost clock")
    per_clock = tensor_flop_per_sm_clock(cc, name, precision)
    if per_clock is None:
        return math.nan, (f"{name} (sm_{cc[0]}{cc[1]}): no {precision} tensor-core peak known (set "
                          "LLMNB_PEAK_FLOPS to FLOP/s for an MFU)")
    ghz = tensor_spec_ghz(cc, name, ghz)
    return (sms * per_clock * ghz * 1e9,
            f"{name} (sm_{cc[0]}{cc[1]}): {sms} SMs x {per_clock} dense {precision} tensor-core FLOP a clock x "
            f"{ghz:.2f} GHz")


def device_name(device="cpu"):
    """The name of what trains, for the header (train_gpt2.cu's deviceProp.name): the GPU's, or
    the CPU's model name (/proc/cpuinfo), else LLVM's name for the host CPU."""
    if device == "cuda":
        try:
            from numba import cuda
            name = cuda.get_current_device().name
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # the simulator
            return "CUDA device"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ll.get_host_cpu_name()


def estimate_peak_flops(threads, device="cpu", precision="fp32"):
    """-> (FLOP/s, a line saying how it was estimated) for the CPU's `threads` or a CUDA device (its
    peak for the matmuls' precision: fp32 on the CUDA cores, tf32 on the tensor cores).
    On the CPU the peak is measured, not looked up: every thread runs independent vector FMAs at
    once, on the widest vectors the cores run at full rate (16 floats with AVX-512 where the matmul
    uses them, else 8), so the cores' real clock under that load, the number of FMA units and the
    vector width are all in it, whatever the CPU reports itself as (a VM's CPU model can be made
    up). $LLMNB_PEAK_FLOPS overrides it."""
    if device == "cuda":
        return gpu_peak_flops(precision)
    env = os.environ.get("LLMNB_PEAK_FLOPS")
    if env:
        return float(env), "from $LLMNB_PEAK_FLOPS"
    if threads != get_num_threads():
        raise ValueError(f"estimate_peak_flops: {threads} threads asked for, Numba runs {get_num_threads()}")
    flops = measure_fma_flops(LANES)
    return flops, (f"{threads} threads x {flops / threads / 1e9:.0f} GFLOP/s: {LANES}-float vector FMAs on "
                   f"every thread at once, measured now ({ll.get_host_cpu_name()})")
