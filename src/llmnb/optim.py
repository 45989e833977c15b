"""The optimizer, in one place: llm.c's AdamW over the flat parameter buffer and what a run wraps
around it.

    learning_rate(step, ...)        the schedule: llmc/schedulers.h's cosine, linear, constant, wsd
    clip_grad_norm(model, c)        the gradient's global L2 norm, scaled down to c
    adamw_update(model, ...)        gpt2_update: the AdamW kernel over params[lo:hi] (ZeRO-1: one
                                    rank's shard), weight decay on the tensors of `decay` only
    AdamW(...)                      a run's optimizer across the ranks: reduce the gradient, clip
                                    it, update (the whole buffer, or this rank's shard), gather

The AdamW kernel itself is kernels.adamw_update (the backend's); the collectives are dist.py's.
"""
import ctypes
import ctypes.util
import math

import numpy as np
from numba import njit, prange

from . import rand

# the 2-D weights: the tensors that get weight decay when it is asked for (-c), as llm.c's
# train_gpt2.cu's gpt2_update (its tensors 0, 1, 4, 6, 10, 12: the embeddings and the matmul
# weights; no decay on biases and layernorm parameters)
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")

SCHEDULERS = ("cosine", "linear", "constant", "wsd")  # llmc/schedulers.h's (-k)


def learning_rate(step, lr, warmup=0, total=None, final_frac=1.0, kind="cosine"):
    """The learning rate of `step` (0-based), as llmc/schedulers.h's get_learning_rate: float32
    arithmetic as the C's, so the value is the C's float bit for bit (tests/llmc's harness checks it).

    kind        cosine: linear warmup to lr over `warmup` steps, then cosine decay to lr * final_frac
                at step `total` (llm.c's train_num_batches); linear: the same with a linear decay;
                constant: lr at every step (llm.c's ignores the warmup); wsd: warmup, constant, then
                over the last 20% of `total` a 1 - sqrt decay to lr * final_frac
    total None  no known end (a wall-clock budget): constant lr after the warmup, for final_frac 1
    A step past `total` (where the C's asserts stop it) is a ValueError."""
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown learning rate scheduler {kind!r} (llm.c's: {', '.join(SCHEDULERS)})")
    f32 = np.float32
    max_lr = f32(lr)
    if kind == "constant":
        return float(max_lr)
    if step < warmup:  # linear warmup (wsd's rounds in another order: lr * ((step + 1) / warmup))
        if kind == "wsd":
            return float(max_lr * (f32(step + 1) / f32(warmup)))
        return float(max_lr * f32(step + 1) / f32(warmup))
    if total is None:
        if final_frac != 1.0:
            raise ValueError("a learning rate decay (final fraction below 1) needs the number of steps")
        return float(max_lr)
    min_lr = max_lr * f32(final_frac)
    start = warmup if kind != "wsd" else int(f32(0.8) * f32(total))  # wsd: (int)(0.8f * N)
    if kind == "wsd" and step < start:
        return float(max_lr)
    ratio = f32(step - start) / f32(total - start) if total > start else f32(math.nan)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"learning rate schedule: step {step} is past the schedule's {total} steps")
    if kind == "cosine":  # cosf of the float M_PI * ratio (a double, rounded to float)
        coeff = f32(0.5) * (f32(1.0) + _cosf(f32(math.pi * float(ratio))))
        return float(min_lr + coeff * (max_lr - min_lr))
    if kind == "linear":
        return float(max_lr - ratio * (max_lr - min_lr))
    return float(min_lr + (f32(1.0) - np.sqrt(ratio)) * (max_lr - min_lr))  # wsd


def _libm_cosf():
    """The C library's cosf (what llm.c's schedule calls), or None where there is no libm to load."""
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        cosf = libm.cosf
    except (OSError, AttributeError):
        return None
    cosf.restype, cosf.argtypes = ctypes.c_float, [ctypes.c_float]
    return cosf


_LIBM_COSF = _libm_cosf()


def _cosf(x):
    """C's cosf of a float32: the C library's own (glibc's is not correctly rounded: in ~1% of a
    long cosine schedule's steps it is 1 ulp off the rounded double cosine, and so is llm.c's lr),
    else the double cosine rounded to float32."""
    if _LIBM_COSF is not None:
        return np.float32(_LIBM_COSF(float(x)))
    return np.float32(math.cos(float(x)))


@njit(fastmath={"reassoc", "contract"}, cache=True)
def _sum_of_squares(x):
    # x (n,) float32 -> the sum of its squares in float64. reassoc lets LLVM keep several vector
    # accumulators (the order is fixed by the compiled code, not by the thread count); a strict
    # left-to-right sum waits on each add: 130 ms for 124M floats on 2 threads, against 17
    s = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


@njit(parallel=True, cache=True)
def global_norm_squared(grads):
    # grads (N,) flat float32; the sum of squares in float64, in fixed-size chunks so the result
    # does not depend on the thread count
    CH = 1 << 16
    n = grads.shape[0]
    nchunks = (n + CH - 1) // CH
    partial = np.zeros(nchunks, dtype=np.float64)
    for c in prange(nchunks):
        partial[c] = _sum_of_squares(grads[c * CH:min((c + 1) * CH, n)])
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


def adamw_update(model, learning_rate, beta1, beta2, eps, weight_decay, t, decay=None, shard=None):
    """One AdamW step of model (t is the 1-based step), as llm.c's gpt2_update. decay=None applies
    weight_decay to every parameter in one pass over the flat buffers; a tuple of tensor names
    applies it to those only (one pass per tensor, or per piece of one in the shard; the others get
    none). shard (lo, hi, grads), ZeRO-1: update params[lo:hi] only, from this rank's reduced
    gradient grads (hi - lo floats); m and v then hold that range.

    Without shard, AdamW zeroes model.grads as it reads them (the next zero_grad's fill, fused), so
    afterwards the gradient buffer holds zeros. Under ZeRO-1 the reduced gradient is another
    buffer: model.grads is left as it is and the next zero_grad fills it."""
    if model.master is not None:
        if shard is not None:
            raise ValueError("ZeRO-1 (-z 1) is not supported with --precision bf16")
        return _adamw_update_master(model, learning_rate, beta1, beta2, eps, weight_decay, t, decay)
    own = shard is None  # the update reads (and zeroes) model.grads
    if own:
        if model.grads is None:
            raise RuntimeError("update() needs a backward() first")
        shard = (0, model.num_parameters, model.grads.memory)
    lo, hi, grads = shard
    k = model.backend
    if model.m_memory is None:
        model.m_memory, model.v_memory = k.zeros(hi - lo), k.zeros(hi - lo)
    p, m, v = model.params.memory, model.m_memory, model.v_memory
    hyper = (float(learning_rate), float(beta1), float(beta2), float(eps))
    for a, b, decays in _pieces(model.params.shapes, lo, hi, decay):
        wd = float(weight_decay) if decays else 0.0
        k.adamw_update(p[a:b], grads[a - lo:b - lo], m[a - lo:b - lo], v[a - lo:b - lo], *hyper, wd, int(t), own)
    if own:
        model.grads_are_zero = True  # every element of [0, num_parameters) was read and zeroed


# the parameter tensors that are not per layer (train_gpt2.cu's tensors 0, 1, 14, 15)
WHOLE_TENSORS = ("wte", "wpe", "lnfw", "lnfb")


def _adamw_update_master(model, learning_rate, beta1, beta2, eps, weight_decay, t, decay):
    """gpt2_update of train_gpt2.cu for a bf16 model (--precision bf16): per parameter tensor, all
    its layers in one launch, a seed drawn from the model's xorshift state (rand.random_u32), then
    AdamW over the fp32 master weights, m and v, the bf16 parameters their stochastic rounding
    (llmnb/cuda/bf16.py). The gradient is left as it is (the next zero_grad fills it)."""
    if model.grads is None:
        raise RuntimeError("update() needs a backward() first")
    k = model.backend
    if model.m_memory is None:
        model.m_memory, model.v_memory = k.zeros(model.num_parameters), k.zeros(model.num_parameters)
    p, g, w, m, v = model.params.memory, model.grads.memory, model.master, model.m_memory, model.v_memory
    L = model.config.num_layers
    model.rng_state_last_update = model.rng_state   # (what llm.c saves, to re-round from on a resume)
    offset = 0
    for name, shape in model.params.shapes.items():
        n = int(np.prod(shape))
        seed, model.rng_state = rand.random_u32(model.rng_state)
        wd = float(weight_decay) if decay is None or name in decay else 0.0
        a, b = offset, offset + n
        k.adamw_update_master(p[a:b], w[a:b], g[a:b], m[a:b], v[a:b], 1 if name in WHOLE_TENSORS else L,
                              float(learning_rate), float(beta1), float(beta2), float(eps), wd, int(t), 1.0, seed)
        offset = b
    model.grads_are_zero = False


def _pieces(shapes, lo, hi, decay):
    """[(a, b, decays)] covering [lo, hi) of the flat buffer: one piece when decay is None (decays:
    True), else one per tensor's part of [lo, hi), decays when the tensor is named in decay."""
    if decay is None:
        return [(lo, hi, True)]
    out, offset = [], 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            out.append((a, b, name in decay))
        offset += n
    return out


class AdamW:
    """A run's optimizer: AdamW with llm.c's beta1 and eps (beta2: train_gpt2.c's 0.999 unless
    given), the run's learning rate schedule (a function of the step), gradient clipping and weight
    decay (on llm.c's tensors, DECAYED), across the world's ranks (dist.Single or dist.MPIWorld).
    Each step: reduce_and_clip() once the gradient is in (-> its norm), then, if the run goes on
    and does not skip the step, update(step)."""
    BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

    def __init__(self, world, schedule, weight_decay=0.0, grad_clip=0.0, beta2=BETA2):
        self.world, self.schedule = world, schedule
        self.weight_decay, self.grad_clip, self.beta2 = weight_decay, grad_clip, beta2

    def lr(self, step):
        return self.schedule(step)

    def reduce_and_clip(self, model):
        """The mean of the ranks' gradients (each rank's backward scaled its own by 1/ranks), clipped
        to the global norm grad_clip (0: measured only) -> the norm before clipping. ZeRO-1: each
        rank holds the reduced gradient of its shard only; the norm is the root of the sum over the
        ranks of each shard's squared norm, and each rank scales its own shard."""
        world = self.world
        world.reduce_grads(model)
        if not world.sharded:
            return clip_grad_norm(model, self.grad_clip)
        k = model.backend
        norm = math.sqrt(world.sum(float(k.global_norm_squared(world.grad_shard))))
        if self.grad_clip > 0 and norm > self.grad_clip:
            k.scale_(world.grad_shard, self.grad_clip / (norm + 1e-6))
        return norm

    def update(self, model, step):
        """AdamW for the update of step (0-based: t = step + 1) -> the learning rate it used. ZeRO-1:
        this rank's shard, from its reduced gradient, then every rank gathers the others' shards."""
        world, lr = self.world, self.lr(step)
        decay = DECAYED if self.weight_decay > 0 else None
        hyper = (lr, self.BETA1, self.beta2, self.EPS, self.weight_decay, step + 1)
        if not world.sharded:
            model.update(*hyper, decay=decay)
        else:
            lo, hi = world.shard(model.num_parameters)
            model.update(*hyper, decay=decay, shard=(lo, hi, world.grad_shard))
            world.all_gather(model.params.memory)
        return lr
