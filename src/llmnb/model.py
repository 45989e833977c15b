"""GPT-2 on flat buffers: gpt2_forward, gpt2_zero_grad, gpt2_backward and gpt2_update of llm.c,
and generation's one-token step over a KV cache.

    GPT2      training: the parameters, their gradients, AdamW's m and v, the activations of a
              (B, T) batch and their gradients; forward, zero_grad, backward, update
    Decoder   generation (llama2.c's RunState): a KV cache, one step's activations (one token of
              each of B sequences) and the weights it streams (the model's own, a bfloat16 or an
              int8 copy); step(tokens) -> next-token probs

The model owns four flat float32 buffers, as the C does: parameters, their gradients, activations
and the activations' gradients (plus AdamW's m and v). Every named tensor is a view into one of
them (see config.Tensors); per-layer tensors are views of those views (`params.qkvw[l]`), so the
loops below pass views, never copies, to the kernels of a backend (CPU or CUDA).

--precision bf16 (CUDA) keeps the parameters, their gradients and the activations in bf16 (uint16
buffers of bf16 bits) and, as llm.c's train_gpt2.cu, fp32 master weights and AdamW's m and v; the
layernorm statistics, log-sum-exps and losses stay float32 (FP32_ACTS, a second buffer).

One layer routine (block_forward) serves the training forward over (B, T) and the Decoder's
one-token step, which keeps every layer's qkv rows in its KV cache on the backend.
"""
import math
import types

import numpy as np

from . import optim
from .backend import get_backend
from .config import LAYER_GRAD_NAMES, GPT2Config, Tensors, act_shapes, grad_act_shapes, param_shapes
from .formats import bf16_to_fp32, fp32_to_bf16, read_checkpoint, write_checkpoint
from .matmul import quantize_int8
from .rand import random_u32


# --precision bf16: the activations (and their gradients) that stay float32, as in train_gpt2.cu
FP32_ACTS = ("ln1_mean", "ln1_rstd", "ln2_mean", "ln2_rstd", "lnf_mean", "lnf_rstd", "lse", "lse_logits", "losses",
             "probs")
# llm.c's train_gpt2.cu: the seed of the stochastic rounding's per-tensor seeds (its rank 0)
RNG_STATE_BF16 = 13371337


def allocate(k, shapes, dtype=np.float32, fp32=()):
    """Tensors of `shapes` on backend k in one flat buffer of dtype. With dtype bf16 (uint16), the
    names in fp32 go to a second, float32 buffer (their views set on the same Tensors; .memory is
    the first buffer, .fp32_memory the second)."""
    main = {n: s for n, s in shapes.items() if dtype == np.float32 or n not in fp32}
    t = Tensors(k.zeros(Tensors.count(main), dtype=dtype), main)
    rest = {n: s for n, s in shapes.items() if n not in main}
    t.fp32_memory = None
    if rest:
        f = Tensors(k.zeros(Tensors.count(rest)), rest)
        for name in rest:
            setattr(t, name, getattr(f, name))
        t.fp32_memory = f.memory
    return t


def init_params(config, seed=0):
    """GPT-2's initialisation as one flat float32 array: weights N(0, 0.02), the residual
    projections (attprojw, fcprojw) N(0, 0.02/sqrt(2L)), zero biases, unit layernorm weights,
    zero rows for the padded vocabulary."""
    rng = np.random.default_rng(seed)
    p = Tensors.allocate(param_shapes(config))
    std = 0.02
    resid_std = 0.02 / math.sqrt(2 * config.num_layers)
    for name, t in p:
        if name in ("ln1w", "ln2w", "lnfw"):
            t[...] = 1.0
        elif name in ("wte", "wpe", "qkvw", "fcw"):
            rng.standard_normal(t.shape, dtype=np.float32, out=t)  # float32 draws, no float64 copy
            t *= np.float32(std)
        elif name in ("attprojw", "fcprojw"):
            rng.standard_normal(t.shape, dtype=np.float32, out=t)  # float32 draws, no float64 copy
            t *= np.float32(resid_std)
        # biases stay zero
    p.wte[config.vocab_size:] = 0.0
    return p.memory


# ----------------------------------------------------------------------------------------------
# one layer, for the training forward and the one-token step

def block_forward(k, l, a, p, w, cache=None, pos=None):
    """Layer l of the forward on backend k: a's layer-l activations from the residual stream (the
    encoder's output for l = 0, else layer l-1's residual3). p holds the parameters, w the matrices
    (p itself, or for the one-token step their bfloat16 bits or int8 copies). cache None: every
    position of a's (B, T) attends causally over a.qkv[l]. cache (kv_cache (L, maxT, B, 3C),
    att_scratch (B, NH, maxT)) and pos t: the one-token step (T = 1) of B sequences at position
    t, whose qkv rows go into row t of the KV cache, each attending over its rows 0..t.

    As llm.c's CUDA gpt2_forward, each residual add and the layernorm after it are one kernel
    (residual_layernorm_forward): the attention's with ln2, the MLP's with the next layer's ln1,
    or after the last layer with the final lnf. So layer 0 starts with its own ln1 of the encoder's
    output, and the others find theirs done."""
    L = a.ln1.shape[0]
    residual = a.encoded if l == 0 else a.residual3[l - 1]
    if cache is None:
        qkv = a.qkv[l]
    else:
        kv_cache, att = cache
        qkv = kv_cache[l, pos].reshape(a.qkv[l].shape)  # (B, 1, 3C): the step's rows of the KV cache
    if l == 0:
        k.layernorm_forward(a.ln1[0], a.ln1_mean[0], a.ln1_rstd[0], residual, p.ln1w[0], p.ln1b[0])
    k.matmul_forward(qkv, a.ln1[l], w.qkvw[l], p.qkvb[l])
    if cache is None:
        k.attention_forward(a.atty[l], a.lse[l], qkv)
    else:
        k.attention_query(a.atty[l].reshape(att.shape[0], a.atty.shape[3]), att, kv_cache[l], pos)
    k.matmul_forward(a.attproj[l], a.atty[l], w.attprojw[l], p.attprojb[l])
    k.residual_layernorm_forward(a.residual2[l], a.ln2[l], a.ln2_mean[l], a.ln2_rstd[l], residual, a.attproj[l],
                                 p.ln2w[l], p.ln2b[l])
    k.matmul_forward(a.fch[l], a.ln2[l], w.fcw[l], p.fcb[l])
    k.gelu_forward(a.fch_gelu[l], a.fch[l])
    k.matmul_forward(a.fcproj[l], a.fch_gelu[l], w.fcprojw[l], p.fcprojb[l])
    if l + 1 < L:
        k.residual_layernorm_forward(a.residual3[l], a.ln1[l + 1], a.ln1_mean[l + 1], a.ln1_rstd[l + 1],
                                     a.residual2[l], a.fcproj[l], p.ln1w[l + 1], p.ln1b[l + 1])
    else:
        k.residual_layernorm_forward(a.residual3[l], a.lnf, a.lnf_mean, a.lnf_rstd, a.residual2[l], a.fcproj[l],
                                     p.lnfw, p.lnfb)


def head_forward(k, a, w):
    """The logits (the classifier is wte, from w) of the final layernorm, which the last layer's
    block_forward wrote."""
    k.matmul_forward(a.logits, a.lnf, w.wte, None)


# ----------------------------------------------------------------------------------------------
# training

class GPT2:
    """GPT-2 as in llm.c's train_gpt2.c.

    Activations are allocated for a (B, T) on the first forward and reused. A forward with a
    different (B, T) re-allocates them (and their gradients) for the new shape; that drops the
    state of the previous forward, so call backward() before changing shape. Generation is a
    Decoder's (below): it reads the parameters and leaves everything here alone.

    The classifier is fused as in llm.c's CUDA trainer: training keeps no (B, T, Vp) probs and no
    dlogits. forward(inputs, targets) leaves the logits in acts.logits, the losses in acts.losses
    and each row's log-sum-exp of its logits in acts.lse_logits; backward() then writes the
    logits' gradient over acts.logits, so after backward acts.logits holds dlogits (read the
    logits before backward). A forward without targets leaves the probabilities in self.probs.
    """

    def __init__(self, config, params=None, device="cpu", backend=None, copy=True, precision="fp32"):
        self.config = config
        self.backend = backend if backend is not None else get_backend(device, precision)
        k = self.backend
        shapes = param_shapes(config)
        self.num_parameters = Tensors.count(shapes)
        if params is None:
            params, copy = init_params(config), False
        params = np.asarray(params, dtype=np.float32).reshape(-1)
        if params.shape[0] != self.num_parameters:
            raise ValueError(f"params holds {params.shape[0]} floats, the config needs {self.num_parameters}")
        self.precision = precision
        self.dtype = np.uint16 if precision == "bf16" else np.float32   # params, grads, activations
        self.master = None          # bf16: the fp32 master weights (a flat device buffer)
        self.rng_state = RNG_STATE_BF16   # bf16: the xorshift state the rounding's seeds come from
        self.rng_state_last_update = None   # bf16: rng_state before the last update (llm.c's, saved)
        if precision == "bf16":
            self.master = k.asarray(params.copy() if copy else params)
            self.params = Tensors(k.asarray(fp32_to_bf16(params)), shapes)
        else:
            # the model trains its own copy (copy=False: the caller hands the array over, no copy)
            self.params = Tensors(k.asarray(params.copy() if copy else params), shapes)
        self.grads = None           # allocated lazily on the first backward
        self.grads_are_zero = False  # True when self.grads is known to hold zeros: zero_grad skips its fill
        self.m_memory = None        # AdamW state, allocated lazily on the first update
        self.v_memory = None
        self.acts = None            # allocated lazily on the first forward
        self.grads_acts = None
        self.layer_grads = None     # the per-layer part of grads_acts' buffer (one fill per layer)
        self.batch_size = 0
        self.seq_len = 0
        self.inputs = None
        self.targets = None
        self.has_targets = False
        self.logits_hold_grads = False  # backward() wrote dlogits over acts.logits
        self.mean_loss = None
        self.probs = None           # (B, T, Vp): a forward without targets' probabilities

    # ------------------------------------------------------------------------------------------
    # construction helpers

    @classmethod
    def from_checkpoint(cls, path, device="cpu", backend=None, precision="fp32"):
        config, params = read_checkpoint(path)
        return cls(config, params, device=device, backend=backend, copy=False, precision=precision)

    def save_checkpoint(self, path):
        """llm.c's model file: version 3 (float32), or for a bf16 model version 5 (its bf16
        parameters, as train_gpt2.cu writes them)."""
        if self.master is not None:
            write_checkpoint(path, self.config, bf16_to_fp32(self.backend.to_host(self.params.memory)), "bfloat16")
        else:
            write_checkpoint(path, self.config, self.backend.to_host(self.params.memory))

    def host_f32(self, arr):
        """A device array of the model (a bf16 one's: bf16 bits) on the host as float32."""
        out = self.backend.to_host(arr)
        return bf16_to_fp32(out) if out.dtype == np.uint16 else out

    def params_host(self):
        """The weights as a host float32 array (a bf16 model's: its fp32 master weights)."""
        return self.backend.to_host(self.master if self.master is not None else self.params.memory)

    # ------------------------------------------------------------------------------------------
    # input checks and lazy allocation

    def _check_tokens(self, name, tokens, shape=None):
        arr = np.asarray(tokens)
        if arr.ndim != 2:
            raise ValueError(f"{name} must have shape (B, T), got shape {arr.shape}")
        if shape is not None and arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, inputs have shape {shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
        B, T = arr.shape
        if B < 1 or T < 1:
            raise ValueError(f"{name} is empty: shape {arr.shape}")
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length T={T} exceeds the model's max_seq_len={self.config.max_seq_len}")
        V = self.config.vocab_size
        bad = (arr < 0) | (arr >= V)
        if bad.any():
            b, t = np.argwhere(bad)[0]
            raise ValueError(f"{name}[{b}, {t}] = {arr[b, t]} is not a token id in [0, {V})")
        return arr.astype(np.int32)

    def _ensure_activations(self, B, T):
        if self.acts is not None and (B, T) == (self.batch_size, self.seq_len):
            return
        k = self.backend
        self.acts = allocate(k, act_shapes(self.config, B, T), self.dtype, FP32_ACTS)
        self.grads_acts = None  # re-allocated with the new shape on the next backward
        self.probs = None
        self.batch_size, self.seq_len = B, T
        self.inputs = k.zeros(B * T, dtype=np.int32).reshape(B, T)
        self.targets = k.zeros(B * T, dtype=np.int32).reshape(B, T)

    # ------------------------------------------------------------------------------------------
    # gpt2_forward

    def forward(self, inputs, targets=None):
        """Forward (B, T) token ids; with targets, also the loss. Returns the mean loss or None.
        The logits (B, T, Vp) are left in self.acts; with targets the losses (B, T) too (and
        their log-sum-exps, for backward), without targets the probabilities in self.probs
        (B, T, Vp: allocated by a forward without targets, reused by the next ones of its shape,
        dropped by a forward with targets, so training holds no probs)."""
        inputs = self._check_tokens("inputs", inputs)
        if targets is not None:
            targets = self._check_tokens("targets", targets, inputs.shape)
        B, T = inputs.shape
        self._ensure_activations(B, T)
        k, p, a = self.backend, self.params, self.acts
        k.copy_(self.inputs, inputs)

        k.encoder_forward(a.encoded, self.inputs, p.wte, p.wpe)
        for l in range(self.config.num_layers):
            block_forward(k, l, a, p, p)
        head_forward(k, a, p)
        self.logits_hold_grads = False
        V = self.config.vocab_size

        if targets is None:
            self.has_targets = False
            self.mean_loss = None
            if self.probs is None:
                self.probs = k.zeros(a.logits.size).reshape(a.logits.shape)
            k.softmax_forward(self.probs, a.logits, V)
            return None
        self.probs = None  # training keeps no probs (the fused classifier needs none)
        k.copy_(self.targets, targets)
        k.crossentropy_forward(a.losses, a.lse_logits, a.logits, self.targets, V)
        self.has_targets = True
        self.mean_loss = float(k.to_host(a.losses).astype(np.float64).mean())
        return self.mean_loss

    # ------------------------------------------------------------------------------------------
    # gpt2_zero_grad

    def zero_grad(self, params=True):
        """Zero the parameter gradients and the activation gradients (one fill each).
        params=False zeroes only the activation gradients: between the micro-steps of gradient
        accumulation, where the parameter gradients must keep adding up. The parameter gradients'
        fill is skipped when they are known to be zero: freshly allocated, or zeroed by update()
        as AdamW read them (only backward() and update() write them; a caller that writes into
        self.grads itself sets grads_are_zero = False)."""
        if params and self.grads is not None and not self.grads_are_zero:
            self.backend.fill(self.grads.memory, 0.0)
            self.grads_are_zero = True
        if self.grads_acts is not None:
            self.backend.fill(self.grads_acts.memory, 0.0)

    # ------------------------------------------------------------------------------------------
    # gpt2_backward

    def backward(self, grad_scale=1.0):
        """Backward from the mean loss of the last forward (times grad_scale, e.g. 1/N for N
        accumulated micro-batches); gradients accumulate into self.grads."""
        if not self.has_targets:
            raise RuntimeError("backward() needs a forward(inputs, targets) with targets first")
        if self.logits_hold_grads:
            raise RuntimeError("backward() was already called after this forward (it wrote the logits' "
                               "gradient over the logits): run forward(inputs, targets) again first")
        k = self.backend
        if self.grads is None:
            self.grads = Tensors(k.zeros(self.num_parameters, dtype=self.dtype), param_shapes(self.config))
        self.grads_are_zero = False  # this backward adds into them
        if self.grads_acts is None:
            shapes = grad_act_shapes(self.config, self.batch_size, self.seq_len)
            self.grads_acts = allocate(k, shapes, self.dtype, FP32_ACTS)
            nlayer = Tensors.count({n: shapes[n] for n in LAYER_GRAD_NAMES})   # (the last ones)
            memory = self.grads_acts.memory
            self.layer_grads = memory[memory.shape[0] - nlayer:]
        B, T = self.batch_size, self.seq_len
        L = self.config.num_layers
        V = self.config.vocab_size
        p, g, a, ga = self.params, self.grads, self.acts, self.grads_acts

        # the mean over B*T losses: every position's loss gets gradient 1/(B*T)
        k.fill(ga.losses, grad_scale / (B * T))
        # the fused classifier: dlogits over the logits, in place (a.logits is dlogits from here)
        k.crossentropy_softmax_backward(a.logits, ga.losses, a.lse_logits, self.targets, V)
        self.logits_hold_grads = True
        k.matmul_backward(ga.lnf, g.wte, None, a.logits, a.lnf, p.wte)
        # dresidual: the gradient of the residual stream, from the last layer's output down to the
        # encoder's. Each layer's output is residual3 = residual2 + fcproj, residual2 = residual +
        # attproj, so fcproj's gradient is dresidual as the layer receives it, attproj's is
        # dresidual once the MLP branch has added in, and the layer's input gets both branches.
        dresidual = ga.dresidual
        k.layernorm_backward(dresidual, g.lnfw, g.lnfb, ga.lnf, a.residual3[L - 1], p.lnfw,
                             a.lnf_mean, a.lnf_rstd)

        for l in range(L - 1, -1, -1):
            residual = a.encoded if l == 0 else a.residual3[l - 1]
            if l < L - 1:
                k.fill(self.layer_grads, 0.0)  # the layer above used this scratch (zero_grad did the first)
            k.matmul_backward(ga.fch_gelu, g.fcprojw[l], g.fcprojb[l], dresidual, a.fch_gelu[l], p.fcprojw[l])
            k.gelu_backward(ga.fch, a.fch[l], ga.fch_gelu)
            k.matmul_backward(ga.ln2, g.fcw[l], g.fcb[l], ga.fch, a.ln2[l], p.fcw[l])
            k.layernorm_backward(dresidual, g.ln2w[l], g.ln2b[l], ga.ln2, a.residual2[l], p.ln2w[l],
                                 a.ln2_mean[l], a.ln2_rstd[l])
            k.matmul_backward(ga.atty, g.attprojw[l], g.attprojb[l], dresidual, a.atty[l], p.attprojw[l])
            k.attention_backward(ga.qkv, ga.atty, a.qkv[l], a.atty[l], a.lse[l])
            k.matmul_backward(ga.ln1, g.qkvw[l], g.qkvb[l], ga.qkv, a.ln1[l], p.qkvw[l])
            k.layernorm_backward(dresidual, g.ln1w[l], g.ln1b[l], ga.ln1, residual, p.ln1w[l],
                                 a.ln1_mean[l], a.ln1_rstd[l])
        k.encoder_backward(g.wte, g.wpe, dresidual, self.inputs)

    # ------------------------------------------------------------------------------------------
    # gpt2_update

    def update(self, learning_rate, beta1, beta2, eps, weight_decay, t, decay=None, shard=None):
        """One AdamW step (t is the 1-based step), as llm.c's gpt2_update: optim.adamw_update, which
        says what decay (the tensors weight decay applies to) and shard (ZeRO-1) do. AdamW zeroes
        self.grads as it reads them, unless a shard's reduced gradient is read instead."""
        optim.adamw_update(self, learning_rate, beta1, beta2, eps, weight_decay, t, decay=decay, shard=shard)

    # ------------------------------------------------------------------------------------------
    # what the optimizer, gradient clipping and checkpoints read and write

    def optimizer_state(self):
        """AdamW's (m, v) as host float32 arrays (under ZeRO-1, this rank's shard), or None
        before the first update."""
        if self.m_memory is None:
            return None
        return self.backend.to_host(self.m_memory), self.backend.to_host(self.v_memory)

    def load_master_weights(self, master, rng_last_update):
        """A bf16 model resumed (llm.c's load_state with master weights): its fp32 master weights
        from a state file, and the rounding's rng as the update that wrote them left it (one seed per
        parameter tensor after rng_last_update). The bf16 parameters stay the model file's."""
        if self.master is None:
            raise ValueError("load_master_weights is for a bf16 model (--precision bf16)")
        if np.shape(master) != (self.num_parameters,):
            raise ValueError(f"master weights {np.shape(master)}, the model has {self.num_parameters} parameters")
        self.backend.copy_(self.master, master)
        self.rng_state_last_update = state = int(rng_last_update)
        for _ in self.params.shapes:
            _, state = random_u32(state)
        self.rng_state = state

    def load_optimizer_state(self, m, v):
        """Set AdamW's m and v to copies of host arrays (a checkpoint's; under ZeRO-1 a shard)."""
        if np.shape(m) != np.shape(v) or np.ndim(m) != 1:
            raise ValueError(f"AdamW's m {np.shape(m)} and v {np.shape(v)} must be flat and of one length")
        k = self.backend
        self.m_memory, self.v_memory = (k.asarray(np.array(x, dtype=np.float32)) for x in (m, v))

    def grad_norm_squared(self):
        """The sum of squares of the gradient (float64 accumulation) as a Python float."""
        return self.backend.global_norm_squared(self.grads.memory)

    def scale_grads(self, factor):
        """The gradient *= factor, in place (gradient clipping)."""
        self.backend.scale_(self.grads.memory, factor)

    def params_finite(self):
        """False when a parameter is NaN or inf (one pass: their sum of squares is not finite)."""
        return math.isfinite(self.backend.global_norm_squared(self.params.memory))


# ----------------------------------------------------------------------------------------------
# generation: one token at a time over a KV cache (llm.c re-runs the whole forward instead)

DTYPES = ("float32", "bfloat16", "int8")   # the Decoder's precisions of the weights it streams
MATRICES = ("qkvw", "attprojw", "fcw", "fcprojw", "wte")  # what a step streams (~99.9% of its
                                                          # weight bytes); dtype "int8" quantizes them


class Decoder:
    """Generation's state, apart from the training model's (llama2.c's RunState): the KV cache
    (every layer's qkv rows, (L, maxT, B, 3C)), one step's activations and the weights the step
    streams, on the model's backend, allocated once and reused by every sequence.

    batch B: B sequences at once, in step: each step runs one token of each at one position, and
    reads every weight once for the B of them (a GEMV over B rows on the CPU). A sequence's
    probabilities are the same bits whatever B and whatever the other sequences hold.

    dtype "float32": the step reads the model's parameters as they are at each step (a sample
    during training sees the weights trained so far; a bf16 model's: its fp32 master weights). dtype "bfloat16" (CPU): the matrices are
    streamed as bfloat16 bits, half the bytes per token, and every parameter is read rounded to
    bfloat16 from a copy made now, so the decoder is the model of its bf16-rounded parameters
    (lossless for an llm.c bf16 checkpoint). dtype "int8" (CPU): the matrices (MATRICES: the
    layers' four and wte, the classifier) are streamed as int8 with a float32 scale per row
    (matmul.quantize_int8: symmetric, round to nearest), a quarter of the bytes; the decoder is
    the model of its parameters with those matrices dequantized (q * scale; the token embedding
    reads its rows of the dequantized wte), the rest float32. Either copy leaves the model's own
    parameters as they are.
    """

    def __init__(self, model, dtype="float32", batch=1):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {dtype!r}")
        if not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        k, cfg = model.backend, model.config
        if getattr(model, "master", None) is not None:
            # a bf16 training model (--precision bf16): generation reads its fp32 master weights,
            # in place (the weights trained so far), on an fp32 backend of its own device
            k = type(k)("fp32")
        self.config, self.backend, self.dtype, self.batch = cfg, k, dtype, batch
        if dtype != "float32" and k.name != "cpu":
            raise ValueError(f"dtype {dtype!r} generation is for the CPU backend")
        if dtype == "bfloat16":
            bits = fp32_to_bf16(model.params_host())
            self.params = Tensors(bf16_to_fp32(bits), model.params.shapes)
            self.weights = Tensors(bits, model.params.shapes)
        elif dtype == "int8":
            self.params = Tensors(model.params_host().copy(), model.params.shapes)
            quantized = {}
            for name in MATRICES:
                w = quantize_int8(getattr(self.params, name))
                getattr(self.params, name)[...] = w.dequantize()
                # per layer, made once, not at every call of every step
                quantized[name] = w if name == "wte" else [w[l] for l in range(cfg.num_layers)]
            self.weights = types.SimpleNamespace(**quantized)
        elif getattr(model, "master", None) is not None:
            self.params = self.weights = Tensors(model.master, model.params.shapes)
        else:
            self.params = self.weights = model.params
        B, L, maxT, C = batch, cfg.num_layers, cfg.max_seq_len, cfg.channels
        self.kv_cache = k.zeros(L * maxT * B * 3 * C).reshape(L, maxT, B, 3 * C)
        self.att_scratch = k.zeros(B * cfg.num_heads * maxT).reshape(B, cfg.num_heads, maxT)
        shapes = act_shapes(cfg, B, 1, probs=True)
        self.acts = Tensors(k.zeros(Tensors.count(shapes)), shapes)
        self.tokens = k.zeros(B, dtype=np.int32).reshape(B, 1)
        self.pos = 0

    def begin(self):
        """Start new sequences at position 0 (the cache's rows are overwritten as they go)."""
        self.pos = 0

    def weight_bytes(self):
        """The bytes of the matrices (MATRICES) a step reads, at the decoder's precision: what
        memory bandwidth bounds (the rest of the parameters, biases and layernorms, are ~0.1%;
        the KV cache's rows, 2 t C floats per layer at position t, are not counted)."""
        total = 0
        for name in MATRICES:
            w = getattr(self.weights, name)
            total += sum(x.nbytes for x in w) if isinstance(w, list) else w.nbytes
        return total

    def step(self, tokens):
        """Run one token of each sequence at their next position (self.pos) through the layers
        (its qkv joins the KV cache; it attends over its sequence's positions before it and
        itself). tokens: an int (batch 1) or B ints. Returns the probabilities of the next token
        on the host, (Vp,) for an int, (B, Vp) for B ints: the one copy back per step."""
        cfg, k, a, p = self.config, self.backend, self.acts, self.params
        t = self.pos
        if t >= cfg.max_seq_len:
            raise ValueError(f"generation reached max_seq_len={cfg.max_seq_len}")
        ids = np.asarray(tokens)
        if ids.size != self.batch or ids.ndim > 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"step takes {self.batch} token id(s), one per sequence, got {tokens!r}")
        flat = ids.reshape(-1)
        bad = flat[(flat < 0) | (flat >= cfg.vocab_size)]
        if bad.size:
            raise ValueError(f"token {bad[0]} is not a token id in [0, {cfg.vocab_size})")
        k.copy_(self.tokens, flat.astype(np.int32).reshape(self.batch, 1))
        k.encoder_forward(a.encoded, self.tokens, p.wte, p.wpe[t:t + 1])
        for l in range(cfg.num_layers):
            block_forward(k, l, a, p, self.weights, cache=(self.kv_cache, self.att_scratch), pos=t)
        head_forward(k, a, self.weights)
        k.softmax_forward(a.probs, a.logits, cfg.vocab_size)
        self.pos += 1
        probs = k.to_host(a.probs).reshape(self.batch, -1)
        return probs[0] if ids.ndim == 0 else probs


# ----------------------------------------------------------------------------------------------
# the first run: every kernel compiled up front

COMPILE_CONFIG = GPT2Config(max_seq_len=8, vocab_size=100, padded_vocab_size=128, num_layers=1, num_heads=2,
                            channels=64)


def compile_kernels(backend):
    """Run every kernel of a training step and of a sample once, on a tiny model (1 layer, 2 heads
    of 32 channels, B=2, T=4), so that Numba compiles them now, or loads them from its cache.
    Numba builds a kernel per argument types (dtype, dimensions, layout), not per size: these are
    the builds a run of any size calls."""
    model = GPT2(COMPILE_CONFIG, backend=backend, precision=getattr(backend, "precision", "fp32"))
    x = np.arange(8, dtype=np.int32).reshape(2, 4)
    model.forward(x, x)
    model.zero_grad()
    model.backward()
    optim.clip_grad_norm(model, 1e-3)  # clips: its scaling kernel too
    model.update(1e-4, 0.9, 0.999, 1e-8, 0.1, 1, decay=optim.DECAYED)
    model.params_finite()
    Decoder(model).step(1)


__all__ = ["DTYPES", "GPT2", "Decoder", "MATRICES", "block_forward", "compile_kernels", "head_forward", "init_params"]
