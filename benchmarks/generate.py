"""Generation speed: llmnb's KV-cache sampling against Hugging Face's `generate` (with its KV cache)
on the same GPT-2 weights and the same number of threads, Hugging Face in a process of its own
started after llmnb's runs (as benchmarks.step's PyTorch baseline).

    python -m benchmarks.generate [--model gpt2_124M.bin] [-g 128] [--threads 2] [--runs 3]

llmnb runs twice: float32 weights, and bfloat16 weights (llmnb-sample --dtype bfloat16, half
the bytes per token). Without --model: a random GPT-2 124M (the speed depends on the shapes only). Each run generates
-g tokens after the EOT token, sampling from the whole distribution; tokens/s counts the tokens
after the first (the first also pays for the prompt). Needs the reference extra (torch,
transformers). Every new token reads all the fp32 weights (~500 MB at 124M), so memory
bandwidth bounds both.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llmnb_tokens_per_s(config, params, g, seed, dtype="float32"):
    from llmnb.generate import generate
    from llmnb.model import GPT2
    from llmnb.rand import Rng
    times = []
    generate(GPT2(config, params), [config.vocab_size - 1], g, Rng(seed), dtype=dtype,
             on_token=lambda t: times.append(time.perf_counter()))
    return (len(times) - 1) / (times[-1] - times[0])


class Stamps:
    """A transformers streamer that only records when each new token arrives."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def hf_tokens_per_s(model, config, g, seed):
    import torch
    torch.manual_seed(seed)
    stamps = Stamps()
    with torch.no_grad():
        model.generate(torch.tensor([[config.vocab_size - 1]]), max_new_tokens=g, min_new_tokens=g,
                       do_sample=True, top_k=0, use_cache=True, streamer=stamps,
                       pad_token_id=config.vocab_size - 1)
    t = stamps.times[1:]  # the first put is the prompt itself
    return (len(t) - 1) / (t[-1] - t[0])


def load_model(args):
    from llmnb.config import GPT2Config
    from llmnb.formats import read_checkpoint
    from llmnb.model import init_params
    if args.model:
        return read_checkpoint(args.model)
    config = GPT2Config.depth(12)
    return config, init_params(config, seed=0)


def hf_main(args):
    """Child of main: Hugging Face's tokens/s of each run, as one JSON line."""
    import torch
    from benchmarks.torch_step import hf_gpt2
    torch.set_num_threads(args.threads)
    config, params = load_model(args)
    model = hf_gpt2(torch, config, params).eval()
    hf_tokens_per_s(model, config, 4, 0)  # warm up
    print(json.dumps({"hf_tokens_per_s": [hf_tokens_per_s(model, config, args.g, r) for r in range(args.runs)]}))


def hf_own_process(args):
    """Hugging Face's rates from a process of its own (OpenMP/MKL threads set before torch loads)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "benchmarks.generate", "--hf-only", "-g", str(args.g),
           "--threads", str(args.threads), "--runs", str(args.runs)] + (["--model", args.model] if args.model else [])
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    found = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not found:
        raise SystemExit(f"benchmarks/generate.py: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return found[-1]["hf_tokens_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="llm.c checkpoint (default: a random GPT-2 124M)")
    p.add_argument("-g", type=int, default=128, help="tokens per run (default: 128)")
    p.add_argument("--threads", type=int, default=2, help="threads for Numba and PyTorch (default: 2)")
    p.add_argument("--runs", type=int, default=3, help="runs of each (default: 3)")
    p.add_argument("--skip-hf", action="store_true", help="llmnb only")
    p.add_argument("--hf-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    if args.hf_only:
        return hf_main(args)
    import numba
    numba.set_num_threads(args.threads)
    config, params = load_model(args)
    if args.g >= config.max_seq_len:
        p.error(f"-g must be < the model's max_seq_len {config.max_seq_len}")
    rows = []
    for dtype in ("float32", "bfloat16"):
        llmnb_tokens_per_s(config, params, 4, 0, dtype)  # compile
        rows.append((f"llmnb KV cache, {dtype} weights",
                     [llmnb_tokens_per_s(config, params, args.g, r, dtype) for r in range(args.runs)]))
    if not args.skip_hf:
        rows.append(("Hugging Face generate, float32 (own process)", hf_own_process(args)))
    print(f"{config.num_layers} layers x {config.channels} channels, {args.g} tokens, {args.threads} threads")
    print("| | best tok/s | median tok/s | runs |\n| --- | --- | --- | --- |")
    for name, rates in rows:
        print(f"| {name} | {max(rates):.1f} | {float(np.median(rates)):.1f} | {len(rates)} |")


if __name__ == "__main__":
    main()
