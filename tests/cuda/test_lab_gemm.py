"""The kernel lab's GPU matmul versions (dev/cuda_gemm.py) against float64 NumPy.

On the simulator (its small tiles) for the versions the package does not run yet, so that the
versions benchmarks/gpu_check.py times on a card are known to compute the right thing first.
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dev import cuda_gemm as lab  # noqa: E402
from llmnb.cuda import launch  # noqa: E402


# (M, N, K): edges of a tile and of a slab; one block with K split into 6 slices (sms=4 asks for
# 8 blocks); 3 x 3 blocks over several slabs, edges in both directions
SHAPES = [(9, 13, 11), (16, 8, 200), (37, 21, 200)]


@pytest.mark.parametrize("version", ["v6s", "v7s", "v8t", "v9b"])
def test_lab_gemm_matches_float64_in_every_layout(version):
    # v7s: the shapes whose operands have 16-byte aligned rows run its 128-bit global loads, the
    # others (11 or 21 floats a row) its scalar twin. v8t (tensor cores, TF32): against float64 of the
    # operands rounded (or truncated, -trunc) to tf32, as its tensor cores multiply them. v9b (BF16):
    # against float64 of the bf16 operands, its output rounded to bf16 (dimensions rounded up to 8s)
    every = ({**lab.SIM_VERSIONS, **lab.SIM_TC_VERSIONS, **lab.SIM_BF16_VERSIONS} if launch.SIMULATOR
             else {**lab.VERSIONS, **lab.TC_VERSIONS, **lab.BF16_VERSIONS})
    if launch.SIMULATOR:
        versions = {n: v for n, v in every.items() if n.startswith(f"{version}-sim")}
    else:  # a real card (LLMNB_TEST_CUDA_DEVICE=1): the tiles gpu_check times (v8t: the package's; its
        # lab phase checks the others)
        first = {"v8t": "v8t-128x128-bk16", "v9b": "v9b-128x128-bk32"}.get(version, version)
        versions = {n: v for n, v in every.items() if n.startswith(first)}
    # forward, dinp and dweight, each against float64 within 1e-5 of the largest output
    assert lab.check(versions, SHAPES, sms=4) == 0


def test_the_package_tf32_kernel_is_the_labs_v8t():
    from llmnb.cuda import matmul_tc
    assert lab.TC_VERSIONS["v8t-128x128-bk16"] == matmul_tc.TC_SHAPES["gpu"] + (True,)
    assert lab.SIM_TC_VERSIONS["v8t-sim"] == matmul_tc.TC_SHAPES["sim"] + (True,)


def test_the_package_bf16_kernel_is_the_labs_v9b():
    from llmnb.cuda import matmul_bf16
    assert lab.BF16_VERSIONS["v9b-128x128-bk32"] == matmul_bf16.BF16_SHAPES["gpu"]
    assert lab.SIM_BF16_VERSIONS["v9b-sim"] == matmul_bf16.BF16_SHAPES["sim"]
