"""The tensor-core kernels assemble for the cards llmnb targets (sm_80, sm_90) into HMMA instructions,
with no stack frame and no register spills, and every intrinsic of llmnb/cuda/ptx.py into its instruction: `python -m llmnb.cuda.sass` (ptxas and nvdisasm, no GPU),
in a process of its own (it needs numba.cuda without the simulator). Skips where there is no NVVM or
ptxas (the toolkit wheels of numba-cuda[cu12] bring both)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_tf32_kernels_assemble_to_hmma_without_spills_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "LLMNB_CUDA_GEOMETRY")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "llmnb.cuda.sass", "--arch", "sm_80,sm_90"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode == 2:
        pytest.skip(f"no NVVM or ptxas here: {r.stdout.strip()[-300:]}")
    assert r.returncode == 0, f"$ {' '.join(cmd)}\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    lines = [x for x in r.stdout.splitlines() if x.startswith(("ok ", "BAD")) and " registers " in x]
    # 3 TF32 matmul layouts x (16-byte, 4-byte copies) + attention's forward, dquery, dkey_value (over
    # fp32 and over bf16 tensors) + 3 BF16 matmul layouts; x 2 architectures
    assert len(lines) == 30
    # and a probe kernel calling every intrinsic of ptx.py, for each architecture: each one's instruction
    # (HMMA .TF32 and .BF16, LDSM, LDGSTS, DEPBAR, SHFL) in the SASS where nvdisasm is here
    probes = [x for x in r.stdout.splitlines() if "ptx.py's intrinsics" in x]
    assert len(probes) == 2 and all(x.startswith("ok ") for x in probes), probes
    for line in lines:
        assert line.startswith("ok ") and "stack 0 spills 0/0" in line, line
        hmma = int(re.search(r"HMMA +(\d+)", line).group(1))
        # 128 x 128 tiles of 8 warps: 4 x 4 mma tiles a warp, 16 HMMA per k step of 8
        assert hmma >= 16, line
        if "main loop" in line and "attention" not in line and "bf16" not in line:
            # nvdisasm here: a slab (2 k steps) per trip, 24 32-bit shared loads a step
            assert "for 32 HMMA" in line and int(re.search(r"LDS (\d+)", line).group(1)) >= 48, line
        if "main loop" in line and "matmul_" in line and "bf16" in line:
            # a slab of 2 k steps of 16 per trip; each step 4 ldmatrix.x4 of A (one an m-tile) and 2 of B
            # (two n-tiles each): every fragment register from an LDSM, none from a 32-bit LDS
            assert "for 32 HMMA" in line and re.search(r"LDSM 12\b", line), line
