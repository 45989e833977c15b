"""The matmuls on the GPU: shared-memory tiled kernels with register blocking.

Training's matmuls (forward, dinp, dweight): one block of TY x TX = 16 x 16 threads computes a
GEMM_TILE x GEMM_TILE output tile, each thread GEMM_TM x GEMM_TM outputs. K is walked a slab at
a time with register prefetch (the next slab's global loads overlap this slab's FMAs), and grids
of fewer than two blocks per SM split K (Matmuls). Two kernels of this family (launch.py's
LLMNB_CUDA_GEMM; dev/cuda_gemm.py times them and their ancestors on a card):
  v5s  (the default) 64 x 64 tiles, 4 x 4 outputs per thread at rows ty + TY*i and columns
       tx + TX*j: neighbouring threads write neighbouring columns and read shared memory without
       bank conflicts. On an H200 1.9x the 128 x 128 version before it at B*T = 8192, 6x at 256.
  v6s  128 x 128 tiles, 8 x 8 outputs per thread in groups of 4 neighbouring rows and columns,
       each group read from shared memory in one 128-bit load (load4). Not yet timed on a card.
  v7s  v6s whose threads load 4 neighbours of an operand's row with one 128-bit global load, where
       both operands' rows are 16-byte aligned (aligned_rows: GPT-2's always are); a twin kernel
       with scalar loads takes the other calls. Not yet timed on a card.

Loads outside the matrices read as zero, so any shape works, not only multiples of the tile.
"""
import numpy as np
from numba import cuda, float32

from .launch import (COL_ROWS, COL_WIDTH, ELEM_THREADS, GEMM_BK, GEMM_TM, GEMM_VEC4, GEMM_VLOAD, INLINE,
                     SIMULATOR, TILE_BLOCK, TX, TY, cached_views, cdiv, check, elementwise_grid, last_dim)
from .ptx import narrow, widen

NTHREADS = TX * TY
# shared slabs are (BK, tile + PAD): the padding spreads the transposing stores over the banks;
# v6s pads by 4 floats, which keeps every row 16-byte aligned for load4
PAD = 4 if GEMM_VEC4 else 1
ZERO = np.float32(0.0)
U32 = np.uint32
# the slab loads' index type: unsigned in v6s and v7s (no negative-index wraparound, shifts for / and %)
IDX = U32 if GEMM_VEC4 else np.int64
SHARED_ALIGN = None if SIMULATOR or not GEMM_VEC4 else 16   # (the simulator takes no alignment)


if SIMULATOR:
    def load4(tile, r, c):
        """tile[r, c:c+4] (the simulator runs device code as Python)."""
        return tile[r, c], tile[r, c + 1], tile[r, c + 2], tile[r, c + 3]

    def store4(tile, r, c, x0, x1, x2, x3):
        """tile[r, c:c+4] = x0, x1, x2, x3."""
        tile[r, c], tile[r, c + 1], tile[r, c + 2], tile[r, c + 3] = x0, x1, x2, x3
else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    V4 = ir.VectorType(ir.FloatType(), 4)

    def _vec4_ptr(context, builder, signature, args):
        # a <4 x float>* to tile[r, c] (args: tile, r, c, ...) of a C-contiguous float32 2-D array
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        rv = context.cast(builder, args[1], signature.args[1], types.int64)
        cv = context.cast(builder, args[2], signature.args[2], types.int64)
        row_len = builder.sdiv(builder.extract_value(arr.strides, 0), ir.Constant(ir.IntType(64), 4))
        return builder.bitcast(builder.gep(arr.data, [builder.add(builder.mul(rv, row_len), cv)]), V4.as_pointer())

    @intrinsic
    def load4(typingctx, tile, r, c):
        """tile[r, c:c+4] of a C-contiguous float32 2-D shared array in one 128-bit load
        (ld.shared.v4.f32; numba emits four scalar loads for four neighbouring elements). The caller
        guarantees 16-byte alignment: the array declared with alignment=16, its rows and c
        multiples of 4 floats."""
        rt = types.UniTuple(types.float32, 4)
        sig = rt(tile, r, c)

        def codegen(context, builder, signature, args):
            vec = builder.load(_vec4_ptr(context, builder, signature, args), align=16)
            return context.make_tuple(builder, rt, [builder.extract_element(vec, ir.Constant(ir.IntType(32), j))
                                                    for j in range(4)])
        return sig, codegen

    @intrinsic
    def store4(typingctx, tile, r, c, x0, x1, x2, x3):
        """tile[r, c:c+4] = x0, x1, x2, x3 (float32) in one 128-bit store (st.shared.v4.f32), with
        load4's alignment contract."""
        sig = types.void(tile, r, c, x0, x1, x2, x3)

        def codegen(context, builder, signature, args):
            vec = ir.Constant(V4, ir.Undefined)
            for j in range(4):
                x = context.cast(builder, args[3 + j], signature.args[3 + j], types.float32)
                vec = builder.insert_element(vec, x, ir.Constant(ir.IntType(32), j))
            builder.store(vec, _vec4_ptr(context, builder, signature, args), align=16)
            return context.get_dummy_value()
        return sig, codegen


# ----------------------------------------------------------------------------------------------
# the training matmuls: out (M,N) (+)= A (M,K) @ B (N,K)^T, each operand K-contiguous or stored
# transposed; a GEMM_TILE x GEMM_TILE output tile per block of TY x TX threads, GEMM_TM x GEMM_TM
# outputs per thread, and register prefetch: the next K slab is loaded into registers while the
# current one is multiplied out of shared memory (dev/cuda_gemm.py has the versions and timings)

GEMM_TILE = GEMM_TM * TY
GEMM_LOADS = GEMM_TILE * GEMM_BK // NTHREADS  # elements of each operand's slab per thread
GEMM_TILE_P = GEMM_TILE + PAD
GEMM_GROUP = GEMM_TILE // max(1, GEMM_TM // 4)  # v6s: tile rows from one of a thread's groups to the next
assert not GEMM_VEC4 or (GEMM_TM % 4 == 0 and GEMM_BK % 4 == 0)
assert not GEMM_VLOAD or (GEMM_VEC4 and GEMM_LOADS % 4 == 0)


def aligned_rows(x):
    """True when every row of the 2-D C-contiguous device array x (float32, or uint16 bf16 bits)
    starts on a 16-byte boundary (v7s's 128-bit global loads and cp.async's 16-byte chunks need it)."""
    iface = getattr(x, "__cuda_array_interface__", None) or x.__array_interface__   # (the simulator's)
    size = x.dtype.itemsize
    return (iface["data"][0] % 16 == 0 and x.shape[1] * size % 16 == 0 and x.strides[1] == size
            and x.strides[0] == size * x.shape[1])


@INLINE
def tile_row(t, i, T):
    # the tile row (column) of a thread's i-th accumulator row (column); t = ty (tx), T = TY (TX)
    if GEMM_VEC4:
        return (i // 4) * GEMM_GROUP + 4 * t + i % 4
    return t + i * T


def _slab_functions(KR, VECTOR):
    """(load, store) of one operand's (GEMM_TILE, GEMM_BK) slab for layout KR: False, x is (R, K)
    and consecutive threads read consecutive k; True, x is (K, R) and they read consecutive r.
    VECTOR (v7s, for operands whose rows are 16-byte aligned): whole slabs in 128-bit loads."""

    @INLINE
    def slab_index(tid, i):
        # (row, k) within the slab of this thread's i-th element. VECTOR: elements 4g..4g+3 are 4
        # neighbours along x's contiguous dimension (k when KR is False, r when True); the scalar
        # kernels keep consecutive threads on consecutive elements (coalesced scalar loads)
        if VECTOR:
            l = IDX(4) * (tid + IDX((i // 4) * NTHREADS)) + IDX(i % 4)
        else:
            l = tid + IDX(i * NTHREADS)
        if KR:
            return l % IDX(GEMM_TILE), l // IDX(GEMM_TILE)
        return l // IDX(GEMM_BK), l % IDX(GEMM_BK)

    @INLINE
    def load(regs, x, r0, k0, k_end):
        # regs[i] = X[r0 + rr, k0 + kk] for this thread's i-th slab element, zero outside X;
        # a slab wholly inside X skips the bounds checks
        tid = IDX(cuda.threadIdx.y * TX + cuda.threadIdx.x)
        R = IDX(x.shape[1] if KR else x.shape[0])
        r0 = IDX(r0)
        k0 = IDX(k0)
        k_end = IDX(k_end)
        full = r0 + IDX(GEMM_TILE) <= R and k0 + IDX(GEMM_BK) <= k_end
        if VECTOR and full:  # the launcher checked that x's rows are 16-byte aligned
            for g in range(GEMM_LOADS // 4):
                rr, kk = slab_index(tid, 4 * g)
                if KR:
                    fetch4(regs, g, x, k0 + kk, r0 + rr)
                else:
                    fetch4(regs, g, x, r0 + rr, k0 + kk)
            return
        for i in range(GEMM_LOADS):
            rr, kk = slab_index(tid, i)
            r = r0 + rr
            k = k0 + kk
            if full:
                regs[i] = x[k, r] if KR else x[r, k]
            else:
                v = ZERO
                if r < R and k < k_end:
                    v = x[k, r] if KR else x[r, k]
                regs[i] = v

    @INLINE
    def store(tile, regs):
        # tile (GEMM_BK, GEMM_TILE_P) in shared memory <- the registers of load
        tid = IDX(cuda.threadIdx.y * TX + cuda.threadIdx.x)
        for i in range(GEMM_LOADS):
            rr, kk = slab_index(tid, i)
            tile[kk, rr] = regs[i]
    return load, store


def _fetch4(regs, g, tile, kk, c):
    # regs[4g:4g+4] = tile[kk, c:c+4], one 128-bit load (shared memory, or a global array in v7s)
    x0, x1, x2, x3 = load4(tile, kk, c)
    regs[4 * g] = x0
    regs[4 * g + 1] = x1
    regs[4 * g + 2] = x2
    regs[4 * g + 3] = x3


# (the simulator runs a device function's every call through its own machinery, ~10x the cost of
# this Python function: attention calls it for every 4 floats it reads)
fetch4 = _fetch4 if SIMULATOR else INLINE(_fetch4)


@INLINE
def outer_product(acc, av, bv):
    # acc (GEMM_TM, GEMM_TM) += av (GEMM_TM) outer bv (GEMM_TM)
    for i in range(GEMM_TM):
        for j in range(GEMM_TM):
            acc[i, j] += av[i] * bv[j]


@INLINE
def outer4(acc, av, bv, As, Bs, kk, ty4, tx4):
    # v6s: acc += this thread's rows of slab A times its columns of slab B at k = kk, each group of 4
    # in one load4 (inline and called four times in a row: numba leaves a loop this long rolled)
    for g in range(GEMM_TM // 4):
        fetch4(av, g, As, kk, ty4 + U32(g * GEMM_GROUP))
    for g in range(GEMM_TM // 4):
        fetch4(bv, g, Bs, kk, tx4 + U32(g * GEMM_GROUP))
    outer_product(acc, av, bv)


def _make_gemm(A_KR, B_KR, ACCUM, VECTOR=False):
    """The kernel for one layout: out (S,M,N) = the partial sums of K slice z = blockIdx.z when
    `split`, else out[0] (+= when ACCUM) the whole sum (+ bias[n] when has_bias).
    Block TILE_BLOCK, grid (cdiv(N, GEMM_TILE), cdiv(M, GEMM_TILE), S). VECTOR: v7s's kernel for
    operands whose rows are 16-byte aligned."""
    load_a, store_a = _slab_functions(A_KR, VECTOR)
    load_b, store_b = _slab_functions(B_KR, VECTOR)

    def gemm(out, a, b, bias, has_bias, k_chunk, split):
        As = cuda.shared.array((GEMM_BK, GEMM_TILE_P), float32, alignment=SHARED_ALIGN)
        Bs = cuda.shared.array((GEMM_BK, GEMM_TILE_P), float32, alignment=SHARED_ALIGN)
        ra = cuda.local.array(GEMM_LOADS, float32)
        rb = cuda.local.array(GEMM_LOADS, float32)
        acc = cuda.local.array((GEMM_TM, GEMM_TM), float32)
        av = cuda.local.array(GEMM_TM, float32)
        bv = cuda.local.array(GEMM_TM, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        txu = U32(tx)
        tyu = U32(ty)
        tx4 = U32(4) * txu   # v6s: the first of this thread's columns (rows) in each group
        ty4 = U32(4) * tyu
        m0 = cuda.blockIdx.y * GEMM_TILE
        n0 = cuda.blockIdx.x * GEMM_TILE
        M = a.shape[1] if A_KR else a.shape[0]
        N = b.shape[1] if B_KR else b.shape[0]
        K = a.shape[0] if A_KR else a.shape[1]
        k_start = cuda.blockIdx.z * k_chunk
        k_end = k_start + k_chunk
        if k_end > K:
            k_end = K
        for i in range(GEMM_TM):
            for j in range(GEMM_TM):
                acc[i, j] = ZERO
        load_a(ra, a, m0, k_start, k_end)
        load_b(rb, b, n0, k_start, k_end)
        for k0 in range(k_start, k_end, GEMM_BK):
            store_a(As, ra)
            store_b(Bs, rb)
            cuda.syncthreads()
            if k0 + GEMM_BK < k_end:  # the next slab's loads fly while this one is multiplied
                load_a(ra, a, m0, k0 + GEMM_BK, k_end)
                load_b(rb, b, n0, k0 + GEMM_BK, k_end)
            # the slab's outer products, four k at a time with unsigned indices (no negative-index
            # wraparound): on sm_90 v5s's loop is then 64 multiply-adds in 110 instructions, not 16
            # in 39, and v6s's 256 in 287 (dev/cuda_gemm.py)
            for kq in range(U32(GEMM_BK // 4)):
                if GEMM_VEC4:
                    kk = kq * U32(4)
                    outer4(acc, av, bv, As, Bs, kk, ty4, tx4)
                    outer4(acc, av, bv, As, Bs, kk + U32(1), ty4, tx4)
                    outer4(acc, av, bv, As, Bs, kk + U32(2), ty4, tx4)
                    outer4(acc, av, bv, As, Bs, kk + U32(3), ty4, tx4)
                else:
                    for u in range(4):
                        kk = kq * U32(4) + U32(u)
                        for i in range(GEMM_TM):
                            av[i] = As[kk, tyu + U32(i * TY)]
                        for j in range(GEMM_TM):
                            bv[j] = Bs[kk, txu + U32(j * TX)]
                        outer_product(acc, av, bv)
            cuda.syncthreads()
        for j in range(GEMM_TM):  # this thread's columns' bias, first (a short loop keeps acc in registers)
            n = n0 + tile_row(tx, j, TX)
            bv[j] = bias[n] if has_bias and not split and n < N else ZERO
        for i in range(GEMM_TM):
            m = m0 + tile_row(ty, i, TY)
            for j in range(GEMM_TM):
                n = n0 + tile_row(tx, j, TX)
                if m < M and n < N:
                    if split:
                        out[cuda.blockIdx.z, m, n] = acc[i, j]
                    elif ACCUM:
                        out[0, m, n] += acc[i, j]
                    else:
                        out[0, m, n] = acc[i, j] + bv[j]
    # not cache=True: the kernels are closures of one function, which numba's on-disk cache cannot
    # tell apart
    return cuda.jit(gemm)


# out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias
matmul_forward_kernel = _make_gemm(A_KR=False, B_KR=False, ACCUM=False)
# dinp (N,C) += dout (N,OC) @ weight (OC,C)
matmul_backward_dinp_kernel = _make_gemm(A_KR=False, B_KR=True, ACCUM=True)
# dweight (OC,C) += dout (N,OC)^T @ inp (N,C)
matmul_backward_dweight_kernel = _make_gemm(A_KR=True, B_KR=True, ACCUM=True)
# v7s: the same three with 128-bit global loads, for operands whose rows are 16-byte aligned
matmul_forward_vload_kernel = _make_gemm(False, False, False, VECTOR=True) if GEMM_VLOAD else None
matmul_backward_dinp_vload_kernel = _make_gemm(False, True, True, VECTOR=True) if GEMM_VLOAD else None
matmul_backward_dweight_vload_kernel = _make_gemm(True, True, True, VECTOR=True) if GEMM_VLOAD else None
# each layout's (kernel, its 128-bit-load twin or None), as Matmuls launches them
GEMMS = {"forward": (matmul_forward_kernel, matmul_forward_vload_kernel),
         "dinp": (matmul_backward_dinp_kernel, matmul_backward_dinp_vload_kernel),
         "dweight": (matmul_backward_dweight_kernel, matmul_backward_dweight_vload_kernel)}


@cuda.jit(cache=True)
def matmul_reduce_splits_kernel(out, parts, bias, has_bias, accumulate):
    # out (M,N) (+)= the sum over s of parts (S,M,N), in order of s (+ bias[n]); grid-stride.
    # The split-K partial sums of the gemm kernels added without atomics: the same bits every run.
    # out and bias float32, or bf16 bits (uint16: the sum rounded once, to nearest even)
    S, M, N = parts.shape
    for idx in range(cuda.grid(1), M * N, cuda.gridsize(1)):
        m = idx // N
        n = idx % N
        s = ZERO
        for z in range(S):
            s += parts[z, m, n]
        if accumulate:
            out[m, n] = narrow(out, widen(out[m, n]) + s)
        else:
            out[m, n] = narrow(out, s + (widen(bias[n]) if has_bias else ZERO))


@cuda.jit(cache=True)
def matmul_backward_bias_kernel(dbias, dout):
    # dbias (OC) += sum over rows of dout (N,OC); block (COL_WIDTH, COL_ROWS), grid cdiv(OC, COL_WIDTH).
    # Each column is summed by the COL_ROWS threads of its lane, then those partial sums in order:
    # no atomics, the same result on every run. float32, or bf16 bits summed in fp32.
    partial = cuda.shared.array((COL_ROWS, COL_WIDTH), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    N, OC = dout.shape
    o = cuda.blockIdx.x * COL_WIDTH + tx
    s = ZERO
    if o < OC:
        for n in range(ty, N, COL_ROWS):
            s += widen(dout[n, o])
    partial[ty, tx] = s
    cuda.syncthreads()
    if ty == 0 and o < OC:
        total = ZERO
        for r in range(COL_ROWS):
            total += partial[r, tx]
        dbias[o] = narrow(dbias, widen(dbias[o]) + total)


# ----------------------------------------------------------------------------------------------
# launchers (host side): the shapes of llmnb.matmul, natural-shape views of device buffers

class Matmuls:
    """matmul_forward and matmul_backward with their split-K scratch buffer (one per backend: it
    grows to the largest split seen, and is not allocated again after the first step).

    A grid of fewer than two blocks per SM leaves the card idle (dweight of a C x C weight, or
    anything at B*T = 256): then K is cut into S slices, each block sums one slice into the
    scratch, and a second kernel adds the S partial sums in order."""

    def __init__(self):
        # the simulators have no SM count (and Numba's built-in one no get_current_device)
        self.sms = 4 if SIMULATOR else cuda.get_current_device().MULTIPROCESSOR_COUNT
        self.scratch = None

    def _gemm(self, layout, out, a, b, bias, accumulate, M, N, K):
        # out (M,N) (+)= A @ B^T for a GEMMS layout ("forward", "dinp", "dweight")
        kernel, vload_kernel = GEMMS[layout]
        if vload_kernel is not None and aligned_rows(a) and aligned_rows(b):
            kernel = vload_kernel
        gx, gy = cdiv(N, GEMM_TILE), cdiv(M, GEMM_TILE)
        S = max(1, min(cdiv(2 * self.sms, gx * gy), K // (8 * GEMM_BK)))  # slices of >= 8 slabs
        chunk = cdiv(cdiv(K, S), GEMM_BK) * GEMM_BK
        S = cdiv(K, chunk)
        has_bias = bias is not None
        bias_arg = bias if has_bias else out[0]
        if S == 1:
            kernel[(gx, gy, 1), TILE_BLOCK](out.reshape(1, M, N), a, b, bias_arg, has_bias, chunk, False)
            return
        if self.scratch is None or self.scratch.shape[0] < S * M * N:
            self.scratch = cached_views(cuda.device_array(S * M * N, np.float32))
        parts = self.scratch[:S * M * N].reshape(S, M, N)
        kernel[(gx, gy, S), TILE_BLOCK](parts, a, b, bias_arg, False, chunk, True)
        matmul_reduce_splits_kernel[elementwise_grid(M * N), ELEM_THREADS](out, parts, bias_arg, has_bias,
                                                                           accumulate)

    def matmul_forward(self, out, inp, weight, bias):
        """out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC), bias may be None."""
        OC, C = weight.shape
        where = "matmul.py"
        check(last_dim(inp) == C, where, f"matmul_forward: inp {inp.shape} does not end in C of weight {weight.shape}")
        out2 = out.reshape(-1, OC)
        inp2 = inp.reshape(-1, C)
        N = inp2.shape[0]
        check(out2.shape[0] == N, where, f"matmul_forward: out {out.shape} and inp {inp.shape} disagree on B*T")
        check(bias is None or bias.shape == (OC,), where, f"matmul_forward: bias is not ({OC},)")
        self._gemm("forward", out2, inp2, weight, bias, False, N, OC, C)

    def matmul_backward(self, dinp, dweight, dbias, dout, inp, weight):
        """dinp (B,T,C), dweight (OC,C), dbias (OC) or None += the gradients of matmul_forward,
        given dout (B,T,OC), inp (B,T,C), weight (OC,C)."""
        OC, C = weight.shape
        where = "matmul.py"
        check(dweight.shape == (OC, C), where, f"matmul_backward: dweight {dweight.shape} is not weight's {weight.shape}")
        dout2 = dout.reshape(-1, OC)
        inp2 = inp.reshape(-1, C)
        dinp2 = dinp.reshape(-1, C)
        N = dout2.shape[0]
        check(inp2.shape[0] == N and dinp2.shape[0] == N, where,
              f"matmul_backward: dout {dout.shape}, inp {inp.shape}, dinp {dinp.shape} disagree on B*T")
        self._gemm("dinp", dinp2, dout2, weight, None, True, N, C, OC)
        self._gemm("dweight", dweight, dout2, inp2, None, True, OC, C, N)
        if dbias is not None:
            check(dbias.shape == (OC,), where, f"matmul_backward: dbias {dbias.shape} is not ({OC},)")
            matmul_backward_bias_kernel[cdiv(OC, COL_WIDTH), (COL_WIDTH, COL_ROWS)](dbias, dout2)


def matmul_forward(out, inp, weight, bias):
    """Matmuls().matmul_forward with a scratch of its own (the backend keeps one Matmuls instead)."""
    Matmuls().matmul_forward(out, inp, weight, bias)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight):
    """Matmuls().matmul_backward with a scratch of its own (the backend keeps one Matmuls instead)."""
    Matmuls().matmul_backward(dinp, dweight, dbias, dout, inp, weight)


__all__ = ["Matmuls", "matmul_forward", "matmul_backward"]
