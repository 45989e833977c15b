"""pytest-benchmark suite: the memory-bound kernels of GPT-2 124M at B=4, T=64, and the copy they
are measured against (`pytest benchmarks/`). extra_info holds the bytes each call must move and
GB/s from the min round; benchmarks/membw.py prints them as a table against copy bandwidth."""
import numpy as np
import pytest

from benchmarks.cases import memory_bound_cases
from benchmarks.membw import parallel_copy


@pytest.fixture(scope="module")
def cases():
    return {case[0]: case for case in memory_bound_cases()}


KERNELS = ["encoder_forward", "encoder_backward", "layernorm_forward", "layernorm_backward",
           "residual_forward", "residual_backward", "gelu_forward", "gelu_backward",
           "attention_forward", "attention_backward", "softmax_forward", "crossentropy_forward",
           "crossentropy_softmax_backward", "adamw_update"]


def run(benchmark, fn, nbytes):
    benchmark.pedantic(fn, rounds=10, warmup_rounds=1)
    benchmark.extra_info["MB"] = round(nbytes / 2**20, 2)
    benchmark.extra_info["GB/s (min)"] = round(nbytes / benchmark.stats.stats.min / 1e9, 1)


@pytest.mark.parametrize("name", KERNELS)
def test_kernel(benchmark, cases, name):
    _, kernel, args, nbytes = cases[name]
    run(benchmark, lambda: kernel(*args), nbytes)


@pytest.mark.parametrize("how", ["np.copyto", "numba-parallel"])
def test_copy_256MB(benchmark, how):
    src = np.ones(64 * 2**20, dtype=np.float32)
    dst = np.empty_like(src)
    fn = (lambda: np.copyto(dst, src)) if how == "np.copyto" else (lambda: parallel_copy(dst, src))
    run(benchmark, fn, 2 * src.nbytes)
