"""PyTorch's GPT-2 training step in a process of its own: the baseline benchmarks.step compares with.

    python -m benchmarks.torch_step -B 4 -T 64                 # both eager models, GPT-2 124M
    python -m benchmarks.torch_step -d 6 -B 1 -T 1024 --model nanogpt --compile
    python -m benchmarks.torch_step --model nanogpt --after-numba   # diagnostic, see below

benchmarks.step starts this after llmnb's timing is done (never both at once), with Numba's thread
count as --threads. The models start from llmnb's weights (llmnb.model.init_params(config), seed 0:
what benchmarks.step's llmnb model starts from) and train on its batch (make_batch):

  nanogpt  llmnb.reference_torch's GPT-2 as nanoGPT's model.py: F.scaled_dot_product_attention
           (is_causal), tied wte/lm_head, GELU (tanh), the vocabulary padded to Vp (50304 for GPT-2)
  hf       Hugging Face's GPT2LMHeadModel, attn_implementation="sdpa", dropout 0, no KV cache
  compile  (--compile) torch.compile of the faster eager model; its first step (the compile) is
           reported apart and not counted in the step times

A step is forward + mean cross-entropy over all B*T positions, zero_grad(set_to_none=True),
backward, AdamW with llm.c's settings (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0) in
torch's default implementation (--adamw picks foreach or fused). Each model prints one line for
people and one JSON line, {"torch_step": {...}}, for benchmarks.step.

--diagnose prints what the thread pools are: torch's threads and parallel backend, the OpenMP/TBB
libraries loaded, and the CPU seconds every other thread burns while the main thread sleeps (a
spinning pool). --after-numba first runs a Numba parallel kernel for a second (as llmnb's steps left
the process benchmarks.step used to time PyTorch in) and names Numba's threading layer: compare
its step times with a run without it.
"""
import argparse
import json
import os
import sys
import threading
import time

import numpy as np

from llmnb.config import GPT2Config
from llmnb.model import init_params  # NumPy only: the process starts no Numba thread pool

from dev.common import time_runs

# AdamW hyperparameters of llm.c's train_gpt2.c
LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-4, 0.9, 0.999, 1e-8, 0.0
MODELS = ("nanogpt", "hf")
JSON_KEY = "torch_step"
DESCRIBE = {
    "nanogpt": "nanoGPT-style GPT-2 (llmnb.reference_torch, SDPA, vocab padded to Vp), eager",
    "hf": "Hugging Face GPT2LMHeadModel (attn_implementation=sdpa), eager",
}


def make_batch(config, B, T, seed=0):
    """x, y (B,T) int32: B*T+1 seeded random token ids, y shifted by one (benchmarks.step's batch)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=B * T + 1).astype(np.int32)
    return tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)


def model_config(depth):
    return GPT2Config() if depth is None else GPT2Config.depth(depth)


# ------------------------------------------------------------------------------------------------
# the two models, from llm.c's flat parameters

def nanogpt_model(torch, config, params):
    """(model, loss(x, y)) of the nanoGPT-style GPT-2."""
    from llmnb.reference_torch import define_gpt2, load_llmc_
    model = define_gpt2(torch, sdpa=True, pad_vocab=True)(config)
    load_llmc_(torch, model, params)
    return model, lambda x, y: model(x, y)[1]


def hf_gpt2(torch, config, params, **overrides):
    """Hugging Face's GPT2LMHeadModel (SDPA attention) holding llm.c's flat parameters; overrides
    go to its GPT2Config (e.g. dropout)."""
    import transformers
    from llmnb.convert import hf_config, hf_tensors
    cfg = {k: v for k, v in hf_config(config).items() if k != "architectures"}
    cfg.update(overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, attn_implementation="sdpa"))
    state = {k: torch.from_numpy(v) for k, v in hf_tensors(config, params).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" or ".attn." in k for k in missing), missing
    model.tie_weights()
    return model


def hf_model(torch, config, params):
    """(model, loss(x, y)) of HF's GPT-2 for training: no dropout, no KV cache, the loss over all
    B*T positions (labels= would drop the last position and copy the logits to shift them)."""
    model = hf_gpt2(torch, config, params, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    F = torch.nn.functional

    def loss(x, y):
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
    return model, loss


BUILD = {"nanogpt": nanogpt_model, "hf": hf_model}


# ------------------------------------------------------------------------------------------------
# timing

def time_steps(torch, model, loss_fn, x, y, warmup, steps, adamw, compile_it=False):
    """{first_step_s, loss, times_s (sorted)}: one step (with --compile: the compile), `warmup`
    untimed steps, then `steps` timed ones."""
    kwargs = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adamw]
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS,
                            weight_decay=WEIGHT_DECAY, **kwargs)
    fn = torch.compile(loss_fn) if compile_it else loss_fn

    def step():
        loss = fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    t0 = time.perf_counter()
    loss = step()
    first = time.perf_counter() - t0
    times = time_runs(step, runs=steps, warmup=warmup)
    return {"first_step_s": first, "loss": loss, "times_s": times}


def report(result):
    """The line for people: min/median/max ms of one model."""
    t = result["times_s"]
    line = (f"torch {result['model']:8s} step ms min/median/max {1e3 * t[0]:7.0f} {1e3 * t[len(t) // 2]:7.0f} "
            f"{1e3 * t[-1]:7.0f}   first step {result['first_step_s']:.1f} s, loss {result['loss']:.4f}")
    print(line + f"   ({result['describe']})", flush=True)
    print(json.dumps({JSON_KEY: result}), flush=True)


def skipped(model, reason):
    print(f"torch {model:8s} skipped: {reason}", flush=True)
    print(json.dumps({JSON_KEY: {"model": model, "skipped": reason}}), flush=True)


# ------------------------------------------------------------------------------------------------
# the diagnostic: what the thread pools are, and whether they spin

def thread_cpu_seconds():
    """{thread id: user + system CPU seconds} of this process's threads (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def idle_spin(seconds=1.0):
    """(threads, CPU seconds the other threads burnt) while this thread sleeps `seconds`:
    a thread pool that spins between parallel regions shows up here."""
    before = thread_cpu_seconds()
    time.sleep(seconds)
    after = thread_cpu_seconds()
    me = threading.get_native_id()
    burnt = sum(after[t] - before.get(t, 0.0) for t in after if t != me)
    return len(after), burnt


def threading_libraries():
    """The OpenMP / TBB runtimes mapped into this process (two of them = two thread pools)."""
    names = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if "/" in line else ""
            base = os.path.basename(path)
            if any(k in base for k in ("libgomp", "libiomp", "libomp", "libtbb")):
                names.add(path)
    return sorted(names)


def run_numba_pool(seconds=1.0):
    """Keep Numba's thread pool busy for ~`seconds` with a parallel kernel; its threading layer."""
    import numba
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def saxpy(out, a, x):
        for i in prange(x.size):
            out[i] = a * x[i] + out[i]

    x = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32)
    out = np.zeros_like(x)
    saxpy(out, np.float32(1.0), x)
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        saxpy(out, np.float32(1e-3), x)
        calls += 1
    return numba.threading_layer(), numba.get_num_threads(), calls


def diagnose(torch, where):
    threads, burnt = idle_spin()
    print(f"[{where}] torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
          f"{threads} OS threads in the process, which burn {burnt:.2f} CPU s while the main thread "
          f"sleeps 1 s{' (a pool spins)' if burnt > 0.05 else ''}", flush=True)


# ------------------------------------------------------------------------------------------------

def run(args, echo=True):
    """Build and time the models args asks for, in this process; returns the result dicts (with
    echo, each also printed by report as it comes)."""
    import torch
    torch.set_num_threads(args.threads)
    config = model_config(args.depth)
    params = init_params(config)
    xb, yb = make_batch(config, args.batch, args.seq_len)
    x, y = torch.from_numpy(xb.astype(np.int64)), torch.from_numpy(yb.astype(np.int64))
    backend = [l.strip() for l in torch.__config__.parallel_info().splitlines() if "parallel backend" in l]
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {', '.join(backend)}; "
        f"AdamW {args.adamw}", flush=True)
    models = list(MODELS) if args.model == "both" else [args.model]
    results = []
    for name in models:
        try:
            model, loss_fn = BUILD[name](torch, config, params)
        except ImportError as e:  # transformers not installed
            skipped(name, f"{e} (pip install -e '.[reference]')")
            continue
        r = time_steps(torch, model, loss_fn, x, y, args.warmup, args.steps, args.adamw)
        results.append(dict(model=name, describe=DESCRIBE[name], threads=torch.get_num_threads(),
                            adamw=args.adamw, torch=torch.__version__, **r))
        if echo:
            report(results[-1])
        del model, loss_fn
    if args.compile and results:
        fastest = min(results, key=lambda r: r["times_s"][len(r["times_s"]) // 2])["model"]
        model, loss_fn = BUILD[fastest](torch, config, params)
        try:
            r = time_steps(torch, model, loss_fn, x, y, args.warmup, args.steps, args.adamw, compile_it=True)
        except Exception as e:  # no C++ compiler, an inductor failure: a column we cannot have here
            skipped("compile", f"torch.compile of {fastest} failed: {type(e).__name__}: "
                    + " ".join(str(e).split())[:300])
        else:
            results.append(dict(model="compile", describe=f"torch.compile of {fastest} (first step = the compile)",
                                compiled=fastest, threads=torch.get_num_threads(), adamw=args.adamw,
                                torch=torch.__version__, **r))
            if echo:
                report(results[-1])
    return results


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", "-B", type=int, default=4)
    ap.add_argument("--seq-len", "-T", type=int, default=64)
    ap.add_argument("--depth", "-d", type=int, default=None,
                    help="a fresh d6/d12/d24... model (GPT2Config.depth: train_gpt2.cu's -e dL) instead of GPT-2 124M")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--model", choices=MODELS + ("both",), default="both")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the faster eager model")
    ap.add_argument("--adamw", choices=("default", "foreach", "fused"), default="default",
                    help="torch's AdamW implementation (default: what torch picks, a loop on CPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the CPUs this process may use)")
    ap.add_argument("--diagnose", action="store_true",
                    help="report the thread pools: threading runtimes loaded, idle threads' CPU use")
    ap.add_argument("--after-numba", action="store_true",
                    help="diagnostic: run a Numba parallel kernel first (implies --diagnose)")
    args = ap.parse_args(argv)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0))
    return args


def main(argv=None):
    args = parse_args(argv)
    # OpenMP and MKL read these when torch loads them
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    if args.after_numba:
        layer, n, calls = run_numba_pool()
        print(f"Numba: threading layer {layer}, {n} threads, {calls} parallel kernel calls in 1 s")
        import torch
        torch.set_num_threads(args.threads)
        diagnose(torch, "after Numba, before torch")
    try:
        import torch
    except ImportError:
        print("PyTorch: not installed, skipped (pip install -e '.[reference]')")
        return 0
    run(args)
    if args.after_numba or args.diagnose:
        diagnose(torch, "after torch's steps")
        print("threading runtimes loaded: " + (", ".join(threading_libraries()) or "none found"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
