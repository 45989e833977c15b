"""Generation speed: llmnb's KV-cache sampling with float32, bfloat16 and int8 weights, one sequence
and -n sequences at once, against Hugging Face's `generate` (with its KV cache) on the same GPT-2
weights and the same number of threads, Hugging Face in a process of its own started after
llmnb's runs (as benchmarks.step's PyTorch baseline); with the memory speed each reaches.

    python -m benchmarks.generate [--model gpt2_124M.bin] [-g 128] [--threads 2] [--runs 3]
                                  [--dtypes float32,bfloat16,int8] [--batches 1,4,8]

Without --model: a random GPT-2 124M (the speed depends on the shapes only). Each run generates -g
tokens per sequence after the EOT token, sampling from the whole distribution (llmnb-sample -n N
--dtype D); tokens/s counts the tokens of all N sequences after the first step (which also pays
for the prompt). Every step reads all the matrices once (~500 MB at 124M in float32, 250 in
bfloat16, 125 in int8) for its N tokens, so memory bandwidth bounds it: each row gives the MB of
weights a step reads (model.Decoder.weight_bytes), the GB/s that makes at its best run, and that
as a share of the threads' read bandwidth and of their copy bandwidth (bytes read + written) on a
256 MB array, measured first (benchmarks.membw). The KV cache's reads (2 t C floats per layer at
position t: 4.7 MB a token at t = 64 for 124M) come on top and are not counted. A last line gives
the per-token cost of the step's Python and kernel calls: a step of a 12-layer model 64 channels
wide, the same calls on almost no bytes. Hugging Face needs the reference extra (torch,
transformers).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.membw import copy_gbs, read_gbs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llmnb_tokens_per_s(decoder, g, seed):
    """Tokens/s of one run of generate_batch on the decoder (all its sequences counted)."""
    from llmnb.generate import generate_batch, sequence_rngs
    times = []
    generate_batch(decoder, [decoder.config.vocab_size - 1], g, sequence_rngs(seed, decoder.batch),
                   on_tokens=lambda ids: times.append(time.perf_counter()))
    return decoder.batch * (len(times) - 1) / (times[-1] - times[0])


def step_overhead_ms(steps=200):
    """Milliseconds per step of a 12-layer, 64-channel decoder: the step's Python and kernel calls
    with almost no bytes behind them."""
    from llmnb.config import GPT2Config
    from llmnb.model import GPT2, Decoder, init_params
    cfg = GPT2Config(max_seq_len=steps + 8, vocab_size=100, padded_vocab_size=128, num_layers=12, num_heads=1,
                     channels=64)
    decoder = Decoder(GPT2(cfg, init_params(cfg)))
    for t in range(8):
        decoder.step(t)
    decoder.begin()
    t0 = time.perf_counter()
    for t in range(steps):
        decoder.step(t % 100)
    return 1e3 * (time.perf_counter() - t0) / steps


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


def parse_args(argv=None):
    from llmnb.model import DTYPES
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="llm.c checkpoint (default: a random GPT-2 124M)")
    p.add_argument("-g", type=int, default=128, help="tokens per sequence and run (default: 128)")
    p.add_argument("--threads", type=int, default=2, help="threads for Numba and PyTorch (default: 2)")
    p.add_argument("--runs", type=int, default=3, help="runs of each (default: 3)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help=f"weights (default: {','.join(DTYPES)})")
    p.add_argument("--batches", default="1,4,8", help="sequences at once, -n (default: 1,4,8)")
    p.add_argument("--skip-hf", action="store_true", help="llmnb only")
    p.add_argument("--hf-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    args.dtypes, args.batches = args.dtypes.split(","), [int(b) for b in args.batches.split(",")]
    if any(d not in DTYPES for d in args.dtypes) or min(args.batches) < 1:
        p.error(f"--dtypes are some of {','.join(DTYPES)}, --batches integers >= 1")
    return p, args


def main(argv=None):
    p, args = parse_args(argv)
    if args.hf_only:
        return hf_main(args)
    import numba
    from llmnb.model import GPT2, Decoder
    numba.set_num_threads(args.threads)
    config, params = load_model(args)
    if args.g >= config.max_seq_len:
        p.error(f"-g must be < the model's max_seq_len {config.max_seq_len}")
    read_bw, copy_bw = read_gbs(256 << 20, 10), copy_gbs(512 << 20, 10)[1]
    model = GPT2(config, params, copy=False)
    rows = []
    for dtype in args.dtypes:
        for B in args.batches:
            decoder = Decoder(model, dtype, batch=B)
            llmnb_tokens_per_s(decoder, 4, 0)  # compile, and touch every buffer
            rates = [llmnb_tokens_per_s(decoder, args.g, r) for r in range(args.runs)]
            rows.append((f"llmnb KV cache, {dtype} weights", B, rates, decoder.weight_bytes()))
            del decoder
    if not args.skip_hf:
        fp32 = Decoder(model).weight_bytes()
        rows.append(("Hugging Face generate, float32 (own process)", 1, hf_own_process(args), fp32))
    overhead = step_overhead_ms()
    print(f"{config.num_layers} layers x {config.channels} channels, {args.g} tokens per sequence, {args.threads} "
          f"threads; memory: read {read_bw:.1f} GB/s, copy {copy_bw:.1f} GB/s (bytes read + written), 256 MB")
    print("| | -n | best tok/s | median tok/s | MB of weights per step | GB/s (best) | of read | of copy | runs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, B, rates, nbytes in rows:
        gbs = nbytes * max(rates) / B / 1e9
        print(f"| {name} | {B} | {max(rates):.1f} | {float(np.median(rates)):.1f} | {nbytes / 1e6:.0f} | {gbs:.1f} | "
              f"{100 * gbs / read_bw:.0f}% | {100 * gbs / copy_bw:.0f}% | {len(rates)} |")
    print(f"per-step cost of the calls (a 12-layer, 64-channel step): {overhead:.2f} ms")


if __name__ == "__main__":
    main()
