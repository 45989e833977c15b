"""llmnb-sample: text from a checkpoint, streamed token by token, like the sampling of llm.c's
train_gpt2.c (from the EOT token, one xorshift coin per token) with a prompt, a temperature and
top-k.

It generates with the model's KV cache (generate.py), on the CPU or the GPU (--device cuda): each
token runs the layers on that token only, reading every weight once; only the next token's
probabilities come back from the GPU. -n N samples N sequences at once (each step reads the
weights once for the N tokens), sequence i with seed + i; --dtype bfloat16 / int8 stream the
weights in half / a quarter of the bytes (CPU).
"""
import argparse
import sys
import time

from . import loading
from .fileio import FormatError
from .generate import TextStream, decoding_tokenizer, generate_batch, prompt_tokens, rate, sequence_rngs
from .model import DTYPES, Decoder
from .tokenizer import Tokenizer, load_tokenizer


def build_parser():
    p = argparse.ArgumentParser(
        prog="llmnb-sample",
        description="Generate text from a GPT-2 checkpoint, printing tokens as they are sampled and "
                    "then the speed in tokens/s.",
        epilog="example: llmnb-sample --model gpt2_124M.bin --prompt 'The meaning of life is' -g 64 --top-k 40")
    a = p.add_argument
    a("--model", required=True, metavar="FILE",
      help="an llm.c checkpoint (e.g. gpt2_124M.bin, out/model.bin), or a Hugging Face GPT-2 folder")
    a("--prompt", default="", help="text to continue (default: none, start from the EOT token)")
    a("-g", dest="gen_tokens", type=int, default=128,
      help="sample length counting the start token, as llm.c's genT and llmnb-train's -g: -g 128 "
           "samples 127 new tokens after the EOT token (and the prompt) (default: 128)")
    a("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    a("--top-k", type=int, default=0, help="sample from the k most likely tokens only (default: 0, all)")
    a("--seed", type=int, default=1337, help="seed of the xorshift sampler (default: 1337, as llm.c)")
    a("--device", default="cpu", choices=["cpu", "cuda"],
      help="where the model runs: cpu (default) or cuda (a GPU)")
    a("--dtype", default="float32", choices=list(DTYPES),
      help="precision of the weights the CPU streams per token: bfloat16 reads half the bytes, int8 "
           "a quarter (each matrix quantized per row, with a float32 scale), so they run up to ~2x and "
           "~4x faster, at a small cost in quality (docs/sampling.md) (default: float32)")
    a("-n", dest="num_sequences", type=int, default=1, metavar="N",
      help="sequences to sample at once, from the one prompt: each step reads the weights once for "
           "the N tokens, so tokens/s (counting all N) grows with N; sequence i samples with seed + i, "
           "so it is the text -n 1 --seed SEED+i gives. They are printed one after the other at the "
           "end (-n 1: streamed as they come) (default: 1)")
    a("--data-dir", default="data",
      help="where to look for llm.c's gpt2_tokenizer.bin (default: data; else tiktoken's gpt2)")
    return p


def check_args(p, args):
    if args.gen_tokens < 1:
        p.error("-g must be >= 1")
    if not args.temperature > 0:
        p.error("--temperature must be > 0")
    if args.top_k < 0:
        p.error("--top-k must be >= 0")
    if not 0 <= args.seed < 2**64:
        p.error("--seed must be in [0, 2**64)")
    if args.dtype != "float32" and args.device != "cpu":
        p.error(f"--dtype {args.dtype} is for --device cpu")
    if args.num_sequences < 1:
        p.error("-n must be >= 1")


def run(args, out=sys.stdout, err=sys.stderr):
    def log(msg):
        print(msg, file=err, flush=True)
    source = loading.find_model(args.model, args.data_dir, log)
    config = source.config
    try:
        tok = load_tokenizer(args.data_dir)
    except RuntimeError as e:  # offline without tiktoken's files
        if args.prompt:
            raise
        log(f"no tokenizer ({e}); printing token ids")
        tok = None
    if args.prompt and not tok.can_encode:  # llm.c's gpt2_tokenizer.bin only decodes
        tok = Tokenizer.tiktoken()
    prompt = prompt_tokens(args.prompt, tok, config)
    if decoding_tokenizer(tok, config) is None and tok is not None:
        log(f"the tokenizer has {tok.vocab_size} tokens, the model {config.vocab_size}: printing token ids")
    text_tok = decoding_tokenizer(tok, config)
    B = args.num_sequences
    stream = TextStream(out, text_tok) if B == 1 else None  # -n 1 streams; -n N prints at the end
    if stream is not None:
        out.write(args.prompt)
        out.flush()
    decoder = Decoder(source.load(args.device, log), args.dtype, batch=B)
    times = []

    def on_tokens(ids):
        times.append(time.perf_counter())
        if stream is not None:
            stream.write(ids[0])
    t0 = time.perf_counter()
    # -g counts the start token (llm.c's genT): -g G samples G - 1 new tokens
    new = generate_batch(decoder, prompt, args.gen_tokens - 1, sequence_rngs(args.seed, B),
                         temperature=args.temperature, top_k=args.top_k, on_tokens=on_tokens)
    if stream is not None:
        stream.close()
        out.write("\n")
    else:
        for i, seq in enumerate(new):
            out.write(f"--- sequence {i + 1} of {B} (seed {(args.seed + i) % 2**64})\n{args.prompt}")
            text = TextStream(out, text_tok)
            for t in seq:
                text.write(t)
            text.close()
            out.write("\n")
    out.flush()
    # the first token comes after the prompt's forward; the speed is that of the ones after it
    count, over = (f"{len(new[0])} tokens", "") if B == 1 else (f"{B} sequences x {len(new[0])} tokens",
                                                                 f" over the {B} sequences")
    log(f"--- {count} ({len(prompt)} prompt tokens with EOT in {times[0] - t0:.2f} s, then {rate(times, B)}"
        f"{over}, {config.num_layers} layers x {config.channels} channels, {args.dtype} on {args.device})")
    if len(new[0]) < args.gen_tokens - 1:
        log(f"stopped at the model's max_seq_len {config.max_seq_len}")
    return new[0] if B == 1 else new


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    try:
        run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (FormatError, ValueError, RuntimeError, OSError) as e:
        print(f"llmnb-sample: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
