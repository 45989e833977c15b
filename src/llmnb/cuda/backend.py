"""CUDABackend: the kernel set of llmnb.backend for a CUDA GPU (or Numba's CUDA simulator).

Same members as CPUBackend: every name of KERNEL_NAMES, taking device arrays (numba DeviceNDArray
views of flat device buffers) with the CPU kernels' arguments and launching asynchronously on the
default stream, plus the memory helpers. Host <-> device copies happen only in asarray, copy_ and
to_host.
"""
import numpy as np
from numba import cuda

from ..backend import KERNEL_NAMES
from . import kernels
from .matmul import Matmuls


class CUDABackend:
    """numba.cuda kernels over device arrays."""
    name = "cuda"

    def __init__(self):
        if not cuda.is_available():
            raise RuntimeError("llmnb/cuda/backend.py: no CUDA GPU found by numba.cuda "
                               "(set NUMBA_ENABLE_CUDASIM=1 to run the kernels on the simulator)")
        for name in KERNEL_NAMES:
            setattr(self, name, getattr(kernels, name))
        matmuls = Matmuls()  # the matmuls keep their split-K scratch here, for this backend
        self.matmul_forward, self.matmul_backward = matmuls.matmul_forward, matmuls.matmul_backward

    def zeros(self, n, dtype=np.float32):
        """A new flat zero-filled device array of n elements."""
        arr = cuda.device_array(n, dtype=dtype)
        kernels.fill(arr, 0)
        return arr

    def asarray(self, host):
        """A device copy of a host NumPy array."""
        return cuda.to_device(np.ascontiguousarray(host))

    def copy_(self, dst, host):
        """Copy a host NumPy array into an existing device array of the same shape."""
        host = np.ascontiguousarray(host, dtype=dst.dtype)
        if tuple(host.shape) != tuple(dst.shape):
            raise ValueError(f"llmnb/cuda/backend.py: copy_ of a host array {host.shape} "
                             f"into a device array {tuple(dst.shape)}")
        dst.copy_to_device(host)

    def to_host(self, arr):
        """A NumPy array with the contents of a device array (waits for the kernels before it)."""
        return arr.copy_to_host()

    def fill(self, arr, value):
        """Fill a device array in place."""
        kernels.fill(arr, value)

    def synchronize(self):
        cuda.synchronize()
