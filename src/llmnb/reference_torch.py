"""llmnb-reference: PyTorch reference files for checking the trainer, as llm.c's train_gpt2.py writes.

A small PyTorch GPT-2 (float32, manual attention) runs a few AdamW steps on one batch and writes
into --out:
  model.bin             the initial weights, an llm.c float32 checkpoint (Vp-padded wte)
  debug_state.bin       the batch x, y, the step-0 logits (B,T,V), loss, and gradients of all
                        parameters in llm.c's layout (the wte padding rows zero)
  expected_losses.json  the loss of each step, each measured before that step's update
which is what llm.c's test_gpt2.c checks its C model against.

PyTorch is an optional dependency: it is imported inside main(), never at module import.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

from .config import PARAM_NAMES, GPT2Config, Tensors, param_shapes
from .fileio import FormatError, atomic_write
from .formats import read_checkpoint, read_shard, write_checkpoint, write_debug_state

PROG = "llmnb-reference"
NO_TORCH = "llmnb-reference needs PyTorch: pip install 'llmnb[reference]'"

# AdamW hyperparameters of test_gpt2.c's gpt2_update(&model, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, t)
LEARNING_RATE, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.999), 1e-8, 0.01

# llm.c's 16 parameter tensors -> the PyTorch parameter(s) they hold; "{l}" marks one per layer,
# stacked along llm.c's leading L axis. All weights are in nn.Linear's (out, in) layout.
TORCH_NAMES = {
    "wte": "transformer.wte.weight",                  # (V, C), padded to (Vp, C) in llm.c
    "wpe": "transformer.wpe.weight",                  # (maxT, C)
    "ln1w": "transformer.h.{l}.ln_1.weight",          # (L, C)
    "ln1b": "transformer.h.{l}.ln_1.bias",            # (L, C)
    "qkvw": "transformer.h.{l}.attn.c_attn.weight",   # (L, 3C, C)
    "qkvb": "transformer.h.{l}.attn.c_attn.bias",     # (L, 3C)
    "attprojw": "transformer.h.{l}.attn.c_proj.weight",  # (L, C, C)
    "attprojb": "transformer.h.{l}.attn.c_proj.bias",    # (L, C)
    "ln2w": "transformer.h.{l}.ln_2.weight",          # (L, C)
    "ln2b": "transformer.h.{l}.ln_2.bias",            # (L, C)
    "fcw": "transformer.h.{l}.mlp.c_fc.weight",       # (L, 4C, C)
    "fcb": "transformer.h.{l}.mlp.c_fc.bias",         # (L, 4C)
    "fcprojw": "transformer.h.{l}.mlp.c_proj.weight",  # (L, C, 4C)
    "fcprojb": "transformer.h.{l}.mlp.c_proj.bias",   # (L, C)
    "lnfw": "transformer.ln_f.weight",                # (C,)
    "lnfb": "transformer.ln_f.bias",                  # (C,)
}
assert tuple(TORCH_NAMES) == PARAM_NAMES


class UsageError(Exception):
    """A bad option or input: main prints its message as one line and exits with status 2."""


# ----------------------------------------------------------------------------------------------
# the PyTorch model

def define_gpt2(torch, sdpa=False, pad_vocab=False):
    """Return the GPT class, built on the given torch module (so llmnb imports without torch).
    sdpa=False: attention as llm.c writes it, a materialised (B, NH, T, T) matrix (the parity
    reference); sdpa=True: F.scaled_dot_product_attention, as nanoGPT (what a user would run).
    pad_vocab=True: wte and the logits have Vp rows (50304 for GPT-2), as nanoGPT's vocab_size."""
    nn, F = torch.nn, torch.nn.functional

    class CausalSelfAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            C = config.channels
            self.num_heads = config.num_heads
            self.c_attn = nn.Linear(C, 3 * C)  # q, k, v for all heads at once
            self.c_proj = nn.Linear(C, C)

        def forward(self, x):
            # x (B,T,C) -> (B,T,C)
            B, T, C = x.shape
            NH = self.num_heads
            hs = C // NH
            q, k, v = self.c_attn(x).split(C, dim=2)
            q = q.view(B, T, NH, hs).transpose(1, 2)  # (B,NH,T,hs)
            k = k.view(B, T, NH, hs).transpose(1, 2)
            v = v.view(B, T, NH, hs).transpose(1, 2)
            if sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            preatt = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B,NH,T,T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = F.softmax(preatt.masked_fill(~causal, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)  # heads side by side
            return self.c_proj(y)

    class MLP(nn.Module):
        def __init__(self, config):
            super().__init__()
            C = config.channels
            self.c_fc = nn.Linear(C, 4 * C)
            self.c_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.ln_1 = nn.LayerNorm(config.channels, eps=1e-5)
            self.attn = CausalSelfAttention(config)
            self.ln_2 = nn.LayerNorm(config.channels, eps=1e-5)
            self.mlp = MLP(config)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            V = config.padded_vocab_size if pad_vocab else config.vocab_size
            C = config.channels
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(V, C),
                wpe=nn.Embedding(config.max_seq_len, C),
                h=nn.ModuleList(Block(config) for _ in range(config.num_layers)),
                ln_f=nn.LayerNorm(C, eps=1e-5),
            ))
            self.lm_head = nn.Linear(C, V, bias=False)
            self.lm_head.weight = self.transformer.wte.weight  # tied

        def forward(self, idx, targets=None):
            # idx, targets (B,T) int64 -> logits (B,T,V), mean cross-entropy loss (None without
            # targets, as nanoGPT's: for sampling, or a loss of the caller's own)
            B, T = idx.shape
            pos = torch.arange(T, device=idx.device)
            x = self.transformer.wte(idx) + self.transformer.wpe(pos)
            for block in self.transformer.h:
                x = block(x)
            logits = self.lm_head(self.transformer.ln_f(x))
            if targets is None:
                return logits, None
            loss = F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
            return logits, loss

    return GPT


def init_gpt2_(torch, model, seed):
    """GPT-2's init: N(0, 0.02) weights, N(0, 0.02/sqrt(2L)) residual projections (attn.c_proj,
    mlp.c_proj), zero biases, unit layernorm weights. Drawn in parameter order from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif ".ln_" in name:
                p.fill_(1.0)
            elif name.endswith("c_proj.weight"):
                p.normal_(0.0, residual_std, generator=generator)
            else:
                p.normal_(0.0, 0.02, generator=generator)


# ----------------------------------------------------------------------------------------------
# between the PyTorch parameters and llm.c's flat layout

def torch_params(model, name):
    """The PyTorch parameters behind llm.c tensor `name`: one per layer, or a single one."""
    params = dict(model.named_parameters())
    pattern = TORCH_NAMES[name]
    if "{l}" in pattern:
        return [params[pattern.format(l=l)] for l in range(model.config.num_layers)]
    return [params[pattern]]


def to_llmc(model, grads=False):
    """The parameters (or their gradients) as llm.c's flat float32 array, wte zero-padded to Vp
    (a pad_vocab model: its own Vp rows)."""
    config = model.config
    out = Tensors.allocate(param_shapes(config))
    for name in PARAM_NAMES:
        dst = getattr(out, name)
        parts = [(p.grad if grads else p).detach().cpu().numpy() for p in torch_params(model, name)]
        if "{l}" in TORCH_NAMES[name]:
            for l, part in enumerate(parts):
                dst[l] = part
        elif name == "wte":  # V rows, or Vp (pad_vocab)
            dst[:parts[0].shape[0]] = parts[0]
        else:
            dst[...] = parts[0]
    return out.memory


def load_llmc_(torch, model, params):
    """Copy llm.c's flat parameters into the model (wte: as many rows as the model has, V or Vp)."""
    config = model.config
    src = Tensors(params, param_shapes(config))
    with torch.no_grad():
        for name in PARAM_NAMES:
            value = getattr(src, name)
            parts = torch_params(model, name)
            if "{l}" in TORCH_NAMES[name]:
                for l, p in enumerate(parts):
                    p.copy_(torch.from_numpy(np.ascontiguousarray(value[l])))
            elif name == "wte":
                parts[0].copy_(torch.from_numpy(np.ascontiguousarray(value[:parts[0].shape[0]])))
            else:
                parts[0].copy_(torch.from_numpy(np.ascontiguousarray(value)))


# ----------------------------------------------------------------------------------------------
# command line

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG, description="Write llm.c-style reference files (model.bin, debug_state.bin, "
        "expected_losses.json) from a PyTorch GPT-2, like llm.c's train_gpt2.py.")
    p.add_argument("--out", required=True, help="directory to write the three files into")
    p.add_argument("--model", help="llm.c checkpoint to start from (default: random GPT-2 init)")
    init = p.add_argument_group("random init (without --model)")
    init.add_argument("--layers", type=int, help="L (default 12)")
    init.add_argument("--heads", type=int, help="NH (default 12)")
    init.add_argument("--channels", type=int, help="C (default 768)")
    init.add_argument("--vocab", type=int, help="V (default 50257; padded to a multiple of 128)")
    init.add_argument("--max-seq-len", type=int, help="maxT (default 1024)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the init and the random batch")
    p.add_argument("--batch", type=int, default=4, help="B (default 4)")
    p.add_argument("--seq-len", type=int, default=64, help="T (default 64)")
    p.add_argument("--data", help="llm.c data shard: the batch is its first B*T+1 tokens "
                   "(default: random token ids)")
    p.add_argument("--steps", type=int, default=10, help="AdamW steps (default 10)")
    p.add_argument("--threads", type=int, help="torch threads (default: the CPUs we may use)")
    return p.parse_args(argv)


INIT_DEFAULTS = dict(layers=12, heads=12, channels=768, vocab=50257, max_seq_len=1024)


def check_args(args):
    for name in ("batch", "seq_len", "steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, "
                                  f"got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    given = [k for k in INIT_DEFAULTS if getattr(args, k) is not None]
    if args.model and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"--model takes the model's shape from the checkpoint; "
                              f"drop {flags}")


def model_config(args):
    """The config of --model's checkpoint (and its params), or of the random-init options."""
    if args.model:
        return read_checkpoint(args.model)
    shape = {k: (v if getattr(args, k) is None else getattr(args, k))
             for k, v in INIT_DEFAULTS.items()}
    try:
        config = GPT2Config(max_seq_len=shape["max_seq_len"], vocab_size=shape["vocab"],
                            padded_vocab_size=GPT2Config.pad_vocab(shape["vocab"]),
                            num_layers=shape["layers"], num_heads=shape["heads"],
                            channels=shape["channels"])
    except ValueError as e:  # GPT2Config says what is wrong with the shape
        raise UsageError(f"the model shape of --layers/--heads/--channels/--vocab/--max-seq-len: {e}") from None
    return config, None


def make_batch(torch, args, config):
    """x, y (B,T) int64 from B*T+1 consecutive tokens: the shard's first, or seeded random ones."""
    B, T, V = args.batch, args.seq_len, config.vocab_size
    if T > config.max_seq_len:
        raise UsageError(f"--seq-len {T} is longer than the model's max_seq_len "
                              f"{config.max_seq_len}")
    n = B * T + 1
    if args.data:
        shard = read_shard(args.data)
        if shard.shape[0] < n:
            raise UsageError(f"{args.data}: holds {shard.shape[0]} tokens, a batch of "
                                  f"B={B}, T={T} needs B*T+1 = {n}")
        tokens = np.array(shard[:n], dtype=np.int64)
        too_big = np.flatnonzero(tokens >= V)
        if too_big.size:
            i = int(too_big[0])
            raise UsageError(f"{args.data}: token {i} is id {tokens[i]}, not below the "
                                  f"model's vocab_size {V}")
    else:
        generator = torch.Generator().manual_seed(args.seed)
        tokens = torch.randint(0, V, (n,), generator=generator).numpy()
    x = torch.from_numpy(tokens[:-1].reshape(B, T).copy())
    y = torch.from_numpy(tokens[1:].reshape(B, T).copy())
    return x, y


def available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def write_json(path, value):
    with atomic_write(path) as f:
        f.write((json.dumps(value, indent=1) + "\n").encode())


def run(torch, args):
    check_args(args)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or available_cpus())
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32 everywhere
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    config, params = model_config(args)
    c = config
    print(f"building model: L={c.num_layers} NH={c.num_heads} C={c.channels} V={c.vocab_size} "
          f"(Vp={c.padded_vocab_size}) maxT={c.max_seq_len}, "
          + (f"weights from {args.model}" if args.model else f"random init, seed {args.seed}"))
    x, y = make_batch(torch, args, config)
    model = define_gpt2(torch)(config)
    if params is None:
        init_gpt2_(torch, model, args.seed)
    else:
        load_llmc_(torch, model, params)
    print(f"batch: B={args.batch} T={args.seq_len}, "
          + (f"from {args.data}" if args.data else f"random token ids, seed {args.seed}"))

    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "model.bin")
    write_checkpoint(model_path, config, to_llmc(model))
    print(f"wrote {model_path}")

    def write_state(logits, loss):
        state_path = os.path.join(args.out, "debug_state.bin")
        write_debug_state(state_path, config, x.numpy(), y.numpy(), logits.detach().numpy(),
                          loss.item(), to_llmc(model, grads=True))
        print(f"wrote {state_path}")

    losses = adamw_steps(torch, model, x, y, args.steps, write_state,
                         log=lambda step, loss: print(f"step {step}: loss {loss:.6f}"))

    losses_path = os.path.join(args.out, "expected_losses.json")
    write_json(losses_path, losses)
    print(f"wrote {losses_path}")


def adamw_steps(torch, model, x, y, steps, at_first_step=None, log=None):
    """test_gpt2's run: `steps` AdamW steps (llm.c's test hyperparameters) on the one batch x, y
    -> the losses. at_first_step(logits, loss) runs after the first backward, before its update
    (the debug state's moment: the gradients are the first step's)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, eps=EPS,
                                  weight_decay=WEIGHT_DECAY)
    losses = []
    for step in range(steps):
        logits, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0 and at_first_step is not None:
            at_first_step(logits, loss)
        optimizer.step()
        losses.append(loss.item())
        if log is not None:
            log(step, losses[-1])
    return losses


def fail(message):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print(NO_TORCH, file=sys.stderr)
        raise SystemExit(2) from None
    try:
        run(torch, args)
    except (UsageError, FormatError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or args.out}: {e.strerror or e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
