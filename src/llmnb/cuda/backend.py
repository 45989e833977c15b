"""CUDABackend: llmnb.contract.Backend for a CUDA GPU (or Numba's CUDA simulator).

Every kernel of the contract over device arrays (numba DeviceNDArray views of flat device
buffers), launched asynchronously on the default stream, plus the memory helpers. Host <-> device
copies happen only in asarray, copy_ and to_host.
"""
import numpy as np
from numba import cuda

from ..contract import Backend
from . import bf16, kernels
from .attention import Attention
from .attention_tc import AttentionTF32
from .launch import cached_views
from .matmul import Matmuls
from .matmul_bf16 import MatmulsBF16
from .matmul_tc import MatmulsTF32


class CUDABackend(Backend):
    """numba.cuda kernels over device arrays (the contract's docstrings give the shapes)."""
    name = "cuda"

    encoder_forward = staticmethod(kernels.encoder_forward)
    encoder_backward = staticmethod(kernels.encoder_backward)
    layernorm_forward = staticmethod(kernels.layernorm_forward)
    layernorm_backward = staticmethod(kernels.layernorm_backward)
    residual_layernorm_forward = staticmethod(kernels.residual_layernorm_forward)
    attention_query = staticmethod(kernels.attention_query)
    gelu_forward = staticmethod(kernels.gelu_forward)
    gelu_backward = staticmethod(kernels.gelu_backward)
    residual_forward = staticmethod(kernels.residual_forward)
    residual_backward = staticmethod(kernels.residual_backward)
    softmax_forward = staticmethod(kernels.softmax_forward)
    crossentropy_forward = staticmethod(kernels.crossentropy_forward)
    crossentropy_softmax_backward = staticmethod(kernels.crossentropy_softmax_backward)
    adamw_update = staticmethod(kernels.adamw_update)
    global_norm_squared = staticmethod(kernels.global_norm_squared)
    scale_ = staticmethod(kernels.scale_)
    # --precision bf16's AdamW over bf16 parameters with fp32 master weights (train_gpt2.cu's)
    adamw_update_master = staticmethod(bf16.adamw_update_bf16)
    init_from_master = staticmethod(bf16.init_from_master)

    def __init__(self, precision="fp32"):
        """precision: "fp32" (the default: FFMA kernels, exact fp32), "tf32" (the matmuls and
        attention's products on tensor cores: matmul_tc.py, attention_tc.py) or "bf16" (tensors of
        bf16 bits, the matmuls on tensor cores in bf16: matmul_bf16.py, attention's products in TF32
        over bf16 inputs: attention_tc.py; every other kernel reads and writes bf16 through
        ptx.widen / narrow)."""
        if not cuda.is_available():
            raise RuntimeError("llmnb/cuda/backend.py: no CUDA GPU found by numba.cuda "
                               "(set NUMBA_ENABLE_CUDASIM=1 to run the kernels on the simulator)")
        if precision not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"llmnb/cuda/backend.py: precision {precision!r}, expected 'fp32', 'tf32' or 'bf16'")
        self.precision = precision
        # the matmuls keep their split-K scratch here, for this backend
        self.matmuls = {"tf32": MatmulsTF32, "bf16": MatmulsBF16}.get(precision, Matmuls)()
        # and the attention its dd scratch (bf16: the TF32 kernels over bf16 tensors, attention_tc.py)
        self.attention = AttentionTF32() if precision in ("tf32", "bf16") else Attention()

    def matmul_forward(self, out, inp, weight, bias):
        self.matmuls.matmul_forward(out, inp, weight, bias)

    def matmul_backward(self, dinp, dweight, dbias, dout, inp, weight):
        self.matmuls.matmul_backward(dinp, dweight, dbias, dout, inp, weight)

    def attention_forward(self, out, lse, inp):
        self.attention.attention_forward(out, lse, inp)

    def attention_backward(self, dinp, dout, inp, out, lse):
        self.attention.attention_backward(dinp, dout, inp, out, lse)

    # (the flat buffers: their views, and their views' views, are made once: launch.cached_views)
    def zeros(self, n, dtype=np.float32):
        arr = cached_views(cuda.device_array(n, dtype=dtype))
        kernels.fill(arr, 0)
        return arr

    def asarray(self, host):
        return cached_views(cuda.to_device(np.ascontiguousarray(host)))

    def copy_(self, dst, host):
        """Copy a host NumPy array into an existing device array of the same shape."""
        host = np.ascontiguousarray(host, dtype=dst.dtype)
        if tuple(host.shape) != tuple(dst.shape):
            raise ValueError(f"llmnb/cuda/backend.py: copy_ of a host array {host.shape} "
                             f"into a device array {tuple(dst.shape)}")
        dst.copy_to_device(host)

    def to_host(self, arr):
        """(waits for the kernels before it)"""
        return arr.copy_to_host()

    def fill(self, arr, value):
        kernels.fill(arr, value)

    def synchronize(self):
        cuda.synchronize()
