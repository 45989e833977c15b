"""llm.c's two random number generators.

    MT19937   llmc/rand.h's Mersenne Twister: seeded as torch.manual_seed, its randint32 (the numbers
              torch.randint(0, 0xFFFFFFFF) gives after the same seed) and its random_permutation,
              which the DataLoader uses to shuffle shards and samples
    Rng       train_gpt2.c's xorshift*: one float32 coin per generated token (generate.py); in
              train_gpt2.cu also the seed of each tensor's stochastic rounding
    squirrel_noise5, noise_2d, stochastic_round_bf16
              llmc/cuda_utils.cuh's hash for stochastic rounding (a uint32 from a position and a
              seed) and the rounding itself, in NumPy (the CUDA kernels call the same
              squirrel_noise5: llmnb/cuda/bf16.py)

The mt19937 state is a (624,) int64 array of uint32 values plus `left`/`next`, as the C struct; its
kernels work in int64 so no step can overflow or mix signednesses. The xorshift state is a uint64
held in a Python int; every step is masked to 64 bits, so the wraparound is exactly C's `unsigned
long long` arithmetic (once per token: plain Python is fast enough).
"""
import numpy as np
from numba import njit

N, M = 624, 397
MATRIX_A = 0x9908B0DF
UMASK, LMASK, MASK32 = 0x80000000, 0x7FFFFFFF, 0xFFFFFFFF
STRUCT_BYTES = 8 + 4 + 4 + 4 * N + 4 * 2  # sizeof(mt19937_state): seed_, left_, next_, state_, MATRIX_A


@njit(cache=True)
def _manual_seed(state, seed):
    # state (N,) int64 <- the standard mt19937 init from a 32-bit seed
    state[0] = seed & MASK32
    for j in range(1, N):
        prev = state[j - 1]
        state[j] = (1812433253 * (prev ^ (prev >> 30)) + j) & MASK32


@njit(cache=True)
def _twist(y):
    return (y >> 1) ^ (MATRIX_A if y & 1 else 0)


@njit(cache=True)
def _next_state(state):
    # regenerate all N words in place, as rand.h's next_state
    for j in range(N - M):
        y = (state[j] & UMASK) | (state[j + 1] & LMASK)
        state[j] = state[j + M] ^ _twist(y)
    for j in range(N - M, N - 1):
        y = (state[j] & UMASK) | (state[j + 1] & LMASK)
        state[j] = state[j + M - N] ^ _twist(y)
    y = (state[N - 1] & UMASK) | (state[0] & LMASK)
    state[N - 1] = state[M - 1] ^ _twist(y)


@njit(cache=True)
def _randint32(state, pos):
    # one uint32; pos (2,) int64 = (left_, next_) of the C struct, updated in place
    pos[0] -= 1
    if pos[0] <= 0:
        _next_state(state)
        pos[0] = N
        pos[1] = 0
    y = state[pos[1]]
    pos[1] += 1
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    y ^= y >> 18
    return y & MASK32


@njit(cache=True)
def _random_permutation(data, state, pos):
    # data (n,) int32 shuffled in place: Fisher-Yates from the end, j = randint32 % (i + 1)
    for i in range(data.shape[0] - 1, 0, -1):
        j = _randint32(state, pos) % (i + 1)
        data[i], data[j] = data[j], data[i]


class MT19937:
    """llm.c's mt19937_state: manual_seed(seed), randint32(), random_permutation(data)."""

    def __init__(self, seed):
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MASK32:
            raise ValueError(f"mt19937 seed must be an integer in [0, 2**32), got {seed!r}")
        self.state = np.empty(N, dtype=np.int64)
        self.pos = np.array([1, 0], dtype=np.int64)  # left_ = 1: the first draw twists
        _manual_seed(self.state, int(seed))

    def randint32(self):
        return int(_randint32(self.state, self.pos))

    def random_permutation(self, data):
        """Shuffle the int32 array data in place (rand.h's random_permutation)."""
        _random_permutation(data, self.state, self.pos)

    def to_bytes(self):
        """The C struct's bytes (little-endian, 2520), as train_gpt2.cu's save_state writes it;
        seed_, which the C never sets, is written as 0."""
        out = np.zeros(STRUCT_BYTES // 4, dtype="<u4")
        out[2] = self.pos[0]            # left_ (int, >= 1)
        out[3] = self.pos[1]            # next_
        out[4:4 + N] = self.state
        out[4 + N:] = (0, MATRIX_A)
        return out.tobytes()

    @classmethod
    def from_bytes(cls, raw):
        """The generator from to_bytes()'s (or llm.c's) 2520 bytes; ValueError when they are not one."""
        if len(raw) != STRUCT_BYTES:
            raise ValueError(f"an mt19937 state is {STRUCT_BYTES} bytes, got {len(raw)}")
        words = np.frombuffer(raw, dtype="<u4")
        left, nxt = int(words[2]), int(words[3])
        if tuple(words[4 + N:]) != (0, MATRIX_A) or not 1 <= left <= N or not 0 <= nxt <= N or \
                (left + nxt != N + 1 and (left, nxt) != (1, 0)):
            raise ValueError("not an mt19937 state (bad MATRIX_A or position)")
        g = cls(0)
        g.state[:] = words[4:4 + N]
        g.pos[:] = (left, nxt)
        return g

    def __eq__(self, other):
        return isinstance(other, MT19937) and np.array_equal(self.state, other.state) and \
            np.array_equal(self.pos, other.pos)


# ----------------------------------------------------------------------------------------------
# xorshift*: train_gpt2.c's sampler rng

MASK64 = (1 << 64) - 1
XORSHIFT_MULT = 0x2545F4914F6CDD1D
DEFAULT_SEED = 1337  # train_gpt2.c: uint64_t rng_state = 1337;


def _check_state(state):
    if not isinstance(state, (int, np.integer)) or isinstance(state, bool) or not 0 <= state <= MASK64:
        raise ValueError(f"rng state must be an integer in [0, 2**64), got {state!r}")
    return int(state)


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


# ----------------------------------------------------------------------------------------------
# SquirrelNoise5 (llmc/cuda_utils.cuh): stochastic rounding's random bits in train_gpt2.cu

SQ5_NOISE = (0xD2A80A3F, 0xA884F197, 0x6C736F4B, 0xB79F3ABB, 0x1B56C4F5)
NOISE_PRIME = 198491317   # Get2dNoiseUint's prime


def squirrel_noise5(position, seed):
    """SquirrelNoise5's uint32 hash of a uint32 position and seed, in uint64 arithmetic masked to
    32 bits after each step (no step can pass 2^64): the same code runs on NumPy arrays or scalars
    and, compiled, in a CUDA kernel (llmnb/cuda/bf16.py)."""
    mask = np.uint64(MASK32)
    x = np.uint64(position) & mask
    x = (x * np.uint64(SQ5_NOISE[0])) & mask
    x = (x + (np.uint64(seed) & mask)) & mask
    x ^= x >> np.uint64(9)
    x = (x + np.uint64(SQ5_NOISE[1])) & mask
    x ^= x >> np.uint64(11)
    x = (x * np.uint64(SQ5_NOISE[2])) & mask
    x ^= x >> np.uint64(13)
    x = (x + np.uint64(SQ5_NOISE[3])) & mask
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(SQ5_NOISE[4])) & mask
    x ^= x >> np.uint64(17)
    return x


def noise_2d(x, y, seed):
    """Get2dNoiseUint: squirrel_noise5(x + NOISE_PRIME * y, seed), x and y as uint32."""
    mask = np.uint64(MASK32)
    pos = ((np.uint64(x) & mask) + ((np.uint64(NOISE_PRIME) * (np.uint64(y) & mask)) & mask)) & mask
    return squirrel_noise5(pos, seed)


def stochastic_round_bf16(x, random):
    """llm.c's stochastic_rounding of float32 x to bf16 bits (uint16) with uint32 random bits: the
    bf16 neighbour away from zero when x's low 16 bits exceed random's low 16 bits (so with
    probability (low bits) / 65536, up to 1/65536), else x truncated: unbiased. Inf stays inf,
    NaN becomes bf16's quiet NaN (0x7FC0)."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    up = (bits & np.uint64(0xFFFF)) > (np.asarray(random, np.uint64) & np.uint64(0xFFFF))
    top = (bits >> np.uint64(16)) + up.astype(np.uint64)
    finite = (bits & np.uint64(0x7F800000)) != np.uint64(0x7F800000)
    nan = ~finite & ((bits & np.uint64(0x7FFFFF)) != 0)
    out = np.where(finite, top, bits >> np.uint64(16))
    return np.where(nan, np.uint64(0x7FC0), out).astype(np.uint16)
