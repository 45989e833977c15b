"""Every CUDA kernel compiles to PTX for a GPU (sm_90), with the GPU's launch geometry.

The simulator (tests/cuda, its own pytest run: see .ci/run) runs the kernels as Python; this
compiles them for a real GPU, where NVVM is installed (a CUDA toolkit, or numba-cuda[cu12]).
`python -m llmnb.cuda.ptxcheck` runs in a process of its own because it needs numba.cuda without
the simulator; exit status 2 means there is no NVVM here.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from optional import needs_numba_cuda

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # NVVM compiles every kernel: tens of seconds each


def _loads128(stdout, kernel):
    # (shared, global) 128-bit loads in ptxcheck's line for `kernel`
    line = next(x for x in stdout.splitlines() if f" {kernel} " in x)
    shared, glob = re.search(r"128-bit loads shared +(\d+) global +(\d+)", line).groups()
    return int(shared), int(glob)


@needs_numba_cuda
@pytest.mark.parametrize("gemm", ["v5s", "v6s", "v7s"])
def test_cuda_kernels_compile_to_ptx(gemm):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "LLMNB_CUDA_GEOMETRY")}
    env["LLMNB_CUDA_GEMM"] = gemm   # launch.py's matmul kernels
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "llmnb.cuda.ptxcheck", "--cc", "9.0", "--geometry", "gpu"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode == 2:
        pytest.skip(f"no NVVM to compile PTX with: {r.stdout.strip()[-300:]}")
    assert r.returncode == 0, f"$ {' '.join(cmd)}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert "0 problem(s)" in r.stdout
    # v6s and v7s read shared memory 128 bits at a time, v5s never; only v7s's twins (the _vload_
    # kernels, compiled only for v7s) load their slabs from global memory that way
    for layout in ("forward", "backward_dinp", "backward_dweight"):
        shared, glob = _loads128(r.stdout, f"matmul_{layout}_kernel")
        assert (shared > 0) == (gemm != "v5s") and glob == 0, r.stdout
        if gemm == "v7s":
            shared, glob = _loads128(r.stdout, f"matmul_{layout}_vload_kernel")
            assert shared > 0 and glob > 0, r.stdout
        else:
            assert f"matmul_{layout}_vload_kernel" not in r.stdout
    # attention (v3) reads its tiles 4 floats at a time
    for kernel in ("attention_forward_kernel", "attention_dquery_kernel", "attention_dkey_value_kernel"):
        assert _loads128(r.stdout, kernel)[0] > 0, r.stdout


@needs_numba_cuda
def test_lab_gemm_v6_and_v7_read_memory_128_bits_at_a_time():
    # dev/cuda_gemm.py's v6 exists for its 128-bit shared loads (load4), v7 also for its 128-bit
    # global loads; if numba or the intrinsic fell back to scalar loads, or the tile spilled to local
    # memory, the version would be the one before it again
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "LLMNB_CUDA_GEOMETRY")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "dev.cuda_gemm", "--ptx", "--versions", "v5s-64x64-bk16,v6s-128x128-bk8,v7s-128x128-bk8"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and ("NVVM" in r.stderr or "libdevice" in r.stderr):
        pytest.skip(f"no NVVM to compile PTX with: {r.stderr.strip()[-300:]}")
    if r.returncode != 0 and "libnvrtc" in r.stderr:  # numba-cuda without its toolkit wheels
        pytest.skip("needs NVRTC: pip install 'numba-cuda[cu12]' (the cuda extra)")
    assert r.returncode == 0, f"$ {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    rows = {tuple(line.split()[:2]): line for line in r.stdout.splitlines() if line.strip()}
    for kind in ("forward", "dinp", "dweight"):
        v5, v6 = rows[("v5s-64x64-bk16", kind)], rows[("v6s-128x128-bk8", kind)]
        assert "ld.shared.v4.f32 0" in v5 and "ld.shared.f32 32" in v5  # the baseline: scalar loads
        assert "ld.shared.f32 0 " in v6 and "ld.shared.v4.f32 16" in v6 and "local 0" in v6, v6
        assert "ld.global.v4 0 " in v6, v6
        # v7s also loads its slabs from global memory 128 bits at a time: 4 + 4 floats per thread in
        # 2 loads, for the first slab before the loop and for the next one inside it
        v7 = rows[("v7s-128x128-bk8", kind)]
        assert "ld.shared.v4.f32 16" in v7 and "ld.global.v4 4 " in v7 and "local 0" in v7, v7
