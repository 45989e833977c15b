"""The TF32 tensor-core matmuls (llmnb/cuda/matmul_tc.py) on the CUDA simulator, where ptx.py's
mma.sync, cp.async and cvt.rna.tf32 run as the NumPy lane models of llmnb/cuda/lanes.py: the whole
kernel (slab copies, the two-stage pipeline, edges, split K, bias) against float64 NumPy of the
tf32-rounded operands."""
import numpy as np
import pytest
from numba import cuda

from llmnb.cuda import lanes
from llmnb.cuda.matmul_tc import MatmulsTF32

F32 = np.float32


def _tf32(x):
    return lanes.round_tf32(np.asarray(x, F32)).astype(np.float64)


# (N_tok, C, OC): edges of every tile and slab; C and OC multiples of 4 (16-byte rows: the kernels
# with 16-byte copies) or not (the twins with 4-byte copies); a long K for split K. The first also
# with the GPU's geometry (128 x 128 tiles of 8 warps; conftest.py's gpu_geometry run)
SHAPES = [pytest.param(37, 20, 24, marks=pytest.mark.gpu_geometry), (19, 13, 22), (16, 8, 300)]


def _problem(N, C, OC):
    rng = np.random.default_rng(N + C + OC)
    inp = rng.standard_normal((N, C), dtype=F32)
    weight = rng.standard_normal((OC, C), dtype=F32)
    bias = rng.standard_normal(OC, dtype=F32)
    dout = rng.standard_normal((N, OC), dtype=F32)
    dinp0 = rng.standard_normal((N, C), dtype=F32)
    dweight0 = rng.standard_normal((OC, C), dtype=F32)
    dbias0 = rng.standard_normal(OC, dtype=F32)
    return inp, weight, bias, dout, dinp0, dweight0, dbias0


@pytest.mark.parametrize("N, C, OC", SHAPES)
def test_tf32_matmul_forward_and_backward_match_float64_of_tf32_operands(N, C, OC):
    inp, weight, bias, dout, dinp0, dweight0, dbias0 = _problem(N, C, OC)
    mm = MatmulsTF32()
    d = {k: cuda.to_device(v) for k, v in dict(inp=inp, weight=weight, bias=bias, dout=dout, dinp=dinp0,
                                               dweight=dweight0, dbias=dbias0).items()}
    out = cuda.device_array((N, OC), F32)
    mm.matmul_forward(out, d["inp"], d["weight"], d["bias"])
    mm.matmul_backward(d["dinp"], d["dweight"], d["dbias"], d["dout"], d["inp"], d["weight"])
    want = {"out": _tf32(inp) @ _tf32(weight).T + bias,
            "dinp": dinp0 + _tf32(dout) @ _tf32(weight),
            "dweight": dweight0 + _tf32(dout).T @ _tf32(inp),
            "dbias": dbias0 + dout.astype(np.float64).sum(0)}
    got = {"out": out.copy_to_host(), "dinp": d["dinp"].copy_to_host(), "dweight": d["dweight"].copy_to_host(),
           "dbias": d["dbias"].copy_to_host()}
    for name in want:
        err = np.abs(got[name] - want[name]).max() / np.abs(want[name]).max()
        assert err < 1e-5, (name, err)   # a wrong lane, stage or edge is O(1)
    # and the rounding is tf32's: the float64 product of the operands as given is ~1e-3 away
    exact = inp.astype(np.float64) @ weight.astype(np.float64).T + bias
    assert np.abs(got["out"] - exact).max() / np.abs(exact).max() > 1e-5


@pytest.mark.parametrize("B, T, NH, hs", [pytest.param(1, 11, 2, 8, marks=pytest.mark.gpu_geometry), (2, 37, 1, 12)])
def test_tf32_attention_forward_and_backward_match_the_cpu_within_tf32(B, T, NH, hs):
    # llmnb/cuda/attention_tc.py: every product on tensor cores (here: the lane models) against the
    # CPU kernels (fp32). Several query blocks and key tiles, a partial tile, head sizes 8 and 12
    # (zero-padded to 64): within 3e-3 of the largest value (operands rounded to tf32, ~5e-4 each; a
    # wrong lane, mask or rescale is O(1)), and not equal to fp32's (the tf32 rounding happened)
    from llmnb import kernels as cpu
    from llmnb.cuda.attention_tc import AttentionTF32
    rng = np.random.default_rng(T)
    C = NH * hs
    inp = rng.standard_normal((B, T, 3 * C), dtype=F32)
    dout = rng.standard_normal((B, T, C), dtype=F32)
    out, lse = np.zeros((B, T, C), F32), np.zeros((B, NH, T), F32)
    cpu.attention_forward(out, lse, inp)
    dinp0 = rng.standard_normal(inp.shape, dtype=F32)
    dinp = dinp0.copy()
    cpu.attention_backward(dinp, dout, inp, out, lse)
    att = AttentionTF32()
    d_out, d_lse = cuda.to_device(np.zeros_like(out)), cuda.to_device(np.zeros_like(lse))
    d_inp, d_dinp = cuda.to_device(inp), cuda.to_device(dinp0)
    att.attention_forward(d_out, d_lse, d_inp)
    att.attention_backward(d_dinp, cuda.to_device(dout), d_inp, d_out, d_lse)
    for name, got, want in (("out", d_out, out), ("lse", d_lse, lse), ("dinp", d_dinp, dinp - dinp0)):
        got = got.copy_to_host() - (dinp0 if name == "dinp" else 0)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert 1e-6 < err < 3e-3, (name, err)
