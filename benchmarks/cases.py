"""The kernels of one GPT-2 124M training step (B=4, T=64) as benchmark cases: arguments at the
model's shapes, FLOPs (matmuls) and the bytes a kernel must move (memory-bound kernels).

Bytes count each array the kernel reads once and each it writes once; an array it accumulates
into (+=) counts twice (read and write). That is the least traffic the kernel could do, so
bytes / time is the kernel's effective bandwidth, comparable with np.copyto's (2 bytes moved per
byte copied).
"""
import numpy as np

from llmnb import kernels
from llmnb.config import GPT2Config, Tensors, param_shapes

from dev import common

F32 = np.float32
B, T = 4, 64
CONFIG = GPT2Config()


def _randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def memory_bound_cases(rng=None):
    """[(name, kernel, args, bytes)] for every non-matmul kernel of a 124M step, per call."""
    rng = rng or np.random.default_rng(0)
    C, NH, Vp, V = CONFIG.channels, CONFIG.num_heads, CONFIG.padded_vocab_size, CONFIG.vocab_size
    maxT = CONFIG.max_seq_len
    f = 4  # bytes per float32
    BTC = B * T * C
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    x, y, d = _randn(rng, B, T, C), _randn(rng, B, T, C), _randn(rng, B, T, C)
    w, bvec = _randn(rng, C), _randn(rng, C)
    mean, rstd = _randn(rng, B, T), np.abs(_randn(rng, B, T)) + 1
    h, dh = _randn(rng, B, T, 4 * C), _randn(rng, B, T, 4 * C)
    qkv = _randn(rng, B, T, 3 * C)
    e = lambda *s: np.empty(s, F32)  # noqa: E731
    z = lambda *s: np.zeros(s, F32)  # noqa: E731
    atty, lse = e(B, T, C), e(B, NH, T)
    kernels.attention_forward(atty, lse, qkv)  # backward reads forward's out and lse
    logits = _randn(rng, B, T, Vp)
    lse_logits = e(B, T)
    kernels.crossentropy_forward(e(B, T), lse_logits, logits, tokens, V)  # backward reads forward's lse
    wte, wpe = _randn(rng, Vp, C, scale=0.02), _randn(rng, maxT, C, scale=0.02)
    P = Tensors.count(param_shapes(CONFIG))  # 124,475,904
    params, grads = _randn(rng, P, scale=0.02), _randn(rng, P, scale=1e-3)
    m, v = np.zeros(P, F32), np.zeros(P, F32)
    return [
        ("encoder_forward", kernels.encoder_forward, (e(B, T, C), tokens, wte, wpe), 3 * BTC * f),
        ("encoder_backward", kernels.encoder_backward, (z(Vp, C), z(maxT, C), d, tokens),
         5 * BTC * f),
        ("layernorm_forward", kernels.layernorm_forward, (e(B, T, C), e(B, T), e(B, T), x, w, bvec),
         2 * BTC * f),
        ("layernorm_backward", kernels.layernorm_backward,
         (z(B, T, C), z(C), z(C), d, x, w, mean, rstd), 4 * BTC * f),
        ("residual_forward", kernels.residual_forward, (e(B, T, C), x, y), 3 * BTC * f),
        ("residual_backward", kernels.residual_backward, (z(B, T, C), z(B, T, C), d), 5 * BTC * f),
        ("gelu_forward", kernels.gelu_forward, (e(B, T, 4 * C), h), 2 * 4 * BTC * f),
        ("gelu_backward", kernels.gelu_backward, (z(B, T, 4 * C), h, dh), 4 * 4 * BTC * f),
        # attention (flash-style: no T x T buffer): qkv in, out and lse out; backward reads dout,
        # qkv, out, lse and accumulates into dqkv
        ("attention_forward", kernels.attention_forward,
         (e(B, T, C), e(B, NH, T), qkv), (3 * BTC + BTC + B * NH * T) * f),
        ("attention_backward", kernels.attention_backward,
         (z(B, T, 3 * C), d, qkv, atty, lse),
         (2 * 3 * BTC + BTC + 3 * BTC + BTC + B * NH * T) * f),
        ("softmax_forward", kernels.softmax_forward, (e(B, T, Vp), logits, V), 2 * B * T * Vp * f),
        # the fused classifier: forward reads the V real logits of each row and writes its lse and
        # loss; backward reads them and lse and writes dlogits over all Vp columns, in place
        ("crossentropy_forward", kernels.crossentropy_forward, (e(B, T), e(B, T), logits, tokens, V),
         (B * T * V + 2 * B * T) * f),
        ("crossentropy_softmax_backward", kernels.crossentropy_softmax_backward,
         (logits.copy(), np.full((B, T), 1.0 / (B * T), F32), lse_logits, tokens, V),
         (B * T * V + B * T * Vp + 3 * B * T) * f),
        ("adamw_update", kernels.adamw_update,
         (params, grads, m, v, 1e-4, 0.9, 0.999, 1e-8, 0.0, 1), 7 * P * f),
    ]


def matmul_cases(rng=None):
    """[(name, C, OC, inp, weight, bias, dout)] for the matmuls of one layer and the classifier."""
    rng = rng or np.random.default_rng(0)
    cases = []
    for name, C, OC in common.MATMUL_SHAPES:
        inp = _randn(rng, B, T, C)
        weight = _randn(rng, OC, C, scale=0.02)
        bias = None if name == "classifier" else _randn(rng, OC)
        dout = _randn(rng, B, T, OC)
        cases.append((name, C, OC, inp, weight, bias, dout))
    return cases
