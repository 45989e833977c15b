"""A float64 NumPy reference of every GPT-2 layer, forward and backward (llm.c's semantics).

Plain vectorised NumPy, written from the math, independent of the Numba kernels. Every function
takes its inputs (any float dtype; they are promoted to float64) and RETURNS new float64 arrays:
backward functions return the gradient contributions themselves, not accumulated into anything
(the kernels accumulate: a test checks kernel_after == kernel_before + reference).
Shapes and names follow llm.c's train_gpt2.c.
"""
import math

import numpy as np

GELU_SCALING_FACTOR = math.sqrt(2.0 / math.pi)
GELU_CUBE = 0.044715
LAYERNORM_EPS = 1e-5


def _f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


# ----------------------------------------------------------------------------------------------
# encoder

def encoder_forward(inp, wte, wpe):
    # inp (B,T) int; wte (Vp,C); wpe (maxT,C) -> out (B,T,C)
    wte, wpe = _f64(wte, wpe)
    T = inp.shape[1]
    return wte[inp] + wpe[:T][None, :, :]


def encoder_backward(dout, inp, Vp, maxT):
    # dout (B,T,C); inp (B,T) int -> dwte (Vp,C), dwpe (maxT,C); repeated tokens add up
    (dout,) = _f64(dout)
    B, T, C = dout.shape
    dwte = np.zeros((Vp, C))
    np.add.at(dwte, inp.reshape(-1), dout.reshape(-1, C))
    dwpe = np.zeros((maxT, C))
    dwpe[:T] = dout.sum(axis=0)
    return dwte, dwpe


# ----------------------------------------------------------------------------------------------
# layernorm (biased variance, eps inside the square root, as llm.c and PyTorch)

def layernorm_forward(inp, weight, bias, eps=LAYERNORM_EPS):
    # inp (B,T,C); weight, bias (C) -> out (B,T,C), mean (B,T), rstd (B,T)
    inp, weight, bias = _f64(inp, weight, bias)
    mean = inp.mean(axis=-1)
    var = ((inp - mean[..., None]) ** 2).mean(axis=-1)
    rstd = 1.0 / np.sqrt(var + eps)
    norm = (inp - mean[..., None]) * rstd[..., None]
    return norm * weight + bias, mean, rstd


def layernorm_backward(dout, inp, weight, mean, rstd):
    # dout, inp (B,T,C); weight (C); mean, rstd (B,T) -> dinp (B,T,C), dweight (C), dbias (C)
    # with n = (x - mean) * rstd: dx = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = w * dout
    dout, inp, weight, mean, rstd = _f64(dout, inp, weight, mean, rstd)
    norm = (inp - mean[..., None]) * rstd[..., None]
    dnorm = dout * weight
    dinp = rstd[..., None] * (dnorm - dnorm.mean(axis=-1, keepdims=True)
                              - norm * (dnorm * norm).mean(axis=-1, keepdims=True))
    dweight = (dout * norm).sum(axis=(0, 1))
    dbias = dout.sum(axis=(0, 1))
    return dinp, dweight, dbias


# ----------------------------------------------------------------------------------------------
# matmul: out = inp @ weight^T + bias

def matmul_forward(inp, weight, bias=None):
    # inp (B,T,C); weight (OC,C); bias (OC) or None -> out (B,T,OC)
    inp, weight = _f64(inp, weight)
    out = inp @ weight.T
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)
    return out


def matmul_backward(dout, inp, weight):
    # dout (B,T,OC); inp (B,T,C); weight (OC,C) -> dinp (B,T,C), dweight (OC,C), dbias (OC)
    dout, inp, weight = _f64(dout, inp, weight)
    OC, C = weight.shape
    d2 = dout.reshape(-1, OC)
    dinp = dout @ weight
    dweight = d2.T @ inp.reshape(-1, C)
    dbias = d2.sum(axis=0)
    return dinp, dweight, dbias


# ----------------------------------------------------------------------------------------------
# attention: causal multi-head self-attention over inp = [query | key | value] (B,T,3C)

def _split_heads(x, NH):
    # (B,T,C) -> (B,NH,T,hs)
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def _merge_heads(x):
    # (B,NH,T,hs) -> (B,T,C)
    B, NH, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, NH * hs)


def causal_mask(T):
    """(T,T) bool, True on and below the diagonal (key t2 <= query t)."""
    return np.tril(np.ones((T, T), dtype=bool))


def attention_forward(inp, NH):
    # inp (B,T,3C) -> out (B,T,C), preatt (B,NH,T,T), att (B,NH,T,T)
    # preatt is the scaled q.k everywhere (only t2 <= t is meaningful); att is 0 above the diagonal
    (inp,) = _f64(inp)
    C = inp.shape[-1] // 3
    q, k, v = (_split_heads(inp[..., i * C:(i + 1) * C], NH) for i in range(3))
    hs = C // NH
    preatt = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
    mask = causal_mask(inp.shape[1])
    masked = np.where(mask, preatt, -np.inf)
    e = np.exp(masked - masked.max(axis=-1, keepdims=True))
    att = e / e.sum(axis=-1, keepdims=True)
    return _merge_heads(att @ v), preatt, att


def attention_backward(dout, inp, att, NH, datt_in=None, dpreatt_in=None):
    # dout (B,T,C); inp (B,T,3C); att (B,NH,T,T) -> dinp (B,T,3C), datt, dpreatt (B,NH,T,T)
    # datt_in / dpreatt_in: gradients already held by att / preatt (llm.c's kernel adds into its
    # datt and dpreatt buffers and back-propagates their whole content). The returned datt and
    # dpreatt are the TOTALS (datt_in + the contribution through out, ...), only below and on the
    # diagonal; above it they equal datt_in / dpreatt_in. dinp is the contribution alone.
    dout, inp, att = _f64(dout, inp, att)
    B, T, C3 = inp.shape
    C = C3 // 3
    hs = C // NH
    mask = causal_mask(T)
    datt_in = np.zeros(att.shape) if datt_in is None else np.asarray(datt_in, dtype=np.float64)
    dpreatt_in = np.zeros(att.shape) if dpreatt_in is None else np.asarray(dpreatt_in, dtype=np.float64)
    q, k, v = (_split_heads(inp[..., i * C:(i + 1) * C], NH) for i in range(3))
    att = np.where(mask, att, 0.0)
    dout_h = _split_heads(dout, NH)
    # out = att @ v
    datt = datt_in + np.where(mask, dout_h @ v.transpose(0, 1, 3, 2), 0.0)
    dv = att.transpose(0, 1, 3, 2) @ dout_h
    # att = softmax(preatt) over t2 <= t: dpre = att * (datt - sum(att * datt))
    datt_low = np.where(mask, datt, 0.0)
    dot = (att * datt_low).sum(axis=-1, keepdims=True)
    dpreatt = dpreatt_in + np.where(mask, att * (datt_low - dot), 0.0)
    # preatt = q @ k^T / sqrt(hs)
    g = np.where(mask, dpreatt, 0.0) / math.sqrt(hs)
    dq = g @ k
    dk = g.transpose(0, 1, 3, 2) @ q
    dinp = np.concatenate([_merge_heads(dq), _merge_heads(dk), _merge_heads(dv)], axis=-1)
    return dinp, datt, dpreatt


# ----------------------------------------------------------------------------------------------
# gelu, the tanh approximation

def gelu_forward(inp):
    (x,) = _f64(inp)
    return 0.5 * x * (1.0 + np.tanh(GELU_SCALING_FACTOR * (x + GELU_CUBE * x ** 3)))


def gelu_backward(inp, dout):
    # -> dinp = gelu'(inp) * dout
    x, dout = _f64(inp, dout)
    u = GELU_SCALING_FACTOR * (x + GELU_CUBE * x ** 3)
    th = np.tanh(u)
    du = GELU_SCALING_FACTOR * (1.0 + 3.0 * GELU_CUBE * x ** 2)
    return (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th ** 2) * du) * dout


# ----------------------------------------------------------------------------------------------
# residual

def residual_forward(inp1, inp2):
    a, b = _f64(inp1, inp2)
    return a + b


def residual_backward(dout):
    # -> dinp1, dinp2
    (d,) = _f64(dout)
    return d.copy(), d.copy()


# ----------------------------------------------------------------------------------------------
# softmax + cross-entropy over the first V of Vp columns

def softmax_forward(logits, V):
    # logits (B,T,Vp) -> probs (B,T,Vp), 0 in the padded columns V..Vp-1
    (logits,) = _f64(logits)
    real = logits[..., :V]
    e = np.exp(real - real.max(axis=-1, keepdims=True))
    probs = np.zeros(logits.shape)
    probs[..., :V] = e / e.sum(axis=-1, keepdims=True)
    return probs


def logsumexp(logits, V):
    # logits (B,T,Vp) -> (B,T): log sum exp over the first V columns (the fused classifier's lse)
    (logits,) = _f64(logits)
    real = logits[..., :V]
    mx = real.max(axis=-1)
    return mx + np.log(np.exp(real - mx[..., None]).sum(axis=-1))


def crossentropy_forward(probs, targets):
    # probs (B,T,Vp); targets (B,T) int -> losses (B,T) = -log probs[target]
    (probs,) = _f64(probs)
    return -np.log(np.take_along_axis(probs, targets[..., None].astype(np.int64), axis=-1)[..., 0])


def crossentropy_softmax_backward(dlosses, probs, targets, V):
    # dlosses (B,T); probs (B,T,Vp); targets (B,T) -> dlogits (B,T,Vp), 0 in the padded columns
    dlosses, probs = _f64(dlosses, probs)
    dlogits = probs.copy()
    dlogits[..., V:] = 0.0
    np.put_along_axis(dlogits, targets[..., None].astype(np.int64),
                      np.take_along_axis(dlogits, targets[..., None].astype(np.int64), axis=-1) - 1.0,
                      axis=-1)
    return dlogits * dlosses[..., None]


# ----------------------------------------------------------------------------------------------
# AdamW (llm.c's gpt2_update: weight decay decoupled, applied to every parameter)

def adamw_update(params, grads, m, v, learning_rate, beta1, beta2, eps, weight_decay, t):
    # t is the 1-based step -> new params, m, v
    params, grads, m, v = _f64(params, grads, m, v)
    m = beta1 * m + (1.0 - beta1) * grads
    v = beta2 * v + (1.0 - beta2) * grads ** 2
    m_hat = m / (1.0 - beta1 ** t)
    v_hat = v / (1.0 - beta2 ** t)
    params = params - learning_rate * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * params)
    return params, m, v


# ----------------------------------------------------------------------------------------------
# the whole model: gpt2_forward of train_gpt2.c, from the layers above

def gpt2_forward(config, params, inp, targets):
    """config: llmnb's GPT2Config; params: llm.c's flat parameter buffer; inp, targets (B,T) int
    -> logits (B,T,V) and the mean cross-entropy loss, all in float64."""
    from llmnb.config import Tensors, param_shapes  # the flat buffer's layout, no arithmetic
    p = Tensors(np.asarray(params, dtype=np.float64), param_shapes(config))
    NH, V = config.num_heads, config.vocab_size
    residual = encoder_forward(inp, p.wte, p.wpe)
    for l in range(config.num_layers):
        ln1 = layernorm_forward(residual, p.ln1w[l], p.ln1b[l])[0]
        atty = attention_forward(matmul_forward(ln1, p.qkvw[l], p.qkvb[l]), NH)[0]
        residual = residual_forward(residual, matmul_forward(atty, p.attprojw[l], p.attprojb[l]))
        ln2 = layernorm_forward(residual, p.ln2w[l], p.ln2b[l])[0]
        fch_gelu = gelu_forward(matmul_forward(ln2, p.fcw[l], p.fcb[l]))
        residual = residual_forward(residual, matmul_forward(fch_gelu, p.fcprojw[l], p.fcprojb[l]))
    lnf = layernorm_forward(residual, p.lnfw, p.lnfb)[0]
    logits = matmul_forward(lnf, p.wte)[..., :V]
    loss = crossentropy_forward(softmax_forward(logits, V), targets).mean()
    return logits, loss
