"""llm.c's stochastic rounding (train_gpt2.cu's bf16 parameters): its hash, SquirrelNoise5, and the
rounding, as llmnb.rand models them in NumPy (the CUDA kernels of llmnb/cuda/bf16.py are checked
against these models in tests/cuda/test_cuda_bf16.py)."""
import numpy as np

from llmnb import rand
from llmnb.cuda import lanes


def test_squirrel_noise5_and_get2dnoise_give_the_c_functions_values():
    # llmc/cuda_utils.cuh's SquirrelNoise5 and Get2dNoiseUint compiled with gcc (32-bit unsigned
    # wraparound) on these inputs
    assert int(rand.squirrel_noise5(0, 0)) == 377036288
    assert [int(x) for x in rand.squirrel_noise5(np.arange(3, dtype=np.uint64), 123)] == \
        [4153846558, 234325277, 1321956591]
    assert int(rand.noise_2d(511, 3 * 512 + 1, 4000000000)) == 2542852098


def test_stochastic_rounding_picks_a_neighbour_by_the_low_16_bits():
    x = np.float32(1.0) + np.float32(2.0 ** -9)   # low 16 bits 0x4000: a quarter of the way up
    bits = x.view(np.uint32)
    down, up = np.uint16(bits >> 16), np.uint16((bits >> 16) + 1)
    assert rand.stochastic_round_bf16(x, 0x3FFF) == up        # threshold below the low bits
    assert rand.stochastic_round_bf16(x, 0x4000) == down      # not above: truncated
    assert rand.stochastic_round_bf16(x, 0xABCD4000) == down  # only the random's low 16 bits count
    # negative numbers round away from zero just as often (sign and magnitude)
    assert rand.stochastic_round_bf16(-x, 0) == np.uint16(up | 0x8000)
    # a value that is a bf16 already never moves; inf stays inf, NaN is the quiet NaN
    assert rand.stochastic_round_bf16(np.float32(1.5), 0) == np.uint16(np.float32(1.5).view(np.uint32) >> 16)
    assert rand.stochastic_round_bf16(np.float32(np.inf), 0) == 0x7F80
    assert rand.stochastic_round_bf16(np.float32(np.nan), 0) == 0x7FC0


def test_stochastic_rounding_is_unbiased_over_the_hash():
    # 65536 copies of each value at consecutive positions: the mean of the rounded values is the
    # value, to a small fraction of a bf16 ulp (round to nearest would be off by up to half an ulp)
    rng = np.random.default_rng(0)
    values = rng.standard_normal(8).astype(np.float32)
    pos = np.arange(65536, dtype=np.uint64)
    for i, x in enumerate(values):
        bits = rand.stochastic_round_bf16(np.full(pos.shape, x), rand.noise_2d(pos, 7, 1234 + i))
        got = lanes.bf16_value(bits).astype(np.float64)
        ulp = 2.0 ** (np.floor(np.log2(abs(x))) - 7)
        assert np.abs(got - x).max() < ulp                  # each one a neighbour
        assert abs(got.mean() - x) < 0.02 * ulp, (x, got.mean() - x)
        nearest = lanes.bf16_value(lanes.cvt_bf16x2(x, 0) & 0xFFFF)
        if abs(nearest - x) > 0.1 * ulp:
            assert abs(got.mean() - x) < 0.2 * abs(nearest - x)
