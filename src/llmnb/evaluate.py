"""llmnb-eval: evaluations of a checkpoint. One for now: HellaSwag, as llm.c's dev/data/hellaswag.py."""
import argparse
import sys

from . import hellaswag as hs
from . import loading
from .download import DownloadError
from .fileio import FormatError
from .tokenizer import Tokenizer


def build_parser():
    p = argparse.ArgumentParser(prog="llmnb-eval", description="Evaluate a GPT-2 checkpoint.")
    sub = p.add_subparsers(dest="task", required=True, metavar="TASK")
    h = sub.add_parser(
        "hellaswag", help="HellaSwag val accuracy, completion style (llm.c's dev/data/hellaswag.py)",
        description="HellaSwag accuracy as llm.c's dev/data/hellaswag.py computes it: context + each "
                    "of the 4 endings, the loss over the ending's tokens; acc = least summed loss, "
                    "acc_norm = least loss per token. GPT-2 124M: acc 0.2859, acc_norm 0.2955.")
    a = h.add_argument
    a("--model", required=True, metavar="FILE",
      help="an llm.c checkpoint, or a Hugging Face GPT-2 folder")
    a("--file", default=None, metavar="JSONL",
      help="a local HellaSwag jsonl file (default: <data-dir>/hellaswag/hellaswag_val.jsonl, "
           "downloaded from rowanz/hellaswag on GitHub when missing)")
    a("--limit", type=int, default=0, help="evaluate the first N examples only (default: 0, all)")
    a("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the model (default: cpu)")
    a("--data-dir", default="data", help="where the val set is downloaded to (default: data)")
    return p


def hellaswag(args):
    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    model = loading.find_model(args.model, args.data_dir, log).load(args.device, log)
    path = args.file or hs.val_file(args.data_dir, log)
    examples = hs.read_examples(path)
    if args.limit:
        examples = examples[:args.limit]
    tok = Tokenizer.tiktoken()
    result = hs.evaluate_with_bar(model, examples, tok.encode)
    print(f"hellaswag {path}: {result['n']} examples, acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f}")
    return result


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.limit < 0:
        p.error("--limit must be >= 0")
    try:
        hellaswag(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (FormatError, DownloadError, ValueError, RuntimeError, OSError) as e:
        print(f"llmnb-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
