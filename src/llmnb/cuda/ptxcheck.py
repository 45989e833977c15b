"""Compile every kernel of llmnb.cuda to PTX, without a GPU.

The simulator runs the kernels as Python: it checks what they compute, not that numba can compile
them for a GPU (e.g. shared array shapes must be constants; builtin min does not compile in numba
0.68's CUDA target). This compiles each kernel for the argument types the launchers pass and
reports, per kernel, the fp64 instructions in its PTX (all kernels are fp32; only the gradient
norm accumulates in float64) and its local-memory loads/stores (register spills, or the 8x8
accumulators of the matmuls not kept in registers), and its 128-bit loads from shared and global
memory (the matmuls' v6s and v7s exist for those), and its tensor-core mma.sync instructions (the
TF32 kernels of matmul_tc.py and attention_tc.py and the BF16 ones of matmul_bf16.py have them, no
other kernel does).

    python -m llmnb.cuda.ptxcheck [--cc 9.0] [--geometry gpu|sim]

Needs NVVM: NVIDIA's numba-cuda with the toolkit wheels (pip install "numba-cuda[cu12]"), or a
CUDA toolkit for numba's built-in CUDA target (CUDA_HOME). Exit status: 0 all good, 1 a kernel
failed or used fp64 / local memory where it should not, 2 no NVVM here.
"""
import argparse
import contextlib
import os
import re
import sys

EXPECTED_FP64 = {"global_norm_squared_kernel"}


def kernel_signatures():
    """{kernel dispatcher: [argument types]} for every launch of kernels.py, attention.py, matmul.py,
    matmul_tc.py, matmul_bf16.py and bf16.py."""
    from numba import boolean, float32, float64, int32, int64, uint16, uint64

    from . import attention as A
    from . import attention_v2 as A2
    from . import attention_tc as AT
    from . import bf16 as B16
    from . import kernels as K
    from . import matmul as M
    from . import matmul_bf16 as BF
    from . import matmul_tc as TC
    f1, f2, f3 = float32[::1], float32[:, ::1], float32[:, :, ::1]
    h1, h2, h3 = uint16[::1], uint16[:, ::1], uint16[:, :, ::1]
    i2 = int32[:, ::1]
    gemm = [(f3, f2, f2, f1, boolean, int64, boolean)]
    # bf16 output, and split K's fp32 partial sums
    gemm_bf16 = [(h3, h2, h2, h1, boolean, int64, boolean), (f3, h2, h2, h1, boolean, int64, boolean)]
    return {
        **{k: gemm for pair in M.GEMMS.values() for k in pair if k is not None},   # (v7s: twins too)
        **{k: gemm for pair in TC.TC_GEMMS.values() for k in pair},                # --precision tf32
        **{k: gemm_bf16 for _, k in BF.BF16_GEMMS.values()},                       # --precision bf16
        M.matmul_reduce_splits_kernel: [(f2, f3, f1, boolean, boolean), (h2, f3, h1, boolean, boolean)],
        M.matmul_backward_bias_kernel: [(f1, f2), (h1, h2)],
        K.encoder_forward_kernel: [(f3, i2, f2, f2), (h3, i2, h2, h2)],   # (second: --precision bf16's)
        K.encoder_backward_wpe_kernel: [(f2, f3), (h2, h3)],
        K.encoder_backward_wte_kernel: [(f2, f3, i2), (h2, h3, i2)],
        K.layernorm_forward_kernel: [(f3, f2, f2, f3, f1, f1), (h3, f2, f2, h3, h1, h1)],
        K.residual_layernorm_forward_kernel: [(f3, f3, f2, f2, f3, f3, f1, f1), (h3, h3, f2, f2, h3, h3, h1, h1)],
        K.layernorm_backward_dinp_kernel: [(f3, f3, f3, f1, f2, f2), (h3, h3, h3, h1, f2, f2)],
        K.layernorm_backward_params_kernel: [(f1, f1, f3, f3, f2, f2), (h1, h1, h3, h3, f2, f2)],
        A.attention_forward_kernel: [(f3, f3, f3, float32)],
        A2.v2_forward_kernel: [(f3, f3, f3, float32), (h3, f3, h3, float32)],
        A2.v2_dquery_kernel: [(f3, f3, f3, f3, f3, float32), (h3, h3, h3, f3, f3, float32)],
        A2.v2_dkey_value_kernel: [(f3, f3, f3, f3, f3, float32), (h3, h3, h3, f3, f3, float32)],
        A.attention_backward_dd_kernel: [(f3, f3, f3), (f3, h3, h3)],
        A.attention_dquery_kernel: [(f3, f3, f3, f3, f3, float32)],
        A.attention_dkey_value_kernel: [(f3, f3, f3, f3, f3, float32)],
        AT.attention_forward_tf32_kernel: [(f3, f3, f3, float32), (h3, f3, h3, float32)],   # tf32 (and bf16's)
        AT.attention_dquery_tf32_kernel: [(f3, f3, f3, f3, f3, float32), (h3, h3, h3, f3, f3, float32)],
        AT.attention_dkey_value_tf32_kernel: [(f3, f3, f3, f3, f3, float32), (h3, h3, h3, f3, f3, float32)],
        K.gelu_forward_kernel: [(f1, f1), (h1, h1)],
        K.gelu_backward_kernel: [(f1, f1, f1), (h1, h1, h1)],
        K.residual_forward_kernel: [(f1, f1, f1), (h1, h1, h1)],
        K.residual_backward_kernel: [(f1, f1, f1), (h1, h1, h1)],
        K.softmax_forward_kernel: [(f3, f3, int64), (f3, h3, int64)],
        K.crossentropy_forward_kernel: [(f2, f2, f3, i2, int64), (f2, f2, h3, i2, int64)],
        K.crossentropy_softmax_backward_kernel: [(f3, f2, f2, i2, int64), (h3, f2, f2, i2, int64)],
        K.adamw_kernel: [(f1, f1, f1, f1) + (float32,) * 7 + (boolean,)],
        K.global_norm_squared_kernel: [(float64[::1], f1), (float64[::1], h1)],
        K.scale_kernel: [(f1, float32), (h1, float32)],
        K.fill_kernel: [(f1, float32), (int32[::1], int32), (h1, uint16)],
        K.attention_query_kernel: [(f2, f3, f3, int64, float32)],
        B16.adamw_bf16_kernel: [(h1, f1, h1, f1, f1, int64) + (float32,) * 8 + (uint64,)],   # --precision bf16
        B16.init_from_master_kernel: [(h1, f1, int64, uint64)],
    }


@contextlib.contextmanager
def compile_without_a_device(cc):
    """numba compiles a kernel's device functions for "the current device"; with no GPU there is
    none, so pretend one of compute capability cc for the duration (numba's own function is put
    back afterwards).

    Why a patch: in numba-cuda 0.30.4, cuda.compile_ptx(..., cc=cc) compiles the kernel for cc, but
    the @cuda.jit(device=True) functions it calls are compiled by Dispatcher.compile_device, which
    asks numba.cuda.dispatcher.get_current_device() for the compute capability and takes no cc
    argument; no option or environment variable sets it (NUMBA_CUDA_DEFAULT_PTX_CC only picks the
    kernel's cc when compile_ptx gets none). So there is no supported way to compile a kernel with
    device functions on a machine without a GPU; this is the smallest override, scoped to the
    `with` block. Drop it when numba-cuda passes cc down to device functions."""
    import numba.cuda.dispatcher as dispatcher

    class _Device:
        compute_capability = cc

    original = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Device()
    try:
        yield
    finally:
        dispatcher.get_current_device = original


def nvvm_available(cc):
    from numba import cuda

    def _probe(x):
        x[0] = 1.0

    from numba import float32
    try:
        cuda.compile_ptx(_probe, (float32[::1],), cc=cc)
        return True, ""
    except Exception as e:  # no NVVM / libdevice: the message says what numba looked for
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def check_all(cc, out=sys.stdout):
    """Compile every kernel; returns the number of problems."""
    from numba import cuda

    from . import attention as A
    from . import attention_v2 as A2
    from . import attention_tc as AT
    from . import bf16 as B16
    from . import kernels as K
    from . import matmul as M
    from . import matmul_bf16 as BF
    from . import matmul_tc as TC
    sigs = kernel_signatures()
    problems = 0
    # {kernel: the module's name for it} (the matmuls' kernels are closures of one function, gemm)
    launched = {v: n for mod in (K, A, A2, M, TC, AT, BF, B16) for n, v in vars(mod).items()
                if n.endswith("_kernel") and getattr(v, "__module__", "").startswith("llmnb.cuda")}
    for k, name in launched.items():
        if k not in sigs:
            print(f"MISSING  {name}: no signature in ptxcheck.kernel_signatures", file=out)
            problems += 1
    with compile_without_a_device(cc):
        for kern, sig_list in sigs.items():
            name = launched.get(kern, kern.py_func.__name__)
            for sig in sig_list:
                try:
                    ptx, _ = cuda.compile_ptx(kern.py_func, sig, cc=cc)
                except Exception as e:
                    problems += 1
                    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
                    print(f"FAIL     {name}: {type(e).__name__}: {' '.join(msg[:6])}", file=out)
                    continue
                f64 = len(re.findall(r"\.f64\b", ptx))
                local = len(re.findall(r"\b(?:ld|st)\.local\b", ptx))
                v4s = len(re.findall(r"\bld\.shared\.v4\.", ptx))
                v4g = len(re.findall(r"\bld\.global(?:\.nc)?\.v4\.", ptx))
                mma = len(re.findall(r"\bmma\.sync\.", ptx))
                bad = local > 0 or (f64 > 0 and name not in EXPECTED_FP64) or (mma == 0) == ("_tf32" in name or name.startswith("matmul_") and "_bf16" in name)
                problems += bad
                print(f"{'BAD ' if bad else 'ok  '}     {name:40s} fp64 instructions {f64:3d}   "
                      f"local loads/stores {local:3d}   128-bit loads shared {v4s:3d} global {v4g:3d}   mma {mma:3d}", file=out)
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description="Compile every llmnb.cuda kernel to PTX (no GPU needed).")
    ap.add_argument("--cc", default="9.0", help="compute capability, e.g. 8.0 or 9.0")
    ap.add_argument("--geometry", choices=("gpu", "sim"), default="gpu", help="launch.py geometry")
    args = ap.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("llmnb/cuda/ptxcheck.py: NUMBA_ENABLE_CUDASIM=1: the simulator compiles nothing; unset it")
        return 2
    if "llmnb.cuda.launch" in sys.modules and sys.modules["llmnb.cuda.launch"].GEOMETRY != args.geometry:
        print("llmnb/cuda/ptxcheck.py: llmnb.cuda is already imported with another geometry")
        return 2
    os.environ["LLMNB_CUDA_GEOMETRY"] = args.geometry
    try:
        cc = tuple(int(x) for x in args.cc.split("."))
    except ValueError:
        ap.error(f"--cc {args.cc!r}: expected MAJOR.MINOR, e.g. 9.0")
    ok, why = nvvm_available(cc)
    if not ok:
        print(f"llmnb/cuda/ptxcheck.py: cannot compile PTX here (no NVVM?): {why}\n"
              "install NVIDIA's numba-cuda with the toolkit wheels: pip install 'numba-cuda[cu12]'")
        return 2
    problems = check_all(cc)
    print(f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
