"""Time to a trained model: a fresh GPT-2 d6 trained on tinyshakespeare for a fixed wall-clock budget,
llmnb against PyTorch eager on the same model, weights, batches and optimizer.

    python -m benchmarks.time_to_loss --budget 600          # 10 minutes of training each (the recipe)
    python -m benchmarks.time_to_loss --budget 5            # a smoke run
    python -m benchmarks.time_to_loss --impl llmnb --budget 600   # train the laptop recipe, llmnb only
    python -m benchmarks.time_to_loss -d 2 -B 2 -T 32 --budget 3  # a d2-sized run (the test's)

The recipe (LAPTOP, the CLI's defaults): a fresh d6 (6 layers, C = 384, 6 heads, the vocabulary
padded to 50304; llmnb.model.init_params, seed 1337, as `llmnb-train -e d6`), B = 4, T = 256,
AdamW lr 1e-3 after a linear warmup of 20 steps, then constant (a wall-clock budget has no known
last step for a cosine to end on), betas 0.9/0.95 and eps 1e-8 (train_gpt2.cu's), weight decay
0.1 on the 2-D weights (llmnb.optim.DECAYED), gradients clipped to a global norm of 1. Batches come
from llm.c's DataLoader (llmnb.data) over the tinyshakespeare token files, shuffled by llm.c's
mt19937 with seed 42 on both sides, so both see the same batches in the same order.

Why B = 4, T = 256: a d6 step costs ~183 MFLOP per token whatever B and T (the classifier's
384 x 50304 matmul is most of it), so at the ~100 GFLOP/s two laptop cores give, 1024 tokens
make a step of a second or two: a few hundred AdamW steps and about one pass over tinyshakespeare's
305k train tokens in ten minutes, where a small model's loss falls with the number of updates more
than with the batch; 256 positions of context span several lines of verse; llmnb's buffers take
0.86 GiB and PyTorch's (B, T, 50304) logits and their gradients a few hundred MiB more.

Each implementation trains in a process of its own, one after the other, with the same number of
threads (Numba's default; for PyTorch torch.set_num_threads and OMP_NUM_THREADS); this process
only orchestrates and starts neither Numba's nor torch's thread pool. Before its clock starts each
trains one step on a throwaway copy of the model (Numba's compile or cache load, PyTorch's first
allocations: `warmup_s`). The training clock counts the steps, batch loading included; it stops
while the val loss is measured (every --eval-every seconds of training, budget/20 by default, on
the first --val-batches batches of the val split, and at the end: `eval_s`, reported apart).

PyTorch's model is llmnb.reference_torch's GPT-2 as nanoGPT's (SDPA attention, tied wte, wte and
logits padded to Vp = 50304) holding llmnb's initial weights; its padded logits are set to -inf
before the cross-entropy, so its loss is llm.c's (a softmax over the V = 50257 real tokens) and
the padded rows of wte stay zero, as in llmnb. Its optimizer is torch.optim.AdamW with two
parameter groups (DECAYED's tensors with the weight decay, the rest without) and
torch.nn.utils.clip_grad_norm_.

Out: one JSON line per implementation, {"time_to_loss": {...}}, on stdout and in --json: its
(train_s, step, val_loss) points, its final val loss, the training seconds at which it reached the
other's final val loss (linear between evaluations; null when it never did), and ~100 tokens
sampled from its final model with llm.c's xorshift rng (seed 1337) from the EOT token (llmnb:
llmnb.generate; PyTorch: the same multinomial sampling, llmnb.generate.sample, from the last position's
logits); and --svg, the val loss of both over training seconds.
"""
import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from typing import NamedTuple
from xml.sax.saxutils import escape

import numba  # (this process reads its configuration only: its thread pool starts in the llmnb child)

from llmnb.config import GPT2Config
from llmnb.data import DataLoader
from llmnb.fileio import FormatError, atomic_write
from llmnb.generate import generate, sample
from llmnb.model import GPT2, init_params
from llmnb.optim import DECAYED, clip_grad_norm, learning_rate
from llmnb.plot import LEFT, RIGHT, TOP, W, axes_svg
from llmnb.prepro import ensure_tinyshakespeare, tinyshakespeare_paths
from llmnb.rand import Rng
from llmnb.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_KEY = "time_to_loss"
IMPLS = ("llmnb", "torch")
DESCRIBE = {
    "llmnb": "llmnb on the CPU (Numba kernels; GPT2.forward/zero_grad/backward/update)",
    "torch": "PyTorch eager, nanoGPT-style GPT-2 (llmnb.reference_torch, SDPA, vocab padded to Vp)",
}


# ------------------------------------------------------------------------------------------------
# the recipe

class Recipe(NamedTuple):
    """Everything both implementations train with (fixed once for a run)."""
    depth: int = 6              # a fresh GPT2Config.depth(depth): train_gpt2.cu's -e d6, C = 384
    batch: int = 4              # B
    seq_len: int = 256          # T
    lr: float = 1e-3            # AdamW's learning rate after the warmup
    warmup: int = 20            # steps of linear warmup (llmnb.optim.learning_rate), then constant
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1   # on llmnb.optim.DECAYED (the 2-D weights), none on the rest
    grad_clip: float = 1.0      # the gradient's global L2 norm is clipped to this
    init_seed: int = 1337       # init_params's seed (llmnb-train's --seed)
    shuffle_seed: int = 42      # the train DataLoader's mt19937 (llm.c's)
    val_batches: int = 8        # the val loss is the mean over the val split's first batches
    sample_tokens: int = 100    # tokens sampled from each final model
    sampler_seed: int = 1337    # llm.c's xorshift rng state


LAPTOP = Recipe()  # the laptop recipe: a fresh d6 on tinyshakespeare, ten minutes on two cores


def model_config(recipe):
    return GPT2Config.depth(recipe.depth)


# ------------------------------------------------------------------------------------------------
# the two trainers: step (forward, zero_grad, backward, clip, AdamW) -> train loss, loss (no
# gradient) -> val loss, sample -> token ids

class LlmnbTrainer:
    """llmnb's GPT2 as llmnb-train's train_step drives it."""
    name = "llmnb"

    def __init__(self, config, params, recipe):
        self.model = GPT2(config, params)  # (a copy of params: the caller's array is left as it is)
        self.recipe = recipe

    def step(self, x, y, step):
        m, r = self.model, self.recipe
        loss = m.forward(x, y)
        m.zero_grad()
        m.backward()
        clip_grad_norm(m, r.grad_clip)
        m.update(learning_rate(step, r.lr, r.warmup), r.beta1, r.beta2, r.eps, r.weight_decay, step + 1,
                 decay=DECAYED)
        return loss

    def loss(self, x, y):
        return self.model.forward(x, y)

    def sample(self, prompt, n, rng):
        return generate(self.model, prompt, n, rng)


class TorchTrainer:
    """The same model and optimizer in PyTorch eager (torch is passed in: an optional extra)."""
    name = "torch"

    def __init__(self, torch, config, params, recipe):
        from llmnb.reference_torch import define_gpt2, load_llmc_, torch_params
        self.torch, self.config, self.recipe = torch, config, recipe
        self.model = define_gpt2(torch, sdpa=True, pad_vocab=True)(config)
        load_llmc_(torch, self.model, params)
        decayed = {id(p) for name in DECAYED for p in torch_params(self.model, name)}
        every = list(self.model.parameters())  # (the tied wte / lm_head once)
        groups = [{"params": [p for p in every if id(p) in decayed], "weight_decay": recipe.weight_decay},
                  {"params": [p for p in every if id(p) not in decayed], "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.beta1, recipe.beta2), eps=recipe.eps)

    def _logits(self, x):
        """(B, T, Vp) logits, the padded Vp - V columns -inf: llm.c's softmax over V real tokens."""
        logits, _ = self.model(x)
        logits[..., self.config.vocab_size:] = float("-inf")
        return logits

    def _loss(self, x, y):
        torch = self.torch
        x, y = (torch.from_numpy(a.astype("int64")) for a in (x, y))
        logits = self._logits(x)
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    def step(self, x, y, step):
        r = self.recipe
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(step, r.lr, r.warmup)
        loss = self._loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
        self.opt.step()
        return loss.item()

    def loss(self, x, y):
        with self.torch.no_grad():
            return self._loss(x, y).item()

    def sample(self, prompt, n, rng):
        """llmnb.generate's sampling (one xorshift coin per token, llmnb.generate.sample over the
        float32 softmax of the V real logits), with the whole sequence run again for each token."""
        torch, V = self.torch, self.config.vocab_size
        tokens = list(prompt)
        with torch.no_grad():
            for _ in range(n):
                logits = self._logits(torch.tensor([tokens], dtype=torch.int64))
                probs = torch.softmax(logits[0, -1, :V], dim=-1).numpy()
                tokens.append(int(sample(probs, V, rng.f32())))
        return tokens[len(prompt):]


# ------------------------------------------------------------------------------------------------
# the timed run, the same loop for both

class Diverged(RuntimeError):
    """A non-finite train or val loss."""


def evaluate(trainer, val_batches):
    """The mean loss over the val batches -> (val loss, seconds it took)."""
    t0 = time.perf_counter()
    total = sum(trainer.loss(x, y) for x, y in val_batches)
    return total / len(val_batches), time.perf_counter() - t0


def train_for(trainer, budget, eval_every, train_loader, val_batches, log=print):
    """Train until `budget` seconds of training have passed (the step that crosses it finishes),
    with the val loss at 0 s, after the step that crosses each multiple of `eval_every` seconds,
    and at the end. Only the steps (batch loading included) count as training seconds."""
    points, train_losses = [], []
    clock = eval_s = next_eval = 0.0
    step = 0
    while True:
        if clock >= next_eval or clock >= budget:
            val, seconds = evaluate(trainer, val_batches)
            eval_s += seconds
            since = train_losses[points[-1]["step"]:] if points else []  # the steps since the last eval
            train = sum(since) / len(since) if since else None
            points.append({"train_s": clock, "step": step, "val_loss": val, "train_loss": train})
            log(f"{trainer.name:5s} {clock:7.1f} s  step {step:5d}  val loss {val:.4f}"
                + (f"  train loss {train:.4f}" if since else "") + f"  ({seconds:.1f} s eval)")
            if not math.isfinite(val):
                raise Diverged(f"{trainer.name}: the val loss is {val} after step {step}")
            while next_eval <= clock:
                next_eval += eval_every
        if clock >= budget:
            break
        t0 = time.perf_counter()
        x, y = train_loader.next_batch()
        loss = trainer.step(x, y, step)
        clock += time.perf_counter() - t0
        step += 1
        train_losses.append(loss)
        if not math.isfinite(loss):
            raise Diverged(f"{trainer.name}: the train loss is {loss} at step {step}")
    return {"points": points, "steps": step, "train_s": clock, "eval_s": eval_s,
            "first_train_loss": train_losses[0], "final_val_loss": points[-1]["val_loss"]}


def loaders(data_dir, recipe, V):
    """(the train DataLoader, the list of val batches) of tinyshakespeare's token files."""
    train_path, val_path = tinyshakespeare_paths(data_dir)
    for path in (train_path, val_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such token file (run `llmnb-prepro tinyshakespeare`)")
    B, T = recipe.batch, recipe.seq_len
    train = DataLoader(train_path, B, T, shuffle=True, seed=recipe.shuffle_seed, vocab_size=V)
    val = DataLoader(val_path, B, T, vocab_size=V)
    batches = []
    for _ in range(min(recipe.val_batches, len(val))):
        x, y = val.next_batch()
        batches.append((x.copy(), y.copy()))
    return train, batches


def decode(data_dir, tokens):
    """The sample's text (None without a tokenizer: offline, no gpt2_tokenizer.bin)."""
    try:
        tok = load_tokenizer(data_dir)
        return b"".join(tok.decode(t) for t in tokens).decode("utf-8", errors="replace")
    except (RuntimeError, ValueError, OSError):  # (the ids are in the JSON anyway)
        return None


def set_threads(impl, threads):
    """Give the implementation `threads` threads -> what it runs with (versions, threads)."""
    if impl == "torch":
        import torch
        torch.set_num_threads(threads)
        return {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    numba.set_num_threads(threads)
    return {"numba": numba.__version__, "threads": numba.get_num_threads(),
            "threading_layer": numba.threading_layer()}


def new_trainer(impl, config, params, recipe):
    if impl == "torch":
        import torch
        return TorchTrainer(torch, config, params, recipe)
    return LlmnbTrainer(config, params, recipe)


def run_impl(args, recipe):
    """The child process: train one implementation, print its JSON line."""
    impl, config = args.impl, model_config(recipe)
    if impl == "torch" and importlib.util.find_spec("torch") is None:
        print("torch skipped: PyTorch is not installed (pip install -e '.[reference]')", flush=True)
        print(json.dumps({JSON_KEY: {"impl": impl, "skipped": "PyTorch is not installed"}}), flush=True)
        return 0
    versions = set_threads(impl, args.threads)
    train_loader, val_batches = loaders(args.data_dir, recipe, config.vocab_size)
    params = init_params(config, seed=recipe.init_seed)

    t0 = time.perf_counter()  # one step and one eval on a throwaway copy: compiles, first allocations
    warm = new_trainer(impl, config, params, recipe)
    warm.step(*val_batches[0], 0)
    warm.loss(*val_batches[0])
    del warm
    warmup_s = time.perf_counter() - t0
    trainer = new_trainer(impl, config, params, recipe)
    print(f"{impl}: {DESCRIBE[impl]}; {versions}; warm-up {warmup_s:.1f} s", flush=True)

    result = train_for(trainer, args.budget, args.eval_every, train_loader, val_batches)
    if impl == "llmnb" and args.save_model:
        trainer.model.save_checkpoint(args.save_model)
        print(f"llmnb: wrote {args.save_model}", flush=True)
    t0 = time.perf_counter()
    eot = config.vocab_size - 1  # GPT-2's <|endoftext|>, 50256, where llm.c's samples start
    tokens = trainer.sample([eot], recipe.sample_tokens, Rng(recipe.sampler_seed))
    sample_s = time.perf_counter() - t0
    text = decode(args.data_dir, tokens)
    print(f"{impl} sample:\n---\n{text if text is not None else tokens}\n---", flush=True)
    B, T = recipe.batch, recipe.seq_len
    result.update(impl=impl, describe=DESCRIBE[impl], recipe=recipe._asdict(), budget_s=args.budget,
                  eval_every_s=args.eval_every, val_batches=len(val_batches), versions=versions,
                  warmup_s=warmup_s, sample_s=sample_s, tokens_per_s=result["steps"] * B * T / result["train_s"],
                  sample_tokens=tokens, sample=text)
    print(json.dumps({JSON_KEY: result}), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# the comparison

def time_to_reach(points, target):
    """The training seconds at which the val loss first fell to `target`, linear between the two
    evaluations around it; None when it never did."""
    before = None
    for p in points:
        if p["val_loss"] <= target:
            if before is None:
                return p["train_s"]
            t0, l0, t1, l1 = before["train_s"], before["val_loss"], p["train_s"], p["val_loss"]
            return t0 + (l0 - target) / (l0 - l1) * (t1 - t0)
        before = p
    return None


def compare(results):
    """Each result gets the seconds it took to reach the other's final val loss."""
    if len(results) != 2:
        return
    a, b = results
    for me, other in ((a, b), (b, a)):
        me["other_final_val_loss"] = other["final_val_loss"]
        me["reached_other_final_s"] = time_to_reach(me["points"], other["final_val_loss"])


def summary_lines(results):
    lines = []
    for r in results:
        lines.append(f"{r['impl']:5s} {r['steps']:5d} steps in {r['train_s']:.1f} s of training "
                     f"({r['tokens_per_s']:.0f} tok/s; evals {r['eval_s']:.1f} s, warm-up {r['warmup_s']:.1f} s "
                     f"apart): final val loss {r['final_val_loss']:.4f}")
    for me in results:
        if "reached_other_final_s" not in me:
            continue
        other = next(r for r in results if r is not me)
        t = me["reached_other_final_s"]
        if t is None:
            best = min(p["val_loss"] for p in me["points"])
            lines.append(f"{me['impl']} never reached {other['impl']}'s final val loss "
                         f"{other['final_val_loss']:.4f} (its best: {best:.4f})")
        else:
            lines.append(f"{me['impl']} reached {other['impl']}'s final val loss {other['final_val_loss']:.4f} "
                         f"after {t:.1f} s of training; {other['impl']} trained {other['train_s']:.1f} s "
                         f"({other['train_s'] / max(t, 1e-9):.2f}x {me['impl']}'s time)")
    return lines


COLORS = {"llmnb": "#1f77b4", "torch": "#d62728"}


def val_loss_svg(results, title):
    """SVG text: each implementation's val loss (dots joined by a line) over training seconds,
    with its final val loss as a dashed line, in the style of llmnb.plot.loss_svg."""
    series = [(r["impl"], [(p["train_s"], p["val_loss"]) for p in r["points"] if math.isfinite(p["val_loss"])],
               r["final_val_loss"]) for r in results]
    pts = [p for _, s, _ in series for p in s] or [(0.0, 0.0), (1.0, 1.0)]
    xmin, xmax = 0.0, max(max(p[0] for p in pts), 1e-9)
    ymin, ymax = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = 0.05 * (ymax - ymin or 1.0)
    ymin, ymax = ymin - pad, ymax + pad

    out, sx, sy = axes_svg(xmin, xmax, ymin, ymax, title, "training seconds (evals not counted)", "val loss")
    for i, (name, s, final) in enumerate(series):
        color = COLORS.get(name, "#333")
        if math.isfinite(final):
            out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(final):.1f}" y2="{sy(final):.1f}" '
                       f'stroke="{color}" stroke-dasharray="4 4" stroke-width="0.8"/>')
        if s:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for x, y in s:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        ly = TOP + 15 + 18 * i
        out.append(f'<line x1="{W - 230}" x2="{W - 210}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/>'
                   f'<text x="{W - 205}" y="{ly + 4}">{escape(name)}: final val loss {final:.4f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# the orchestrating process: no Numba or torch thread pool here

def child_argv(args, impl):
    return ["--child", "--impl", impl, "--budget", repr(args.budget), "--eval-every", repr(args.eval_every),
            "-d", str(args.depth), "-B", str(args.batch), "-T", str(args.seq_len), "--lr", repr(args.lr),
            "--warmup", str(args.warmup), "--val-batches", str(args.val_batches),
            "--sample-tokens", str(args.sample_tokens), "--threads", str(args.threads),
            "--data-dir", args.data_dir] + (["--save-model", args.save_model] if args.save_model else [])


def run_child(args, impl):
    """One implementation in a process of its own (its lines printed as they come) -> its result,
    or None when it was skipped."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if impl == "llmnb":
        env["NUMBA_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "benchmarks.time_to_loss", *child_argv(args, impl)]
    result = None
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as p:
        for line in p.stdout:
            if line.startswith("{"):
                result = json.loads(line)[JSON_KEY]
            else:
                print(line, end="", flush=True)
    if p.returncode != 0 or result is None:
        raise RuntimeError(f"the {impl} run ({' '.join(cmd)}) failed with status {p.returncode}")
    return None if "skipped" in result else result


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return None


def orchestrate(args, recipe):
    ensure_tinyshakespeare(args.data_dir)
    loaders(args.data_dir, recipe, model_config(recipe).vocab_size)  # bad files: one line, here
    results, failed = [], 0
    for impl in (IMPLS if args.impl == "both" else (args.impl,)):
        print(f"\n=== {impl}: {args.budget:g} s of training, {args.threads} threads ===", flush=True)
        try:
            r = run_child(args, impl)
        except RuntimeError as e:  # the other's result is still written
            print(f"benchmarks.time_to_loss: error: {e}", file=sys.stderr, flush=True)
            failed = 2
            continue
        if r is not None:
            r["machine"] = {"cpu": cpu_name(), "cpus": os.cpu_count()}
            results.append(r)
    if not results:
        print("nothing ran")
        return failed
    compare(results)
    print()
    for line in summary_lines(results):
        print(line)
    lines = [json.dumps({JSON_KEY: r}) for r in results]
    for line in lines:
        print(line)
    title = (f"GPT-2 d{recipe.depth} on tinyshakespeare, B={recipe.batch} T={recipe.seq_len}, "
             f"{args.threads} threads: val loss vs training time")
    if args.json:
        with atomic_write(args.json) as f:
            f.write("".join(line + "\n" for line in lines).encode())
    if args.svg:
        with atomic_write(args.svg) as f:
            f.write(val_loss_svg(results, title).encode())
    print(f"wrote {', '.join(p for p in (args.json, args.svg) if p)}")
    return failed


def parse_args(argv=None):
    d = LAPTOP
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of training per implementation (default: 600)")
    ap.add_argument("--impl", choices=IMPLS + ("both",), default="both")
    ap.add_argument("--eval-every", type=float, default=None,
                    help="val loss every N seconds of training (default: budget/20)")
    ap.add_argument("--depth", "-d", type=int, default=d.depth, help=f"a fresh d<depth> GPT-2 (default: {d.depth})")
    ap.add_argument("--batch", "-B", type=int, default=d.batch, help=f"default: {d.batch}")
    ap.add_argument("--seq-len", "-T", type=int, default=d.seq_len, help=f"default: {d.seq_len}")
    ap.add_argument("--lr", type=float, default=d.lr, help=f"default: {d.lr:g}")
    ap.add_argument("--warmup", type=int, default=d.warmup, help=f"linear warmup steps (default: {d.warmup})")
    ap.add_argument("--val-batches", type=int, default=d.val_batches, help=f"default: {d.val_batches}")
    ap.add_argument("--sample-tokens", type=int, default=d.sample_tokens, help=f"default: {d.sample_tokens}")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of both (default: Numba's default, the CPUs this process may use)")
    ap.add_argument("--data-dir", default="data", help="where tinyshakespeare's token files are (default: data)")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "time_to_loss.jsonl"),
                    help="also write the JSON lines here ('' for none; default: benchmarks/time_to_loss.jsonl)")
    ap.add_argument("--svg", default=os.path.join(ROOT, "benchmarks", "time_to_loss.svg"),
                    help="the val-loss picture ('' for none; default: benchmarks/time_to_loss.svg)")
    ap.add_argument("--save-model", default="", metavar="PATH",
                    help="write llmnb's final model there (an llm.c checkpoint: for llmnb-sample, "
                         "benchmarks.generate_loss) (default: none)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not (math.isfinite(args.budget) and args.budget > 0):
        ap.error(f"--budget must be a number of seconds > 0, got {args.budget}")
    if args.eval_every is None:
        args.eval_every = args.budget / 20
    if not (math.isfinite(args.eval_every) and args.eval_every > 0):
        ap.error(f"--eval-every must be a number of seconds > 0, got {args.eval_every}")
    for name in ("depth", "batch", "seq_len", "val_batches"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.sample_tokens < 0:
        ap.error("--warmup and --sample-tokens must be >= 0")
    if not (math.isfinite(args.lr) and args.lr > 0):
        ap.error(f"--lr must be a number > 0, got {args.lr}")
    if args.seq_len > 1024 or args.sample_tokens > 1023:
        ap.error("-T and --sample-tokens must fit the model's 1024 positions (-T <= 1024, --sample-tokens <= 1023)")
    if args.threads is None:  # (numba.get_num_threads() would start the pool)
        args.threads = numba.config.NUMBA_NUM_THREADS
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.child and args.impl == "both":
        ap.error("--child runs one --impl")
    args.data_dir = os.path.abspath(args.data_dir)
    return args


def main(argv=None):
    args = parse_args(argv)
    recipe = LAPTOP._replace(depth=args.depth, batch=args.batch, seq_len=args.seq_len, lr=args.lr,
                             warmup=args.warmup, val_batches=args.val_batches, sample_tokens=args.sample_tokens)
    try:
        return run_impl(args, recipe) if args.child else orchestrate(args, recipe)
    except (Diverged, FormatError, ValueError, RuntimeError, OSError) as e:
        print(f"benchmarks.time_to_loss: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
