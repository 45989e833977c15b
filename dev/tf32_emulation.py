"""How far does `--precision tf32` move llmnb-test's numbers? TF32 emulated on the CPU, before a card.

    python -m dev.tf32_emulation                 # GPT-2 124M, B=4 T=64, 10 AdamW steps (~2 min, 2 cores)
    python -m dev.tf32_emulation --layers 2 --steps 3

`llmnb-test --device cuda --precision tf32` compares llmnb's tensor-core step with PyTorch's fp32 one
(llmnb-reference). On the card every product of the matmuls (forward, dinp, dweight) and of attention
(s = q k^T, o = p v and the backward's four) is mma.sync with both operands rounded by cvt.rna.tf32
(10 mantissa bits, round to nearest, ties away) and fp32 accumulation. This script runs llmnb-reference's
model twice in PyTorch, fp32 and with exactly that rounding on both operands of every product (a custom
autograd function: the backward's products round theirs too), from the same weights and batch, and
prints the differences llmnb-test would check -- the first step's logits and 16 gradients, the losses
of 10 AdamW steps -- each as a share of parity.TOLERANCES["tf32"]. Exit status 0 when all are within.

What it does not model: the order in which the tensor cores add their fp32 products, and where
attention's second product rounds its probabilities (the card rounds the unnormalized exp(s - max)
and divides by a sum of unrounded ones, this rounds softmax(s)): another rounding of the same size,
2^-11 relative, so the differences printed are of the card's size, not its bits.
"""
import argparse
import sys

import numpy as np

from llmnb import reference_torch as R
from llmnb.config import Tensors, param_shapes
from llmnb.parity import TOLERANCES


def define_tf32_products(torch):
    """-> (tf32 rounding of a tensor, matmul with both operands rounded, in forward and backward)."""

    def to_tf32(x):
        # cvt.rna.tf32.f32: keep 10 mantissa bits, round half away from zero (on the magnitude's bits)
        bits = x.contiguous().view(torch.int32)
        return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)

    class TF32Matmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return torch.matmul(to_tf32(a), to_tf32(b))

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            g = to_tf32(g)
            return torch.matmul(g, to_tf32(b).transpose(-2, -1)), torch.matmul(to_tf32(a).transpose(-2, -1), g)

    return to_tf32, TF32Matmul.apply


def train(torch, args, tf32):
    """llmnb-reference's run (its model, init, batch and AdamW), fp32 or with TF32 products ->
    (losses, first step's logits, first step's gradients as llm.c's flat array)."""
    torch.manual_seed(args.seed)
    config, _ = R.model_config(args)
    x, y = R.make_batch(torch, args, config)
    model = R.define_gpt2(torch)(config)
    R.init_gpt2_(torch, model, args.seed)
    F = torch.nn.functional
    saved = F.linear, torch.Tensor.__matmul__
    if tf32:
        _, matmul = define_tf32_products(torch)

        def linear(inp, weight, bias=None):   # nn.Linear's product (the classifier's too)
            out = matmul(inp.reshape(-1, inp.shape[-1]), weight.t()).reshape(*inp.shape[:-1], weight.shape[0])
            return out if bias is None else out + bias

        F.linear = linear
        torch.Tensor.__matmul__ = lambda a, b: matmul(a, b)   # attention's q @ k^T and att @ v
    try:
        first = []
        losses = R.adamw_steps(torch, model, x, y, args.steps,
                               lambda logits, loss: first.extend([logits.detach().numpy().copy(),
                                                                  R.to_llmc(model, grads=True)]))
    finally:
        F.linear, torch.Tensor.__matmul__ = saved
    return losses, first[0], first[1], config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("layers", "heads", "channels", "vocab", "max-seq-len"):
        p.add_argument(f"--{name}", type=int, help="as llmnb-reference's (default: GPT-2 124M's)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    args.model, args.data = None, None
    import torch
    torch.set_num_threads(args.threads or R.available_cpus())
    R.check_args(args)
    ref_losses, ref_logits, ref_grads, config = train(torch, args, tf32=False)
    tf_losses, tf_logits, tf_grads, _ = train(torch, args, tf32=True)

    logits_tol, loss_tol, grad_tols, grad_rel = TOLERANCES["tf32"]
    shares = []

    def line(label, diff, share):
        shares.append(share)
        print(f"{label:28s} max |diff| {diff:9.3e}   {100 * share:6.1f}% of llmnb-test's tf32 tolerance")

    c = config
    print(f"GPT-2 L={c.num_layers} NH={c.num_heads} C={c.channels} V={c.vocab_size}, B={args.batch} "
          f"T={args.seq_len}: fp32 against every product's operands rounded to TF32")
    d = float(np.abs(tf_logits - ref_logits).max())
    line("logits (step 1)", d, d / logits_tol)
    for i, (a, b) in enumerate(zip(tf_losses, ref_losses)):
        line(f"loss, step {i + 1} ({b:.4f})", abs(a - b), abs(a - b) / loss_tol)
    ours, theirs = Tensors(tf_grads, param_shapes(c)), Tensors(ref_grads, param_shapes(c))
    for name, tol in grad_tols.items():
        a, b = getattr(ours, name), getattr(theirs, name)
        diff = np.abs(a - b)
        line(f"d{name} (step 1)", float(diff.max()), float((diff / (tol + grad_rel * np.abs(b))).max()))
    worst = max(shares)
    print(f"worst: {100 * worst:.1f}% of its tolerance: llmnb-test --precision tf32 would "
          f"{'pass' if worst < 1 else 'FAIL'} if the card rounds as this emulation does")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
