"""The kernel lab's GPU attention versions (dev/cuda_attention.py) against the CPU kernels.

The package's version (v3) is tested with the other CUDA kernels (test_cuda_kernels.py); this keeps
the lab's earlier register-tiled version, which benchmarks/gpu_check.py times beside it on a card,
computing the right thing (on the simulator: its small tiles).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dev import cuda_attention as lab  # noqa: E402


def test_lab_attention_v2_matches_the_cpu():
    # out, lse and dinp within 1e-5 of the largest CPU value: a partial tile of 7 queries with head
    # size 8, and 20 queries (several tiles) with head size 12
    assert lab.check([(1, 7, 2, 8), (2, 20, 1, 12)], versions=["v2"]) == 0

