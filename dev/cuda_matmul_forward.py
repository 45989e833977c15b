"""Kernel lab: matmul_forward on the GPU, out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC).

Versions, as in llm.c's dev/cuda/matmul_forward.cu (which goes on to cuBLAS; here we stay with
hand-written numba.cuda kernels):
  v1  naive: one thread per output element, its dot product straight from global memory
  v2  shared-memory tiling: a 16x16 block stages 16x16 slabs of inp and weight in shared memory,
      one output per thread
  v3  tiled + register blocking: llmnb.cuda.matmul (the package's kernel): a block of 16x16
      threads computes a 64x64 tile, 4x4 outputs per thread held in registers, K staged 16 at a
      time with register prefetch, split-K for small grids (dev/cuda_gemm.py has its ladder)

`python -m dev.cuda_matmul_forward` checks every version against a float64 NumPy reference and,
on a GPU, times each at the GPT-2 124M shapes (N = B*T = 256 and 8192; C = 768; OC = 2304, 768,
3072, 50304, and the 3072 -> 768 fcproj) and prints GFLOP/s. Without a GPU it runs itself again on
Numba's CUDA simulator, checks tiny odd shapes, and says that timing needs a GPU.
Options: --versions 1,3  --runs R (default 10)  --quick (N = 256 only, no classifier).
"""
import argparse
import math
import os
import sys

import numpy as np
from numba import cuda, float32

from llmnb.cuda import launch
from llmnb.cuda.matmul import matmul_forward as v3_package

from dev.common import MATMUL_SHAPES, format_table, max_rel_error

F32 = np.float32
ZERO = F32(0.0)
T2 = 16  # v2's tile
T2P = T2 + 1  # its shared row length (padded; shared array shapes must be plain constants)


# ------------------------------------------------------------------------------------------------
# v1: one thread per output, straight from global memory

@cuda.jit(cache=True)
def _v1_kernel(out, inp, weight, bias, has_bias):
    # out (N,OC); inp (N,C); weight (OC,C); bias (OC); grid 2-D over (OC, N)
    o, n = cuda.grid(2)
    N, C = inp.shape
    OC = weight.shape[0]
    if n < N and o < OC:
        val = bias[o] if has_bias else ZERO
        for i in range(C):
            val += inp[n, i] * weight[o, i]
        out[n, o] = val


def v1_naive(out, inp, weight, bias):
    N, OC = out.shape
    has_bias = bias is not None
    grid = (launch.cdiv(OC, 16), launch.cdiv(N, 16))
    _v1_kernel[grid, (16, 16)](out, inp, weight, bias if has_bias else weight[0], has_bias)


# ------------------------------------------------------------------------------------------------
# v2: 16x16 tiles through shared memory, one output per thread

@cuda.jit(cache=True)
def _v2_kernel(out, inp, weight, bias, has_bias):
    # out (N,OC); inp (N,C); weight (OC,C); bias (OC); block (16,16), grid (cdiv(OC,16), cdiv(N,16)).
    # Thread (tx,ty) loads inp[n0+ty, k0+tx] and weight[o0+ty, k0+tx] (neighbours read neighbouring
    # addresses), then sums its output over the 16 k of the slab; the +1 column avoids bank
    # conflicts when a warp reads down a column of ws.
    xs = cuda.shared.array((T2, T2P), float32)
    ws = cuda.shared.array((T2, T2P), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n0 = cuda.blockIdx.y * T2
    o0 = cuda.blockIdx.x * T2
    N, C = inp.shape
    OC = weight.shape[0]
    acc = ZERO
    for k0 in range(0, C, T2):
        k = k0 + tx
        xs[ty, tx] = inp[n0 + ty, k] if (n0 + ty < N and k < C) else ZERO
        ws[ty, tx] = weight[o0 + ty, k] if (o0 + ty < OC and k < C) else ZERO
        cuda.syncthreads()
        for kk in range(T2):
            acc += xs[ty, kk] * ws[tx, kk]
        cuda.syncthreads()
    n = n0 + ty
    o = o0 + tx
    if n < N and o < OC:
        out[n, o] = acc + (bias[o] if has_bias else ZERO)


def v2_tiled(out, inp, weight, bias):
    N, OC = out.shape
    has_bias = bias is not None
    grid = (launch.cdiv(OC, T2), launch.cdiv(N, T2))
    _v2_kernel[grid, (T2, T2)](out, inp, weight, bias if has_bias else weight[0], has_bias)


VERSIONS = {1: ("naive", v1_naive), 2: ("shared-memory tiles", v2_tiled),
            3: ("tiles + 8x8 register blocking (package)", v3_package)}


# ------------------------------------------------------------------------------------------------
# checking and timing

def reference(inp, weight, bias, rows):
    """float64 out[rows] = inp[rows] @ weight^T + bias."""
    out = inp[rows].astype(np.float64) @ weight.astype(np.float64).T
    return out + bias.astype(np.float64) if bias is not None else out


def check(fn, N, C, OC, with_bias, rng, max_rows=None):
    """Max error of one version, relative to the largest reference output; on the GPT-2 shapes
    only a sample of rows is compared (the float64 reference is slow on the host)."""
    inp = rng.standard_normal((N, C)).astype(F32)
    weight = (rng.standard_normal((OC, C)) / math.sqrt(C)).astype(F32)
    bias = rng.standard_normal(OC).astype(F32) if with_bias else None
    d_out = cuda.device_array((N, OC), dtype=F32)
    fn(d_out, cuda.to_device(inp), cuda.to_device(weight), None if bias is None else cuda.to_device(bias))
    out = d_out.copy_to_host()
    rows = np.arange(N) if max_rows is None or N <= max_rows else \
        np.sort(rng.choice(N, size=max_rows, replace=False))
    return max_rel_error(out[rows], reference(inp, weight, bias, rows))


def time_version(fn, N, C, OC, runs):
    """Milliseconds per call (CUDA events, after a warm-up call that also compiles)."""
    rng = np.random.default_rng(0)
    inp = cuda.to_device(rng.standard_normal((N, C)).astype(F32))
    weight = cuda.to_device((rng.standard_normal((OC, C)) * 0.02).astype(F32))
    bias = cuda.to_device(np.zeros(OC, F32))
    out = cuda.device_array((N, OC), dtype=F32)
    fn(out, inp, weight, bias)
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(runs):
        fn(out, inp, weight, bias)
    end.record()
    end.synchronize()
    return cuda.event_elapsed_time(start, end) / runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--versions", default="1,2,3", help="comma-separated, e.g. 2,3")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="N = 256 only, no classifier")
    args = ap.parse_args(argv)
    versions = [int(v) for v in args.versions.split(",")]
    for v in versions:
        if v not in VERSIONS:
            ap.error(f"unknown version {v}: expected one of {sorted(VERSIONS)}")

    rng = np.random.default_rng(1234)
    tiny = [(20, 24, 35, True), (37, 19, 70, False), (1, 40, 3, True)]  # odd shapes, several tiles
    device = "CUDA simulator" if launch.SIMULATOR else cuda.get_current_device().name
    device = device.decode() if isinstance(device, bytes) else device
    print(f"device: {device}, "
          f"geometry {launch.GEOMETRY} (matmul {launch.GEMM_KERNEL}, block {launch.TX}x{launch.TY})")
    rows = []
    ok = True
    for v in versions:
        name, fn = VERSIONS[v]
        errs = [check(fn, N, C, OC, b, rng) for N, C, OC, b in tiny]
        err = max(errs)
        ok &= err < 1e-5
        rows.append([f"v{v}", name, f"{err:.1e}", "ok" if err < 1e-5 else "FAIL"])
    print(format_table(["version", "kernel", "max rel err (odd shapes)", ""], rows))
    if launch.SIMULATOR:
        print("\ntiming needs a GPU: the simulator runs each GPU thread as a Python thread")
        return 0 if ok else 1

    shapes = [(name, C, OC) for name, C, OC in MATMUL_SHAPES if not (args.quick and name == "classifier")]
    rows = []
    for N in ((256,) if args.quick else (256, 8192)):
        for name, C, OC in shapes:
            flops = 2.0 * N * C * OC
            cells = [name, str(N), str(C), str(OC)]
            for v in versions:
                fn = VERSIONS[v][1]
                err = check(fn, N, C, OC, True, rng, max_rows=32)
                ok &= err < 1e-4
                ms = time_version(fn, N, C, OC, args.runs)
                cells.append(f"{flops / (ms * 1e-3) / 1e9:8.0f}{'' if err < 1e-4 else ' FAIL'}")
            rows.append(cells)
    print("\nGFLOP/s (fp32, CUDA events, mean of --runs calls after a warm-up):")
    print(format_table(["matmul", "N", "C", "OC"] + [f"v{v}" for v in versions], rows))
    return 0 if ok else 1


def _rerun_on_the_simulator():
    """No GPU and no simulator: start again with NUMBA_ENABLE_CUDASIM=1 (it must be set before
    numba.cuda is imported)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    print("no CUDA GPU found: running on Numba's CUDA simulator", flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "dev.cuda_matmul_forward", *sys.argv[1:]], env)


if __name__ == "__main__":
    if not launch.SIMULATOR and not cuda.is_available():
        _rerun_on_the_simulator()
    sys.exit(main())
