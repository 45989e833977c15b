"""pytest-benchmark suite: the matmuls of GPT-2 124M at B=4, T=64 (`pytest benchmarks/`).

Forward and backward of every matmul shape of one layer and of the classifier, 10 rounds after
one warm-up round each; extra_info holds the FLOPs and GFLOP/s (from the min round).
"""
import pytest

from llmnb import matmul

from benchmarks.cases import matmul_cases

CASES = {case[0]: case for case in matmul_cases()}


def run(benchmark, fn, flops):
    benchmark.pedantic(fn, rounds=10, warmup_rounds=1)
    benchmark.extra_info["GFLOP"] = flops / 1e9
    benchmark.extra_info["GFLOP/s (min)"] = round(flops / benchmark.stats.stats.min / 1e9, 1)


@pytest.mark.parametrize("name", list(CASES))
def test_matmul_forward(benchmark, name):
    _, C, OC, inp, weight, bias, dout = CASES[name]
    out = dout.copy()
    run(benchmark, lambda: matmul.matmul_forward(out, inp, weight, bias), 2.0 * inp.size * OC)


@pytest.mark.parametrize("name", list(CASES))
def test_matmul_backward(benchmark, name):
    _, C, OC, inp, weight, bias, dout = CASES[name]
    dinp, dweight = inp * 0, weight * 0
    dbias = None if bias is None else bias * 0
    run(benchmark, lambda: matmul.matmul_backward(dinp, dweight, dbias, dout, inp, weight),
        4.0 * inp.size * OC)
