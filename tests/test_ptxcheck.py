"""Runs tests/cuda (the CUDA kernels vs the CPU kernels) on Numba's CUDA simulator, in subprocesses.

The simulator is switched on by NUMBA_ENABLE_CUDASIM=1 before numba.cuda is imported, for a whole
process; the other tests must not run under it, so tests/cuda is not collected in a run like
`pytest tests/` (see tests/cuda/conftest.py) and runs here instead, twice:
- with the simulator's launch geometry (small tiles and blocks, fast to simulate): every test;
- with the GPU's geometry (128x128 tiles, 16x16 threads, 128-thread rows): the tests marked
  gpu_geometry (matmul with bias, attention), so the constants a real GPU uses are checked too.
Each subprocess must pass, and must have run (not skipped) its tests.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA_TESTS = ROOT / "tests" / "cuda"


def _run_cuda_tests(extra_env, extra_args, min_passed):
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the simulator is on in this process: tests/cuda is collected here directly")
    env = dict(os.environ)
    env.update(extra_env)
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CUDA_TESTS), *extra_args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    report = f"$ {' '.join(cmd)}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == 0, report
    m = re.search(r"(\d+) passed", r.stdout)
    assert m and int(m.group(1)) >= min_passed, report
    assert "skipped" not in r.stdout.splitlines()[-1], report


def test_cuda_kernels_on_the_simulator():
    _run_cuda_tests({"LLMNB_CUDA_GEOMETRY": "sim"}, [], min_passed=30)


def test_cuda_kernels_on_the_simulator_with_the_gpu_geometry():
    _run_cuda_tests({"LLMNB_CUDA_GEOMETRY": "gpu"}, ["-m", "gpu_geometry", "-k", "not nobias"], min_passed=4)


def test_cuda_kernels_compile_to_ptx():
    # the simulator runs the kernels as Python; this compiles them for a GPU (sm_90), where NVVM
    # is installed (a CUDA toolkit, or numba-cuda[cu12]); exit status 2 means it is not
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "LLMNB_CUDA_GEOMETRY")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "llmnb.cuda.ptxcheck", "--cc", "9.0", "--geometry", "gpu"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode == 2:
        pytest.skip(f"no NVVM to compile PTX with: {r.stdout.strip()[-300:]}")
    assert r.returncode == 0, f"$ {' '.join(cmd)}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert "0 problem(s)" in r.stdout
