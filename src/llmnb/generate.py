"""Generation with a KV cache: one new token's work per step.

llm.c's CPU main re-runs the full (B, T) forward for every generated token. Here the keys and
values of earlier positions stay in a cache (the qkv vectors of every layer and position), so
step t runs the layers on one token and attends over the t+1 cached positions. The layer kernels
are the model's own, called on (1, 1, ...) views; attention runs per head as one query
(kernels.attention_query, the body of attention_forward) over the cache.
"""
import numpy as np

from .config import Tensors, param_shapes
from . import kernels


class KVCache:
    """Per-token activations and the qkv cache (L, maxT, 3C) of one sequence.

    Each activation is a (1, 1, n) array for the layer kernels plus a 1-D view of it (name_v)
    for the one-row matmuls (matvec_forward), made once here, not per token.
    """

    def __init__(self, config, params):
        self.config = config
        C, L, NH, maxT, Vp = (config.channels, config.num_layers, config.num_heads,
                              config.max_seq_len, config.padded_vocab_size)
        self.p = Tensors(np.asarray(params, dtype=np.float32).reshape(-1), param_shapes(config))
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
        x = self.x
        k.encoder_forward(x, self.token, p.wte, p.wpe[t:t + 1])
        for l in range(cfg.num_layers):
            k.layernorm_forward(self.ln, self.mean, self.rstd, x, p.ln1w[l], p.ln1b[l])
            k.matvec_forward(self.qkv[l, t], self.ln_v, p.qkvw[l], p.qkvb[l])  # into the cache
            k.attention_token(self.atty_v, self.att, self.qkv[l], t)  # over the cached positions
            k.matvec_forward(self.attproj_v, self.atty_v, p.attprojw[l], p.attprojb[l])
            k.residual_forward(self.res2, x, self.attproj)
            k.layernorm_forward(self.ln, self.mean, self.rstd, self.res2, p.ln2w[l], p.ln2b[l])
            k.matvec_forward(self.fch_v, self.ln_v, p.fcw[l], p.fcb[l])
            k.gelu_forward(self.fch_gelu, self.fch)
            k.matvec_forward(self.fcproj_v, self.fch_gelu_v, p.fcprojw[l], p.fcprojb[l])
            k.residual_forward(x, self.res2, self.fcproj)
        k.layernorm_forward(self.ln, self.mean, self.rstd, x, p.lnfw, p.lnfb)
        k.matvec_forward(self.logits_v, self.ln_v, p.wte, None)  # the classifier: one pass over wte
        k.softmax_forward(self.probs, self.logits, cfg.vocab_size)
        self.pos += 1
        return self.probs[0, 0]


def generate(config, params, prompt, max_new_tokens, rng, temperature=1.0, top_k=0, on_token=None):
    """Sample up to max_new_tokens after the prompt (a non-empty list of token ids), stopping at
    max_seq_len. rng is a sampler.Rng (one f32 coin per token, as llm.c). Calls on_token(id) for
    each new token; returns the list of new tokens."""
    from .sampler import sample
    if len(prompt) == 0:
        raise ValueError("generation needs a prompt of at least one token (e.g. the EOT token)")
    cache = KVCache(config, params)
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
