"""The CPU backend, and get_backend for a --device.

A backend implements llmnb.contract.Backend: every layer kernel under llm.c's name, plus a few
memory helpers. The model never touches array memory itself, so the same gpt2 forward/backward
drives the CPU (NumPy arrays) or a GPU (device arrays, llmnb.cuda.backend).
"""
import numpy as np

from . import kernels, matmul, optim
from .contract import KERNEL_NAMES, Backend  # noqa: F401  (KERNEL_NAMES: re-exported for the timers)

class CPUBackend(Backend):
    """Numba CPU kernels over NumPy arrays (the contract's docstrings give the shapes)."""
    name = "cpu"

    encoder_forward = staticmethod(kernels.encoder_forward)
    encoder_backward = staticmethod(kernels.encoder_backward)
    layernorm_forward = staticmethod(kernels.layernorm_forward)
    layernorm_backward = staticmethod(kernels.layernorm_backward)
    matmul_forward = staticmethod(matmul.matmul_forward)
    attention_forward = staticmethod(kernels.attention_forward)
    attention_backward = staticmethod(kernels.attention_backward)
    gelu_forward = staticmethod(kernels.gelu_forward)
    gelu_backward = staticmethod(kernels.gelu_backward)
    residual_forward = staticmethod(kernels.residual_forward)
    residual_backward = staticmethod(kernels.residual_backward)
    softmax_forward = staticmethod(kernels.softmax_forward)
    crossentropy_forward = staticmethod(kernels.crossentropy_forward)
    crossentropy_softmax_backward = staticmethod(kernels.crossentropy_softmax_backward)
    adamw_update = staticmethod(kernels.adamw_update)
    global_norm_squared = staticmethod(optim.global_norm_squared)
    scale_ = staticmethod(optim.scale_)

    def __init__(self):
        self.scratch = matmul.MatmulScratch()  # the backward's transposes, reused step after step

    def matmul_backward(self, dinp, dweight, dbias, dout, inp, weight):
        matmul.matmul_backward(dinp, dweight, dbias, dout, inp, weight, scratch=self.scratch)

    def zeros(self, n, dtype=np.float32):
        return np.zeros(n, dtype=dtype)

    def asarray(self, host):
        """(CPU: a contiguous array, no copy if possible)"""
        return np.ascontiguousarray(host)

    def copy_(self, dst, host):
        dst[...] = host

    def to_host(self, arr):
        return np.asarray(arr)

    def fill(self, arr, value):
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
