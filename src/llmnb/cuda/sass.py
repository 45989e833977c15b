"""Assemble the tensor-core kernels' PTX for a GPU and read their SASS, without a GPU.

    python -m llmnb.cuda.sass [--arch sm_80,sm_90]

For each tensor-core kernel (matmul_tc.py, attention_tc.py, matmul_bf16.py) and each architecture: ptxas -v's registers,
stack frame and spill stores/loads, the HMMA instructions in the SASS (nvdisasm), and the kernel's
main loop: the smallest loop holding HMMA, its instructions per HMMA and its shared loads. One line
per kernel, "ok" or "BAD" (no HMMA, a stack frame or a spill); then a probe kernel that calls every
intrinsic of ptx.py, and the SASS instructions each became ("BAD" if one is missing). Exit status 0
all ok, 1 a BAD line, 2 no NVVM, ptxas or nvdisasm here.

The tools: ptxas from the nvidia-cuda-nvcc-cu12 wheel that numba-cuda[cu12] installs, nvdisasm
from the nvidia-cuda-nvdisasm wheel (the `cuda` extra), or either on PATH.
"""
import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile


def find_tool(name):
    """The path of a CUDA tool: a NVIDIA wheel's bin/ in site-packages first, then PATH; or None."""
    for base in sys.path:
        for path in sorted(glob.glob(os.path.join(base, "nvidia", "*", "bin", name))):
            if os.access(path, os.X_OK):
                return path
    return shutil.which(name)


def assemble(ptx, arch, ptxas, nvdisasm=None):
    """-> {"registers", "stack", "spill_stores", "spill_loads", "sass"} of one kernel's PTX for arch
    (e.g. "sm_90"); sass is nvdisasm's text, or None without nvdisasm. Raises RuntimeError with
    ptxas's message when it rejects the PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, f"-arch={arch}", "-v", src, "-o", cubin], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ptxas -arch={arch}: {r.stderr.strip()[-600:]}")
        info = r.stderr
        sass = None
        if nvdisasm:
            d = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True)
            sass = d.stdout if d.returncode == 0 else None

    def num(pattern):
        m = re.search(pattern, info)
        return int(m.group(1)) if m else 0
    return {"registers": num(r"Used (\d+) registers"), "stack": num(r"(\d+) bytes stack frame"),
            "spill_stores": num(r"(\d+) bytes spill stores"), "spill_loads": num(r"(\d+) bytes spill loads"),
            "sass": sass}


INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", re.M)
LABEL = re.compile(r"^(\.L_x_\d+):", re.M)


def main_loop(sass):
    """(instructions, HMMA, LDS, LDSM) of the smallest loop (a backward branch's range) holding an
    HMMA in nvdisasm's text, or None."""
    items = []   # (kind, text): ("label", name) or ("op", instruction)
    for line in sass.splitlines():
        lm = LABEL.match(line)
        if lm:
            items.append(("label", lm.group(1)))
            continue
        im = INSTR.match(line)
        if im:
            items.append(("op", im.group(2)))
    where = {name: i for i, (kind, name) in enumerate(items) if kind == "label"}
    best = None
    for i, (kind, text) in enumerate(items):
        m = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", text) if kind == "op" else None
        if not m or where.get(m.group(1), i) >= i:
            continue
        ops = [t for k, t in items[where[m.group(1)]:i + 1] if k == "op"]
        hmma = sum("HMMA" in t for t in ops)
        if hmma and (best is None or len(ops) < best[0]):
            best = (len(ops), hmma, sum(re.search(r"\bLDS\b", t) is not None for t in ops),
                    sum("LDSM" in t for t in ops))
    return best


def tensor_core_kernels():
    """{name: (kernel, argument types)} of the TF32 kernels (matmul_tc.py, attention_tc.py, the
    attention's also over bf16 tensors) and the BF16 GEMMs (matmul_bf16.py, with bf16 output)."""
    from numba import boolean, float32, int64, uint16

    from . import attention_tc as AT
    from . import matmul_bf16 as BF
    from . import matmul_tc as TC
    f1, f2, f3 = float32[::1], float32[:, ::1], float32[:, :, ::1]
    h1, h2, h3 = uint16[::1], uint16[:, ::1], uint16[:, :, ::1]
    ours = {k for pair in TC.TC_GEMMS.values() for k in pair}
    kernels = {n: (v, (f3, f2, f2, f1, boolean, int64, boolean)) for n, v in vars(TC).items()
               if n.endswith("_kernel") and v in ours}
    kernels.update({n: (v, (h3, h2, h2, h1, boolean, int64, boolean)) for n, v in vars(BF).items()
                    if n.endswith("_bf16_kernel")})
    kernels["attention_forward_tf32_kernel"] = (AT.attention_forward_tf32_kernel, (f3, f3, f3, float32))
    for n in ("attention_dquery_tf32_kernel", "attention_dkey_value_tf32_kernel"):
        kernels[n] = (getattr(AT, n), (f3, f3, f3, f3, f3, float32))
    # --precision bf16's attention: the same kernels over bf16 tensors (ptx.stage4 widens them)
    kernels["attention_forward_tf32_kernel[bf16]"] = (AT.attention_forward_tf32_kernel, (h3, f3, h3, float32))
    for n in ("attention_dquery_tf32_kernel", "attention_dkey_value_tf32_kernel"):
        kernels[n + "[bf16]"] = (getattr(AT, n), (h3, h3, h3, f3, f3, float32))
    return kernels


# what each of ptx.py's intrinsics assembles to (the probe's SASS must hold every one)
PROBE_SASS = {"mma_m16n8k8_tf32": "HMMA.1688.F32.TF32", "mma_m16n8k16_bf16": "HMMA.16816.F32.BF16",
              "ldmatrix_x4": "LDSM.16.M88.4", "ldmatrix_x2_trans": "LDSM.16.MT88.2", "ldmatrix_x1": "LDSM.16.M88 ",
              "cp_async16": "LDGSTS.E.BYPASS.128", "cp_async4": "LDGSTS.E ", "cp_async_commit": "LDGDEPBAR",
              "cp_async_wait": "DEPBAR.LE", "shfl_xor": "SHFL.BFLY"}


def probe(archs, out=sys.stdout):
    """Assemble a kernel calling every intrinsic of ptx.py for each arch; -> the number of intrinsics
    whose instruction is missing from its SASS (0 without nvdisasm: only ptxas's acceptance is checked)."""
    from numba import cuda, float32, uint16

    from . import ptx
    from .ptxcheck import compile_without_a_device

    def intrinsics(out, a, b):
        sh = cuda.shared.array((16, 8), float32, alignment=16)
        hs = cuda.shared.array((32, 8), uint16, alignment=16)
        t = cuda.threadIdx.x
        ptx.cp_async16(sh, t // 2, (t % 2) * 4, a, t // 2, (t % 2) * 4, t < 30)
        ptx.cp_async4(sh, t // 2, 0, a, t // 2, 1, t < 30)
        ptx.cp_async_commit()
        ptx.cp_async_wait(0)
        cuda.syncthreads()
        x = ptx.cvt_rna_tf32(sh[t // 4, t % 4])
        y = ptx.f32_bits(b[t, 0])
        d0, d1, d2, d3 = ptx.mma_m16n8k8_tf32(x, x, y, y, x, y, float32(0), float32(1), float32(2), sh[t // 2, t % 8])
        r0, r1, r2, r3 = ptx.ldmatrix_x4(sh, t % 16, 0)
        q0, q1 = ptx.ldmatrix_x2_trans(hs, t, 0)
        (z0,) = ptx.ldmatrix_x1(hs, t % 8, 0)
        ptx.syncwarp()
        p = ptx.cvt_bf16x2(d0, ptx.shfl_xor(d1, 1))
        e0, e1, e2, e3 = ptx.mma_m16n8k16_bf16(p, r0, r1, r2 ^ z0, r3, q0 ^ q1, d0, d1, d2, d3)
        out[t, 0] = e0 + e1 + e2 + e3

    ptxas, nvdisasm = find_tool("ptxas"), find_tool("nvdisasm")
    f2 = float32[:, ::1]
    missing = 0
    for arch in archs:
        cc = (int(arch[3:-1]), int(arch[-1]))
        with compile_without_a_device(cc):
            text, _ = cuda.compile_ptx(intrinsics, (f2, f2, f2), cc=cc)
        a = assemble(text, arch, ptxas, nvdisasm)
        if a["sass"] is None:
            print(f"ok  {arch} every intrinsic of ptx.py assembles (no nvdisasm: the SASS not read)", file=out)
            continue
        absent = [name for name, op in PROBE_SASS.items() if op not in a["sass"]]
        missing += len(absent)
        print(f"{'BAD' if absent else 'ok '} {arch} ptx.py's intrinsics in SASS: "
              + ", ".join(f"{n} {op.strip()}" for n, op in PROBE_SASS.items() if n not in absent)
              + (f"; MISSING {', '.join(absent)}" if absent else ""), file=out, flush=True)
    return missing


def check(archs, out=sys.stdout):
    """Compile, assemble and read every tensor-core kernel for each arch; -> the number of BAD lines."""
    from numba import cuda

    from .ptxcheck import compile_without_a_device
    ptxas, nvdisasm = find_tool("ptxas"), find_tool("nvdisasm")
    bad = 0
    for arch in archs:
        cc = (int(arch[3:-1]), int(arch[-1]))
        for name, (kernel, sig) in tensor_core_kernels().items():
            with compile_without_a_device(cc):
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            a = assemble(ptx, arch, ptxas, nvdisasm)
            hmma = a["sass"].count("HMMA") if a["sass"] else ptx.count("mma.sync")
            loop = main_loop(a["sass"]) if a["sass"] else None
            ok = hmma > 0 and a["stack"] == 0 and a["spill_stores"] == 0 and a["spill_loads"] == 0
            bad += not ok
            where = (f"main loop {loop[0]} instructions for {loop[1]} HMMA ({loop[0] / loop[1]:.1f} per HMMA), "
                     f"LDS {loop[2]} LDSM {loop[3]}" if loop else "no SASS (nvdisasm absent)")
            print(f"{'ok ' if ok else 'BAD'} {arch} {name:44s} registers {a['registers']:3d} stack {a['stack']} "
                  f"spills {a['spill_stores']}/{a['spill_loads']} HMMA {hmma:3d} | {where}", file=out, flush=True)
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description="Assemble the tensor-core kernels and read their SASS (no GPU needed).")
    ap.add_argument("--arch", default="sm_80,sm_90", help="comma-separated, e.g. sm_80,sm_90 (default: %(default)s)")
    args = ap.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("llmnb/cuda/sass.py: NUMBA_ENABLE_CUDASIM=1: the simulator compiles nothing; unset it")
        return 2
    archs = [a for a in args.arch.split(",") if a]
    if any(not re.fullmatch(r"sm_\d\d", a) for a in archs):
        ap.error(f"--arch {args.arch!r}: expected e.g. sm_80,sm_90")
    if importlib.util.find_spec("numba_cuda") is None:
        print("llmnb/cuda/sass.py: needs NVIDIA's numba-cuda (pip install 'llmnb[cuda]')")
        return 2
    if find_tool("ptxas") is None:
        print("llmnb/cuda/sass.py: no ptxas (pip install 'numba-cuda[cu12]' brings one)")
        return 2
    from .ptxcheck import nvvm_available
    ok, why = nvvm_available((8, 0))
    if not ok:
        print(f"llmnb/cuda/sass.py: cannot compile PTX here (no NVVM?): {why}")
        return 2
    if find_tool("nvdisasm") is None:
        print("llmnb/cuda/sass.py: no nvdisasm (pip install nvidia-cuda-nvdisasm): registers and spills only")
    bad = check(archs) + probe(archs)
    print(f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
