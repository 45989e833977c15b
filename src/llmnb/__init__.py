"""llmnb: llm.c's GPT-2 training in Python, with Numba kernels over flat buffers."""
__version__ = "0.1.0"
