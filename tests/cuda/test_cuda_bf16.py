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
