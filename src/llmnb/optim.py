"""The optimizer side of a training step: learning-rate schedule, gradient clipping, AdamW groups."""
import math

import numpy as np
from numba import njit, prange

# the 2-D weights: the tensors that get weight decay when it is asked for (--wd), as in llm.c's
# train_gpt2.cu (embeddings and matmul weights; no decay on biases and layernorm parameters)
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def learning_rate(step, lr, warmup=0, total=0, lr_min=None):
    """Constant lr by default; with warmup, linear from lr/warmup up to lr over the first
    `warmup` steps; with lr_min set, cosine decay from lr down to lr_min at step `total`."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if lr_min is None or total <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - lr_min)


@njit(parallel=True, cache=True)
def global_norm_squared(grads):
    # grads (N,) flat float32; the sum of squares in float64, in fixed-size chunks so the result
    # does not depend on the thread count
    CH = 1 << 16
    nchunks = (grads.shape[0] + CH - 1) // CH
    partial = np.zeros(nchunks, dtype=np.float64)
    for c in prange(nchunks):
        s = 0.0
        for i in range(c * CH, min((c + 1) * CH, grads.shape[0])):
            g = np.float64(grads[i])
            s += g * g
        partial[c] = s
    return partial.sum()


@njit(parallel=True, cache=True)
def scale_(x, factor):
    # x (N,) *= factor, in place
    f = np.float32(factor)
    for i in prange(x.shape[0]):
        x[i] *= f


def clip_grad_norm(model, max_norm):
    """Scale the flat gradient buffer so its global L2 norm is at most max_norm; returns the
    norm before clipping. max_norm <= 0 only measures."""
    norm = math.sqrt(model.grad_norm_squared())
    if max_norm > 0 and norm > max_norm:
        model.scale_grads(max_norm / (norm + 1e-6))
    return norm
