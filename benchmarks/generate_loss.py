"""The quality cost of generation's weight precisions: a model's val loss evaluated through the
Decoder (what llmnb-sample generates with) with float32, bfloat16 and int8 weights.

    python -m benchmarks.generate_loss --model out/model.bin [--val FILE] [-t 1024] [-n 8] [--windows 32]

The val tokens (default: tinyshakespeare's val split, data/tinyshakespeare/tiny_shakespeare_val.bin,
which `llmnb-prepro tinyshakespeare` writes) are cut into windows of T + 1 tokens, one after the other
as llm.c's val loader reads them (window j: tokens jT .. jT + T). Each window goes through the
decoder one token at a time (teacher forcing: the step gets the true token, not a sample), -n windows
at once (the decoder's batch), and the loss at each position is -log softmax(logits)[next token],
from the logits the step computed (the log-sum-exp in float64). The val loss is the mean over every
position of every window. A reference row evaluates the same windows with the training forward
(GPT2.forward, float32): the decoder's float32 loss equals it up to float32 rounding, so the decoder
measures llm.c's val loss, and each precision's row is what its generation computes.

Prints a Markdown table: weights, val loss, its difference to float32, the bytes of weights a token
reads. Single-process and deterministic; runs at generation's speed (T steps per -n windows).
"""
import argparse
import os
import sys

import numpy as np

from llmnb.fileio import FormatError
from llmnb.formats import read_checkpoint, read_shard
from llmnb.model import DTYPES, GPT2, Decoder
from llmnb.prepro import tinyshakespeare_paths


def windows(tokens, T, count, B):
    """(count, T + 1) int32 windows of tokens, one after the other (window j starts at token jT):
    as many as asked for and as the tokens hold, rounded down to a multiple of B."""
    fit = (len(tokens) - 1) // T
    count = min(count, fit) if count else fit
    count = count // B * B
    if count == 0:
        raise ValueError(f"{len(tokens)} val tokens hold {fit} windows of {T} + 1, fewer than -n {B}: "
                         f"lower -t or -n")
    idx = np.arange(count)[:, None] * T + np.arange(T + 1)[None, :]
    return np.asarray(tokens, dtype=np.int32)[idx]


def log_softmax_at(logits, targets, V):
    """-log softmax(logits[:, :V])[targets] per row, in float64: logits (B, Vp), targets (B,)."""
    lg = np.asarray(logits, dtype=np.float64)[:, :V]
    m = lg.max(axis=1)
    lse = m + np.log(np.exp(lg - m[:, None]).sum(axis=1))
    return lse - lg[np.arange(len(targets)), targets]


def decoder_loss(model, wins, B, dtype):
    """Mean loss over every position of wins (count, T + 1), through Decoder(model, dtype, batch=B)."""
    decoder = Decoder(model, dtype, batch=B)
    V, T = model.config.vocab_size, wins.shape[1] - 1
    total = 0.0
    for w in range(0, len(wins), B):
        group = wins[w:w + B]
        decoder.begin()
        for t in range(T):
            decoder.step(group[:, t])
            total += log_softmax_at(decoder.acts.logits.reshape(B, -1), group[:, t + 1], V).sum()
    return total / (len(wins) * T), decoder.weight_bytes()


def forward_loss(model, wins, B):
    """The same mean loss from the training forward over (B, T) batches of the windows."""
    losses = [model.forward(wins[w:w + B, :-1], wins[w:w + B, 1:]) for w in range(0, len(wins), B)]
    return float(np.mean(losses))


def run(args, out=sys.stdout):
    config, params = read_checkpoint(args.model)
    T = args.seq_len or config.max_seq_len
    if not 1 <= T <= config.max_seq_len:
        raise ValueError(f"-t {T} must be in [1, the model's max_seq_len {config.max_seq_len}]")
    val = args.val or tinyshakespeare_paths(args.data_dir)[1]
    if not os.path.exists(val):
        raise FileNotFoundError(f"{val}: no such token file (run `llmnb-prepro tinyshakespeare`, or give --val)")
    wins = windows(read_shard(val), T, args.windows, args.batch)
    if wins.max() >= config.vocab_size:
        raise ValueError(f"{val}: token {wins.max()} is outside the model's vocabulary [0, {config.vocab_size})")
    model = GPT2(config, params, copy=False)
    reference = forward_loss(model, wins, args.batch)
    rows = []
    for dtype in args.dtypes:
        loss, nbytes = decoder_loss(model, wins, args.batch, dtype)
        rows.append((dtype, loss, nbytes))
    base = dict((d, loss) for d, loss, _ in rows).get("float32")
    print(f"{args.model}: {config.num_layers} layers x {config.channels} channels; {val}: {len(wins)} windows of "
          f"{T} + 1 tokens, {args.batch} at a time", file=out)
    print("| weights | val loss | vs float32 | MB of weights per token |\n| --- | --- | --- | --- |", file=out)
    print(f"| float32, training forward (reference) | {reference:.4f} | | |", file=out)
    for dtype, loss, nbytes in rows:
        diff = f"{loss - base:+.4f}" if base is not None else ""
        print(f"| {dtype} | {loss:.4f} | {diff} | {nbytes / 1e6:.1f} |", file=out)
    return reference, rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an llm.c checkpoint (e.g. gpt2_124M.bin, out/model.bin)")
    ap.add_argument("--val", default=None, help="an llm.c token shard (default: tinyshakespeare's val split "
                                                "in --data-dir)")
    ap.add_argument("--data-dir", default="data", help="where llmnb-prepro wrote tinyshakespeare (default: data)")
    ap.add_argument("-t", dest="seq_len", type=int, default=0,
                    help="tokens of context per window (default: the model's max_seq_len)")
    ap.add_argument("-n", dest="batch", type=int, default=8, help="windows evaluated at once (default: 8)")
    ap.add_argument("--windows", type=int, default=0, help="at most this many windows (default: all the "
                                                             "val tokens hold, a multiple of -n)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help=f"weights to compare (default: {','.join(DTYPES)})")
    args = ap.parse_args(argv)
    args.dtypes = args.dtypes.split(",")
    bad = [d for d in args.dtypes if d not in DTYPES]
    if bad:
        ap.error(f"--dtypes: {bad[0]!r} is not one of {', '.join(DTYPES)}")
    if args.batch < 1 or args.windows < 0:
        ap.error("-n must be >= 1 and --windows >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (FormatError, ValueError, OSError) as e:
        print(f"benchmarks.generate_loss: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
