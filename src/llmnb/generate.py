"""Text generation: llm.c's sampler (one xorshift coin per token, sample_mult) over a KV cache,
and what llmnb-train's samples and llmnb-sample share around it.

    sample_mult / sample          a token from the next-token probabilities (train_gpt2.c's
                                  sample_mult; with a temperature and top-k)
    generate(model, prompt, ...)  the sampling loop over a model.Decoder: the prompt's tokens,
                                  then one token per step until max_seq_len
    generate_batch(decoder, ...)  B sequences at once from one prompt, each with its own rng
                                  (sequence_rngs: seed + i), one weight stream per step for the B
    prompt_tokens(text, tok, cfg) the sequence to start from: the EOT token (as llm.c's), then the
                                  prompt's tokens, checked against the model
    TextStream                    the new tokens printed as text as they come (or as ids), with
                                  the time each arrived (tokens/s: rate)

llm.c's CPU main re-runs the full (B, T) forward for every generated token. Here the Decoder keeps
the keys and values of earlier positions in its KV cache, so each token runs the layers on that
token only; the probabilities of the next token, (Vp,) floats, are all that comes back to the host.
"""
import time

import numpy as np

from .model import Decoder
from .rand import Rng
from .tokenizer import StreamDecoder


# ----------------------------------------------------------------------------------------------
# choosing a token


def _probs_vector(probs, n):
    probs = np.asarray(probs).reshape(-1)
    if not 0 < n <= probs.shape[0]:
        raise ValueError(f"n = {n} must be in [1, {probs.shape[0]}] (the length of probs)")
    return probs[:n]


def sample_mult(probs, n, coin):
    """Sample an index from probs[:n] (which must sum to 1); coin in [0, 1), usually from random_f32.

    Exactly train_gpt2.c's sample_mult: a float32 running cdf, the first i with coin < cdf[i],
    n - 1 if rounding leaves the cdf below the coin.
    """
    p = _probs_vector(probs, n)
    # add.accumulate in float32 adds strictly left to right, like the C loop's `cdf += p[i]`
    cdf = np.cumsum(p, dtype=np.float32)
    hit = np.float32(coin) < cdf
    i = int(np.argmax(hit))
    return i if hit[i] else n - 1


def sample(probs, V, coin, temperature=1.0, top_k=0):
    """Sample a token from probs[:V] with a temperature and an optional top-k cut.

    temperature 1 and top_k 0 is exactly sample_mult. Otherwise the probabilities are raised to
    1/temperature (the same as softmax(logits / temperature)), cut to the top_k largest (top_k 0:
    all of them), renormalised in float64, and sampled by a cdf in token-id order.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if temperature == 1.0 and top_k == 0:
        return sample_mult(probs, V, coin)
    p = _probs_vector(probs, V).astype(np.float64)
    keep = np.arange(V)
    if 0 < top_k < V:
        # the top_k largest, ties broken towards the smaller token id; then back in id order
        keep = np.sort(np.argsort(-p, kind="stable")[:top_k])
    p = p[keep]
    if temperature != 1.0:
        with np.errstate(divide="ignore"):
            logp = np.log(p) / temperature
        logp -= logp.max()
        p = np.exp(logp)
    total = p.sum()
    if not total > 0:
        raise ValueError("cannot sample: the probabilities sum to zero")
    cdf = np.cumsum(p / total)
    hit = float(coin) < cdf
    i = int(np.argmax(hit))
    return int(keep[i]) if hit[i] else int(keep[-1])


# ----------------------------------------------------------------------------------------------
# the sampling loop

def generate(model, prompt, max_new_tokens, rng, temperature=1.0, top_k=0, on_token=None,
             dtype="float32"):
    """Sample up to max_new_tokens after the prompt (a non-empty list of token ids), stopping at
    max_seq_len. model: a model.Decoder (of batch 1), or a model.GPT2 to make one for (of dtype:
    the weights' precision per step, see Decoder). rng is a rand.Rng (one f32 coin per token, as
    llm.c). Calls on_token(id) for each new token; returns the list of new tokens."""
    decoder = model if isinstance(model, Decoder) else Decoder(model, dtype)
    on_tokens = None if on_token is None else (lambda ids: on_token(ids[0]))
    return generate_batch(decoder, prompt, max_new_tokens, [rng], temperature, top_k, on_tokens)[0]


def generate_batch(decoder, prompt, max_new_tokens, rngs, temperature=1.0, top_k=0, on_tokens=None):
    """B sequences from one prompt at once, B = decoder.batch = len(rngs): each step runs one
    token of each through the decoder (every weight read once for the B), and sequence i samples
    from its own probabilities with rngs[i]'s coin, so it is the sequence generate() gives with
    that rng (the decoder's probabilities of a sequence do not depend on the others). Calls
    on_tokens(ids) with the B new ids of each step; returns B lists of new tokens."""
    if len(prompt) == 0:
        raise ValueError("generation needs a prompt of at least one token (e.g. the EOT token)")
    B = decoder.batch
    if len(rngs) != B:
        raise ValueError(f"{len(rngs)} rngs for a decoder of batch {B}: one per sequence")
    maxT, V = decoder.config.max_seq_len, decoder.config.vocab_size
    decoder.begin()
    probs = None
    for tok in prompt[:maxT]:
        probs = decoder.step([int(tok)] * B)
    out = [[] for _ in range(B)]
    for n in range(1, max_new_tokens + 1):
        ids = [int(sample(probs[i], V, rngs[i].f32(), temperature=temperature, top_k=top_k)) for i in range(B)]
        for seq, nxt in zip(out, ids):
            seq.append(nxt)
        if on_tokens is not None:
            on_tokens(ids)
        if decoder.pos >= maxT or n == max_new_tokens:
            break
        probs = decoder.step(ids)
    return out


def sequence_rngs(seed, n):
    """The rngs of n sequences sampled at once: sequence i's is seeded with seed + i (mod 2**64),
    so sequence i of llmnb-sample -n N --seed S is llmnb-sample --seed S+i."""
    return [Rng((seed + i) % 2**64) for i in range(n)]


def rate(times, tokens_per_step=1):
    """Tokens/s from the times of the steps after the first (which also paid for the prompt), as
    text; n/a for one step."""
    if len(times) < 2:
        return "n/a"
    return f"{tokens_per_step * (len(times) - 1) / (times[-1] - times[0]):.1f} tokens/s"


# ----------------------------------------------------------------------------------------------
# text in, text out: the prompt and the printed tokens

def eot_token(tokenizer, config):
    """The token generation starts from: the tokenizer's EOT (GPT-2's 50256), as llm.c's; a model
    whose vocabulary does not hold it starts from its own last token."""
    eot = tokenizer.eot_token if tokenizer is not None else None
    return eot if eot is not None and eot < config.vocab_size else config.vocab_size - 1


def prompt_tokens(text, tokenizer, config):
    """[EOT] + the tokens of text (a --prompt; "" or None: none), checked against the model: every
    token in its vocabulary, and with the EOT token no longer than its max_seq_len."""
    V = config.vocab_size
    ids = []
    if text:
        if tokenizer is None or not tokenizer.can_encode:
            raise ValueError("--prompt needs tiktoken's gpt2 encoding to encode the prompt "
                             "(it needs the network once, or TIKTOKEN_CACHE_DIR)")
        ids = tokenizer.encode(text)
        if ids and max(ids) >= V:
            raise ValueError(f"--prompt encodes to token {max(ids)}, outside the model's vocabulary [0, {V})")
    if 1 + len(ids) > config.max_seq_len:
        raise ValueError(f"--prompt is {len(ids)} tokens: with the EOT token that is more than the "
                         f"model's max_seq_len {config.max_seq_len}")
    return [eot_token(tokenizer, config)] + ids


def decoding_tokenizer(tokenizer, config):
    """The tokenizer, if it can decode every token the model can produce; else None (ids are printed)."""
    if tokenizer is not None and tokenizer.vocab_size < config.vocab_size:
        return None
    return tokenizer


class TextStream:
    """Prints generated tokens to `out` as they come, flushing each: as text through a tokenizer
    (a UTF-8 character split across tokens held until it is whole), or as ids "123 " without
    one. Records when each token arrived (times), for tokens/s."""

    def __init__(self, out, tokenizer):
        self.out, self.tokenizer = out, tokenizer
        self.decoder = StreamDecoder()
        self.times = []

    def write(self, token):
        self.times.append(time.perf_counter())
        tok = self.tokenizer
        self.out.write(self.decoder.feed(tok.decode(token)) if tok is not None else f"{token} ")
        self.out.flush()

    def close(self):
        """What the stream still holds (the rest of a split character)."""
        self.out.write(self.decoder.flush() if self.tokenizer is not None else "")

    def rate(self):
        """Tokens/s after the first token (which also paid for the prompt), as text; n/a for one."""
        return rate(self.times)
