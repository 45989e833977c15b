"""GPT-2 configuration and the layout of the flat buffers, as in llm.c's train_gpt2.c.

All parameters live in one contiguous float32 array, in the order of PARAM_NAMES; all activations
in another, in the order of ACT_NAMES. Each named tensor is a NumPy view into its flat buffer,
reshaped to its natural shape. Gradients use the same layout as what they are gradients of.
"""
from dataclasses import dataclass

import numpy as np

# the 16 parameter tensors, in llm.c's order (the order of the checkpoint file too)
PARAM_NAMES = (
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb",
)

# the 22 activation tensors, in llm.c's order, except for two softmaxes kept as their log-sum-exp
# (the kernels recompute the softmax from it): attention keeps per query row the lse of its
# scores (as llm.c's cuDNN path keeps its softmax statistics) in place of the CPU trainer's
# (B, NH, T, T) preatt and att, and the classifier per row the lse of its logits (lse_logits) in
# place of the (B, T, Vp) probs, as llm.c's CUDA trainer's fused classifier
ACT_NAMES = (
    "encoded", "ln1", "ln1_mean", "ln1_rstd", "qkv", "atty", "lse", "attproj",
    "residual2", "ln2", "ln2_mean", "ln2_rstd", "fch", "fch_gelu", "fcproj", "residual3",
    "lnf", "lnf_mean", "lnf_rstd", "logits", "lse_logits", "losses",
)

# the per-layer activation gradients: one layer's worth, reused by every layer (grad_act_shapes)
LAYER_GRAD_NAMES = ("ln1", "qkv", "atty", "ln2", "fch", "fch_gelu")


# train_gpt2.cu's gpt2_set_hyperparameters: -e dL's depth L -> (channels C, heads NH)
DEPTHS = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25), 60: (1920, 30),
          72: (2880, 30), 84: (3456, 36)}


@dataclass(frozen=True)
class GPT2Config:
    max_seq_len: int = 1024       # maxT
    vocab_size: int = 50257       # V
    padded_vocab_size: int = 50304  # Vp, V rounded up to a multiple of 128
    num_layers: int = 12          # L
    num_heads: int = 12           # NH
    channels: int = 768           # C

    def __post_init__(self):
        # the one check of a model shape: file headers (formats), HF configs (convert) and CLI
        # options (reference_torch) all build a GPT2Config and report its ValueError
        for name in ("max_seq_len", "vocab_size", "padded_vocab_size", "num_layers",
                     "num_heads", "channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} = {getattr(self, name)} (must be positive)")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded_vocab_size {self.padded_vocab_size} < vocab_size {self.vocab_size}")
        if self.channels % self.num_heads != 0:
            raise ValueError(f"channels {self.channels} not divisible by num_heads {self.num_heads}")

    @staticmethod
    def pad_vocab(V, multiple=128):
        """llm.c pads the vocabulary to a multiple of 128 (50257 -> 50304)."""
        return ((V + multiple - 1) // multiple) * multiple

    @classmethod
    def depth(cls, L, max_seq_len=1024, vocab_size=50257):
        """train_gpt2.cu's -e dL (gpt2_set_hyperparameters): its table of (C, NH) for L = 6, 12 (GPT-2
        124M), 24 (350M), 36 (774M), 48 (1558M), 60, 72, 84; any other L (llm.c refuses them) is
        llmnb's own small model, C = 64*L, NH = max(1, C/64), for tests and quick runs."""
        C, NH = DEPTHS.get(L, (64 * L, max(1, L)))
        return cls(max_seq_len=max_seq_len, vocab_size=vocab_size,
                   padded_vocab_size=cls.pad_vocab(vocab_size), num_layers=L, num_heads=NH, channels=C)



def param_shapes(config):
    """The 16 parameter shapes, as fill_in_parameter_sizes (natural shapes, not just sizes)."""
    Vp, C, maxT, L = config.padded_vocab_size, config.channels, config.max_seq_len, config.num_layers
    return {
        "wte": (Vp, C), "wpe": (maxT, C),
        "ln1w": (L, C), "ln1b": (L, C),
        "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
        "attprojw": (L, C, C), "attprojb": (L, C),
        "ln2w": (L, C), "ln2b": (L, C),
        "fcw": (L, 4 * C, C), "fcb": (L, 4 * C),
        "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
        "lnfw": (C,), "lnfb": (C,),
    }


def act_shapes(config, B, T, probs=False):
    """The 22 activation shapes, as fill_in_activation_sizes (lse for preatt and att, lse_logits
    for probs). probs=True adds a (B, T, Vp) probs after the logits: generation's one-token step
    returns its probabilities (training needs none)."""
    C, NH, L, Vp = config.channels, config.num_heads, config.num_layers, config.padded_vocab_size
    shapes = {
        "encoded": (B, T, C),
        "ln1": (L, B, T, C), "ln1_mean": (L, B, T), "ln1_rstd": (L, B, T),
        "qkv": (L, B, T, 3 * C), "atty": (L, B, T, C),
        "lse": (L, B, NH, T),
        "attproj": (L, B, T, C), "residual2": (L, B, T, C),
        "ln2": (L, B, T, C), "ln2_mean": (L, B, T), "ln2_rstd": (L, B, T),
        "fch": (L, B, T, 4 * C), "fch_gelu": (L, B, T, 4 * C),
        "fcproj": (L, B, T, C), "residual3": (L, B, T, C),
        "lnf": (B, T, C), "lnf_mean": (B, T), "lnf_rstd": (B, T),
        "logits": (B, T, Vp),
    }
    if probs:
        shapes["probs"] = (B, T, Vp)
    shapes.update(lse_logits=(B, T), losses=(B, T))
    return shapes


def grad_act_shapes(config, B, T):
    """The activation gradients backward keeps, as llm.c's CUDA trainer does (not its CPU one,
    which keeps a gradient for each of the L layers' activations): the residual stream's gradient
    (one (B,T,C) buffer that every layer adds its branches into, on its way down to the encoder),
    the classifier's input's and the losses', and one layer's worth of LAYER_GRAD_NAMES, last,
    reused by every layer. No dlogits: backward writes it over the activations' logits (the fused
    classifier, kernels.crossentropy_softmax_backward)."""
    C = config.channels
    return {
        "dresidual": (B, T, C), "lnf": (B, T, C), "losses": (B, T),
        "ln1": (B, T, C), "qkv": (B, T, 3 * C), "atty": (B, T, C),
        "ln2": (B, T, C), "fch": (B, T, 4 * C), "fch_gelu": (B, T, 4 * C),
    }


def _size(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def param_sizes(config):
    """The 16 sizes of fill_in_parameter_sizes, in order."""
    return [_size(s) for s in param_shapes(config).values()]


def act_sizes(config, B, T):
    """The 22 sizes of fill_in_activation_sizes, in order."""
    return [_size(s) for s in act_shapes(config, B, T).values()]


class Tensors:
    """Named views into one flat buffer (llm.c's ParameterTensors / ActivationTensors).

    `memory` is the flat buffer; each name is an attribute holding a view of it in its natural
    shape. Works for any array type that supports 1-D slicing and reshape (NumPy arrays, Numba
    CUDA device arrays).
    """

    def __init__(self, memory, shapes):
        self.memory = memory
        self.shapes = dict(shapes)
        self.names = tuple(self.shapes)
        offset = 0
        for name, shape in self.shapes.items():
            n = _size(shape)
            setattr(self, name, memory[offset:offset + n].reshape(shape))
            offset += n
        if offset != memory.shape[0]:
            raise ValueError(f"flat buffer holds {memory.shape[0]} floats, layout needs {offset}")

    @staticmethod
    def count(shapes):
        return sum(_size(s) for s in shapes.values())

    @classmethod
    def allocate(cls, shapes, zeros=np.zeros):
        return cls(zeros(cls.count(shapes), dtype=np.float32), shapes)

    def __iter__(self):
        return ((name, getattr(self, name)) for name in self.names)
