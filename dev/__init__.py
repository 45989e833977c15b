"""The kernel lab, as llm.c's dev/: each kernel's versions with a check and a timing.
Run from the repository root: `python -m dev.matmul_forward` (helpers: dev/common.py)."""
