"""Shared test setup: make tests/reference_numpy.py importable from every test directory
(tests/cuda/... included) whatever pytest's import mode."""
import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

# tiktoken's gpt2 files, offline: the shared cache beside the checkout (CI has it too)
_SHARED_TIKTOKEN = os.path.join(os.path.dirname(os.path.dirname(TESTS_DIR)), "shared", "tiktoken")
if os.path.isdir(_SHARED_TIKTOKEN):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", _SHARED_TIKTOKEN)
