"""The backend contract: every kernel the model's one loop calls, with its shapes, and the memory
helpers around them. Written down once, here; two backends implement it:
  llmnb.backend.CPUBackend       Numba CPU kernels over NumPy arrays (kernels.py, matmul.py, optim.py)
  llmnb.cuda.backend.CUDABackend numba.cuda kernels over device arrays (cuda/kernels.py, cuda/matmul.py)
so `k.layernorm_forward(...)` in model.py means the method of this name below, whichever device.

Kernels take llm.c's names and argument order (outputs first), write into the arrays they are
given and allocate nothing. "+=" marks a gradient that accumulates into its output, as the C's
backward kernels do; every other output is overwritten. B batch, T time, C channels, NH heads,
V vocabulary, Vp vocabulary padded to a multiple of 128, maxT the model's max_seq_len.
"""


class Backend:
    """The kernels and memory helpers of a device. Subclasses implement every method."""

    name = "abstract"

    # -- the layers of gpt2_forward / gpt2_backward ----------------------------------------------

    def encoder_forward(self, out, inp, wte, wpe):
        """out (B,T,C) = wte[inp] + wpe[t]; inp (B,T) int32 token ids, wte (Vp,C), wpe (maxT,C)."""
        raise NotImplementedError

    def encoder_backward(self, dwte, dwpe, dout, inp):
        """dwte (Vp,C), dwpe (maxT,C) += from dout (B,T,C); inp (B,T) int32."""
        raise NotImplementedError

    def layernorm_forward(self, out, mean, rstd, inp, weight, bias):
        """out (B,T,C), mean (B,T), rstd (B,T) from inp (B,T,C), weight (C), bias (C); eps 1e-5."""
        raise NotImplementedError

    def layernorm_backward(self, dinp, dweight, dbias, dout, inp, weight, mean, rstd):
        """dinp (B,T,C), dweight (C), dbias (C) += from dout (B,T,C), inp, weight, mean, rstd."""
        raise NotImplementedError

    def matmul_forward(self, out, inp, weight, bias):
        """out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC); bias may be None. (The CPU
        backend also takes, for generation's step (T = 1), a weight of bfloat16 bits, uint16
        (OC,C), or a matmul.Int8Weight.)"""
        raise NotImplementedError

    def matmul_backward(self, dinp, dweight, dbias, dout, inp, weight):
        """dinp (B,T,C), dweight (OC,C), dbias (OC) or None += the gradients of matmul_forward,
        from dout (B,T,OC), inp (B,T,C), weight (OC,C)."""
        raise NotImplementedError

    def attention_forward(self, out, lse, inp):
        """out (B,T,C) = causal softmax(q k^T / sqrt(C/NH)) v per head, flash-style (no (T,T)
        buffer); lse (B,NH,T) gets each query row's log-sum-exp of its scaled scores, for the
        backward; inp (B,T,3C) holds q, k, v side by side."""
        raise NotImplementedError

    def attention_backward(self, dinp, dout, inp, out, lse):
        """dinp (B,T,3C) += from dout (B,T,C), given inp (B,T,3C) and what forward left: out
        (B,T,C) and lse (B,NH,T) (the attention is recomputed from them)."""
        raise NotImplementedError

    def attention_query(self, out, att, qkv, t):
        """out (B,C) = the attention of one query in each of B sequences, every head: sequence b's
        query at position t against the keys and values of its positions 0..t in qkv (maxT,B,3C)
        (a KV cache, position-major; rows past t are not read); att (B,NH,maxT) is scratch for
        the scores. The one-token step of generation."""
        raise NotImplementedError

    def gelu_forward(self, out, inp):
        """out = GELU(inp), tanh approximation; any shape, N elements."""
        raise NotImplementedError

    def gelu_backward(self, dinp, inp, dout):
        """dinp += GELU'(inp) * dout; any shape, N elements."""
        raise NotImplementedError

    def residual_forward(self, out, inp1, inp2):
        """out = inp1 + inp2, all of one shape."""
        raise NotImplementedError

    def residual_backward(self, dinp1, dinp2, dout):
        """dinp1 += dout; dinp2 += dout."""
        raise NotImplementedError

    def residual_layernorm_forward(self, residual, ln, mean, rstd, inp1, inp2, weight, bias):
        """residual (B,T,C) = inp1 + inp2, then ln (B,T,C), mean, rstd (B,T) = the layernorm of
        residual with weight, bias (C): residual_forward then layernorm_forward, the same values,
        in one pass where the device gains by it (llm.c's CUDA fused_residual_forward5)."""
        raise NotImplementedError

    def softmax_forward(self, probs, logits, V):
        """probs (B,T,Vp) = softmax over the first V columns of logits (B,T,Vp); the padded
        columns V..Vp-1 get probability 0. (A forward without targets, generation's step:
        training needs no probs, see the two below.)"""
        raise NotImplementedError

    # the classifier fused as llm.c's CUDA trainer's (llmc/fused_classifier.cuh): no (B,T,Vp) probs
    # and no (B,T,Vp) dlogits buffer; per row the log-sum-exp of its logits is kept instead

    def crossentropy_forward(self, losses, lse, logits, targets, V):
        """losses (B,T) = -log softmax(logits)[target] = lse - logits[b, t, targets[b, t]], with
        lse (B,T) = log sum exp over the first V columns of logits (B,T,Vp), which are not
        written; targets (B,T) int32 in [0, V)."""
        raise NotImplementedError

    def crossentropy_softmax_backward(self, logits, dlosses, lse, targets, V):
        """logits (B,T,Vp) in place: the logits in (lse (B,T) theirs, from crossentropy_forward),
        their gradient out: (exp(logits - lse) - onehot(targets)) * dlosses (B,T) in the first V
        columns, 0 in the padded ones. Overwritten, not +=: there is no other dlogits."""
        raise NotImplementedError

    # -- gpt2_update and gradient clipping -------------------------------------------------------

    def adamw_update(self, params, grads, m, v, learning_rate, beta1, beta2, eps, weight_decay, t,
                     zero_grad=False):
        """One AdamW step over flat (num_parameters,) float32 arrays, in llm.c's float32
        arithmetic; t is the 1-based step. zero_grad=True also sets each element of grads to 0
        once read: the next step's gradient fill (gpt2_zero_grad), fused into this pass."""
        raise NotImplementedError

    def global_norm_squared(self, grads):
        """The sum of squares of a flat float32 array, accumulated in float64, as a Python float
        (waits for the kernels before it)."""
        raise NotImplementedError

    def scale_(self, x, factor):
        """x *= factor in place (x flat)."""
        raise NotImplementedError

    # -- memory ----------------------------------------------------------------------------------

    def zeros(self, n, dtype):
        """A new flat zero-filled array of n elements."""
        raise NotImplementedError

    def asarray(self, host):
        """The backend's copy of a host NumPy array."""
        raise NotImplementedError

    def copy_(self, dst, host):
        """Copy a host NumPy array into an existing backend array of the same shape."""
        raise NotImplementedError

    def to_host(self, arr):
        """A NumPy array with the contents of a backend array."""
        raise NotImplementedError

    def fill(self, arr, value):
        """Fill a backend array in place."""
        raise NotImplementedError

    def synchronize(self):
        """Wait until every kernel launched so far has finished."""
        raise NotImplementedError


MEMORY_HELPERS = ("zeros", "asarray", "copy_", "to_host", "fill", "synchronize")
# the kernels of the contract, in the order above (timers in benchmarks/ wrap these by name)
KERNEL_NAMES = tuple(n for n, v in vars(Backend).items()
                     if callable(v) and not n.startswith("_") and n not in MEMORY_HELPERS)
