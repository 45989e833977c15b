"""Tensor-core PTX for numba.cuda kernels: mma.sync, ldmatrix, cp.async and the cvts as @intrinsic
functions whose code generation is an llvmlite InlineAsm (the technique of matmul.py's load4 and
store4, and the one numba-cuda's maintainers describe for inline PTX). Needs sm_80 or later.

  mma_m16n8k8_tf32(a0..a3, b0, b1, c0..c3) -> (d0..d3)   A (16,8) tf32 x B (8,8) tf32 + C, f32 accumulate
  mma_m16n8k16_bf16(a0..a3, b0, b1, c0..c3) -> (d0..d3)  A (16,16) bf16 x B (16,8) bf16 + C
  ldmatrix_x1/_x2/_x4(tile, r, c) [-_trans]               8x8 b16 matrices, each lane one row address
  cp_async16(dst, i, j, src, si, sj, valid)               16 bytes: dst[i, j:j+4] = src[si, sj:sj+4] (8 bf16), or zeros
  cp_async4(dst, i, j, src, si, sj, valid)                dst[i, j] = src[si, sj], or zero
  cp_async_commit(), cp_async_wait(n)                     close a group; wait until <= n groups fly
  stage4(dst, i, j, src, si, sj, valid)                   dst[i, j:j+4] (float32) = src[si, sj:sj+4] widened, or
                                                          zeros: cp_async16 for float32 src, an 8-byte load
                                                          and widen for bf16 (uint16)
  cvt_rna_tf32(x) -> b32                                  f32 to tf32, round to nearest, ties away
  cvt_rna_tf32_bits(u) -> b32                             the same of an f32's bits (a register ldmatrix filled)
  cvt_bf16x2(lo, hi) -> b32                               two f32 to packed bf16, round to nearest even
  f32_bits(x) -> b32                                      x's bits (an mma then reads them as tf32: truncation)
  widen(v) -> f32                                         a stored element as float32: float32 as it is, uint16
                                                          (bf16 bits) exactly (no instruction but a shift)
  narrow(arr, x) -> arr's dtype                           x for storing in arr: float32 as it is, bf16 bits
                                                          (uint16) rounded to nearest even (cvt.rn.bf16.f32)
  shfl_xor(x, mask) -> f32, syncwarp()                    the float32 of lane ^ mask; a warp barrier
Registers of tf32/bf16 operands are uint32. bf16 tensors are stored as uint16 arrays of their bits
(llm.c's model file holds the same bits); widen and narrow let one kernel serve fp32 and bf16 storage. Each instruction's per-lane semantics (which element of
which matrix a lane's register holds) is modelled in NumPy in llmnb/cuda/lanes.py, under the same
name; the tests check kernels' index math against those models on a CPU (tests/test_lanes.py).

Under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) each name is a Python twin built on the same
models: the warp-collective ones (mma, ldmatrix) gather the 32 lanes' registers through a block
barrier, so a kernel calling them must have every thread of its block (whole warps) make the same
calls in the same order, as tensor-core kernels do; cp.async copies at once and the waits do nothing.
"""
import threading

import numpy as np

from . import lanes
from .launch import SIMULATOR

__all__ = ["mma_m16n8k8_tf32", "mma_m16n8k16_bf16", "ldmatrix_x1", "ldmatrix_x2", "ldmatrix_x4",
           "ldmatrix_x2_trans", "ldmatrix_x4_trans", "cp_async16", "cp_async4", "cp_async_commit",
           "cp_async_wait", "cvt_rna_tf32", "cvt_rna_tf32_bits", "cvt_bf16x2", "f32_bits", "widen", "narrow", "stage4", "shfl_xor",
           "syncwarp"]

MMA_TF32 = "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"
MMA_BF16 = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"


if SIMULATOR:
    _lock = threading.Lock()

    def _warp_gather(values, compute):
        """compute(the 32 lanes' `values`, stacked) once per warp; -> this lane's row of it. Two
        block-wide barriers (the simulator has no warp-wide one): every thread of the block calls."""
        t = threading.current_thread()
        table = t._manager.__dict__.setdefault("_llmnb_lanes", {})
        warp, lane = divmod(t.thread_id, lanes.WARP)
        table[(warp, lane)] = values
        if lane == 0:
            table[(warp, "out")] = None
        t.syncthreads()
        with _lock:
            if table[(warp, "out")] is None:
                table[(warp, "out")] = compute(np.array([table[(warp, ln)] for ln in range(lanes.WARP)]))
            out = table[(warp, "out")][lane]
        t.syncthreads()
        return out

    def _mma(model):
        def mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            vals = (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
            d = _warp_gather(np.array([int(v) for v in vals[:6]] + [float(v) for v in vals[6:]], np.float64),
                             lambda x: model(x[:, :4].astype(np.uint32), x[:, 4:6].astype(np.uint32),
                                             x[:, 6:].astype(np.float32)))
            return tuple(np.float32(v) for v in d)
        return mma

    mma_m16n8k8_tf32 = _mma(lanes.mma_m16n8k8_tf32)
    mma_m16n8k16_bf16 = _mma(lanes.mma_m16n8k16_bf16)

    def _ldmatrix(num, trans):
        def ldmatrix(tile, r, c):
            n = 16 // tile.dtype.itemsize   # the 16 bytes at tile[r, c]
            row = np.array([tile[r, c + q] for q in range(n)], tile.dtype).view(np.uint16)
            return tuple(np.uint32(v) for v in _warp_gather(row, lambda rows: lanes.ldmatrix(rows, num, trans)))
        return ldmatrix

    def cp_async16(dst, i, j, src, si, sj, valid):
        for q in range(16 // src.dtype.itemsize):   # 4 floats or 8 bf16
            dst[i, j + q] = src[si, sj + q] if valid else 0

    def cp_async4(dst, i, j, src, si, sj, valid):
        dst[i, j] = src[si, sj] if valid else 0

    def stage4(dst, i, j, src, si, sj, valid):
        for q in range(4):
            dst[i, j + q] = widen(src[si, sj + q]) if valid else 0

    def cp_async_commit():
        pass

    def cp_async_wait(n):
        pass

    def cvt_rna_tf32(x):
        return np.uint32(lanes.cvt_rna_tf32(np.float32(x)))

    def cvt_rna_tf32_bits(u):
        return np.uint32(lanes.cvt_rna_tf32(np.uint32(u).view(np.float32)))

    def cvt_bf16x2(lo, hi):
        return np.uint32(lanes.cvt_bf16x2(np.float32(lo), np.float32(hi)))

    def f32_bits(x):
        return np.float32(x).view(np.uint32)

    def widen(v):
        if isinstance(v, np.uint16):
            return np.float32(lanes.bf16_value(v))
        return np.float32(v)

    def narrow(arr, x):
        if arr.dtype == np.uint16:
            return np.uint16(lanes.cvt_bf16x2(np.float32(x), np.float32(0)) & np.uint32(0xFFFF))
        return np.float32(x)

    def shfl_xor(x, mask):
        return np.float32(_warp_gather(np.float32(x), lambda v: v[lanes.LANES ^ mask]))

    def syncwarp():
        threading.current_thread().syncthreads()   # (the simulator's only barrier is the block's)

else:
    from llvmlite import ir
    from numba import types
    from numba.core.errors import TypingError
    from numba.cuda.extending import intrinsic
    try:
        from numba.cuda import cgutils
    except ImportError:   # numba's built-in CUDA target
        from numba.core import cgutils

    F32, I32 = ir.FloatType(), ir.IntType(32)

    def _asm(builder, ret, args, text, constraints, side_effect=False):
        fn = ir.FunctionType(ret, [a.type for a in args])
        return builder.call(ir.InlineAsm(fn, text, constraints, side_effect=side_effect), args)

    def _item_pointer(context, builder, arrty, arr, idx_types, idxs, valid=None):
        # a pointer to arr[idxs] (any layout), or to arr[0, ...] where `valid` (an i1) is false
        ary = context.make_array(arrty)(context, builder, arr)
        inds = [context.cast(builder, v, t, types.intp) for v, t in zip(idxs, idx_types)]
        if valid is not None:
            zero = ir.Constant(ir.IntType(64), 0)
            inds = [builder.select(valid, v, zero) for v in inds]
        return cgutils.get_item_pointer(context, builder, arrty, ary, inds)

    def _shared_address(builder, ptr):
        # the 32-bit shared-window address of a generic pointer into shared memory (cvta.to.shared)
        return builder.ptrtoint(builder.addrspacecast(ptr, ir.PointerType(ptr.type.pointee, 3)), I32)

    def _check_2d(name, *arrays):
        for a in arrays:
            if not isinstance(a, types.Array) or a.ndim != 2:
                raise TypingError(f"{name}: expected 2-D arrays, got {a}")

    def _make_mma(opcode, name):
        @intrinsic
        def mma(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            rt = types.UniTuple(types.float32, 4)
            sig = rt(*([types.uint32] * 6 + [types.float32] * 4))

            def codegen(context, builder, signature, args):
                d = _asm(builder, ir.LiteralStructType([F32] * 4), list(args),
                         f"{opcode} {{$0,$1,$2,$3}}, {{$4,$5,$6,$7}}, {{$8,$9}}, {{$10,$11,$12,$13}};",
                         "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f")
                return context.make_tuple(builder, rt, [builder.extract_value(d, i) for i in range(4)])
            return sig, codegen
        mma.__name__ = name
        return mma

    mma_m16n8k8_tf32 = _make_mma(MMA_TF32, "mma_m16n8k8_tf32")
    mma_m16n8k8_tf32.__doc__ = ("mma.sync m16n8k8 tf32 (lanes.mma_m16n8k8_tf32): a0..a3, b0, b1 uint32 tf32 "
                                "registers, c0..c3 float32 -> (d0..d3) float32")
    mma_m16n8k16_bf16 = _make_mma(MMA_BF16, "mma_m16n8k16_bf16")
    mma_m16n8k16_bf16.__doc__ = ("mma.sync m16n8k16 bf16 (lanes.mma_m16n8k16_bf16): a0..a3, b0, b1 uint32 "
                                 "bf16x2 registers, c0..c3 float32 -> (d0..d3) float32")

    def _make_ldmatrix(num, trans):
        regs = ",".join(f"${i}" for i in range(num))
        text = f"ldmatrix.sync.aligned.m8n8.x{num}{'.trans' if trans else ''}.shared.b16 {{{regs}}}, [${num}];"

        @intrinsic
        def ldmatrix(typingctx, tile, r, c):
            """(lanes.ldmatrix) each lane's row address tile[r, c] in a 2-D shared array, 16-byte
            aligned -> num uint32 registers"""
            _check_2d("ldmatrix", tile)
            rt = types.UniTuple(types.uint32, num)

            def codegen(context, builder, signature, args):
                ptr = _item_pointer(context, builder, signature.args[0], args[0], signature.args[1:], args[1:])
                # (one output: inline asm returns it as such, not as a struct)
                out = _asm(builder, ir.LiteralStructType([I32] * num) if num > 1 else I32,
                           [_shared_address(builder, ptr)], text, ",".join(["=r"] * num) + ",r,~{memory}",
                           side_effect=True)
                regs = [builder.extract_value(out, i) for i in range(num)] if num > 1 else [out]
                return context.make_tuple(builder, rt, regs)
            return rt(tile, r, c), codegen
        return ldmatrix

    def _cp_async_codegen(nbytes, cache):
        text = f"cp.async.{cache}.shared.global [$0], [$1], {nbytes}, $2;"

        def codegen(context, builder, signature, args):
            dty, ity, jty, sty, sity, sjty, vty = signature.args
            ok = context.cast(builder, args[6], vty, types.boolean)
            d = _item_pointer(context, builder, dty, args[0], (ity, jty), args[1:3])
            s = _item_pointer(context, builder, sty, args[3], (sity, sjty), args[4:6], valid=ok)
            src_size = builder.select(ok, ir.Constant(I32, nbytes), ir.Constant(I32, 0))
            _asm(builder, ir.VoidType(), [_shared_address(builder, d), s, src_size], text, "r,l,r,~{memory}",
                 side_effect=True)
            return context.get_dummy_value()
        return codegen

    def _make_cp_async(nbytes, cache):
        codegen = _cp_async_codegen(nbytes, cache)

        @intrinsic
        def cp_async(typingctx, dst, i, j, src, si, sj, valid):
            _check_2d("cp_async", dst, src)
            return types.void(dst, i, j, src, si, sj, valid), codegen
        return cp_async

    def _widen4_codegen(context, builder, signature, args):
        # dst[i, j:j+4] = the 4 bf16 at src[si, sj] (one 8-byte load) as float32, or zeros
        dty, ity, jty, sty, sity, sjty, vty = signature.args
        ok = context.cast(builder, args[6], vty, types.boolean)
        d = _item_pointer(context, builder, dty, args[0], (ity, jty), args[1:3])
        s = _item_pointer(context, builder, sty, args[3], (sity, sjty), args[4:6], valid=ok)
        v16, v32 = ir.VectorType(ir.IntType(16), 4), ir.VectorType(I32, 4)
        raw = builder.load(builder.bitcast(s, v16.as_pointer()), align=8)
        raw = builder.select(ok, raw, ir.Constant(v16, [0, 0, 0, 0]))
        bits = builder.shl(builder.zext(raw, v32), ir.Constant(v32, [16, 16, 16, 16]))
        f4 = ir.VectorType(F32, 4)
        builder.store(builder.bitcast(bits, f4), builder.bitcast(d, f4.as_pointer()), align=16)
        return context.get_dummy_value()

    @intrinsic
    def stage4(typingctx, dst, i, j, src, si, sj, valid):
        """dst[i, j:j+4] (a float32 shared array, 16-byte aligned there) = src[si, sj:sj+4], or zeros
        where valid is false: float32 src by cp.async (16 bytes; cp_async_commit / cp_async_wait as
        for cp_async16), bf16 src (uint16, 8-byte aligned there) by one 8-byte load, widened"""
        _check_2d("stage4", dst, src)
        if dst.dtype != types.float32 or src.dtype not in (types.float32, types.uint16):
            raise TypingError(f"stage4: expected a float32 dst and a float32 or uint16 src, got {dst}, {src}")
        codegen = _cp_async_codegen(16, "cg") if src.dtype == types.float32 else _widen4_codegen
        return types.void(dst, i, j, src, si, sj, valid), codegen

    cp_async16 = _make_cp_async(16, "cg")
    cp_async16.__doc__ = ("dst[i, j:j+4] = src[si, sj:sj+4] (16 bytes, both 16-byte aligned: cp.async.cg, "
                          "L2 only), zeros where valid is false (src_size 0; src not read)")
    cp_async4 = _make_cp_async(4, "ca")
    cp_async4.__doc__ = "dst[i, j] = src[si, sj] (cp.async.ca, 4 bytes), zero where valid is false"

    @intrinsic
    def cp_async_commit(typingctx):
        """cp.async.commit_group: the cp.async calls since the last commit form one group."""
        def codegen(context, builder, signature, args):
            _asm(builder, ir.VoidType(), [], "cp.async.commit_group;", "~{memory}", side_effect=True)
            return context.get_dummy_value()
        return types.void(), codegen

    @intrinsic
    def cp_async_wait(typingctx, n):
        """cp.async.wait_group n (a constant): wait until at most n of this thread's groups are in
        flight (then a barrier makes every thread's copies visible to the block)."""
        if not isinstance(n, types.IntegerLiteral):
            return None   # numba then types the call again with n's literal value
        count = n.literal_value

        def codegen(context, builder, signature, args):
            _asm(builder, ir.VoidType(), [], f"cp.async.wait_group {count};", "~{memory}", side_effect=True)
            return context.get_dummy_value()
        return types.void(n), codegen

    @intrinsic
    def cvt_rna_tf32(typingctx, x):
        """(lanes.cvt_rna_tf32) x float32 -> tf32 in a uint32 register"""
        def codegen(context, builder, signature, args):
            v = context.cast(builder, args[0], signature.args[0], types.float32)
            return _asm(builder, I32, [v], "cvt.rna.tf32.f32 $0, $1;", "=r,f")
        return types.uint32(types.float32), codegen

    @intrinsic
    def cvt_rna_tf32_bits(typingctx, u):
        """(lanes.cvt_rna_tf32) the float32 whose bits are u (uint32) -> tf32 in a uint32 register"""
        def codegen(context, builder, signature, args):
            v = context.cast(builder, args[0], signature.args[0], types.uint32)
            return _asm(builder, I32, [v], "cvt.rna.tf32.f32 $0, $1;", "=r,r")
        return types.uint32(types.uint32), codegen

    @intrinsic
    def cvt_bf16x2(typingctx, lo, hi):
        """(lanes.cvt_bf16x2) -> uint32: bf16(lo) in the low half, bf16(hi) in the high half"""
        def codegen(context, builder, signature, args):
            vals = [context.cast(builder, v, t, types.float32) for v, t in zip(args, signature.args)]
            return _asm(builder, I32, [vals[1], vals[0]], "cvt.rn.bf16x2.f32 $0, $1, $2;", "=r,f,f")
        return types.uint32(types.float32, types.float32), codegen

    @intrinsic
    def f32_bits(typingctx, x):
        """x float32 -> its bits as uint32 (no instruction: an mma reading them as tf32 truncates)"""
        def codegen(context, builder, signature, args):
            return builder.bitcast(context.cast(builder, args[0], signature.args[0], types.float32), I32)
        return types.uint32(types.float32), codegen

    @intrinsic
    def widen(typingctx, v):
        """(lanes.bf16_value) a stored element -> float32: float32 as it is, uint16 bf16 bits exactly"""
        if v == types.float32:
            return types.float32(v), lambda context, builder, signature, args: args[0]
        if v != types.uint16:
            raise TypingError(f"widen: expected a float32 or a uint16 (bf16 bits), got {v}")

        def codegen(context, builder, signature, args):
            bits = builder.shl(builder.zext(args[0], I32), ir.Constant(I32, 16))
            return builder.bitcast(bits, F32)
        return types.float32(v), codegen

    @intrinsic
    def narrow(typingctx, arr, x):
        """x (float32) -> what arr stores: float32 as it is; for a uint16 array its bf16 bits,
        rounded to nearest even (cvt.rn.bf16.f32; lanes.cvt_bf16x2's rounding)"""
        if not isinstance(arr, types.Array) or arr.dtype not in (types.float32, types.uint16):
            raise TypingError(f"narrow: expected a float32 or uint16 (bf16) array, got {arr}")
        dt = arr.dtype

        def codegen(context, builder, signature, args):
            v = context.cast(builder, args[1], signature.args[1], types.float32)
            if dt == types.float32:
                return v
            return _asm(builder, ir.IntType(16), [v], "cvt.rn.bf16.f32 $0, $1;", "=h,f")
        return dt(arr, x), codegen

    _ldmatrix = _make_ldmatrix

    from numba import cuda

    @cuda.jit(device=True, forceinline=True)
    def shfl_xor(x, mask):
        """x (float32) of lane (this lane ^ mask), all 32 lanes taking part"""
        return cuda.shfl_xor_sync(0xFFFFFFFF, x, mask)

    @cuda.jit(device=True, forceinline=True)
    def syncwarp():
        """bar.warp.sync: the warp's shared-memory writes before it are seen by its lanes after it"""
        cuda.syncwarp()

ldmatrix_x1 = _ldmatrix(1, False)
ldmatrix_x2 = _ldmatrix(2, False)
ldmatrix_x4 = _ldmatrix(4, False)
ldmatrix_x2_trans = _ldmatrix(2, True)
ldmatrix_x4_trans = _ldmatrix(4, True)
