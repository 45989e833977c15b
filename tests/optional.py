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


def _gpt2_encoding_missing():
    """Why tiktoken's gpt2 encoding cannot be loaded here (offline, no cache), or None."""
    try:
        import tiktoken
        tiktoken.get_encoding("gpt2")
    except Exception as e:  # no tiktoken, or no network and no TIKTOKEN_CACHE_DIR holding its files
        return f"{type(e).__name__}: {str(e)[:120]}"
    return None


_GPT2_MISSING = _gpt2_encoding_missing()
# tiktoken's gpt2 files: downloaded once, or a TIKTOKEN_CACHE_DIR that holds them (CI: ../shared)
needs_gpt2_encoding = pytest.mark.skipif(
    _GPT2_MISSING is not None,
    reason=f"needs tiktoken's gpt2 files (the network once, or TIKTOKEN_CACHE_DIR): {_GPT2_MISSING}")
