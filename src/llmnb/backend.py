"""Kernel sets ("backends") that the model's one orchestration loop calls.

A backend offers every layer kernel under llm.c's name with the CPU kernels' argument order
(see kernels.py), plus a few memory helpers. The model never touches array memory itself,
so the same gpt2 forward/backward drives the CPU (NumPy arrays) or a GPU (device arrays).
"""
import numpy as np

from . import kernels, optim

KERNEL_NAMES = (
    "encoder_forward", "encoder_backward", "layernorm_forward", "layernorm_backward",
    "matmul_forward", "matmul_backward", "attention_forward", "attention_backward",
    "gelu_forward", "gelu_backward", "residual_forward", "residual_backward",
    "softmax_forward", "crossentropy_forward", "crossentropy_softmax_backward", "adamw_update",
    "global_norm_squared", "scale_",
)


class CPUBackend:
    """Numba CPU kernels over NumPy arrays."""
    name = "cpu"

    def __init__(self):
        for name in KERNEL_NAMES:
            setattr(self, name, getattr(kernels, name, None) or getattr(optim, name))

    def zeros(self, n, dtype=np.float32):
        """A new flat zero-filled array of n elements."""
        return np.zeros(n, dtype=dtype)

    def asarray(self, host):
        """The backend's copy of a host NumPy array (CPU: a contiguous array, no copy if possible)."""
        return np.ascontiguousarray(host)

    def copy_(self, dst, host):
        """Copy a host NumPy array into an existing backend array of the same shape."""
        dst[...] = host

    def to_host(self, arr):
        """A NumPy array with the contents of a backend array."""
        return np.asarray(arr)

    def fill(self, arr, value):
        """Fill a backend array in place."""
        arr.fill(value)

    def synchronize(self):
        pass


def get_backend(device="cpu"):
    """The backend for a --device value: 'cpu' or 'cuda'."""
    if device == "cpu":
        return CPUBackend()
    if device == "cuda":
        try:
            from .cuda.backend import CUDABackend
        except ImportError as e:  # numba-cuda not installed, or no CUDA driver/simulator
            raise RuntimeError(f"--device cuda is not available: {e}. "
                               "Install the extra: pip install 'llmnb[cuda]'") from e
        return CUDABackend()
    raise ValueError(f"unknown device {device!r} (expected 'cpu' or 'cuda')")
