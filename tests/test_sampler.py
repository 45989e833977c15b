"""llm.c's xorshift rng and sampling (train_gpt2.c: random_u32, random_f32, sample_mult)."""
import numpy as np
import pytest

from llmnb.generate import sample, sample_mult
from llmnb.rand import Rng, random_f32, random_u32

# train_gpt2.c's random_u32 compiled with gcc and run from state 1337: (value, state after)
C_U32_FROM_1337 = [
    (989205090, 44862276727),
    (818269915, 1505695687211150372),
    (1335155955, 4407930892292281700),
    (3876892996, 3115803837778227132),
    (2941700015, 12737515200271808181),
    (1322121497, 747539383074521221),
]
C_F32_FROM_1337 = [0.230317235, 0.19051826, 0.310865164]  # printed with %.9g


def xorshift_numpy(state, n):
    """An independent implementation: NumPy uint64 arrays wrap like C's unsigned long long."""
    s = np.array([state], dtype=np.uint64)
    out = []
    for _ in range(n):
        s ^= s >> np.uint64(12)
        s ^= s << np.uint64(25)
        s ^= s >> np.uint64(27)
        out.append(int(((s * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(32))[0]))
    return out, int(s[0])


def test_random_u32_matches_c():
    state = 1337
    for value, state_after in C_U32_FROM_1337:
        got, state = random_u32(state)
        assert (got, state) == (value, state_after)


def test_random_u32_matches_numpy_uint64_long_run():
    for seed in (1337, 1, 0xFFFFFFFFFFFFFFFF, 0x8000000000000001, 123456789987654321):
        expected, expected_state = xorshift_numpy(seed, 500)
        rng = Rng(seed)
        got = [rng.u32() for _ in range(500)]
        assert got == expected
        assert rng.state == expected_state
        assert all(0 <= v < 2**32 for v in got)
        assert 0 <= rng.state < 2**64


def test_random_f32_matches_c():
    state = 1337
    for expected in C_F32_FROM_1337:
        got, state = random_f32(state)
        assert f"{got:.9g}" == f"{expected:.9g}"
        assert np.float32(got) == got  # exactly a float32 value
    # f32 draws consume the same rng steps as u32
    assert state == C_U32_FROM_1337[2][1]


def test_rng_f32_range_and_formula():
    rng, ref = Rng(42), Rng(42)
    for _ in range(1000):
        f = rng.f32()
        assert 0.0 <= f < 1.0
        assert f == (ref.u32() >> 8) / 2**24


def test_rng_state_save_restore():
    rng = Rng()
    assert rng.state == 1337
    for _ in range(17):
        rng.u32()
    saved = rng.state
    a = [rng.u32() for _ in range(10)]
    rng.state = saved
    assert [rng.u32() for _ in range(10)] == a
    assert Rng(saved).u32() == a[0]


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "7"])
def test_rng_bad_seed(bad):
    with pytest.raises(ValueError, match="rng state"):
        Rng(bad)


def sample_mult_loop(probs, n, coin):
    """train_gpt2.c's sample_mult, written out with float32 scalars."""
    cdf = np.float32(0.0)
    coin = np.float32(coin)
    for i in range(n):
        cdf = np.float32(cdf + np.float32(probs[i]))
        if coin < cdf:
            return i
    return n - 1


def test_sample_mult_known_cdf():
    p = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    # cdf (float32): 0.1, 0.3, 0.6, 1.0; the first i with coin < cdf[i]
    assert sample_mult(p, 4, 0.0) == 0
    assert sample_mult(p, 4, 0.05) == 0
    assert sample_mult(p, 4, np.float32(0.1)) == 1  # coin == cdf[0] is not < cdf[0]
    assert sample_mult(p, 4, 0.29) == 1
    assert sample_mult(p, 4, 0.31) == 2
    assert sample_mult(p, 4, 0.99) == 3
    # only the first n count; a coin beyond the cdf gives n - 1
    assert sample_mult(p, 2, 0.5) == 1
    assert sample_mult(np.array([0.25, 0.25, 0.25], np.float32), 3, 0.9) == 2
    # zero-probability entries are never picked
    assert sample_mult(np.array([0.0, 0.5, 0.0, 0.5], np.float32), 4, 0.0) == 1


def test_sample_mult_matches_c_loop_random():
    rng = np.random.default_rng(0)
    coins = Rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 300))
        logits = rng.normal(size=n + 5) * 3
        p = np.exp(logits - logits.max())
        p = (p / p[:n].sum()).astype(np.float32)
        for _ in range(10):
            coin = coins.f32()
            assert sample_mult(p, n, coin) == sample_mult_loop(p, n, coin)


def test_sample_default_is_sample_mult():
    rng = np.random.default_rng(1)
    coins = Rng(99)
    V = 1000
    p = rng.dirichlet(np.full(V + 24, 0.3)).astype(np.float32)
    p[V:] = 0  # padded vocabulary
    for _ in range(200):
        coin = coins.f32()
        assert sample(p, V, coin) == sample_mult(p, V, coin)


def counts_over_coin_grid(p, V, N=20000, **kw):
    coins = (np.arange(N) + 0.5) / N
    counts = np.zeros(V, dtype=np.int64)
    for c in coins:
        counts[sample(p, V, c, **kw)] += 1
    return counts


def test_sample_top_k_renormalises():
    rng = np.random.default_rng(2)
    V, k, N = 50, 5, 20000
    p = rng.dirichlet(np.ones(V)).astype(np.float32)
    top = np.argsort(-p.astype(np.float64))[:k]
    counts = counts_over_coin_grid(p, V, N, top_k=k)
    assert set(np.flatnonzero(counts)) == set(top)
    expected = np.zeros(V)
    expected[top] = p[top] / p[top].astype(np.float64).sum()
    # a uniform grid of coins hits each interval of the cdf to within one coin
    assert np.all(np.abs(counts - expected * N) <= 1.0)


def test_sample_temperature():
    rng = np.random.default_rng(3)
    V, N = 40, 20000
    logits = rng.normal(size=V)
    p = np.exp(logits) / np.exp(logits).sum()
    for temperature in (0.5, 2.0):
        q = np.exp(logits / temperature)
        q /= q.sum()
        counts = counts_over_coin_grid(p.astype(np.float32), V, N, temperature=temperature)
        assert np.all(np.abs(counts - q * N) <= 1.5), temperature
    # temperature and top-k together: softmax(logits / t) over the top k
    k, t = 7, 0.7
    top = np.argsort(-logits)[:k]
    q = np.zeros(V)
    q[top] = np.exp(logits[top] / t)
    q /= q.sum()
    counts = counts_over_coin_grid(p.astype(np.float32), V, N, temperature=t, top_k=k)
    assert np.all(np.abs(counts - q * N) <= 1.5)


def test_sample_extremes():
    p = np.array([0.1, 0.05, 0.6, 0.25], dtype=np.float32)
    for coin in (0.001, 0.3, 0.999):
        assert sample(p, 4, coin, top_k=1) == 2
        assert sample(p, 4, coin, temperature=0.01) == 2
    # a zero-probability token stays impossible at any temperature
    z = np.array([0.5, 0.0, 0.5], dtype=np.float32)
    assert all(sample(z, 3, c, temperature=5.0) != 1 for c in np.linspace(0, 0.999, 101))
    with pytest.raises(ValueError, match="temperature"):
        sample(p, 4, 0.5, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(p, 4, 0.5, top_k=-1)
    with pytest.raises(ValueError, match="n = 5"):
        sample_mult(p, 5, 0.5)
