"""What --precision bf16 adds on the GPU beside the dtype-generic kernels: train_gpt2.cu's AdamW over
bf16 parameters with fp32 master weights, and its stochastic rounding.

    adamw_update_bf16    one tensor's AdamW step (all its layers at once): m, v and the master
                         weights in fp32, the gradient read from bf16, the updated weight written
                         to the master copy and, stochastically rounded, to the bf16 parameters
    init_from_master     the bf16 parameters from the master weights, rounded the same way (a
                         resume: llm.c's init_from_master)

As llm.c's adamw_kernel3: blocks of 512 threads (ADAMW_THREADS, at the GPU geometry), grid (cdiv(size, 512), L) over a tensor of L
layers of `size` elements; m and v follow lerp (two fmas); each thread's random bits are
Get2dNoiseUint(threadIdx.x, blockIdx.x * 512 + blockIdx.y, seed) (rand.noise_2d), seed one
xorshift draw per tensor and step. So, given the same seeds, the same fp32 update rounds to the
same bf16 bits as llm.c's (rand.stochastic_round_bf16 is the NumPy model the tests compare with).
"""
import math

import numpy as np
from numba import cuda

from .. import rand
from ..kernels import bias_corrections
from .launch import GEOMETRY, INLINE, cdiv, check
from .ptx import f32_bits, widen

# llm.c's block: the random bits of a parameter depend on it (the simulator's geometry takes 64, to
# spare it 512 Python threads a block; the tests' models of the bits take the same number)
ADAMW_THREADS = {"gpu": 512, "sim": 64}[GEOMETRY]
F32 = np.float32
U64 = np.uint64
WHERE = "bf16.py"
squirrel_noise5 = INLINE(rand.squirrel_noise5)


@INLINE
def noise_2d(x, y, seed):
    # rand.noise_2d (Get2dNoiseUint) over the device's squirrel_noise5
    mask = U64(rand.MASK32)
    return squirrel_noise5(((U64(x) & mask) + ((U64(rand.NOISE_PRIME) * (U64(y) & mask)) & mask)) & mask, seed)


@INLINE
def stochastic_round(x, random):
    # rand.stochastic_round_bf16 for one float32: bf16 bits (uint16)
    bits = U64(f32_bits(x))
    top = bits >> U64(16)
    if (bits & U64(0x7F800000)) != U64(0x7F800000):
        if (bits & U64(0xFFFF)) > (random & U64(0xFFFF)):
            top += U64(1)
    elif (bits & U64(0x7FFFFF)) != U64(0):
        top = U64(0x7FC0)
    return np.uint16(top)


@INLINE
def lerp(start, end, weight):
    # llm.c's lerp: start + weight * (end - start) in two fmas
    return cuda.fma(weight, end, cuda.fma(-weight, start, start))


@cuda.jit(cache=True)
def adamw_bf16_kernel(params, master, grads, m, v, size, learning_rate, beta1, beta2, eps, weight_decay,
                      bc1, bc2, grad_scale, seed):
    # params, grads (L*size,) bf16 bits; master, m, v (L*size,) float32; grid (cdiv(size, 512), L),
    # block 512: layer blockIdx.y's element blockIdx.x * 512 + threadIdx.x
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i >= size:
        return
    idx = cuda.blockIdx.y * size + i
    grad = grad_scale * widen(grads[idx])
    mi = lerp(grad, m[idx], beta1)
    m[idx] = mi
    vi = lerp(grad * grad, v[idx], beta2)
    v[idx] = vi
    mi = mi / bc1
    vi = vi / bc2
    old = master[idx]
    param = old - learning_rate * (mi / (math.sqrt(vi) + eps) + weight_decay * old)
    random = noise_2d(cuda.threadIdx.x, cuda.blockIdx.x * cuda.blockDim.x + cuda.blockIdx.y, seed)
    params[idx] = stochastic_round(param, random)
    master[idx] = param


@cuda.jit(cache=True)
def init_from_master_kernel(params, master, size, seed):
    # params (L*size,) bf16 bits = master (L*size,) float32 stochastically rounded; grid and random
    # bits as adamw_bf16_kernel's
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i >= size:
        return
    idx = cuda.blockIdx.y * size + i
    random = noise_2d(cuda.threadIdx.x, cuda.blockIdx.x * cuda.blockDim.x + cuda.blockIdx.y, seed)
    params[idx] = stochastic_round(master[idx], random)


def _check_flat(name, layers, **arrays):
    n = arrays["master"].shape[0]
    for key, a in arrays.items():
        want = np.uint16 if key in ("params", "grads") else np.float32
        check(len(a.shape) == 1 and a.shape[0] == n and a.dtype == want, WHERE,
              f"{name}: {key} {tuple(a.shape)} {a.dtype}, expected ({n},) {np.dtype(want).name}")
    check(layers >= 1 and n % layers == 0, WHERE, f"{name}: {n} elements are not {layers} layers of one size")
    return n // layers


def adamw_update_bf16(params, master, grads, m, v, layers, learning_rate, beta1, beta2, eps, weight_decay, t,
                      grad_scale, seed):
    """One AdamW step of one tensor of `layers` layers (train_gpt2.cu's adamw_update): flat views of
    its params and grads (bf16 bits) and of its master weights, m and v (float32); t the 1-based
    step; seed a uint32 (llm.c: random_u32 of the model's rng state, one per tensor)."""
    size = _check_flat("adamw_update_bf16", layers, params=params, master=master, grads=grads, m=m, v=v)
    # llm.c's corrections: 1 - powf(beta, t) in float32
    bc1, bc2 = bias_corrections(F32(beta1), F32(beta2), int(t))
    adamw_bf16_kernel[(cdiv(size, ADAMW_THREADS), layers), ADAMW_THREADS](
        params, master, grads, m, v, size, F32(learning_rate), F32(beta1), F32(beta2), F32(eps),
        F32(weight_decay), bc1, bc2, F32(grad_scale), U64(seed))


def init_from_master(params, master, layers, seed):
    """params (bf16 bits) = master (float32) stochastically rounded, as llm.c's init_from_master."""
    size = _check_flat("init_from_master", layers, params=params, master=master)
    init_from_master_kernel[(cdiv(size, ADAMW_THREADS), layers), ADAMW_THREADS](params, master, size, U64(seed))


__all__ = ["adamw_update_bf16", "init_from_master", "ADAMW_THREADS"]
