"""Token sampling, as in llm.c's train_gpt2.c: an xorshift* rng and sampling from a distribution.

The rng state is a uint64 held in a Python int; every step is masked to 64 bits so the
wraparound is exactly C's `unsigned long long` arithmetic. Called once per generated token, so
plain Python/NumPy is fast enough.
"""
import numpy as np

MASK64 = (1 << 64) - 1
XORSHIFT_MULT = 0x2545F4914F6CDD1D
DEFAULT_SEED = 1337  # train_gpt2.c: uint64_t rng_state = 1337;


def _check_state(state):
    if not isinstance(state, (int, np.integer)) or isinstance(state, bool) or not 0 <= state <= MASK64:
        raise ValueError(f"rng state must be an integer in [0, 2**64), got {state!r}")
    return int(state)


# ----------------------------------------------------------------------------
# xorshift* rng

def random_u32(state):
    """One xorshift* step: uint64 state -> (uint32 value, new uint64 state)."""
    state = _check_state(state)
    state ^= state >> 12
    state ^= (state << 25) & MASK64
    state ^= state >> 27
    value = ((state * XORSHIFT_MULT) & MASK64) >> 32
    return value, state


def random_f32(state):
    """A float32 in [0, 1) from the top 24 bits of random_u32: state -> (value, new state).

    (u32 >> 8) / 2**24 is exact in float32, so the Python float returned equals C's float.
    """
    value, state = random_u32(state)
    return (value >> 8) / 16777216.0, state


class Rng:
    """The xorshift* rng with its state held in .state (an int), so a run can save and restore it."""

    def __init__(self, seed=DEFAULT_SEED):
        self.state = seed

    @property
    def state(self):
        return self._state

    @state.setter
    def state(self, value):
        self._state = _check_state(value)

    def u32(self):
        value, self._state = random_u32(self._state)
        return value

    def f32(self):
        value, self._state = random_f32(self._state)
        return value

    def __repr__(self):
        return f"Rng(state={self._state})"


# ----------------------------------------------------------------------------
# sampling

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
