"""Data preprocessing, as llm.c's dev/data/tinyshakespeare.py: text -> GPT-2 token shards.

    llmnb-prepro tinyshakespeare [--data-dir data] [--source FILE]
    llmnb-prepro --input FILE [--data-dir data] [--out-dir DIR] [--val-tokens 32768]

The text is split into sections on blank lines ("\\n\\n"); every section is one document,
preceded by the EOT token and followed by the "\\n\\n" it was split on (except the last): exactly
what llm.c does. The first val_tokens tokens are the validation split, the rest the training split.
"""
import argparse
import hashlib
import os
import shutil
import sys

import numpy as np
from tqdm import tqdm

from . import formats
from .download import DownloadError, download
from .tokenizer import TOKENIZER_FILENAME, Tokenizer, get_tiktoken_encoding

TINYSHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/"
                       "data/tinyshakespeare/input.txt")
TINYSHAKESPEARE_ENV = "LLMNB_TINYSHAKESPEARE"
# the file llm.c's tinyshakespeare.py downloads: its size and sha256, to tell a damaged copy
TINYSHAKESPEARE_SIZE = 1115394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
VAL_TOKENS = 32768


# ----------------------------------------------------------------------------
# tokenization

def tokenize_text(text, enc=None, progress=False):
    """GPT-2 tokens of text as llm.c's tinyshakespeare.py makes them -> uint16 array.
    progress: a tqdm bar on stderr, in characters of text."""
    enc = enc if enc is not None else get_tiktoken_encoding("gpt2")
    eot = enc.eot_token
    sections = text.split("\n\n")
    last = len(sections) - 1
    # llm.c keeps the "\n\n" at the end of every section but the last (for compatibility)
    pieces = [s + "\n\n" if i != last else s for i, s in enumerate(sections)]
    tokens = []
    with tqdm(total=len(text), desc="tokenizing", unit="char", unit_scale=True, file=sys.stderr,
              disable=not progress) as bar:
        for piece in pieces:
            tokens.append(eot)
            tokens.extend(enc.encode_ordinary(piece))
            bar.update(len(piece))
    tokens = np.array(tokens, dtype=np.int64)
    assert tokens.max() < 2**16, "GPT-2 token ids fit uint16"
    return tokens.astype(np.uint16)


def read_text(path):
    """The text of a file as llm.c reads it: UTF-8, universal newlines."""
    try:
        with formats.open_regular(path, "r", encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def write_splits(tokens, val_path, train_path, val_tokens=VAL_TOKENS, log=print):
    """First val_tokens tokens -> val_path, the rest -> train_path (llm.c data shards)."""
    if not 0 < val_tokens < len(tokens):
        raise ValueError(f"the text gives {len(tokens):,} tokens, which cannot be split into "
                         f"{val_tokens:,} validation tokens and a non-empty training split")
    for path, part in ((val_path, tokens[:val_tokens]), (train_path, tokens[val_tokens:])):
        formats.write_shard(path, part)
        log(f"writing {len(part):,} tokens to {path} "
            f"({formats.HEADER_BYTES + 2 * len(part):,} bytes) in the gpt-2 format")


def ensure_tokenizer_file(data_dir, log=print):
    """Write <data_dir>/gpt2_tokenizer.bin (llm.c's format) from tiktoken, unless it exists."""
    path = os.path.join(data_dir, TOKENIZER_FILENAME)
    if os.path.exists(path):
        log(f"{path} already exists, skipping")
        return path
    tok = Tokenizer.tiktoken()
    os.makedirs(data_dir, exist_ok=True)
    formats.write_tokenizer(path, tok.token_table, tok.eot_token)
    log(f"wrote {path}")
    return path


def tokenize_file(input_path, val_path, train_path, val_tokens=VAL_TOKENS, log=print):
    """Tokenize a text file and write its validation and training splits."""
    tokens = tokenize_text(read_text(input_path), progress=True)
    for path in (val_path, train_path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_splits(tokens, val_path, train_path, val_tokens, log)


# ----------------------------------------------------------------------------
# tinyshakespeare

def copy_file(source, path):
    """Copy source to path atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with formats.open_regular(source) as src, formats.atomic_write(path) as dst:
        shutil.copyfileobj(src, dst)


def tinyshakespeare_problem(path):
    """None if path holds exactly llm.c's tinyshakespeare input.txt, else what is wrong with it."""
    size = os.path.getsize(path)
    if size != TINYSHAKESPEARE_SIZE:
        return f"{size:,} bytes, expected {TINYSHAKESPEARE_SIZE:,}"
    h = hashlib.sha256()
    with formats.open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != TINYSHAKESPEARE_SHA256:
        return f"sha256 {h.hexdigest()[:16]}..., expected {TINYSHAKESPEARE_SHA256[:16]}..."
    return None


def fetch_tinyshakespeare(data_dir="data", source=None, log=print):
    """<data_dir>/tinyshakespeare/tiny_shakespeare.txt: kept if present and intact, else copied
    from source (or $LLMNB_TINYSHAKESPEARE), else downloaded. A cached copy of the wrong size or
    hash is fetched again; a fetched one that is still wrong is removed and refused."""
    path = os.path.join(data_dir, "tinyshakespeare", "tiny_shakespeare.txt")
    source = source or os.environ.get(TINYSHAKESPEARE_ENV) or None
    if os.path.exists(path):
        formats.open_regular(path).close()  # a FIFO or directory there: refused, not read
        problem = tinyshakespeare_problem(path)
        if problem is None:
            log(f"{path} already exists, skipping download")
            return path
        log(f"{path} is damaged ({problem}): fetching it again")
    if source:
        log(f"copying {source} to {path}")
        copy_file(source, path)
    else:
        log(f"downloading {TINYSHAKESPEARE_URL} to {path}")
        download(TINYSHAKESPEARE_URL, path)
    problem = tinyshakespeare_problem(path)
    if problem is not None:
        os.remove(path)
        raise ValueError(f"{source or TINYSHAKESPEARE_URL}: not tinyshakespeare's input.txt ({problem})")
    return path


def tinyshakespeare_paths(data_dir="data"):
    d = os.path.join(data_dir, "tinyshakespeare")
    return (os.path.join(d, "tiny_shakespeare_train.bin"),
            os.path.join(d, "tiny_shakespeare_val.bin"))


def prepare_tinyshakespeare(data_dir="data", source=None, log=print):
    """Fetch, tokenize and write the tinyshakespeare splits and the tokenizer -> (train, val)."""
    train_path, val_path = tinyshakespeare_paths(data_dir)
    text_path = fetch_tinyshakespeare(data_dir, source, log)
    tokenize_file(text_path, val_path, train_path, VAL_TOKENS, log)
    ensure_tokenizer_file(data_dir, log)
    return train_path, val_path


def ensure_tinyshakespeare(data_dir="data", source=None, log=print):
    """(train_path, val_path) of the tinyshakespeare token files, making them if either is missing."""
    train_path, val_path = tinyshakespeare_paths(data_dir)
    if os.path.exists(train_path) and os.path.exists(val_path):
        return train_path, val_path
    return prepare_tinyshakespeare(data_dir, source, log)


# ----------------------------------------------------------------------------
# command line

def _parser():
    p = argparse.ArgumentParser(
        prog="llmnb-prepro",
        description="Tokenize text into llm.c data shards (GPT-2 tokens): the tinyshakespeare "
                    "dataset, or your own text with --input.")
    p.add_argument("dataset", nargs="?", choices=["tinyshakespeare"],
                   help="a dataset to download and tokenize")
    p.add_argument("--data-dir", default="data",
                   help="where datasets and gpt2_tokenizer.bin go (default: data)")
    p.add_argument("--source", metavar="FILE",
                   help=f"a local copy of tinyshakespeare's input.txt to use instead of the "
                        f"network (also: ${TINYSHAKESPEARE_ENV})")
    p.add_argument("--input", metavar="FILE", help="a UTF-8 text file of your own to tokenize")
    p.add_argument("--out-dir", metavar="DIR",
                   help="where --input's token files go (default: <data-dir>/<input name>)")
    p.add_argument("--val-tokens", type=int, default=VAL_TOKENS,
                   help=f"tokens in --input's validation split (default: {VAL_TOKENS})")
    return p


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if (args.dataset is None) == (args.input is None):
        p.error("give either a dataset (tinyshakespeare) or --input FILE")
    if args.dataset and (args.out_dir or args.val_tokens != VAL_TOKENS):
        p.error("--out-dir and --val-tokens go with --input")
    if args.input and args.source:
        p.error("--source goes with tinyshakespeare")
    try:
        if args.dataset == "tinyshakespeare":
            prepare_tinyshakespeare(args.data_dir, args.source)
        else:
            stem = os.path.splitext(os.path.basename(args.input))[0]
            out_dir = args.out_dir or os.path.join(args.data_dir, stem)
            tokenize_file(args.input, os.path.join(out_dir, f"{stem}_val.bin"),
                          os.path.join(out_dir, f"{stem}_train.bin"), args.val_tokens)
            ensure_tokenizer_file(args.data_dir)
    except (DownloadError, OSError, ValueError, RuntimeError) as e:
        print(f"llmnb-prepro: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
