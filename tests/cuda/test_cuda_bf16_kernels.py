"""The layers' CUDA kernels over bf16 tensors (--precision bf16: uint16 arrays of bf16 bits, read
through ptx.widen and written through ptx.narrow), on the simulator, against the CPU's float32
kernels on the same values: each output within half a bf16 ulp of the CPU's fp32 result (plus the
fp32 sums' error), as one rounding of the fp32 computation to bf16 gives."""
import numpy as np
import pytest

from llmnb import kernels as cpu
from llmnb.backend import CPUBackend
from llmnb.cuda import lanes
from llmnb.cuda.backend import CUDABackend

F32 = np.float32
HALF_ULP = 2.0 ** -8   # of a bf16, relative
# per kernel: which float arguments stay float32 in the bf16 model (llm.c's too: statistics, losses)
FP32_ARGS = {"layernorm_forward": {1, 2}, "layernorm_backward": {6, 7}, "crossentropy_forward": {0, 1},
             "crossentropy_softmax_backward": {1, 2}, "attention_forward": {1}, "attention_backward": {4},
             "residual_layernorm_forward": {2, 3}}


def bf16(x):
    return lanes.cvt_bf16x2(np.asarray(x, F32), 0).astype(np.uint16)


def value(bits):
    return lanes.bf16_value(bits)


@pytest.fixture(scope="module")
def be():
    return CUDABackend()


def run_bf16(be, name, args, roundings=1):
    """Kernel `name` on the device with its float arguments as bf16 (but FP32_ARGS) and on the CPU
    with the same values in float32; every float argument afterwards within `roundings` half ulps
    of bf16 of the CPU's (a kernel that accumulates in bf16 rounds once per addition: then of the
    largest value)."""
    keep = FP32_ARGS.get(name, set())
    host, dev, is16 = [], [], []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) and a.dtype == F32 and i not in keep:
            bits = bf16(a)
            host.append(value(bits))
            dev.append(be.asarray(bits))
            is16.append(True)
        else:
            host.append(a.copy() if isinstance(a, np.ndarray) else a)
            dev.append(be.asarray(a) if isinstance(a, np.ndarray) else a)
            is16.append(False)
    getattr(cpu if hasattr(cpu, name) else CPUBackend(), name)(*host)
    getattr(be, name)(*dev)
    for i, (h, d, b16) in enumerate(zip(host, dev, is16)):
        if not isinstance(h, np.ndarray) or h.dtype != F32:
            continue
        got = be.to_host(d)
        got = value(got).astype(np.float64) if b16 else got.astype(np.float64)
        want = h.astype(np.float64)
        scale = max(1.0, np.abs(want).max())
        # one rounding of the result, and each earlier one of a partial sum (at most the largest value)
        tol = (HALF_ULP if b16 else 1e-5) * np.abs(want) + ((roundings - 1) * HALF_ULP + 1e-5) * scale
        assert (np.abs(got - want) <= tol).all(), (name, i, np.abs(got - want).max())
    return host, dev


def randn(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(F32)


def test_encoder(be):
    rng = np.random.default_rng(0)
    B, T, C, Vp, maxT = 2, 5, 24, 16, 8
    inp = rng.integers(0, 12, size=(B, T)).astype(np.int32)
    run_bf16(be, "encoder_forward", [randn(rng, B, T, C), inp, randn(rng, Vp, C), randn(rng, maxT, C)])
    # a token at most B*T times: as many roundings of its row's gradient
    run_bf16(be, "encoder_backward", [randn(rng, Vp, C), randn(rng, maxT, C), randn(rng, B, T, C), inp],
             roundings=B * T)


def test_layernorm(be):
    rng = np.random.default_rng(1)
    B, T, C = 2, 3, 40
    run_bf16(be, "layernorm_forward", [randn(rng, B, T, C), randn(rng, B, T), randn(rng, B, T),
                                       randn(rng, B, T, C, scale=3.0) + F32(1.5), randn(rng, C), randn(rng, C)])
    inp = value(bf16(randn(rng, B, T, C, scale=2.0)))
    mean = inp.mean(axis=-1).astype(F32)
    rstd = (1.0 / np.sqrt(inp.var(axis=-1) + 1e-5)).astype(F32)
    run_bf16(be, "layernorm_backward", [randn(rng, B, T, C), randn(rng, C), randn(rng, C), randn(rng, B, T, C), inp,
                                        randn(rng, C), mean, rstd])


def test_gelu_and_residual(be):
    rng = np.random.default_rng(2)
    run_bf16(be, "gelu_forward", [randn(rng, 2, 3, 29), randn(rng, 2, 3, 29, scale=3.0)])
    run_bf16(be, "gelu_backward", [randn(rng, 2, 3, 29), randn(rng, 2, 3, 29, scale=3.0), randn(rng, 2, 3, 29)])
    run_bf16(be, "residual_forward", [randn(rng, 2, 7, 11) for _ in range(3)])
    run_bf16(be, "residual_backward", [randn(rng, 2, 7, 11) for _ in range(3)])


def test_softmax_and_the_fused_classifier(be):
    rng = np.random.default_rng(3)
    B, T, V, Vp = 2, 3, 45, 48
    run_bf16(be, "softmax_forward", [randn(rng, B, T, Vp), randn(rng, B, T, Vp, scale=4.0), V])
    logits = randn(rng, B, T, Vp, scale=3.0)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    host, dev = run_bf16(be, "crossentropy_forward", [randn(rng, B, T), randn(rng, B, T), logits, targets, V])
    lse = host[1]
    run_bf16(be, "crossentropy_softmax_backward", [logits, randn(rng, B, T), lse, targets, V])


def test_grad_norm_and_scale(be):
    rng = np.random.default_rng(4)
    g = randn(rng, 1000)
    bits = bf16(g)
    d = be.asarray(bits)
    want = float((value(bits).astype(np.float64) ** 2).sum())
    assert abs(be.global_norm_squared(d) - want) <= 1e-9 * want   # exact squares of bf16 values, float64 sums
    be.scale_(d, 0.3)
    got = value(be.to_host(d)).astype(np.float64)
    assert (got == value(bf16(value(bits) * F32(0.3)))).all()     # one rounding of the float32 product


@pytest.mark.parametrize("version", ["v2", "tf32"])
@pytest.mark.parametrize("B,T,NH,C", [(1, 9, 2, 16), (2, 5, 1, 24)])
def test_attention(be, B, T, NH, C, version):
    # attention reading and writing bf16, lse in fp32: v2 (fp32 FFMA products) and the TF32 tensor-core
    # kernels (--precision bf16's: bf16 inputs are exact in tf32; p and dS rounded to tf32, 2^-11, which
    # the second half ulp of slack covers)
    from llmnb.cuda.attention import Attention
    from llmnb.cuda.attention_tc import AttentionTF32
    be.attention = Attention("v2") if version == "v2" else AttentionTF32()
    rng = np.random.default_rng(5)
    n = 1 if version == "v2" else 2
    run_bf16(be, "attention_forward", [randn(rng, B, T, C), randn(rng, B, NH, T), randn(rng, B, T, 3 * C)],
             roundings=n)
    qkv = value(bf16(randn(rng, B, T, 3 * C)))
    out, lse = np.zeros((B, T, C), F32), np.zeros((B, NH, T), F32)
    cpu.attention_forward(out, lse, qkv)
    out = value(bf16(out))   # the forward's output as the bf16 model keeps it
    run_bf16(be, "attention_backward", [randn(rng, B, T, 3 * C), randn(rng, B, T, C), qkv, out, lse], roundings=n)


def test_residual_layernorm_forward_in_bf16_is_the_two_kernels_bit_for_bit(be):
    # the fused kernel's layernorm reads the residual as stored (rounded to bf16), as layernorm_forward
    # after residual_forward does: the same bits
    rng = np.random.default_rng(6)
    B, T, C = 2, 3, 40
    h = [bf16(randn(rng, B, T, C)) for _ in range(4)] + [bf16(randn(rng, C)) for _ in range(2)]
    stats = [np.zeros((B, T), F32) for _ in range(4)]
    fused = [be.asarray(x) for x in (h[0], h[1], stats[0], stats[1], h[2], h[3], h[4], h[5])]
    be.residual_layernorm_forward(*fused)
    apart = [be.asarray(x) for x in (h[0], h[1], stats[2], stats[3], h[2], h[3], h[4], h[5])]
    be.residual_forward(apart[0], apart[4], apart[5])
    be.layernorm_forward(apart[1], apart[2], apart[3], apart[0], apart[6], apart[7])
    for i in range(4):
        assert np.array_equal(be.to_host(fused[i]), be.to_host(apart[i])), i
    run_bf16(be, "residual_layernorm_forward", [randn(rng, B, T, C), randn(rng, B, T, C), randn(rng, B, T),
                                                randn(rng, B, T), randn(rng, B, T, C), randn(rng, B, T, C),
                                                randn(rng, C), randn(rng, C)], roundings=2)
