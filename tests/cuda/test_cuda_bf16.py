"""The BF16 tensor-core matmuls (llmnb/cuda/matmul_bf16.py) on the CUDA simulator, where ptx.py's
mma.sync m16n8k16, ldmatrix (.trans) and cp.async run as the NumPy lane models of lanes.py: the
whole kernel (bf16 slabs, the two-stage pipeline, edges, split K, bias, the rounding of the output
to bf16) against float64 NumPy of the bf16 operands."""
import numpy as np
import pytest
from numba import cuda

from llmnb.cuda import lanes
from llmnb.cuda.matmul_bf16 import MatmulsBF16

F32 = np.float32


def bf16(x):
    """float32 -> bf16 bits, rounded to nearest even (as cvt.rn.bf16.f32)"""
    return lanes.cvt_bf16x2(np.asarray(x, F32), 0).astype(np.uint16)


def value(bits):
    return lanes.bf16_value(bits).astype(np.float64)


# (N_tok, C, OC), multiples of 8 (16-byte rows): edges of every tile and slab; a long K for split K
# in dinp (K = OC) and in dweight (K = N_tok). The first also at the GPU's geometry.
SHAPES = [pytest.param(40, 24, 32, marks=pytest.mark.gpu_geometry), (24, 48, 40), (16, 8, 520), (520, 8, 16)]


@pytest.mark.parametrize("N, C, OC", SHAPES)
def test_bf16_matmul_forward_and_backward_are_the_bf16_rounding_of_float64(N, C, OC):
    rng = np.random.default_rng(N + C + OC)
    host = {k: bf16(rng.standard_normal(shape, dtype=F32)) for k, shape in
            dict(inp=(N, C), weight=(OC, C), bias=(OC,), dout=(N, OC), dinp=(N, C), dweight=(OC, C),
                 dbias=(OC,)).items()}
    v = {k: value(x) for k, x in host.items()}
    d = {k: cuda.to_device(x) for k, x in host.items()}
    out = cuda.to_device(np.zeros((N, OC), np.uint16))
    mm = MatmulsBF16()
    mm.matmul_forward(out, d["inp"], d["weight"], d["bias"])
    mm.matmul_backward(d["dinp"], d["dweight"], d["dbias"], d["dout"], d["inp"], d["weight"])
    want = {"out": v["inp"] @ v["weight"].T + v["bias"],   # bf16 products are exact; one rounding at the end
            "dinp": v["dinp"] + v["dout"] @ v["weight"],
            "dweight": v["dweight"] + v["dout"].T @ v["inp"],
            "dbias": v["dbias"] + v["dout"].sum(0)}
    got = {"out": out.copy_to_host(), "dinp": d["dinp"].copy_to_host(), "dweight": d["dweight"].copy_to_host(),
           "dbias": d["dbias"].copy_to_host()}
    for name, w in want.items():
        g = value(got[name])
        # within half a bf16 ulp (2^-8 relative) plus the fp32 sums' error: a wrong lane, stage or
        # edge is O(1)
        assert (np.abs(g - w) <= 2.0 ** -8 * np.abs(w) + 1e-5 * np.abs(w).max()).all(), name
        # rounded to nearest even: the bits are those of float64's sum rounded so, except where the fp32
        # sum lies within its error of a rounding boundary (truncation would miss ~half)
        assert (got[name] == bf16(w)).mean() > 0.95, name


def test_bf16_matmuls_refuse_rows_that_are_not_16_byte_aligned_in_one_line():
    inp = cuda.to_device(np.zeros((8, 20), np.uint16))   # C = 20: 40-byte rows
    weight = cuda.to_device(np.zeros((8, 20), np.uint16))
    out = cuda.to_device(np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match=r"llmnb/cuda/matmul\.py: forward: the bf16 kernels need .*16-byte aligned"):
        MatmulsBF16().matmul_forward(out, inp, weight, None)
    with pytest.raises(ValueError, match=r"bf16 bits \(uint16\), got float32"):
        MatmulsBF16().matmul_forward(out, cuda.to_device(np.zeros((8, 20), F32)), weight, None)


# ------------------------------------------------------------------------------------------------
# AdamW over bf16 parameters with fp32 master weights (llmnb/cuda/bf16.py, train_gpt2.cu's)

def _positions(layers, size):
    # each element's (threadIdx.x, blockIdx.x * 512 + blockIdx.y): the hash's inputs in llm.c's grid
    from llmnb.cuda.bf16 import ADAMW_THREADS
    i = np.arange(size)
    x = np.tile(i % ADAMW_THREADS, layers)
    y = np.concatenate([(i // ADAMW_THREADS) * ADAMW_THREADS + layer for layer in range(layers)])
    return x.astype(np.uint64), y.astype(np.uint64)


@pytest.mark.gpu_geometry   # (there: llm.c's blocks of 512, so llm.c's random bits for each parameter)
def test_init_from_master_is_llmcs_stochastic_rounding_bit_for_bit():
    from llmnb import rand
    from llmnb.cuda.bf16 import init_from_master
    layers, size, seed = 3, 600, 2 ** 32 - 5   # two blocks a layer, the second partial
    master = np.random.default_rng(1).standard_normal(layers * size).astype(F32)
    params = cuda.to_device(np.zeros(layers * size, np.uint16))
    init_from_master(params, cuda.to_device(master), layers, seed)
    want = rand.stochastic_round_bf16(master, rand.noise_2d(*_positions(layers, size), seed))
    got = params.copy_to_host()
    assert (got == want).all()
    # and it is a stochastic rounding: some elements went up, some down, none further
    trunc = (master.view(np.uint32) >> 16).astype(np.uint16)
    assert 0.2 < (got != trunc).mean() < 0.8 and ((got == trunc) | (got == trunc + 1)).all()


def _fma(a, b, c):
    # cuda.fma: on a card a * b + c rounded once (the float32 product is exact in float64); the
    # simulator's rounds the product first (its fma is a * b + c in float32)
    from llmnb.cuda.launch import SIMULATOR
    if SIMULATOR:
        return F32(F32(a) * F32(b)) + F32(c)
    return F32(np.float64(a) * np.float64(b) + np.float64(c))


def test_adamw_bf16_updates_the_master_weights_as_llmc_and_rounds_them_into_the_params():
    from llmnb import rand
    from llmnb.cuda.bf16 import adamw_update_bf16
    from llmnb.kernels import bias_corrections
    layers, size, seed, t = 2, 520, 99, 3
    rng = np.random.default_rng(2)
    master = rng.standard_normal(layers * size).astype(F32)
    grads = bf16(rng.standard_normal(layers * size).astype(F32))
    m = (0.1 * rng.standard_normal(layers * size)).astype(F32)
    v = (0.01 * rng.random(layers * size)).astype(F32)
    lr, b1, b2, eps, wd, scale = 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.5
    d = {k: cuda.to_device(x) for k, x in dict(master=master, grads=grads, m=m, v=v).items()}
    params = cuda.to_device(np.zeros(layers * size, np.uint16))
    adamw_update_bf16(params, d["master"], d["grads"], d["m"], d["v"], layers, lr, b1, b2, eps, wd, t, scale, seed)
    # train_gpt2.cu's adamw_update, element by element in float32 (lerp as two fmas)
    bc1, bc2 = bias_corrections(F32(b1), F32(b2), t)
    g = F32(scale) * lanes.bf16_value(grads)
    m_new = np.array([_fma(b1, mo, _fma(-F32(b1), gi, gi)) for mo, gi in zip(m, g)], F32)
    v_new = np.array([_fma(b2, vo, _fma(-F32(b2), gi * gi, gi * gi)) for vo, gi in zip(v, g)], F32)
    step = (m_new / bc1) / (np.sqrt(v_new / bc2) + F32(eps)) + F32(wd) * master
    want = master - F32(lr) * step
    got_m, got_v, got_master = d["m"].copy_to_host(), d["v"].copy_to_host(), d["master"].copy_to_host()
    for name, got, ref in (("m", got_m, m_new), ("v", got_v, v_new), ("master", got_master, want)):
        assert (np.abs(got - ref) <= 2 * np.spacing(np.abs(ref))).all(), name
    assert np.abs(got_master - master).min() > 0   # every weight moved
    # the bf16 parameters are the new master weights stochastically rounded with llm.c's random bits
    random = rand.noise_2d(*_positions(layers, size), seed)
    assert (params.copy_to_host() == rand.stochastic_round_bf16(got_master, random)).all()


def test_adamw_bf16_refuses_mismatched_buffers_in_one_line():
    from llmnb.cuda.bf16 import adamw_update_bf16
    f, h = cuda.to_device(np.zeros(12, F32)), cuda.to_device(np.zeros(12, np.uint16))
    with pytest.raises(ValueError, match=r"llmnb/cuda/bf16\.py: adamw_update_bf16: grads \(12,\) float32, expected \(12,\) uint16"):
        adamw_update_bf16(h, f, f, f, f, 1, 1e-3, 0.9, 0.95, 1e-8, 0.0, 1, 1.0, 1)
    with pytest.raises(ValueError, match="12 elements are not 5 layers"):
        adamw_update_bf16(h, f, h, f, f, 5, 1e-3, 0.9, 0.95, 1e-8, 0.0, 1, 1.0, 1)
