"""The CPU backend, and get_backend for a --device.

A backend implements llmnb.contract.Backend: every layer kernel under llm.c's name, plus a few
memory helpers. The model never touches array memory itself, so the same gpt2 forward/backward
drives the CPU (NumPy arrays) or a GPU (device arrays, llmnb.cuda.backend).
"""
import importlib.util
import types

import numpy as np
from numba import njit
from numba.core.dispatcher import Dispatcher

from . import kernels, matmul, optim
from .contract import KERNEL_NAMES, Backend  # noqa: F401  (KERNEL_NAMES: re-exported for the timers)


def _serial(kernel):
    """A serial build of a parallel layer kernel (its prange runs as a plain range), for the rows
    of generation's step: a parallel region costs more than a row's layernorm, and far more when
    another process holds a core (every region then waits for a descheduled thread). Same code and
    fastmath flags, so the same results (parallel == serial is tested for every kernel), and
    NumPy's error model, which the parallel build's loops have: under Numba's default (Python's)
    every float division checks for zero, and a loop with a division (gelu's, softmax's) stays
    scalar (gelu ran at 6 ns an element instead of 0.7). Its own name, so Numba's on-disk cache
    keeps it apart from the parallel build."""
    f = kernel.py_func
    name = f.__name__ + "_serial"
    g = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    g.__qualname__ = name
    return njit(fastmath=kernel.targetoptions.get("fastmath", False), error_model="numpy", cache=True)(g)


# the row kernels of generation's one-token step, serial (compiled on first use)
ROW = types.SimpleNamespace(**{n: _serial(getattr(kernels, n)) for n in (
    "encoder_forward", "layernorm_forward", "residual_forward", "gelu_forward", "softmax_forward")})


def _step(out):
    """True for generation's step: out (B,T,...) holds one position per sequence (T = 1). Its
    rows go through the row kernels' serial builds and its matmuls through the GEMV, which reads
    each weight once for the B rows (a training batch of T = 1 would take the same path)."""
    return out.ndim >= 2 and out.shape[1] == 1


class CPUBackend(Backend):
    """Numba CPU kernels over NumPy arrays (the contract's docstrings give the shapes). Generation's
    step (T = 1) runs the row kernels' serial builds and the matmuls as GEMVs."""
    name = "cpu"

    encoder_backward = staticmethod(kernels.encoder_backward)
    layernorm_backward = staticmethod(kernels.layernorm_backward)
    attention_forward = staticmethod(kernels.attention_forward)
    attention_backward = staticmethod(kernels.attention_backward)
    attention_query = staticmethod(kernels.attention_query)
    gelu_backward = staticmethod(kernels.gelu_backward)
    residual_backward = staticmethod(kernels.residual_backward)
    crossentropy_forward = staticmethod(kernels.crossentropy_forward)
    crossentropy_softmax_backward = staticmethod(kernels.crossentropy_softmax_backward)
    adamw_update = staticmethod(kernels.adamw_update)
    global_norm_squared = staticmethod(optim.global_norm_squared)
    scale_ = staticmethod(optim.scale_)

    def __init__(self):
        self.scratch = matmul.MatmulScratch()  # the matmuls' packed operands, reused step after step

    def encoder_forward(self, out, inp, wte, wpe):
        (ROW if _step(out) else kernels).encoder_forward(out, inp, wte, wpe)

    def layernorm_forward(self, out, mean, rstd, inp, weight, bias):
        (ROW if _step(out) else kernels).layernorm_forward(out, mean, rstd, inp, weight, bias)

    def gelu_forward(self, out, inp):
        (ROW if _step(out) else kernels).gelu_forward(out, inp)

    def residual_forward(self, out, inp1, inp2):
        (ROW if _step(out) else kernels).residual_forward(out, inp1, inp2)

    def residual_layernorm_forward(self, residual, ln, mean, rstd, inp1, inp2, weight, bias):
        """(the CPU's: the two kernels one after the other; a launch costs nothing here)"""
        self.residual_forward(residual, inp1, inp2)
        self.layernorm_forward(ln, mean, rstd, residual, weight, bias)

    def softmax_forward(self, probs, logits, V):
        (ROW if _step(probs) else kernels).softmax_forward(probs, logits, V)

    def matmul_forward(self, out, inp, weight, bias):
        """(generation's step, T = 1: a GEMV over the B rows, which streams the weight once;
        from bfloat16 bits for a uint16 weight, from int8 for a matmul.Int8Weight. Unchecked
        (matmul.matvec): the step passes the model's own buffers, every call of every token)"""
        if _step(out):
            matmul.matvec(out.reshape(-1, out.shape[-1]), inp.reshape(-1, inp.shape[-1]), weight, bias)
        else:
            matmul.matmul_forward(out, inp, weight, bias, scratch=self.scratch)

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


def numba_cuda_missing():
    """Why --device cuda cannot run here, or None. llmnb's CUDA kernels need NVIDIA's numba-cuda
    (the `cuda` extra), which replaces numba.cuda when installed; numba's own, deprecated CUDA target
    (and its simulator) lacks what they use (aligned shared arrays, for one), so without numba-cuda
    they would fail at their first launch, deep in a traceback."""
    if importlib.util.find_spec("numba_cuda") is None:
        return ("--device cuda needs NVIDIA's numba-cuda, and this Python has only numba's built-in "
                "CUDA target: pip install 'llmnb[cuda]'")
    return None


def kernels_cached():
    """Whether Numba's on-disk cache holds builds of the CPU kernels a training step calls, for
    this source (False on a first run: they compile, about a minute; None when it cannot tell)."""
    # not called by a step: residual_backward (model.py adds the residual gradient in place) and
    # softmax_forward (training's classifier is fused; generation's one row runs ROW's serial build)
    names = [n for n in KERNEL_NAMES if n not in ("residual_backward", "softmax_forward")]
    entry = ([getattr(kernels, n) for n in names if hasattr(kernels, n)] + list(vars(ROW).values())
             + [matmul.gemm, matmul.bias_backward, matmul._matvec_forward, optim.global_norm_squared])
    try:  # Numba's cache index of each: empty when none was built for this source file
        return all(bool(d._cache._cache_file._load_index()) for d in entry if isinstance(d, Dispatcher))
    except Exception:  # another Numba's layout: say nothing
        return None


PRECISIONS = ("fp32", "tf32", "bf16")


def get_backend(device="cpu", precision="fp32"):
    """The backend for a --device value, 'cpu' or 'cuda', and a --precision of its matmuls: 'fp32'
    (every device), 'tf32' (cuda: tensor cores, inputs rounded to 10 mantissa bits, fp32 sums) or
    'bf16' (cuda: bf16 tensors and tensor cores, fp32 sums, as train_gpt2.cu)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    if device == "cpu":
        if precision != "fp32":
            raise ValueError(f"--precision {precision} is for --device cuda (the CPU computes in fp32)")
        return CPUBackend()
    if device == "cuda":
        missing = numba_cuda_missing()
        if missing:
            raise RuntimeError(missing)
        try:
            from .cuda.backend import CUDABackend
        except ImportError as e:  # numba-cuda not installed, or no CUDA driver/simulator
            raise RuntimeError(f"--device cuda is not available: {e}. "
                               "Install the extra: pip install 'llmnb[cuda]'") from e
        return CUDABackend(precision)
    raise ValueError(f"unknown device {device!r} (expected 'cpu' or 'cuda')")
