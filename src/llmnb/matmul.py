"""The matmuls of training: forward (out = inp @ W^T + b) and backward (dinp, dweight, dbias).

They carry ~99% of the FLOPs of a GPT-2 step. All three are one packed GEMM, as BLIS and
OpenBLAS do it:
    out (M,P) (+)= A (M,K) . B (K,P)
    forward   out  (N,OC) = inp (N,C)     . weight^T (C,OC)  + bias   A = inp,     B = weight^T
    dinp      dinp (N,C) += dout (N,OC)   . weight (OC,C)            A = dout,    B = weight
    dweight   dW  (OC,C) += dout^T (OC,N) . inp (N,C)                A = dout^T,  B = inp
    dbias     dbias (OC) += column sums of dout (N,OC)
A and B are first copied ("packed") into scratch in the order the micro-kernel reads them: panels
of MR = 6 rows of A and NR = 16 columns of B, each laid out k by k. The micro-kernel, kernel_6x16,
keeps a 6x16 tile of out in 12 vector registers of 8 floats; each step of k loads 16 floats of B
(two vectors), broadcasts 6 floats of A and does 12 fused multiply-adds, so it reads 22 floats
from L1 per 96 FMAs (the dot-product micro-kernels before it, in dev/dot_tiles.py, read 6 per 8).
Where the cores run 512-bit FMAs at full rate (Intel's AVX-512), the same kernel on vectors of 16
floats, kernel_8x32 (MR = 8, NR = 32: 16 of the 32 zmm registers), does twice the FLOPs per
instruction (_vector_lanes picks).
LLVM does not find
this form in Python loops (it needs vectors that live across the k loop), so the micro-kernel is written
as LLVM vector IR through Numba's @intrinsic, as are the two 8-float moves that packing is made of
(transpose_8x8, copy_8): the places in this file below Numba's Python. Transposed operands (weight^T,
dout^T) cost nothing extra: packing reads them either way.

Speed (2-core Zen 3, AVX2, 183 GFLOP/s peak; dev/matmul_*.py measure it): see benchmarks/RESULTS.md.

Generation's step, one token of each of N sequences, runs the GEMVs at the end of the file
instead (matvec: the weight streamed once per step, as float32, bfloat16 bits or int8 with a scale
per row, Int8Weight).

Each output element is summed by one task in a fixed order (k chunk by k chunk), so results do
not depend on the number of threads: the parallel kernels are bitwise equal to their serial
copies.
"""
import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

F32 = np.float32


NO_BIAS = np.zeros(0, dtype=F32)


# ------------------------------------------------------------------------------------------------
# the packed GEMM



def _vector_lanes():
    """Floats per vector register of the micro-kernel on this host: 16 where the cores run 512-bit
    FMAs at full rate (Intel's AVX-512 cores, Zen 5: twice the FLOPs per instruction of AVX2),
    else 8. Zen 4 has AVX-512 on 256-bit units: it keeps the 8-float kernel it was tuned on.
    Numba's own CPU settings (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES) take precedence over the host's,
    as they do for the code it generates."""
    import llvmlite.binding as ll
    from numba.core import config
    name = config.CPU_NAME or ll.get_host_cpu_name()
    features = (config.CPU_FEATURES or "") if config.CPU_NAME else ll.get_host_cpu_features().flatten()
    return 16 if "+avx512f" in features.split(",") and name != "znver4" else 8


LANES = _vector_lanes()  # fixed per host (the compiled and cached code is per host CPU, too)
MR, NR = (8, 32) if LANES == 16 else (6, 16)   # the micro-kernel's tile of out (12 or 16 vectors)
KC = 4096 // NR          # k per micro-kernel call: its panel of B (KC x NR floats, 16 KB) stays in L1
# a parallel task's tile of out: MC x NC (MC x KC floats of packed A stay in L2: 120 KB for 6x16;
# 128 KB for 8x32, whose KC is half as long: there MC = 256 ran the 124M step 3-4% faster than 120
# at B*T = 256 and 1024, steps interleaved in one process on the AVX-512 Xeon, 2026-12-07)
MC, NC = (256 if LANES == 16 else 120), 128
KCH = 1024         # k per packed chunk: at B*T = 1024 the forward's and dinp's chunks of A and B
                   # (4 MB each) stay in L3
PCH = 1024         # columns of B per packed chunk
PACK_FLOATS = 8 << 20  # floats of packed A per chunk (32 MB): rows of A per chunk = this // k


def _element_ptr(context, builder, arrtype, arr, r, c):
    # a float* to arr[r, c] of a 2-D float32 array whose rows are contiguous (r, c: int64 values)
    A = context.make_array(arrtype)(context, builder, arr)
    row_stride = builder.sdiv(builder.extract_value(A.strides, 0), ir.Constant(ir.IntType(64), 4))
    return builder.gep(A.data, [builder.add(builder.mul(r, row_stride), c)]), row_stride


def _micro_kernel(mr, lanes):
    """The micro-kernel for tiles of mr rows and vectors of `lanes` floats: kernel_6x16 (AVX2's 16
    vector registers: 12 accumulators) or kernel_8x32 (AVX-512's 32: 16 accumulators of 16 floats).
    Same code, the shape a parameter; see kernel_6x16 for what it does."""
    nr = 2 * lanes

    def micro_kernel(typingctx, a, a_off, a_ms, a_ks, b, b_off, b_ks, kc, out, r0, c0, add):
        sig = types.void(a, a_off, a_ms, a_ks, b, b_off, b_ks, kc, out, r0, c0, add)

        def codegen(context, builder, signature, args):
            av_, aoff, ams, aks, bv_, boff, bks, kcv, outv, r0v, c0v, addv = args
            A = context.make_array(signature.args[0])(context, builder, av_)
            Bm = context.make_array(signature.args[4])(context, builder, bv_)
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(f32, lanes)
            vecp = vec.as_pointer()
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                                 f"llvm.fma.v{lanes}f32")
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)   # lane 0 to all lanes

            def n(x):
                return ir.Constant(i64, x)

            row0, row_stride = _element_ptr(context, builder, signature.args[8], outv, r0v, c0v)
            rows = [builder.gep(row0, [builder.mul(row_stride, n(i))]) for i in range(mr)]
            # the tile of out is fetched into cache while the k loop runs (its 6 rows are a row of
            # out apart: no prefetcher guesses them; at K = 256 the stalls on them cost ~25%)
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [rows[0].type, i32, i32, i32]), "llvm.prefetch.p0")
            for row in rows:
                for j in range(0, nr + 15, 16):   # every cache line of the row's nr floats
                    builder.call(prefetch, [builder.gep(row, [n(min(j, nr - 1))]), ir.Constant(i32, 1),
                                            ir.Constant(i32, 3), ir.Constant(i32, 1)])
            acc = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * lanes)) for _ in range(2 * mr)]
            abase = builder.gep(A.data, [aoff])
            bbase = builder.gep(Bm.data, [boff])
            arow = [builder.mul(ams, n(i)) for i in range(mr)]
            with cgutils.for_range(builder, kcv) as loop:
                bk = builder.gep(bbase, [builder.mul(loop.index, bks)])
                b0 = builder.load(builder.bitcast(bk, vecp), align=4)
                b1 = builder.load(builder.bitcast(builder.gep(bk, [n(lanes)]), vecp), align=4)
                ak = builder.gep(abase, [builder.mul(loop.index, aks)])
                for i in range(mr):
                    ai = builder.load(builder.gep(ak, [arow[i]]))
                    avec = builder.shuffle_vector(builder.insert_element(undef, ai, ir.Constant(i32, 0)), undef, splat)
                    for j, bvec in enumerate((b0, b1)):
                        builder.store(builder.call(fma, [avec, bvec, builder.load(acc[2 * i + j])]), acc[2 * i + j])
            add_bit = context.cast(builder, addv, signature.args[11], types.boolean)   # an i1
            for i, row in enumerate(rows):
                for j in range(2):
                    ptr = builder.bitcast(builder.gep(row, [n(lanes * j)]), vecp)
                    total = builder.load(acc[2 * i + j])
                    with builder.if_else(add_bit) as (then, otherwise):
                        with then:
                            builder.store(builder.fadd(builder.load(ptr, align=4), total), ptr, align=4)
                        with otherwise:
                            builder.store(total, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    micro_kernel.__name__ = f"kernel_{mr}x{nr}"
    return intrinsic(micro_kernel)


# kernel_6x16(a, a_off, a_ms, a_ks, b, b_off, b_ks, kc, out, r0, c0, add):
#   out[r0:r0+6, c0:c0+16] (+)= A (6,kc) . B (kc,16), A[i, k] = a[a_off + i*a_ms + k*a_ks],
#   B[k, :] = b[b_off + k*b_ks:][:16] (a, b flat float32 arrays; packed panels have a_ms = 1,
#   a_ks = MR, b_ks = NR; attention reads its tiles in place with other strides). add False:
#   out = A . B (out is not read). out: 2-D, rows contiguous. No bounds checks: the callers
#   pass full tiles. The accumulators start as allocas, which LLVM keeps in registers:
#   12 <8 x float>, plus 2 for B's 16 floats and 1 for A's broadcast.
kernel_6x16 = _micro_kernel(6, 8)
# kernel_8x32: the same on 16 <16 x float> accumulators (zmm registers), 8 x 32 outputs: twice the
# FLOPs per instruction where the cores run 512-bit FMAs at full rate (8 rows, not 6: on an Intel
# AVX-512 core 8x32 ran its L1-resident panels at ~97% of the zmm peak, 6x32 at ~82%, 12x32 ~93%)
kernel_8x32 = _micro_kernel(8, 16)
micro_kernel = kernel_8x32 if LANES == 16 else kernel_6x16   # the one this host's GEMM runs


@intrinsic
def transpose_8x8(typingctx, x, r0, c0, dst, d_off, d_stride):
    # dst[d_off + j*d_stride + i] = x[r0 + i, c0 + j] for i, j < 8: an 8x8 block of x (2-D, rows
    # contiguous) transposed into dst (flat); columns j in order, 8 floats each (with d_stride < 8
    # the last one writes 8 - d_stride floats past d_off + 8*d_stride). Eight vector loads, three
    # rounds of shuffles (pairs of rows interleaved, pairs of pairs, halves swapped), eight vector
    # stores: the vunpcklps/vshufps/vperm2f128 that a scalar loop does not turn into. No bounds
    # checks.
    sig = types.void(x, r0, c0, dst, d_off, d_stride)

    def codegen(context, builder, signature, args):
        xv, r0v, c0v, dv, doff, dstride = args
        D = context.make_array(signature.args[3])(context, builder, dv)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        v8p = ir.VectorType(ir.FloatType(), 8).as_pointer()
        src, row_stride = _element_ptr(context, builder, signature.args[0], xv, r0v, c0v)
        dst = builder.gep(D.data, [doff])

        def shuffle(u, v, lanes):   # lanes 0-7 pick from u, 8-15 from v
            return builder.shuffle_vector(u, v, ir.Constant(ir.VectorType(i32, 8), lanes))

        r = [builder.load(builder.bitcast(builder.gep(src, [builder.mul(row_stride, ir.Constant(i64, i))]), v8p),
                          align=4) for i in range(8)]
        # t: rows 2i, 2i+1 interleaved (columns 0,1,4,5 | 2,3,6,7); s: four rows (columns j, j+4)
        t = []
        for i in range(0, 8, 2):
            t += [shuffle(r[i], r[i + 1], [0, 8, 1, 9, 4, 12, 5, 13]),
                  shuffle(r[i], r[i + 1], [2, 10, 3, 11, 6, 14, 7, 15])]
        even, odd = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        s = [shuffle(t[0], t[2], even), shuffle(t[0], t[2], odd), shuffle(t[1], t[3], even),
             shuffle(t[1], t[3], odd), shuffle(t[4], t[6], even), shuffle(t[4], t[6], odd),
             shuffle(t[5], t[7], even), shuffle(t[5], t[7], odd)]
        # column j: the low (j < 4) or high half of s[j % 4] (rows 0-3) and s[j % 4 + 4] (rows 4-7);
        # stored in order of j, so that with d_stride < 8 each column overwrites the previous one's spill
        for j in range(8):
            lanes = [0, 1, 2, 3, 8, 9, 10, 11] if j < 4 else [4, 5, 6, 7, 12, 13, 14, 15]
            ptr = builder.gep(dst, [builder.mul(dstride, ir.Constant(i64, j))])
            builder.store(shuffle(s[j % 4], s[j % 4 + 4], lanes), builder.bitcast(ptr, v8p), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_8(typingctx, x, r, c, dst, d_off):
    # dst[d_off:d_off + 8] = x[r, c:c + 8] (x 2-D, rows contiguous; dst flat): one vector load
    # and store, where a loop of 8 stays scalar (LLVM cannot rule out that dst and x overlap).
    # No bounds checks.
    sig = types.void(x, r, c, dst, d_off)

    def codegen(context, builder, signature, args):
        xv, rv, cv, dv, doff = args
        D = context.make_array(signature.args[3])(context, builder, dv)
        v8p = ir.VectorType(ir.FloatType(), 8).as_pointer()
        src, _ = _element_ptr(context, builder, signature.args[0], xv, rv, cv)
        value = builder.load(builder.bitcast(src, v8p), align=4)
        builder.store(value, builder.bitcast(builder.gep(D.data, [doff]), v8p), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def pack(dst, ps, x, w, gather, m0, m1, k0, k1):
    # panels of w (MR or NR) lines of an operand, k-major, for the micro-kernel:
    #   dst[p*ps + (k - k0)*w + i] = line m0 + p*w + i of the operand at k, for k0 <= k < k1,
    # where line m at k is x[m, k] (gather: each panel gathers w rows of x, e.g. the weight's rows
    # for B = weight^T) or x[k, m] (each k copies w consecutive floats of row k of x). Lines past
    # m1 in the last panel are zeros. ps: the panel stride (>= (k1 - k0)*w; larger when a task
    # packs a block of k of longer panels). Whole panels go 8 floats at a time: gathered ones 8 k
    # at a time through transpose_8x8, copied ones k by k through copy_8; w = 16 or 32 in halves or quarters,
    # w = 6 as 8 lines whose last 2 spill into the next k's place, written after it (so the
    # panel's last k, and the gathered block that ends there, go the scalar way).
    nlines = x.shape[0] if gather else x.shape[1]
    for p in range((m1 - m0 + w - 1) // w):
        r0 = m0 + p * w
        h = min(w, m1 - r0)
        o = p * ps
        k = k0
        if h == w and r0 + max(w, 8) <= nlines:
            step = 8 if gather else 1
            while k + step < k1 or (w % 8 == 0 and k + step == k1):
                for i in range(0, w, 8):
                    if gather:
                        transpose_8x8(x, r0 + i, k, dst, o + (k - k0) * w + i, w)
                    else:
                        copy_8(x, k, r0 + i, dst, o + (k - k0) * w + i)
                k += step
        for k in range(k, k1):
            d = o + (k - k0) * w
            for i in range(h):
                dst[d + i] = x[r0 + i, k] if gather else x[k, r0 + i]
            for i in range(h, w):
                dst[d + i] = F32(0.0)


PACK_PANELS = 8                 # a gathering task: 8 panels
PACK_ROWS, PACK_LINES = 8, 1024  # a copying task: 8 rows of x, up to 1024 lines (4 KB of each row)


@njit(parallel=True, cache=True)
def pack_chunk(dst, x, w, gather, m0, m1, k0, k1):
    # pack (above) of lines m0..m1 and k0..k1 in parallel, panels (k1 - k0)*w long. Gathering
    # tasks take 8 panels each, over all k; copying tasks take 8 rows of x (8 k) and up to
    # 1024 lines of them: a task that walked one panel down all k would touch a new page of x at
    # each k (packing the weight for dinp that way ran at 0.3 G floats/s instead of ~2), and one
    # that wrote 8 k into all of dout^T's 8,000 panels (dweight) a new page at each panel.
    kl = k1 - k0
    if gather:
        for g in prange((m1 - m0 + PACK_PANELS * w - 1) // (PACK_PANELS * w)):
            g0 = m0 + g * PACK_PANELS * w
            pack(dst[g * PACK_PANELS * w * kl:], kl * w, x, w, True, g0, min(g0 + PACK_PANELS * w, m1), k0, k1)
    else:
        lines = PACK_LINES // w * w
        nk = (kl + PACK_ROWS - 1) // PACK_ROWS
        for g in prange((m1 - m0 + lines - 1) // lines * nk):
            l0 = m0 + g // nk * lines
            kb = k0 + g % nk * PACK_ROWS
            pack(dst[(l0 - m0) * kl + (kb - k0) * w:], kl * w, x, w, False, l0, min(l0 + lines, m1),
                 kb, min(kb + PACK_ROWS, k1))


# what tile_product may skip, for attention's tiles on the diagonal (queries t0.., keys t0..: a
# query row i sees keys j <= i only, the rest of its scores and of their gradients are 0)
DENSE = 0        # nothing: every micro-tile, all of K
UPPER_ZERO = 1   # out's micro-tiles right of the diagonal (rows queries, columns keys) are not
                 # computed: the caller overwrites them (s = q k^T, dout v^T)
K_UPTO_ROW = 2   # k runs over keys of A's rows of queries: rows i0..i0+5 stop at k = i0+6 (p v, dS k)
K_FROM_ROW = 3   # k runs over queries of A's rows of keys: rows i0..i0+5 start at k = i0 (dS^T q, att^T dout)


@njit(cache=True)
def tile_product(out, a, a_off, a_ps, a_ms, a_ks, b, b_off, b_ps, b_ks, M, P, K, add, edge, causal=DENSE):
    # out[:M, :P] (+)= A (M,K) . B (K,P) through micro_kernel on one thread, A and B given as
    # the micro-kernel reads them (a_ms, a_ks, b_ks) plus the step from one panel to the next: MR
    # rows of A (a_ps) and NR columns of B (b_ps). Micro-tiles that stick out of out[:M, :P] go
    # through edge (MR,NR) (their extra rows and columns of A and B must be readable). causal:
    # what of a diagonal tile of attention is zero and skipped (DENSE: nothing).
    for j0 in range(0, P, NR):
        boff = b_off + j0 // NR * b_ps
        for i0 in range(0, M, MR):
            aoff = a_off + i0 // MR * a_ps
            if causal == UPPER_ZERO and j0 >= i0 + MR:
                continue
            k0 = i0 if causal == K_FROM_ROW else 0
            k1 = min(K, i0 + MR) if causal == K_UPTO_ROW else K
            ak, bk = aoff + k0 * a_ks, boff + k0 * b_ks
            if i0 + MR <= M and j0 + NR <= P:
                micro_kernel(a, ak, a_ms, a_ks, b, bk, b_ks, k1 - k0, out, i0, j0, add)
            else:
                micro_kernel(a, ak, a_ms, a_ks, b, bk, b_ks, k1 - k0, edge, 0, 0, False)
                for i in range(min(MR, M - i0)):
                    for j in range(min(NR, P - j0)):
                        if add:
                            out[i0 + i, j0 + j] += edge[i, j]
                        else:
                            out[i0 + i, j0 + j] = edge[i, j]


@njit(cache=True)
def _gemm_task(out, ap, bp, kl, ic, jc, tm0, tm1, tn0, tn1, first, edge):
    # gemm's task: out[tm0:tm1, tn0:tn1] (+)= its rows of packed A (rows from ic) . its columns of
    # packed B (columns from jc), both kl long: KC at a time (a panel of B, in L1, against every
    # panel of A of the tile, in L2). first: out's tile is overwritten by the first KC.
    for pc in range(0, kl, KC):
        kc = min(KC, kl - pc)
        add = pc > 0 or not first
        tile_product(out[tm0:tm1, tn0:tn1], ap, (tm0 - ic) // MR * kl * MR + pc * MR, kl * MR, 1, MR,
                     bp, (tn0 - jc) // NR * kl * NR + pc * NR, kl * NR, NR, tm1 - tm0, tn1 - tn0, kc, add, edge)


@njit(parallel=True, cache=True)
def gemm(out, a, a_trans, b, b_trans, bias, has_bias, accumulate, ap, bp, kch, mch, pch, mc):
    # out (M,P) (+)= A (M,K) . B (K,P) (+ bias (P) when not accumulating); A = a or a^T, B = b or
    # b^T. In chunks of kch along k, mch rows and pch columns: each chunk of A and of B is packed
    # once (pack_chunk, in parallel) into ap and bp, then tasks of mc x NC of out run the
    # micro-kernels over the whole chunk, so that a task's tile of out stays in cache.
    M, P = out.shape
    K = a.shape[0] if a_trans else a.shape[1]
    for k0 in range(0, K, kch):
        k1 = min(k0 + kch, K)
        kl = k1 - k0
        first = k0 == 0 and not accumulate
        for ic in range(0, M, mch):
            m1 = min(ic + mch, M)
            pack_chunk(ap, a, MR, not a_trans, ic, m1, k0, k1)     # A's rows are a's rows, or a's columns
            for jc in range(0, P, pch):
                p1 = min(jc + pch, P)
                pack_chunk(bp, b, NR, b_trans, jc, p1, k0, k1)     # B's columns are b's rows, or its columns
                ntn = (p1 - jc + NC - 1) // NC
                for task in prange((m1 - ic + mc - 1) // mc * ntn):
                    tm0 = ic + task // ntn * mc
                    tn0 = jc + task % ntn * NC
                    tm1, tn1 = min(tm0 + mc, m1), min(tn0 + NC, p1)
                    _gemm_task(out, ap, bp, kl, ic, jc, tm0, tm1, tn0, tn1, first, np.empty((MR, NR), F32))
                    if first and has_bias:
                        for r in range(tm0, tm1):
                            for c in range(tn0, tn1):
                                out[r, c] += bias[c]


@njit(parallel=True, fastmath=True, cache=True)
def bias_backward(dbias, dout):
    # dbias (OC) += the sums over n of dout (N,OC): 16 columns per task, n in order
    N, OC = dout.shape
    for t in prange((OC + 15) // 16):
        c0, c1 = t * 16, min(t * 16 + 16, OC)
        for n in range(N):
            for c in range(c0, c1):
                dbias[c] += dout[n, c]


def _gemm(out, a, a_trans, b, b_trans, bias, accumulate, scratch):
    """gemm with its chunk sizes and its packing scratch (checked arrays only)."""
    M, P = out.shape
    K = a.shape[0] if a_trans else a.shape[1]
    if M == 0 or P == 0 or K == 0:   # an empty batch: no rows of out, or dweight's sum over no rows
        if not accumulate and M and P:
            out[...] = 0 if bias is None else bias
        return
    kch = min(K, KCH)
    mch = max(MC, min(M, PACK_FLOATS // kch // MC * MC))
    pch = min(P, PCH)
    rows = min(M, mch)
    # row tasks of <= MC rows, near one size (6x16, M = 256: 90 90 76, not 120 120 16); more and
    # smaller (down to 4 micro-tiles high) where there would be fewer than two tasks a thread
    ntn = (pch + NC - 1) // NC
    ntasks = max((rows + MC - 1) // MC,
                 min((rows + 4 * MR - 1) // (4 * MR), (2 * get_num_threads() + ntn - 1) // ntn))
    mc = ((rows + ntasks - 1) // ntasks + MR - 1) // MR * MR
    ap = scratch.get("packed_a", ((min(M, mch) + MR) * kch,))   # whole panels: up to MR - 1 rows of zeros
    bp = scratch.get("packed_b", ((pch + NR) * kch,))
    has_bias = bias is not None
    gemm(out, a, a_trans, b, b_trans, bias if has_bias else NO_BIAS, has_bias, accumulate, ap, bp,
         kch, mch, pch, mc)


class MatmulScratch:
    """Flat float32 scratch buffers for the packed operands, by name; each one grows to the
    largest size asked for and is then reused, so steady-state calls allocate nothing.
    Not thread-safe: give each Python thread that runs matmuls its own MatmulScratch."""

    def __init__(self):
        self._buffers = {}

    def get(self, name, shape):
        """A C-contiguous float32 view of the shape, on the buffer of that name (contents undefined)."""
        n = 1
        for d in shape:
            n *= d
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < n:
            buf = np.empty(n, dtype=F32)
            self._buffers[name] = buf
        return buf[:n].reshape(shape)

    def nbytes(self):
        return sum(b.nbytes for b in self._buffers.values())


# the scratch of the module-level functions below (one process, one Python thread at a time:
# the kernels do not release the GIL)
DEFAULT_SCRATCH = MatmulScratch()


# ------------------------------------------------------------------------------------------------
# generation's matmul: one token of each of N sequences (a GEMV, N = 1 to a few), and the public API

MV_ROWS = 64  # rows of weight per task of the GEMVs (a multiple of 4). Numba's prange gives each
              # thread one contiguous run of tasks, equal in number: small tasks keep the threads
              # even (768 rows: 12 tasks, 6 a thread on 2 threads, where 3 tasks of 256 left one
              # thread 2/3 of the work) and each thread's run is still one stream
MV_AHEAD = 2048  # bytes: the bf16 and int8 GEMVs prefetch the weight this far ahead of the row they
                 # dot. On one thread of an AVX-512 Xeon, from DRAM (dev/matvec.py), this took
                 # bf16 from 11 to 14.5 GB/s and int8 from 7 to 11 (their rows, 1.5 KB and 768 B,
                 # go by faster than the hardware prefetchers ramp up on each 4 KB page); fp32's
                 # 3 KB rows stream at 15 GB/s without it, and lost ~1 GB/s with it.


@intrinsic
def f32_from_bits(typingctx, bits):
    # the float32 whose IEEE-754 bits are the int32 `bits` (a bitcast)
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(fastmath=True, cache=True, inline="always")
def _bf16_value(bits):
    # the float32 value of a bfloat16 given as its uint16 bits (the top half of a float32's)
    return f32_from_bits(np.int32(bits) << np.int32(16))


@intrinsic
def prefetch(typingctx, arr, i):
    # a hint to bring the cache line of arr's flat element i (arr contiguous) into cache: LLVM's
    # llvm.prefetch (read, keep in all levels); it never faults, wherever i points
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        A = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(A.data, [args[1]])
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _prefetch_row_ahead(w, r, ahead):
    # prefetch the cache lines of row r of w (OC,C), contiguous, shifted `ahead` elements on
    C = w.shape[1]
    p = r * C + ahead
    if p + C <= w.size:
        for j in range(0, C, 64 // w.itemsize):
            prefetch(w, p + j)


# The GEMVs below share one shape: out (N,OC) = inp (N,C) . weight (OC,C)^T (+ bias). Generation
# reads every weight once per step, so they are bound by memory bandwidth: each task streams a
# contiguous block of MV_ROWS rows front to back (one stream the prefetchers follow), and each
# row, once read, is dotted with the N inputs while it sits in L1 (inp, N x C floats, stays there
# too). A row's dot with inp[n] is the same code whatever N and whichever thread runs its task,
# so sequence n of a batch gets the bits it would get alone, on any number of threads. The dots
# are written out in the kernels: through a helper on the row view weight[r] they ran at half the
# speed. Timings: dev/matvec.py.

@njit(parallel=True, fastmath=True, cache=True)
def _matvec_forward(out, inp, weight, bias, has_bias):
    # out (N,OC) = inp (N,C) . weight (OC,C)^T + bias (OC), float32. Four rows at a time share
    # each load of inp (15.8 GB/s on one thread, against 12.5 one row at a time); the last OC % 4
    # rows one at a time.
    N, C = inp.shape
    OC = weight.shape[0]
    for task in prange((OC + MV_ROWS - 1) // MV_ROWS):
        r1 = min((task + 1) * MV_ROWS, OC)
        for r in range(task * MV_ROWS, r1 // 4 * 4, 4):
            for n in range(N):
                s0 = s1 = s2 = s3 = F32(0.0)
                for k in range(C):
                    x = inp[n, k]
                    s0 += x * weight[r, k]
                    s1 += x * weight[r + 1, k]
                    s2 += x * weight[r + 2, k]
                    s3 += x * weight[r + 3, k]
                if has_bias:
                    s0, s1, s2, s3 = s0 + bias[r], s1 + bias[r + 1], s2 + bias[r + 2], s3 + bias[r + 3]
                out[n, r], out[n, r + 1], out[n, r + 2], out[n, r + 3] = s0, s1, s2, s3
        for r in range(r1 // 4 * 4, r1):   # the last task's last OC % 4 rows
            for n in range(N):
                s = F32(0.0)
                for k in range(C):
                    s += inp[n, k] * weight[r, k]
                out[n, r] = s + bias[r] if has_bias else s


@njit(parallel=True, fastmath=True, cache=True)
def _matvec_forward_bf16(out, inp, weight, bias, has_bias):
    # _matvec_forward with weight (OC,C) held as bfloat16 bit patterns (uint16): half the bytes to
    # stream. Each weight is widened to float32 inside the dot (a shift and a bitcast, which LLVM
    # vectorizes; widening a row into scratch first and dotting that ran 20% slower), one row at
    # a time (four at a time ran slower); the rows MV_AHEAD bytes on are prefetched.
    N, C = inp.shape
    OC = weight.shape[0]
    for task in prange((OC + MV_ROWS - 1) // MV_ROWS):
        for r in range(task * MV_ROWS, min((task + 1) * MV_ROWS, OC)):
            _prefetch_row_ahead(weight, r, MV_AHEAD // 2)
            for n in range(N):
                s = F32(0.0)
                for k in range(C):
                    s += inp[n, k] * _bf16_value(weight[r, k])
                out[n, r] = s + bias[r] if has_bias else s


@njit(parallel=True, fastmath=True, cache=True)
def _matvec_forward_int8(out, inp, q, scale, bias, has_bias):
    # _matvec_forward with weight (OC,C) = q (OC,C) int8 times scale (OC) float32 per row (an
    # Int8Weight): a quarter of the bytes to stream. Each row's dot runs over q widened to float32
    # inside the loop (a sign extension and a conversion, vectorized), then is scaled once; the
    # rows MV_AHEAD bytes on are prefetched.
    N, C = inp.shape
    OC = q.shape[0]
    for task in prange((OC + MV_ROWS - 1) // MV_ROWS):
        for r in range(task * MV_ROWS, min((task + 1) * MV_ROWS, OC)):
            _prefetch_row_ahead(q, r, MV_AHEAD)
            for n in range(N):
                s = F32(0.0)
                for k in range(C):
                    s += inp[n, k] * F32(q[r, k])
                s *= scale[r]
                out[n, r] = s + bias[r] if has_bias else s


class Int8Weight:
    """A weight (..., OC, C) quantized per row (per output channel), symmetric:
    weight[..., r, :] ~ q[..., r, :] * scale[..., r], q int8 in [-127, 127], scale float32 >= 0.
    w[l] is layer l's Int8Weight of a stacked (L, OC, C) one. quantize_int8 makes them."""

    def __init__(self, q, scale):
        if q.dtype != np.int8 or scale.dtype != F32 or q.shape[:-1] != scale.shape:
            raise ValueError(f"matmul: an Int8Weight is q (..., OC, C) int8 and scale (..., OC) float32, "
                             f"got {q.dtype} {q.shape} and {scale.dtype} {scale.shape}")
        self.q, self.scale = q, scale

    def __getitem__(self, i):
        return Int8Weight(self.q[i], self.scale[i])

    @property
    def shape(self):
        return self.q.shape

    @property
    def nbytes(self):
        """The bytes a GEMV streams: q's and scale's."""
        return self.q.nbytes + self.scale.nbytes

    def dequantize(self):
        """The float32 weight it stands for: q * scale, one float32 rounding per element."""
        return self.q.astype(F32) * self.scale[..., None]


def quantize_int8(weight, rows_per_chunk=4096):
    """weight (..., OC, C) float32 -> Int8Weight: per row, scale = max |w| / 127 (rounded to
    float32) and q = w / scale rounded to the nearest integer (half to even), so |w - q scale| <=
    scale / 2 for every element; a row of zeros gets scale 0 and q 0. Computed in float64, in
    chunks of rows (no float64 copy of the whole weight)."""
    w = np.asarray(weight, dtype=F32)
    rows = w.reshape(-1, w.shape[-1])
    q = np.empty(rows.shape, dtype=np.int8)
    scale = (np.abs(rows).max(axis=1) / F32(127)).astype(F32)
    for r0 in range(0, rows.shape[0], rows_per_chunk):
        chunk = rows[r0:r0 + rows_per_chunk].astype(np.float64)
        s = scale[r0:r0 + rows_per_chunk].astype(np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(s > 0, chunk / s, 0.0)
        q[r0:r0 + rows_per_chunk] = np.clip(np.rint(x), -127, 127)
    return Int8Weight(q.reshape(w.shape), scale.reshape(w.shape[:-1]))


def _check(name, arr, shape):
    # arr must be a C-contiguous float32 array of exactly this shape
    if not isinstance(arr, np.ndarray) or arr.dtype != F32:
        raise ValueError(f"matmul: {name} must be a float32 NumPy array, got {getattr(arr, 'dtype', type(arr))}")
    if arr.shape != shape:
        raise ValueError(f"matmul: {name} has shape {arr.shape}, expected {shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"matmul: {name} must be C-contiguous")


def _rows(name, arr, ncols):
    # arr (..., ncols) as a C-contiguous (rows, ncols) view, or a clear error
    if not isinstance(arr, np.ndarray) or arr.ndim < 1 or arr.shape[-1] != ncols:
        raise ValueError(f"matmul: {name} has shape {getattr(arr, 'shape', None)}, "
                         f"its last axis must be {ncols}")
    _check(name, arr, arr.shape)
    return arr.reshape(-1, ncols)


def _weight_shape(weight):
    if not isinstance(weight, np.ndarray) or weight.ndim != 2 or min(weight.shape) < 1:
        raise ValueError(f"matmul: weight must be a non-empty (OC, C) array, got shape "
                         f"{getattr(weight, 'shape', None)}")
    _check("weight", weight, weight.shape)
    return weight.shape


def matmul_forward(out, inp, weight, bias, scratch=None):
    """out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC); bias may be None. scratch: a
    MatmulScratch for the packed operands (default: the module's DEFAULT_SCRATCH)."""
    OC, C = _weight_shape(weight)
    inp2 = _rows("inp", inp, C)
    out2 = _rows("out", out, OC)
    if out2.shape[0] != inp2.shape[0]:
        raise ValueError(f"matmul: out {out.shape} and inp {inp.shape} have different B*T")
    if bias is not None:
        _check("bias", bias, (OC,))
    _gemm(out2, inp2, False, weight, True, bias, False, DEFAULT_SCRATCH if scratch is None else scratch)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, scratch=None):
    """dinp (B,T,C), dweight (OC,C), dbias (OC) or None += the gradients of matmul_forward,
    given dout (B,T,OC), inp (B,T,C), weight (OC,C). scratch: a MatmulScratch for the packed
    operands (default: the module's DEFAULT_SCRATCH)."""
    OC, C = _weight_shape(weight)
    s = DEFAULT_SCRATCH if scratch is None else scratch
    dout2 = _rows("dout", dout, OC)
    inp2 = _rows("inp", inp, C)
    dinp2 = _rows("dinp", dinp, C)
    N = dout2.shape[0]
    if inp2.shape[0] != N or dinp2.shape[0] != N:
        raise ValueError(f"matmul: dout {dout.shape}, inp {inp.shape}, dinp {dinp.shape} differ in B*T")
    _check("dweight", dweight, (OC, C))
    if dbias is not None:
        _check("dbias", dbias, (OC,))
    backward_dinp(dinp2, dout2, weight, s)
    backward_dweight(dweight, dbias, dout2, inp2, s)


def backward_dinp(dinp, dout, weight, scratch):
    """dinp (N,C) += dout (N,OC) . weight (OC,C). Checked arrays only."""
    _gemm(dinp, dout, False, weight, False, None, True, scratch)


def backward_dweight(dweight, dbias, dout, inp, scratch):
    """dweight (OC,C) += dout (N,OC)^T . inp (N,C); dbias (OC) or None += dout summed over N.
    Checked arrays only."""
    _gemm(dweight, dout, True, inp, False, None, True, scratch)
    if dbias is not None:
        bias_backward(dbias, dout)


def matvec(out, inp, weight, bias):
    """out (N,OC) = inp (N,C) @ weight^T + bias (OC) for a weight (OC,C) of any of the three kinds:
    float32, bfloat16 bits (uint16), Int8Weight; bias may be None. Unchecked: the caller passes
    C-contiguous arrays of matching shapes (the CPU backend's step, with the model's own buffers;
    the matvec_forward functions below, after their checks)."""
    b, has_bias = (NO_BIAS, False) if bias is None else (bias, True)
    if isinstance(weight, Int8Weight):
        _matvec_forward_int8(out, inp, weight.q, weight.scale, b, has_bias)
    elif weight.dtype == np.uint16:
        _matvec_forward_bf16(out, inp, weight, b, has_bias)
    else:
        _matvec_forward(out, inp, weight, b, has_bias)


def _matvec_checked(out, inp, weight, OC, C, bias):
    # matvec after checking out and inp (1-D ones: N = 1, seen as (1,OC) and (1,C)) and bias
    if not isinstance(inp, np.ndarray) or inp.ndim not in (1, 2):
        raise ValueError(f"matmul: inp must be (C,) or (N, C), got shape {getattr(inp, 'shape', None)}")
    _check("inp", inp, inp.shape[:-1] + (C,))
    _check("out", out, inp.shape[:-1] + (OC,))
    if bias is not None:
        _check("bias", bias, (OC,))
    matvec(out.reshape(-1, OC), inp.reshape(-1, C), weight, bias)


def matvec_forward(out, inp, weight, bias):
    """out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC): matmul_forward for one token of each
    of N sequences, streaming the weight once (1-D out (OC,) and inp (C,): one token). bias may
    be None."""
    OC, C = _weight_shape(weight)
    _matvec_checked(out, inp, weight, OC, C, bias)


def matvec_forward_bf16(out, inp, weight_bits, bias):
    """matvec_forward with weight_bits (OC,C) uint16: bfloat16 bit patterns (formats.fp32_to_bf16)."""
    if not isinstance(weight_bits, np.ndarray) or weight_bits.dtype != np.uint16 or weight_bits.ndim != 2 \
            or not weight_bits.flags.c_contiguous:
        raise ValueError("matmul: weight_bits must be a C-contiguous (OC, C) uint16 array of bfloat16 bits")
    _matvec_checked(out, inp, weight_bits, *weight_bits.shape, bias)


def matvec_forward_int8(out, inp, weight, bias):
    """matvec_forward with weight an Int8Weight of shape (OC,C) (quantize_int8): out = inp . (q
    scale)^T + bias, the dot over q in float32, scaled per row."""
    if not isinstance(weight, Int8Weight) or weight.q.ndim != 2 or not weight.q.flags.c_contiguous \
            or not weight.scale.flags.c_contiguous:
        raise ValueError("matmul: weight must be an Int8Weight of shape (OC, C) with contiguous q and scale")
    _matvec_checked(out, inp, weight, *weight.shape, bias)
