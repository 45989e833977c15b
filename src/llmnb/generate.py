"""Generation with a KV cache: one new token's work per step.

llm.c's CPU main re-runs the full (B, T) forward for every generated token. Here the keys and
values of earlier positions stay in a cache (the qkv vectors of every layer and position), so
step t runs the layers on one token and attends over the t+1 cached positions. The layer kernels
are the model's own, called on (1, 1, ...) views; attention runs per head as one query
(kernels.attention_query, one query against the cached keys and values; kernels.attention_token
runs it for every head) over the cache.
"""
import types

import numpy as np
from numba import njit

from .config import Tensors, param_shapes
from .formats import bf16_to_fp32, fp32_to_bf16
from . import kernels

MATRICES = ("qkvw", "attprojw", "fcw", "fcprojw", "wte")  # what the one-row matmuls stream


def _serial(kernel):
    """A serial build of a parallel layer kernel (its prange runs as a plain range), for one
    token's row: a parallel region costs more than a row's layernorm, and far more when another
    process holds a core (every region then waits for a descheduled thread). Same code and
    fastmath flags, so the same results (parallel == serial is tested for every kernel); its own
    name, so Numba's on-disk cache keeps it apart from the parallel build."""
    f = kernel.py_func
    name = f.__name__ + "_serial"
    g = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    g.__qualname__ = name
    return njit(fastmath=kernel.targetoptions.get("fastmath", False), cache=True)(g)


# the row kernels of a generation step (the matmuls and attention stay parallel)
encoder_forward, layernorm_forward, residual_forward, gelu_forward, softmax_forward = (
    _serial(k) for k in (kernels.encoder_forward, kernels.layernorm_forward, kernels.residual_forward,
                         kernels.gelu_forward, kernels.softmax_forward))


class KVCache:
    """Per-token activations and the qkv cache (L, maxT, 3C) of one sequence.

    Each activation is a (1, 1, n) array for the layer kernels plus a 1-D view of it (name_v)
    for the one-row matmuls (matvec_forward), made once here, not per token.

    dtype "bfloat16" runs the model of the parameters rounded to bfloat16 (as an llm.c version-5
    checkpoint holds them; lossless for one) and streams its matrices as bfloat16: half the
    bytes per token of float32.
    """

    def __init__(self, config, params, dtype="float32"):
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        self.config = config
        C, L, NH, maxT, Vp = (config.channels, config.num_layers, config.num_heads,
                              config.max_seq_len, config.padded_vocab_size)
        params = np.asarray(params, dtype=np.float32).reshape(-1)
        self.bits = None  # bfloat16 bits of MATRICES, by name
        if dtype == "bfloat16":
            bits = fp32_to_bf16(params)
            params = bf16_to_fp32(bits)
            b = Tensors(bits, param_shapes(config))
            self.bits = {name: getattr(b, name) for name in MATRICES}
            self.scratch = kernels.matvec_scratch(max(Vp, 4 * C), 4 * C)
        self.p = Tensors(params, param_shapes(config))
        self.qkv = np.zeros((L, maxT, 3 * C), dtype=np.float32)
        self.att = np.zeros((NH, maxT), dtype=np.float32)
        z = lambda *shape: np.zeros((1, 1) + shape, dtype=np.float32)  # noqa: E731
        self.x, self.ln, self.atty, self.attproj, self.res2 = z(C), z(C), z(C), z(C), z(C)
        self.fch, self.fch_gelu, self.fcproj = z(4 * C), z(4 * C), z(C)
        self.mean, self.rstd = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)
        self.logits, self.probs = z(Vp), z(Vp)
        for name in ("ln", "atty", "attproj", "fch", "fch_gelu", "fcproj", "logits"):
            setattr(self, name + "_v", getattr(self, name)[0, 0])
        self.token = np.zeros((1, 1), dtype=np.int32)
        self.pos = 0

    def reset(self):
        self.pos = 0

    def step(self, token):
        """Feed the token at position self.pos; returns probs (Vp,) for the next position."""
        cfg, p, k = self.config, self.p, kernels
        t = self.pos
        if t >= cfg.max_seq_len:
            raise ValueError(f"generation reached max_seq_len={cfg.max_seq_len}")
        if not 0 <= token < cfg.vocab_size:
            raise ValueError(f"token {token} is not a token id in [0, {cfg.vocab_size})")
        self.token[0, 0] = token
        x = self.x  # the row kernels are this module's serial builds; matmuls, attention parallel
        encoder_forward(x, self.token, p.wte, p.wpe[t:t + 1])
        for l in range(cfg.num_layers):
            layernorm_forward(self.ln, self.mean, self.rstd, x, p.ln1w[l], p.ln1b[l])
            self.matvec(self.qkv[l, t], self.ln_v, "qkvw", l, p.qkvb[l])  # into the cache
            k.attention_token(self.atty_v, self.att, self.qkv[l], t)  # over the cached positions
            self.matvec(self.attproj_v, self.atty_v, "attprojw", l, p.attprojb[l])
            residual_forward(self.res2, x, self.attproj)
            layernorm_forward(self.ln, self.mean, self.rstd, self.res2, p.ln2w[l], p.ln2b[l])
            self.matvec(self.fch_v, self.ln_v, "fcw", l, p.fcb[l])
            gelu_forward(self.fch_gelu, self.fch)
            self.matvec(self.fcproj_v, self.fch_gelu_v, "fcprojw", l, p.fcprojb[l])
            residual_forward(x, self.res2, self.fcproj)
        layernorm_forward(self.ln, self.mean, self.rstd, x, p.lnfw, p.lnfb)
        self.matvec(self.logits_v, self.ln_v, "wte", None, None)  # the classifier: one pass over wte
        softmax_forward(self.probs, self.logits, cfg.vocab_size)
        self.pos += 1
        return self.probs[0, 0]

    def matvec(self, out, inp, name, l, bias):
        """out = the matrix `name` (of layer l; None: not per layer) . inp + bias, from its
        float32 or its bfloat16 copy."""
        if self.bits is None:
            w = getattr(self.p, name)
            kernels.matvec_forward(out, inp, w if l is None else w[l], bias)
        else:
            w = self.bits[name]
            kernels.matvec_forward_bf16(out, inp, w if l is None else w[l], bias, self.scratch)


def generate(config, params, prompt, max_new_tokens, rng, temperature=1.0, top_k=0, on_token=None,
             dtype="float32"):
    """Sample up to max_new_tokens after the prompt (a non-empty list of token ids), stopping at
    max_seq_len. rng is a sampler.Rng (one f32 coin per token, as llm.c). Calls on_token(id) for
    each new token; returns the list of new tokens. dtype: the KVCache's."""
    from .sampler import sample
    if len(prompt) == 0:
        raise ValueError("generation needs a prompt of at least one token (e.g. the EOT token)")
    cache = KVCache(config, params, dtype)
    probs = None
    for tok in prompt[:config.max_seq_len]:
        probs = cache.step(int(tok))
    out = []
    while len(out) < max_new_tokens:
        nxt = sample(probs, config.vocab_size, rng.f32(), temperature=temperature, top_k=top_k)
        out.append(int(nxt))
        if on_token is not None:
            on_token(int(nxt))
        if cache.pos >= config.max_seq_len or len(out) == max_new_tokens:
            break
        probs = cache.step(int(nxt))
    return out
