"""The GPU path: numba.cuda kernels for every layer of GPT-2, and the CUDABackend that launches them.

Importing this package imports nothing from numba.cuda; the submodules do:
- launch.py: the launch geometry (tile and block sizes: one set for a GPU, a smaller one for
  Numba's CUDA simulator) and host-side helpers,
- matmul.py: the shared-memory tiled, register-blocked matmul, and the tile machinery the
  attention kernels reuse,
- kernels.py: every other layer (encoder, layernorm, attention, gelu, residual, softmax,
  cross-entropy, AdamW, gradient norm), with launchers under llm.c's names,
- backend.py: CUDABackend, the interface of llmnb.backend.CPUBackend over device arrays,
- ptxcheck.py: `python -m llmnb.cuda.ptxcheck` compiles every kernel to PTX without a GPU.

Needs a CUDA GPU with numba's CUDA target (the extra: pip install 'llmnb[cuda]'), or Numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1 before numba.cuda is imported), which is how the tests run them.
"""
