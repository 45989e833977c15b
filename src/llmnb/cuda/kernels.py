"""The layers of GPT-2 on the GPU: every kernel of llmnb.kernels as numba.cuda kernels.

Each layer has its kernel(s) (`*_kernel`, device code) and a launcher under llm.c's name with the
CPU kernel's exact arguments (natural-shape views of device buffers; ints and floats as on the
CPU; `bias`/`dbias` may be None; token arrays int32), which picks the grid and launches,
asynchronously. The launchers compute the same thing as the CPU kernels, incl. what they leave
alone: backward kernels accumulate (+=) into their gradients (except the fused classifier's,
which writes dlogits over the logits), the padded vocabulary columns get probability 0 and
gradient 0.

The attention (flash-style, as the CPU's) is in attention.py, the matmuls in matmul.py.

Every kernel but AdamW's (bf16.py has --precision bf16's) reads its floating-point arrays through
ptx.widen and writes them through ptx.narrow: float32 as it is, or bf16 bits (uint16) summed and
computed in fp32 and rounded once on the way out, so the same kernel serves both precisions.

Reductions never race: a reduction over a row is a tree in shared memory within one block, a
reduction over rows (dweight, dbias, dwte, dwpe) belongs to the threads of its columns. No
atomics, so every run gives the same bits. Grid and block shapes come from launch.py.
"""
import math

import numpy as np
from numba import cuda, float32, float64

from ..kernels import GELU_CUBE, GELU_SCALING_FACTOR, LAYERNORM_EPS  # the model's constants, one home
from ..formats import fp32_to_bf16
from ..kernels import bias_corrections as cpu_bias_corrections  # the host-side scalars, shared
from .launch import (COL_ROWS, COL_WIDTH, ELEM_THREADS, INLINE, ROW_THREADS,
                     cdiv, check, elementwise_grid, last_dim, size)
from .ptx import narrow, widen

F32 = np.float32
ZERO = F32(0.0)
ONE = F32(1.0)
HALF = F32(0.5)
THREE = F32(3.0)
NEG_BIG = F32(-10000.0)  # the running max's start in the softmaxes, as in the C
LN_EPS = F32(LAYERNORM_EPS)

WHERE = "kernels.py"


# ----------------------------------------------------------------------------------------------
# block-wide reductions (device functions): 1-D blocks of ROW_THREADS threads, a tree in shared
# memory `buf` (ROW_THREADS,). Every thread of the block must call them; all get the result.

@cuda.jit(device=True)
def block_sum(buf, val):
    tid = cuda.threadIdx.x
    buf[tid] = val
    cuda.syncthreads()
    stride = ROW_THREADS // 2
    while stride > 0:
        if tid < stride:
            buf[tid] += buf[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = buf[0]
    cuda.syncthreads()  # buf is free again when this returns
    return total


@cuda.jit(device=True)
def block_max(buf, val):
    tid = cuda.threadIdx.x
    buf[tid] = val
    cuda.syncthreads()
    stride = ROW_THREADS // 2
    while stride > 0:
        if tid < stride:
            if buf[tid + stride] > buf[tid]:
                buf[tid] = buf[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


# ----------------------------------------------------------------------------------------------
# encoder: token embedding + position embedding

@cuda.jit(cache=True)
def encoder_forward_kernel(out, inp, wte, wpe):
    # out (B,T,C); inp (B,T) int32; wte (Vp,C); wpe (maxT,C); grid-stride over B*T*C
    B, T, C = out.shape
    for idx in range(cuda.grid(1), B * T * C, cuda.gridsize(1)):
        bt = idx // C
        c = idx % C
        b = bt // T
        t = bt % T
        out[b, t, c] = narrow(out, widen(wte[inp[b, t], c]) + widen(wpe[t, c]))


@cuda.jit(cache=True)
def encoder_backward_wpe_kernel(dwpe, dout):
    # dwpe (maxT,C) rows 0..T-1 += the sum over b of dout (B,T,C); grid-stride over T*C
    B, T, C = dout.shape
    for idx in range(cuda.grid(1), T * C, cuda.gridsize(1)):
        t = idx // C
        c = idx % C
        acc = widen(dwpe[t, c])
        for b in range(B):
            acc += widen(dout[b, t, c])
        dwpe[t, c] = narrow(dwpe, acc)


@cuda.jit(cache=True)
def encoder_backward_wte_kernel(dwte, dout, inp):
    # dwte (Vp,C) += dout (B,T,C) scattered to the rows inp (B,T) int32. A token may appear at
    # many (b,t), so each thread owns one channel and walks every (b,t) in order: no races, no
    # atomics, and consecutive threads touch consecutive addresses.
    B, T, C = dout.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        for b in range(B):
            for t in range(T):
                row = inp[b, t]
                dwte[row, c] = narrow(dwte, widen(dwte[row, c]) + widen(dout[b, t, c]))


def encoder_forward(out, inp, wte, wpe):
    """out (B,T,C) = wte[inp] + wpe[:T]; inp (B,T) int32 token ids."""
    B, T, C = out.shape
    check(inp.shape == (B, T), WHERE, f"encoder_forward: inp {inp.shape} is not (B,T) = {(B, T)}")
    check(last_dim(wte) == C and last_dim(wpe) == C and wpe.shape[0] >= T, WHERE,
          f"encoder_forward: wte {wte.shape} / wpe {wpe.shape} do not fit out {out.shape}")
    encoder_forward_kernel[elementwise_grid(B * T * C), ELEM_THREADS](out, inp, wte, wpe)


def encoder_backward(dwte, dwpe, dout, inp):
    """dwte (Vp,C), dwpe (maxT,C) += the gradients of encoder_forward, from dout (B,T,C)."""
    B, T, C = dout.shape
    check(inp.shape == (B, T), WHERE, f"encoder_backward: inp {inp.shape} is not (B,T) = {(B, T)}")
    check(last_dim(dwte) == C and last_dim(dwpe) == C and dwpe.shape[0] >= T, WHERE,
          f"encoder_backward: dwte {dwte.shape} / dwpe {dwpe.shape} do not fit dout {dout.shape}")
    encoder_backward_wpe_kernel[elementwise_grid(T * C), ELEM_THREADS](dwpe, dout)
    encoder_backward_wte_kernel[elementwise_grid(C), ELEM_THREADS](dwte, dout, inp)


# ----------------------------------------------------------------------------------------------
# layernorm

@cuda.jit(device=True)
def _normalize_row(buf, o, mean, rstd, b, t, x, weight, bias, s):
    # the rest of row (b,t)'s layernorm once each thread has summed its elements of x (C,) into s:
    # the mean, the variance, o (C,) = the normalized row (weight, bias), mean[b, t] and rstd[b, t]
    tid = cuda.threadIdx.x
    C = x.shape[0]
    m = block_sum(buf, s) / F32(C)
    s = ZERO
    for i in range(tid, C, ROW_THREADS):
        xshift = widen(x[i]) - m
        s += xshift * xshift
    v = block_sum(buf, s) / F32(C)
    rs = ONE / math.sqrt(v + LN_EPS)
    for i in range(tid, C, ROW_THREADS):
        o[i] = narrow(o, (rs * (widen(x[i]) - m)) * widen(weight[i]) + widen(bias[i]))
    if tid == 0:
        mean[b, t] = m
        rstd[b, t] = rs


@cuda.jit(cache=True)
def layernorm_forward_kernel(out, mean, rstd, inp, weight, bias):
    # out (B,T,C), mean, rstd (B,T); inp (B,T,C); weight, bias (C); one block per row (b,t)
    buf = cuda.shared.array(ROW_THREADS, float32)
    B, T, C = inp.shape
    b = cuda.blockIdx.x // T
    t = cuda.blockIdx.x % T
    tid = cuda.threadIdx.x
    x = inp[b, t]
    s = ZERO
    for i in range(tid, C, ROW_THREADS):
        s += widen(x[i])
    _normalize_row(buf, out[b, t], mean, rstd, b, t, x, weight, bias, s)


@cuda.jit(cache=True)
def layernorm_backward_dinp_kernel(dinp, dout, inp, weight, mean, rstd):
    # dinp (B,T,C) += ; dout, inp (B,T,C); weight (C); mean, rstd (B,T); one block per row (b,t)
    buf = cuda.shared.array(ROW_THREADS, float32)
    B, T, C = inp.shape
    b = cuda.blockIdx.x // T
    t = cuda.blockIdx.x % T
    tid = cuda.threadIdx.x
    mean_bt = mean[b, t]
    rstd_bt = rstd[b, t]
    x = inp[b, t]
    d = dout[b, t]
    s1 = ZERO
    s2 = ZERO
    for i in range(tid, C, ROW_THREADS):
        norm_bti = (widen(x[i]) - mean_bt) * rstd_bt
        dnorm_i = widen(weight[i]) * widen(d[i])
        s1 += dnorm_i
        s2 += dnorm_i * norm_bti
    dnorm_mean = block_sum(buf, s1) / F32(C)
    dnorm_norm_mean = block_sum(buf, s2) / F32(C)
    di = dinp[b, t]
    for i in range(tid, C, ROW_THREADS):
        norm_bti = (widen(x[i]) - mean_bt) * rstd_bt
        dnorm_i = widen(weight[i]) * widen(d[i])
        dval = dnorm_i - dnorm_mean - norm_bti * dnorm_norm_mean
        di[i] = narrow(di, widen(di[i]) + dval * rstd_bt)


@cuda.jit(cache=True)
def layernorm_backward_params_kernel(dweight, dbias, dout, inp, mean, rstd):
    # dweight, dbias (C) += sums over (b,t); block (COL_WIDTH, COL_ROWS), grid cdiv(C, COL_WIDTH):
    # COL_ROWS threads per channel walk the rows, then one adds their partial sums in order
    pw = cuda.shared.array((COL_ROWS, COL_WIDTH), float32)
    pb = cuda.shared.array((COL_ROWS, COL_WIDTH), float32)
    B, T, C = inp.shape
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    c = cuda.blockIdx.x * COL_WIDTH + tx
    sw = ZERO
    sb = ZERO
    if c < C:
        for r in range(ty, B * T, COL_ROWS):
            b = r // T
            t = r % T
            d = widen(dout[b, t, c])
            sb += d
            sw += (widen(inp[b, t, c]) - mean[b, t]) * rstd[b, t] * d
    pw[ty, tx] = sw
    pb[ty, tx] = sb
    cuda.syncthreads()
    if ty == 0 and c < C:
        tw = ZERO
        tb = ZERO
        for r in range(COL_ROWS):
            tw += pw[r, tx]
            tb += pb[r, tx]
        dweight[c] = narrow(dweight, widen(dweight[c]) + tw)
        dbias[c] = narrow(dbias, widen(dbias[c]) + tb)


@cuda.jit(cache=True)
def residual_layernorm_forward_kernel(residual, ln, mean, rstd, inp1, inp2, weight, bias):
    # residual (B,T,C) = inp1 + inp2, then layernorm_forward_kernel's ln, mean, rstd of it; one block
    # per row (b,t). Each thread reads back only the elements it wrote (as stored: bf16's rounded
    # values), and the sums run in layernorm_forward_kernel's order: the two kernels' bits
    buf = cuda.shared.array(ROW_THREADS, float32)
    B, T, C = residual.shape
    b = cuda.blockIdx.x // T
    t = cuda.blockIdx.x % T
    tid = cuda.threadIdx.x
    x = residual[b, t]
    a1 = inp1[b, t]
    a2 = inp2[b, t]
    s = ZERO
    for i in range(tid, C, ROW_THREADS):
        x[i] = narrow(x, widen(a1[i]) + widen(a2[i]))
        s += widen(x[i])
    _normalize_row(buf, ln[b, t], mean, rstd, b, t, x, weight, bias, s)


def layernorm_forward(out, mean, rstd, inp, weight, bias):
    """out (B,T,C), mean, rstd (B,T) = layernorm of inp (B,T,C) with weight, bias (C)."""
    B, T, C = inp.shape
    check(out.shape == (B, T, C) and mean.shape == (B, T) and rstd.shape == (B, T), WHERE,
          f"layernorm_forward: out {out.shape} / mean {mean.shape} / rstd {rstd.shape} do not fit inp {inp.shape}")
    check(weight.shape == (C,) and bias.shape == (C,), WHERE, f"layernorm_forward: weight/bias are not ({C},)")
    layernorm_forward_kernel[B * T, ROW_THREADS](out, mean, rstd, inp, weight, bias)


def residual_layernorm_forward(residual, ln, mean, rstd, inp1, inp2, weight, bias):
    """residual (B,T,C) = inp1 + inp2 and ln, mean, rstd its layernorm, in one launch (llm.c's
    fused_residual_forward5): the values of residual_forward then layernorm_forward."""
    B, T, C = residual.shape
    check(inp1.shape == (B, T, C) and inp2.shape == (B, T, C), WHERE,
          f"residual_layernorm_forward: inp1 {inp1.shape} / inp2 {inp2.shape} are not residual's {residual.shape}")
    check(ln.shape == (B, T, C) and mean.shape == (B, T) and rstd.shape == (B, T), WHERE,
          f"residual_layernorm_forward: ln {ln.shape} / mean {mean.shape} / rstd {rstd.shape} do not fit {residual.shape}")
    check(weight.shape == (C,) and bias.shape == (C,), WHERE, f"residual_layernorm_forward: weight/bias are not ({C},)")
    residual_layernorm_forward_kernel[B * T, ROW_THREADS](residual, ln, mean, rstd, inp1, inp2, weight, bias)


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    """dinp (B,T,C), dweight, dbias (C) += the gradients of layernorm_forward."""
    B, T, C = inp.shape
    check(dinp.shape == (B, T, C) and dout.shape == (B, T, C), WHERE,
          f"layernorm_backward: dinp {dinp.shape} / dout {dout.shape} are not inp's {inp.shape}")
    check(dweight.shape == (C,) and dbias.shape == (C,), WHERE, f"layernorm_backward: dweight/dbias are not ({C},)")
    layernorm_backward_dinp_kernel[B * T, ROW_THREADS](dinp, dout, inp, weight, mean, rstd)
    layernorm_backward_params_kernel[cdiv(C, COL_WIDTH), (COL_WIDTH, COL_ROWS)](dweight, dbias, dout, inp, mean, rstd)


# ----------------------------------------------------------------------------------------------
# gelu (llm.c's tanh approximation), by the CPU's one-exp identities: one formula on both devices

@INLINE
def _gelu_one_plus_tanh_half(u):
    # (0.5 (1 + tanh(u)), sech^2(u)) with one exp: the CPU's identities (llmnb/kernels.py's gelu)
    e = math.exp(F32(-2.0) * abs(u))
    r = ONE / (ONE + e)
    half_one_plus_tanh = r if u >= ZERO else e * r
    return half_one_plus_tanh, F32(4.0) * e * r * r


@cuda.jit(cache=True)
def gelu_forward_kernel(out, inp):
    # out, inp (N,); grid-stride
    for i in range(cuda.grid(1), inp.shape[0], cuda.gridsize(1)):
        x = widen(inp[i])
        u = GELU_SCALING_FACTOR * (x + GELU_CUBE * x * x * x)
        half_one_plus_tanh, _ = _gelu_one_plus_tanh_half(u)
        out[i] = narrow(out, x * half_one_plus_tanh)


@cuda.jit(cache=True)
def gelu_backward_kernel(dinp, inp, dout):
    # dinp (N,) += ; inp, dout (N,); grid-stride
    for i in range(cuda.grid(1), inp.shape[0], cuda.gridsize(1)):
        x = widen(inp[i])
        u = GELU_SCALING_FACTOR * (x + GELU_CUBE * x * x * x)
        half_one_plus_tanh, sech2 = _gelu_one_plus_tanh_half(u)
        local_grad = half_one_plus_tanh + \
            x * HALF * sech2 * GELU_SCALING_FACTOR * (ONE + THREE * GELU_CUBE * x * x)
        dinp[i] = narrow(dinp, widen(dinp[i]) + local_grad * widen(dout[i]))


def _flat(name, *arrays):
    n = size(arrays[0])
    for a in arrays[1:]:
        check(size(a) == n, WHERE, f"{name}: arrays of {n} and {size(a)} elements")
    return [a.reshape(n) for a in arrays]


def gelu_forward(out, inp):
    """out = gelu(inp), any shape."""
    out1, inp1 = _flat("gelu_forward", out, inp)
    gelu_forward_kernel[elementwise_grid(inp1.shape[0]), ELEM_THREADS](out1, inp1)


def gelu_backward(dinp, inp, dout):
    """dinp += gelu'(inp) * dout, any shape."""
    dinp1, inp1, dout1 = _flat("gelu_backward", dinp, inp, dout)
    gelu_backward_kernel[elementwise_grid(inp1.shape[0]), ELEM_THREADS](dinp1, inp1, dout1)


# ----------------------------------------------------------------------------------------------
# residual

@cuda.jit(cache=True)
def residual_forward_kernel(out, inp1, inp2):
    # out = inp1 + inp2, all (N,); grid-stride
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = narrow(out, widen(inp1[i]) + widen(inp2[i]))


@cuda.jit(cache=True)
def residual_backward_kernel(dinp1, dinp2, dout):
    # dinp1 += dout; dinp2 += dout, all (N,); grid-stride
    for i in range(cuda.grid(1), dout.shape[0], cuda.gridsize(1)):
        d = widen(dout[i])
        dinp1[i] = narrow(dinp1, widen(dinp1[i]) + d)
        dinp2[i] = narrow(dinp2, widen(dinp2[i]) + d)


def residual_forward(out, inp1, inp2):
    """out = inp1 + inp2, all the same shape."""
    out1, a, b = _flat("residual_forward", out, inp1, inp2)
    residual_forward_kernel[elementwise_grid(out1.shape[0]), ELEM_THREADS](out1, a, b)


def residual_backward(dinp1, dinp2, dout):
    """dinp1 += dout; dinp2 += dout."""
    d1, d2, d = _flat("residual_backward", dinp1, dinp2, dout)
    residual_backward_kernel[elementwise_grid(d.shape[0]), ELEM_THREADS](d1, d2, d)


# ----------------------------------------------------------------------------------------------
# softmax and cross-entropy over the padded vocabulary: only the first V of Vp columns are real

@cuda.jit(cache=True)
def softmax_forward_kernel(probs, logits, V):
    # probs, logits (B,T,Vp); one block per row (b,t); columns V..Vp-1 get probability 0
    buf = cuda.shared.array(ROW_THREADS, float32)
    B, T, Vp = logits.shape
    b = cuda.blockIdx.x // T
    t = cuda.blockIdx.x % T
    tid = cuda.threadIdx.x
    lg = logits[b, t]
    p = probs[b, t]
    maxval = NEG_BIG
    for i in range(tid, V, ROW_THREADS):
        if widen(lg[i]) > maxval:
            maxval = widen(lg[i])
    maxval = block_max(buf, maxval)
    s = ZERO
    for i in range(tid, V, ROW_THREADS):
        s += math.exp(widen(lg[i]) - maxval)
    s = block_sum(buf, s)
    for i in range(tid, V, ROW_THREADS):
        p[i] = narrow(p, math.exp(widen(lg[i]) - maxval) / s)
    for i in range(V + tid, Vp, ROW_THREADS):
        p[i] = narrow(p, ZERO)


# the classifier fused as llm.c's CUDA trainer's (llmc/fused_classifier.cuh; see kernels.py): per
# row the log-sum-exp of its logits, then the logits' gradient written over them

@cuda.jit(cache=True)
def crossentropy_forward_kernel(losses, lse, logits, targets, V):
    # losses, lse (B,T); logits (B,T,Vp), read only; targets (B,T) int32; one block per row (b,t):
    # lse = log sum_{i<V} exp(logits[i]), losses = lse - logits[target]
    buf = cuda.shared.array(ROW_THREADS, float32)
    B, T, Vp = logits.shape
    b = cuda.blockIdx.x // T
    t = cuda.blockIdx.x % T
    tid = cuda.threadIdx.x
    lg = logits[b, t]
    maxval = widen(lg[0])
    for i in range(tid, V, ROW_THREADS):
        if widen(lg[i]) > maxval:
            maxval = widen(lg[i])
    maxval = block_max(buf, maxval)
    s = ZERO
    for i in range(tid, V, ROW_THREADS):
        s += math.exp(widen(lg[i]) - maxval)
    s = block_sum(buf, s)
    if tid == 0:
        row_lse = maxval + math.log(s)
        lse[b, t] = row_lse
        losses[b, t] = row_lse - widen(lg[targets[b, t]])


@cuda.jit(cache=True)
def crossentropy_softmax_backward_kernel(logits, dlosses, lse, targets, V):
    # logits (B,T,Vp) in place: the logits in, dlogits = (exp(logits - lse) - onehot(targets)) *
    # dlosses out over the first V columns, 0 in the padded ones; dlosses, lse (B,T); targets
    # (B,T) int32; one block per row (b,t), each thread its own columns (no element read by one
    # thread and written by another)
    B, T, Vp = logits.shape
    b = cuda.blockIdx.x // T
    t = cuda.blockIdx.x % T
    tid = cuda.threadIdx.x
    lg = logits[b, t]
    dloss = dlosses[b, t]
    row_lse = lse[b, t]
    ix = targets[b, t]
    for i in range(tid, V, ROW_THREADS):
        indicator = ONE if i == ix else ZERO
        lg[i] = narrow(lg, (math.exp(widen(lg[i]) - row_lse) - indicator) * dloss)
    for i in range(V + tid, Vp, ROW_THREADS):
        lg[i] = narrow(lg, ZERO)


def softmax_forward(probs, logits, V):
    """probs (B,T,Vp) = softmax over the first V columns of logits (B,T,Vp), zeros after."""
    B, T, Vp = logits.shape
    check(probs.shape == logits.shape, WHERE, f"softmax_forward: probs {probs.shape} is not logits' {logits.shape}")
    check(0 < V <= Vp, WHERE, f"softmax_forward: V={V} is not in [1, Vp={Vp}]")
    softmax_forward_kernel[B * T, ROW_THREADS](probs, logits, int(V))


def crossentropy_forward(losses, lse, logits, targets, V):
    """losses (B,T) = lse - logits[b, t, targets[b, t]], lse (B,T) the log-sum-exp of the first V
    columns of logits (B,T,Vp), which are not written; targets (B,T) int32."""
    B, T, Vp = logits.shape
    check(losses.shape == (B, T) and lse.shape == (B, T) and targets.shape == (B, T), WHERE,
          f"crossentropy_forward: losses {losses.shape}, lse {lse.shape}, logits {logits.shape}, "
          f"targets {targets.shape} disagree")
    check(0 < V <= Vp, WHERE, f"crossentropy_forward: V={V} is not in [1, Vp={Vp}]")
    crossentropy_forward_kernel[B * T, ROW_THREADS](losses, lse, logits, targets, int(V))


def crossentropy_softmax_backward(logits, dlosses, lse, targets, V):
    """logits (B,T,Vp) in place: their gradient through softmax and cross-entropy, from lse and
    dlosses (B,T), written over them; 0 in the padded columns V..Vp-1."""
    B, T, Vp = logits.shape
    check(dlosses.shape == (B, T) and lse.shape == (B, T) and targets.shape == (B, T), WHERE,
          f"crossentropy_softmax_backward: logits {logits.shape}, dlosses {dlosses.shape}, "
          f"lse {lse.shape}, targets {targets.shape} disagree")
    check(0 < V <= Vp, WHERE, f"crossentropy_softmax_backward: V={V} is not in [1, Vp={Vp}]")
    crossentropy_softmax_backward_kernel[B * T, ROW_THREADS](logits, dlosses, lse, targets, int(V))


# ----------------------------------------------------------------------------------------------
# AdamW over the flat buffers (gpt2_update in the C)

@cuda.jit(cache=True)
def adamw_kernel(params, grads, m, v, learning_rate, beta1, beta2, eps, weight_decay, bc1, bc2, zero_grad):
    # params, grads, m, v (num_parameters,); the hyperparameters float32; bc1, bc2 the bias
    # corrections 1 - beta^t; zero_grad: set each gradient to 0 once read; grid-stride
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        param = params[i]
        grad = grads[i]
        if zero_grad:
            grads[i] = ZERO
        mi = beta1 * m[i] + (ONE - beta1) * grad
        vi = beta2 * v[i] + (ONE - beta2) * grad * grad
        m_hat = mi / bc1
        v_hat = vi / bc2
        m[i] = mi
        v[i] = vi
        params[i] = param - learning_rate * (m_hat / (math.sqrt(v_hat) + eps) + weight_decay * param)


def adamw_update(params, grads, m, v, learning_rate, beta1, beta2, eps, weight_decay, t, zero_grad=False):
    """One AdamW step over flat (num_parameters,) arrays; t is the 1-based step; zero_grad: the
    gradients are set to 0 as they are read."""
    n = params.shape[0]
    check(len(params.shape) == 1 and grads.shape == (n,) and m.shape == (n,) and v.shape == (n,), WHERE,
          f"adamw_update: params {params.shape}, grads {grads.shape}, m {m.shape}, v {v.shape} are not one flat size")
    # the float32 betas in the bias corrections too, as the moments and the C (see kernels.py)
    bc1, bc2 = cpu_bias_corrections(F32(beta1), F32(beta2), int(t))
    adamw_kernel[elementwise_grid(n), ELEM_THREADS](params, grads, m, v, F32(learning_rate), F32(beta1),
                                                  F32(beta2), F32(eps), F32(weight_decay), bc1, bc2,
                                                  bool(zero_grad))


# ----------------------------------------------------------------------------------------------
# gradient clipping (optim.py's global_norm_squared and scale_)

@cuda.jit(cache=True)
def global_norm_squared_kernel(partial, grads):
    # partial (nblocks,) float64 = per block, the sum of grads[i]^2 over the i of its threads;
    # grads (N,) float32; grid-stride, block ELEM_THREADS, then a tree in shared memory
    buf = cuda.shared.array(ELEM_THREADS, float64)
    tid = cuda.threadIdx.x
    s = 0.0
    for i in range(cuda.grid(1), grads.shape[0], cuda.gridsize(1)):
        g = float64(widen(grads[i]))
        s += g * g
    buf[tid] = s
    cuda.syncthreads()
    stride = ELEM_THREADS // 2
    while stride > 0:
        if tid < stride:
            buf[tid] += buf[tid + stride]
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        partial[cuda.blockIdx.x] = buf[0]


@cuda.jit(cache=True)
def scale_kernel(x, factor):
    # x (N,) *= factor; grid-stride
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] = narrow(x, widen(x[i]) * factor)


def global_norm_squared(grads):
    """The sum of squares of a flat float32 array, accumulated in float64; returns a Python float
    (so it waits for the kernels before it)."""
    check(len(grads.shape) == 1, WHERE, f"global_norm_squared: grads {grads.shape} is not flat")
    nblocks = elementwise_grid(grads.shape[0])
    partial = cuda.device_array(nblocks, dtype=np.float64)
    global_norm_squared_kernel[nblocks, ELEM_THREADS](partial, grads)
    return float(partial.copy_to_host().sum())


def scale_(x, factor):
    """x *= factor in place (x flat)."""
    check(len(x.shape) == 1, WHERE, f"scale_: x {x.shape} is not flat")
    scale_kernel[elementwise_grid(x.shape[0]), ELEM_THREADS](x, F32(factor))


# ----------------------------------------------------------------------------------------------
# memory helper

@cuda.jit(cache=True)
def fill_kernel(arr, value):
    # arr (N,) = value; grid-stride
    for i in range(cuda.grid(1), arr.shape[0], cuda.gridsize(1)):
        arr[i] = value


def fill(arr, value):
    """Fill a contiguous device array with value (cast to its dtype; a uint16 array holds bf16 bits:
    value's, rounded to nearest even)."""
    flat = arr.reshape(size(arr))
    v = fp32_to_bf16(F32(value))[0] if arr.dtype == np.uint16 else arr.dtype.type(value)
    fill_kernel[elementwise_grid(flat.shape[0]), ELEM_THREADS](flat, v)


# ----------------------------------------------------------------------------------------------
# attention of one query over a KV cache: the one-token step of generation (kernels.attention_query)

@cuda.jit(cache=True)
def attention_query_kernel(out, att, qkv, t, scale):
    # out (B,C) = per sequence b and head h (block (h, b)): the softmax of sequence b's query at
    # row t . its keys of rows 0..t of qkv (maxT,B,3C), scaled, applied to their values; att
    # (B,NH,maxT) holds the scores, then their exponentials. The block's threads stride over the
    # rows 0..t, then over the head's channels (each sums the rows in order, as the CPU kernel does).
    buf = cuda.shared.array(ROW_THREADS, float32)
    h = cuda.blockIdx.x
    b = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    C = out.shape[1]
    hs = C // att.shape[1]
    q0 = h * hs
    k0 = C + h * hs
    v0 = 2 * C + h * hs
    row = att[b, h]
    maxval = NEG_BIG
    for t2 in range(tid, t + 1, ROW_THREADS):
        s = ZERO
        for i in range(hs):
            s += qkv[t, b, q0 + i] * qkv[t2, b, k0 + i]
        s *= scale
        row[t2] = s
        if s > maxval:
            maxval = s
    maxval = block_max(buf, maxval)
    expsum = ZERO
    for t2 in range(tid, t + 1, ROW_THREADS):
        e = math.exp(row[t2] - maxval)
        row[t2] = e
        expsum += e
    expsum = block_sum(buf, expsum)  # its barrier also publishes row to the whole block
    inv = ONE / expsum  # >= 1: the largest score's own term is exp(0)
    for i in range(tid, hs, ROW_THREADS):
        acc = ZERO
        for t2 in range(t + 1):
            acc += (row[t2] * inv) * qkv[t2, b, v0 + i]
        out[b, q0 + i] = acc


def attention_query(out, att, qkv, t):
    """out (B,C) = in each of B sequences, every head's attention of position t's query over its
    positions 0..t in qkv (maxT,B,3C) (the KV cache); att (B,NH,maxT) is scratch for the scores."""
    check(len(qkv.shape) == 3 and last_dim(qkv) % 3 == 0, WHERE,
          f"attention_query: qkv {qkv.shape} is not (maxT, B, 3C)")
    maxT, B, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    check(out.shape == (B, C), WHERE, f"attention_query: out {out.shape} is not ({B}, {C})")
    check(len(att.shape) == 3 and att.shape[0] == B and att.shape[2] >= maxT and C % att.shape[1] == 0, WHERE,
          f"attention_query: att {att.shape} is not ({B}, NH, {maxT}) with NH dividing C={C}")
    check(0 <= t < maxT, WHERE, f"attention_query: position {t} is outside [0, {maxT})")
    NH = att.shape[1]
    attention_query_kernel[(NH, B), ROW_THREADS](out, att, qkv, int(t), F32(1.0 / math.sqrt(C // NH)))
