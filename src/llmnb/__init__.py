"""llmnb: llm.c's GPT-2 training in Python, with Numba kernels over flat buffers."""
from .config import GPT2Config

__all__ = ["GPT2Config"]
__version__ = "0.1.0"
