"""Skip markers for tests that need something optional, each with the reason and the install line.

The README's test line installs every extra these need, so in CI none of them skips; on a machine
with less installed, the tests that cannot run say why instead of failing."""
import importlib.util

import pytest

# NVIDIA's numba-cuda (the `cuda` extra): llmnb's CUDA kernels need it; numba's own, deprecated
# CUDA target (and its simulator) lacks what they use
NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
needs_numba_cuda = pytest.mark.skipif(
    not NUMBA_CUDA, reason="needs NVIDIA's numba-cuda: pip install -e '.[cuda]'")
