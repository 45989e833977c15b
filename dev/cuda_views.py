"""Kernel lab: the host's cost of a view of a device array, numba's own DeviceNDArray against
llmnb's ViewCachingArray (llmnb/cuda/launch.py), without a GPU: numba-cuda's real classes over a
stand-in for device memory (HostMemory), the only part of a device allocation a view touches.

    python -m dev.cuda_views [--n 5000]

Prints the time of a layer stack's [l] followed by a reshape, as the training step makes them
(params.qkvw[l], the launchers' reshapes). A card measures the same on real memory, and the
step with and without the cache: benchmarks/gpu_check.py's launch phase.
"""
import argparse
import contextlib
import time

import numpy as np


class HostMemory:
    """The part of numba's MemoryPointer a view uses: view(start, stop) -> the memory at an offset."""

    def __init__(self, size, offset=0):
        self.size, self.offset = size, offset

    def view(self, start, stop=None):
        return HostMemory((self.size if stop is None else stop) - start, self.offset + start)


@contextlib.contextmanager
def without_a_context():
    """numba's DeviceNDArray.__getitem__ asks for a CUDA context first; here nothing needs one."""
    from numba.cuda.cudadrv import devices
    real = devices._runtime.ensure_context
    devices._runtime.ensure_context = lambda: contextlib.nullcontext()
    try:
        yield
    finally:
        devices._runtime.ensure_context = real


def host_device_array(n):
    """A flat float32 DeviceNDArray of n elements over HostMemory."""
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray((n,), (4,), np.float32, gpu_data=HostMemory(4 * n))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="views timed per kind (default: %(default)s)")
    args = ap.parse_args(argv)
    from llmnb.cuda.launch import cached_views
    plain = host_device_array(12 * 4096)
    with without_a_context():
        for name, arr in (("numba's DeviceNDArray", plain), ("llmnb's ViewCachingArray", cached_views(plain))):
            stacked = arr.reshape(12, 4096)
            t0 = time.perf_counter()
            for i in range(args.n):
                stacked[i % 12].reshape(64, 64)
            us = 1e6 * (time.perf_counter() - t0) / args.n
            print(f"{name:26s} [l] + reshape {us:6.1f} us")


if __name__ == "__main__":
    main()
