"""Generation speed: llmnb's KV-cache sampling against Hugging Face's `generate` (with its KV cache)
on the same GPT-2 weights, in one process, on the same number of threads.

    python benchmarks/generate.py [--model gpt2_124M.bin] [-g 128] [--threads 2] [--runs 3]

llmnb runs twice: float32 weights, and bfloat16 weights (llmnb-sample --dtype bfloat16, half
the bytes per token). Without --model: a random GPT-2 124M (the speed depends on the shapes only). Each run generates
-g tokens after the EOT token, sampling from the whole distribution; tokens/s counts the tokens
after the first (the first also pays for the prompt). Needs the reference extra (torch,
transformers). Every new token reads all the fp32 weights (~500 MB at 124M), so memory
bandwidth bounds both.
"""
import argparse
import time

import numpy as np


def llmnb_tokens_per_s(config, params, g, seed, dtype="float32"):
    from llmnb.generate import generate
    from llmnb.model import GPT2
    from llmnb.rand import Rng
    times = []
    generate(GPT2(config, params), [config.vocab_size - 1], g, Rng(seed), dtype=dtype,
             on_token=lambda t: times.append(time.perf_counter()))
    return (len(times) - 1) / (times[-1] - times[0])


def hf_model(config, params):
    import torch
    import transformers
    from llmnb.convert import hf_config, hf_tensors
    cfg = {k: v for k, v in hf_config(config).items() if k != "architectures"}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in hf_tensors(config, params).items()}, strict=False)
    model.tie_weights()
    return model


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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="llm.c checkpoint (default: a random GPT-2 124M)")
    p.add_argument("-g", type=int, default=128, help="tokens per run (default: 128)")
    p.add_argument("--threads", type=int, default=2, help="threads for Numba and PyTorch (default: 2)")
    p.add_argument("--runs", type=int, default=3, help="runs of each (default: 3)")
    p.add_argument("--skip-hf", action="store_true", help="llmnb only")
    args = p.parse_args()
    import numba
    from llmnb.config import GPT2Config
    from llmnb.formats import read_checkpoint
    from llmnb.model import init_params
    numba.set_num_threads(args.threads)
    if args.model:
        config, params = read_checkpoint(args.model)
    else:
        config = GPT2Config.depth(12)
        params = init_params(config, seed=0)
    if args.g >= config.max_seq_len:
        p.error(f"-g must be < the model's max_seq_len {config.max_seq_len}")
    rows = []
    for dtype in ("float32", "bfloat16"):
        llmnb_tokens_per_s(config, params, 4, 0, dtype)  # compile
        rows.append((f"llmnb KV cache, {dtype} weights",
                     [llmnb_tokens_per_s(config, params, args.g, r, dtype) for r in range(args.runs)]))
    if not args.skip_hf:
        import torch
        torch.set_num_threads(args.threads)
        model = hf_model(config, params)
        hf_tokens_per_s(model, config, 4, 0)  # warm up
        rows.append(("Hugging Face generate, float32", [hf_tokens_per_s(model, config, args.g, r)
                                               for r in range(args.runs)]))
    print(f"{config.num_layers} layers x {config.channels} channels, {args.g} tokens, {args.threads} threads")
    print("| | best tok/s | median tok/s | runs |\n| --- | --- | --- | --- |")
    for name, rates in rows:
        print(f"| {name} | {max(rates):.1f} | {float(np.median(rates)):.1f} | {len(rates)} |")


if __name__ == "__main__":
    main()
