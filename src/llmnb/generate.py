"""Generation: llm.c's sampling loop (one xorshift coin per token) over the model's KV cache.

llm.c's CPU main re-runs the full (B, T) forward for every generated token. Here the model keeps
the keys and values of earlier positions in its KV cache (GPT2.begin_sequence / GPT2.step, on its
backend), so each token runs the layers on that token only; the probabilities of the next token,
(Vp,) floats, are all that comes back to the host.
"""


def generate(model, prompt, max_new_tokens, rng, temperature=1.0, top_k=0, on_token=None,
             dtype="float32"):
    """Sample up to max_new_tokens after the prompt (a non-empty list of token ids) from a
    model.GPT2, stopping at max_seq_len. rng is a sampler.Rng (one f32 coin per token, as llm.c).
    Calls on_token(id) for each new token; returns the list of new tokens. dtype: the weights'
    precision per step (GPT2.begin_sequence)."""
    from .sampler import sample
    if len(prompt) == 0:
        raise ValueError("generation needs a prompt of at least one token (e.g. the EOT token)")
    maxT, V = model.config.max_seq_len, model.config.vocab_size
    model.begin_sequence(dtype)
    probs = None
    for tok in prompt[:maxT]:
        probs = model.step(int(tok))
    out = []
    while len(out) < max_new_tokens:
        nxt = int(sample(probs, V, rng.f32(), temperature=temperature, top_k=top_k))
        out.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if model.pos >= maxT or len(out) == max_new_tokens:
            break
        probs = model.step(nxt)
    return out
