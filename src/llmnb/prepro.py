"""Data preprocessing, as llm.c's dev/data scripts: text -> GPT-2 token shards.

    llmnb-prepro tinyshakespeare [--source FILE]                  dev/data/tinyshakespeare.py
    llmnb-prepro fineweb [--sample 10B|100B] [--source PATH]      dev/data/fineweb.py
                 [--shard-size 100000000] [--workers N]
    llmnb-prepro edu_fineweb (the same options)                   dev/data/fineweb.py -t edu
    llmnb-prepro tinystories [--source PATH] [--workers N]        dev/data/tinystories.py
    llmnb-prepro hellaswag [--source FILE]                        dev/data/hellaswag.py's val files
    llmnb-prepro --input FILE [--out-dir DIR] [--val-tokens 32768]    your own text

All take --data-dir (default: data), where each dataset gets a folder of its own. Every document
is the EOT token followed by the tokens of its text (tiktoken's gpt2, encode_ordinary), stored as
uint16 after llm.c's 256-int header; given the same input, the files are byte for byte those
llm.c's scripts write. tinyshakespeare and --input split the text into sections on blank lines
("\\n\\n"), each one document keeping the "\\n\\n" it was split on (except the last): the first
val_tokens tokens are the validation split, the rest the training split. fineweb cuts its
document stream into shards of shard_size tokens (shard 0 is val); tinystories writes one file
per split. A run that is interrupted (Ctrl-C, a crash, a full disk) resumes where it stopped:
every file appears only when complete.
"""
import argparse
import glob
import gzip
import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
import tarfile
import zlib

import numpy as np
from tqdm import tqdm

from . import fileio, formats, hellaswag
from .download import DownloadError, download
from .tokenizer import TOKENIZER_FILENAME, Tokenizer, get_tiktoken_encoding

TINYSHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/"
                       "data/tinyshakespeare/input.txt")
TINYSHAKESPEARE_ENV = "LLMNB_TINYSHAKESPEARE"
# the file llm.c's tinyshakespeare.py downloads: its size and sha256, to tell a damaged copy
TINYSHAKESPEARE_SIZE = 1115394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
VAL_TOKENS = 32768

# fineweb.py: the Hugging Face dataset of each name, the config of each sample size, and the
# folder each (name, sample) is written to; shards of 10**8 tokens
FINEWEB_REPOS = {"fineweb": "HuggingFaceFW/fineweb", "edu_fineweb": "HuggingFaceFW/fineweb-edu"}
FINEWEB_CONFIGS = {"10B": "sample-10BT", "100B": "sample-100BT"}
FINEWEB_SHARD_SIZE = 10**8
PROGRESS_FILENAME = "prepro_progress.json"

TINYSTORIES_URL = ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
                   "TinyStories_all_data.tar.gz")
TINYSTORIES_SEED = 1337  # each json file's stories are shuffled by random.Random(1337 + its index)

DATASETS = ["tinyshakespeare", "fineweb", "edu_fineweb", "tinystories", "hellaswag"]


def default_workers():
    """llm.c's fineweb.py: every core but two, at least one."""
    return max(1, (os.cpu_count() or 1) - 2)


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


def tokenize_document(text):
    """One document as llm.c's fineweb.py and tinystories.py tokenize it: the EOT token, then
    the text's tokens -> uint16 array. Runs in the worker processes."""
    enc = get_tiktoken_encoding("gpt2")  # tiktoken keeps one per process: loaded once
    ids = np.array(enc.encode_ordinary(text), dtype=np.int64)
    if ids.size and ids.max() >= 2**16:
        raise ValueError(f"token id {ids.max()} does not fit uint16")
    tokens = np.empty(ids.size + 1, dtype=np.uint16)
    tokens[0] = enc.eot_token
    tokens[1:] = ids
    return tokens


def map_in_order(fn, items, workers, chunksize):
    """fn over items, results in the order of items: a Pool of `workers` processes as llm.c
    (imap), or this process alone when workers == 1."""
    if workers == 1:
        yield from map(fn, items)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(fn, items, chunksize=chunksize)


def counted(items, bar):
    """items, one tqdm bar step each."""
    for item in items:
        bar.update(1)
        yield item


def read_text(path):
    """The text of a file as llm.c reads it: UTF-8, universal newlines."""
    try:
        with fileio.open_regular(path, "r", encoding="utf-8") as f:
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
    with fileio.open_regular(source) as src, fileio.atomic_write(path) as dst:
        shutil.copyfileobj(src, dst)


def tinyshakespeare_problem(path):
    """None if path holds exactly llm.c's tinyshakespeare input.txt, else what is wrong with it."""
    size = os.path.getsize(path)
    if size != TINYSHAKESPEARE_SIZE:
        return f"{size:,} bytes, expected {TINYSHAKESPEARE_SIZE:,}"
    h = hashlib.sha256()
    with fileio.open_regular(path) as f:
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
        fileio.open_regular(path).close()  # a FIFO or directory there: refused, not read
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
# your own text (--input)

def make_dirs(path):
    """os.makedirs(path) -> the folders it created, outermost first (to remove on failure)."""
    created = []
    while path and not os.path.exists(path):
        created.insert(0, path)
        path = os.path.dirname(path)
    for d in created:
        os.makedirs(d, exist_ok=True)
    return created


def remove_empty_dirs(created):
    """Remove the folders make_dirs created, innermost first, as long as they are empty."""
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            return


def prepare_text(input_path, data_dir="data", out_dir=None, val_tokens=VAL_TOKENS, log=print):
    """Tokenize your own text file into <out_dir>/<stem>_{val,train}.bin (out_dir defaults to
    <data_dir>/<stem>) and write the tokenizer -> (train, val). A text too short for the split
    stops before any folder is made; a failure later removes the folders this made."""
    stem = os.path.splitext(os.path.basename(input_path))[0]
    out_dir = out_dir or os.path.join(data_dir, stem)
    val_path = os.path.join(out_dir, f"{stem}_val.bin")
    train_path = os.path.join(out_dir, f"{stem}_train.bin")
    tokens = tokenize_text(read_text(input_path), progress=True)
    n = len(tokens)
    if n < 2:
        raise ValueError(f"{input_path}: {n} token{'s' * (n != 1)}, too few to split into "
                         f"validation and training tokens")
    if val_tokens >= n:
        raise ValueError(f"{input_path}: {n:,} tokens, too few for a validation split of "
                         f"{val_tokens:,} and a training split; pass a smaller --val-tokens, "
                         f"e.g. --val-tokens {max(1, n // 10)}")
    created = make_dirs(out_dir)
    try:
        write_splits(tokens, val_path, train_path, val_tokens, log)
        created += make_dirs(data_dir)
        ensure_tokenizer_file(data_dir, log)
    except BaseException:
        remove_empty_dirs(created)
        raise
    return train_path, val_path


# ----------------------------------------------------------------------------
# shards of a document stream (fineweb.py's loop), resumable

def shard_path(out_dir, name, index):
    """fineweb.py's shard names: shard 0 is the val split, the others train."""
    split = "val" if index == 0 else "train"
    return os.path.join(out_dir, f"{name}_{split}_{index:06d}.bin")


def read_progress(out_dir, name, run, log):
    """The shards a previous run left in out_dir that are complete -> (shards, done), where
    shards[k] = [document, offset, tokens]: shard k holds `tokens` tokens and the stream goes
    on at token `offset` of document `document`. run: what the shards were made from; a record
    of another run is refused rather than mixed with this one."""
    path = os.path.join(out_dir, PROGRESS_FILENAME)
    if not os.path.exists(path):
        return [], False
    try:
        with fileio.open_regular(path, "r", encoding="utf-8") as f:
            record = json.load(f)
        shards, done, before = record["shards"], bool(record["done"]), record["run"]
        source, shard_size = before["source"], before["shard_size"]
        if not all(len(s) == 3 and all(isinstance(v, int) for v in s) for s in shards):
            raise ValueError("a shard that is not [document, offset, tokens]")
    except (ValueError, KeyError, TypeError):
        raise fileio.FormatError(f"{path}: not a progress record of llmnb-prepro (remove it "
                                  "to start over)") from None
    if before != run:
        raise ValueError(f"{out_dir} holds shards made from {source} with shard size "
                         f"{shard_size}: pass the same, or remove {out_dir}")
    # a shard is complete when it is there at its size (files appear only when written in full)
    k = 0
    while k < len(shards) and _size(shard_path(out_dir, name, k)) == \
            formats.HEADER_BYTES + 2 * shards[k][2]:
        k += 1
    if k < len(shards):
        log(f"{shard_path(out_dir, name, k)} is missing or incomplete: writing from it on")
        return shards[:k], False
    return shards, done


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def remove_stale_temp_files(out_dir, log):
    """Remove the temporary files of atomic writes that a killed run left in out_dir."""
    stale = [n for n in os.listdir(out_dir) if re.fullmatch(fileio.TEMP_NAME, n)]
    for n in stale:
        os.remove(os.path.join(out_dir, n))
    if stale:
        log(f"removed {len(stale)} temporary file(s) left in {out_dir} by a stopped run")


def write_progress(out_dir, run, shards, done):
    with fileio.atomic_write(os.path.join(out_dir, PROGRESS_FILENAME)) as f:
        f.write(json.dumps({"run": run, "done": done, "shards": shards}).encode() + b"\n")


def write_shards(open_texts, out_dir, name, shard_size, run, workers=1, total=None, log=print,
                 progress=True):
    """Tokenize a stream of documents into shards of shard_size tokens, as llm.c's fineweb.py:
    the documents' tokens one after another (EOT first in each), cut every shard_size tokens,
    a document that does not fit carried over into the next shard, the last shard the
    remainder -> the number of shards.

    open_texts(d): the texts from document d on; total: the number of documents, if known.
    After every shard the stream position is recorded in PROGRESS_FILENAME, so a run that was
    stopped goes on from the first shard missing.
    """
    remove_stale_temp_files(out_dir, log)
    shards, done = read_progress(out_dir, name, run, log)
    if done:
        log(f"{out_dir}: all {len(shards)} shards already written, skipping")
        return len(shards)
    doc, offset = shards[-1][:2] if shards else (0, 0)
    if shards:
        log(f"{out_dir}: {len(shards)} shards already written, going on from document {doc:,}")
    buf = np.empty(shard_size, dtype=np.uint16)
    fill = 0

    def write(n, next_doc, next_offset):
        path = shard_path(out_dir, name, len(shards))
        formats.write_shard(path, buf[:n])
        log(f"writing {n:,} tokens to {path} ({formats.HEADER_BYTES + 2 * n:,} bytes) "
            f"in the gpt-2 format")
        shards.append([next_doc, next_offset, n])
        write_progress(out_dir, run, shards, False)

    with tqdm(total=total, initial=doc, desc=name, unit="doc", file=sys.stderr,
              disable=not progress) as bar:
        for tokens in map_in_order(tokenize_document, open_texts(doc), workers, chunksize=16):
            pos, offset = offset, 0  # the first document may have begun in the last shard
            while pos < len(tokens):
                n = min(shard_size - fill, len(tokens) - pos)
                buf[fill:fill + n] = tokens[pos:pos + n]
                fill, pos = fill + n, pos + n
                if fill == shard_size:
                    write(fill, *((doc, pos) if pos < len(tokens) else (doc + 1, 0)))
                    fill = 0
            doc += 1
            bar.update(1)
    if doc == 0:
        raise ValueError(f"{run['source']}: no documents")
    if fill:
        write(fill, doc, 0)
    write_progress(out_dir, run, shards, True)
    return len(shards)


# ----------------------------------------------------------------------------
# fineweb and edu_fineweb (dev/data/fineweb.py)

def _one_line(e):
    return " ".join(str(e).split()) or type(e).__name__


def local_files(source, extensions):
    """The files of a local copy: source itself, or the files in folder source with one of
    these extensions, in name order (the order datasets reads a folder of data files in)."""
    if os.path.isdir(source):
        files = sorted(os.path.join(source, f) for f in os.listdir(source) if f.endswith(extensions))
        if not files:
            raise fileio.FormatError(f"{source}: no {' or '.join(extensions)} files in it")
        return files
    fileio.open_regular(source).close()
    if not source.endswith(extensions):
        raise fileio.FormatError(f"{source}: not a {' or '.join(extensions)} file")
    return [source]


def _parquet_module():
    try:
        import pyarrow.parquet
    except ImportError:
        raise RuntimeError("reading parquet files needs pyarrow: pip install 'llmnb[data]'") from None
    return pyarrow.parquet


def open_parquet(path):
    """A parquet file with a column "text" of strings, checked -> pyarrow's ParquetFile."""
    pq = _parquet_module()
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid, ArrowIOError...
        raise fileio.FormatError(f"{path}: not a parquet file ({_one_line(e)})") from None
    schema = f.schema_arrow
    if "text" not in schema.names:
        raise fileio.FormatError(f"{path}: no \"text\" column (its columns: {', '.join(schema.names)})")
    kind = str(schema.field("text").type)
    if kind not in ("string", "large_string"):
        raise fileio.FormatError(f"{path}: its \"text\" column holds {kind}, not strings")
    return f


def parquet_texts(path, start=0):
    """The texts of a parquet file's rows, in order, from row start on."""
    f = open_parquet(path)
    group = 0
    while group < f.num_row_groups and start >= f.metadata.row_group(group).num_rows:
        start -= f.metadata.row_group(group).num_rows
        group += 1
    groups = list(range(group, f.num_row_groups))
    if not groups:
        return
    for batch in f.iter_batches(batch_size=1024, row_groups=groups, columns=["text"]):
        column = batch.column(0)
        if column.null_count:
            raise fileio.FormatError(f"{path}: a row with no text (null)")
        texts = column.to_pylist()
        yield from texts[start:]
        start = max(0, start - len(texts))


def jsonl_texts(path, start=0):
    """The "text" of each line of a JSON-lines file (blank lines skipped), from document start on."""
    with fileio.open_regular(path, "r", encoding="utf-8") as f:
        doc = 0
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                doc += 1
                if doc <= start:
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    text = None
                if not isinstance(text, str):
                    raise fileio.FormatError(f"{path}:{n}: not a JSON object with a \"text\" string")
                yield text
        except UnicodeDecodeError as e:
            raise fileio.FormatError(f"{path}: not UTF-8 text ({e.reason})") from None


def jsonl_count(path):
    """The number of documents (lines that are not blank) of a JSON-lines file."""
    try:
        with fileio.open_regular(path, "r", encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except UnicodeDecodeError as e:
        raise fileio.FormatError(f"{path}: not UTF-8 text ({e.reason})") from None


def local_documents(source):
    """(open_texts, number of documents) of a local copy of fineweb: a parquet file, a JSON-lines
    file, or a folder of them (read in name order), each row's "text" a document."""
    files = local_files(source, (".parquet", ".jsonl"))
    counts = [open_parquet(p).metadata.num_rows if p.endswith(".parquet") else jsonl_count(p)
              for p in files]

    def open_texts(start):
        for path, count in zip(files, counts):
            if start < count:
                yield from (parquet_texts if path.endswith(".parquet") else jsonl_texts)(path, start)
            start = max(0, start - count)
    return open_texts, sum(counts)


def dataset_documents(ds):
    """(open_texts, number of documents) of a datasets.Dataset with a "text" column, in row
    order: the order llm.c's fineweb.py tokenizes it in."""
    ds = ds.select_columns(["text"])

    def open_texts(start):
        part = ds.select(range(start, len(ds))) if start else ds
        for batch in part.iter(batch_size=1024):
            yield from batch["text"]
    return open_texts, len(ds)


def hub_documents(repo, config, log=print):
    """fineweb.py's load_dataset(repo, name=config, split="train"): downloaded into Hugging
    Face's cache the first time, read from there after."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise RuntimeError("downloading fineweb needs Hugging Face's datasets: pip install "
                           "'llmnb[data]' (or pass --source with a local copy)") from None
    log(f"loading {repo} ({config}) with datasets.load_dataset")
    try:
        ds = load_dataset(repo, name=config, split="train")
    except Exception as e:  # the network, the hub, the cache: datasets raises many kinds
        raise DownloadError(f"load_dataset({repo!r}, name={config!r}) failed: {_one_line(e)}") from None
    return dataset_documents(ds)


def fineweb_dir(data_dir="data", name="fineweb", sample="10B"):
    """llm.c's folder of each (name, sample): fineweb10B, edu_fineweb100B..."""
    return os.path.join(data_dir, f"{name}{sample}")


def prepare_fineweb(name="fineweb", sample="10B", data_dir="data", source=None,
                    shard_size=FINEWEB_SHARD_SIZE, workers=None, log=print, progress=True):
    """fineweb.py: the documents of fineweb (or edu_fineweb) sample-10BT/100BT, from the hub or a
    local copy (source), tokenized into <data_dir>/<name><sample>/<name>_{val,train}_%06d.bin
    -> that folder."""
    if name not in FINEWEB_REPOS or sample not in FINEWEB_CONFIGS:
        raise ValueError(f"no fineweb {name!r} of sample {sample!r}")
    if not 0 < shard_size < 2**31:
        raise ValueError(f"shard size {shard_size} is not between 1 and 2**31 - 1 tokens")
    out_dir = fineweb_dir(data_dir, name, sample)
    if source:
        open_texts, total = local_documents(source)
        origin = os.path.abspath(source)
    else:
        repo, config = FINEWEB_REPOS[name], FINEWEB_CONFIGS[sample]
        open_texts, total = hub_documents(repo, config, log)
        origin = f"{repo} {config}"
    os.makedirs(out_dir, exist_ok=True)
    run = {"source": origin, "shard_size": shard_size}
    write_shards(open_texts, out_dir, name, shard_size, run, workers or default_workers(), total,
                 log, progress)
    ensure_tokenizer_file(data_dir, log)
    return out_dir


# ----------------------------------------------------------------------------
# tinystories (dev/data/tinystories.py)

def unpack_json_files(archive, directory, log=print):
    """The .json files at the top of a tar.gz (where llm.c's glob finds them) -> directory,
    which appears only when all are out."""
    tmp = f"{directory}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    log(f"unpacking {archive} to {directory}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tqdm(tar, desc="unpacking", unit="file", file=sys.stderr):
                name = member.name.removeprefix("./")
                if member.isfile() and "/" not in name and name.endswith(".json"):
                    with tar.extractfile(member) as src, open(os.path.join(tmp, name), "wb") as dst:
                        shutil.copyfileobj(src, dst)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise fileio.FormatError(f"{archive}: not a readable tar.gz archive ({_one_line(e)})") from None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in fileio.DISK_ERRNOS and not e.filename:
            raise fileio.disk_error(e, tmp) from None
        raise
    os.replace(tmp, directory)


def fetch_tinystories(out_dir, source=None, log=print):
    """tinystories.py's download(): TinyStories_all_data.tar.gz (or source: a local copy of it,
    or a folder of its json files), unpacked into <out_dir>/TinyStories_all_data -> the folder
    of json files."""
    if source and os.path.isdir(source):
        return source
    json_dir = os.path.join(out_dir, "TinyStories_all_data")
    if os.path.isdir(json_dir):
        log(f"{json_dir} already exists, skipping unpacking")
        return json_dir
    archive = source or os.path.join(out_dir, "TinyStories_all_data.tar.gz")
    if source:
        fileio.open_regular(source).close()
    elif os.path.exists(archive):
        log(f"{archive} already exists, skipping download")
    else:
        log(f"downloading {TINYSTORIES_URL} to {archive}")
        download(TINYSTORIES_URL, archive)
    unpack_json_files(archive, json_dir, log)
    return json_dir


def tokenize_stories(job):
    """tinystories.py's process_shard: the stories of one json file, shuffled by
    random.Random(1337 + index), each stripped and tokenized after an EOT -> uint16 array.
    job: (index of the file within its split, path)."""
    index, path = job
    try:
        with fileio.open_regular(path, "r", encoding="utf-8") as f:
            stories = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise fileio.FormatError(f"{path}: not JSON ({_one_line(e)})") from None
    if not isinstance(stories, list) or not all(isinstance(s, dict) and isinstance(s.get("story"), str)
                                                for s in stories):
        raise fileio.FormatError(f"{path}: not a TinyStories file (a JSON list of objects, "
                                  "each with a \"story\" string)")
    random.Random(TINYSTORIES_SEED + index).shuffle(stories)
    parts = [tokenize_document(s["story"].strip()) for s in stories]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint16)


def tinystories_paths(data_dir="data"):
    d = os.path.join(data_dir, "tinystories")
    return os.path.join(d, "TinyStories_train.bin"), os.path.join(d, "TinyStories_val.bin")


def prepare_tinystories(data_dir="data", source=None, workers=None, log=print, progress=True):
    """tinystories.py: the first json file (in name order) -> TinyStories_val.bin, the others,
    in name order -> TinyStories_train.bin -> (train, val). A split whose file exists is kept.

    llm.c concatenates the files of a split in the order its workers finish them, which varies
    between runs; here it is always name order, what llm.c writes when they finish in turn.
    """
    out_dir = os.path.join(data_dir, "tinystories")
    train_path, val_path = tinystories_paths(data_dir)
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temp_files(out_dir, log)
    json_dir = fetch_tinystories(out_dir, source, log)
    files = sorted(glob.glob(os.path.join(glob.escape(json_dir), "*.json")))
    if len(files) < 2:
        raise fileio.FormatError(f"{json_dir}: {len(files)} json files; TinyStories needs two or "
                                  "more (the first is the val split)")
    log(f"number of shards: {len(files)}")
    for split, path, split_files in (("val", val_path, files[:1]), ("train", train_path, files[1:])):
        if os.path.exists(path):
            log(f"{path} already exists, skipping")
            continue
        log(f"tokenizing the {split} split")
        with tqdm(total=len(split_files), desc=split, unit="file", file=sys.stderr,
                  disable=not progress) as bar:
            jobs = map_in_order(tokenize_stories, enumerate(split_files),
                                min(workers or default_workers(), len(split_files)), chunksize=1)
            n = formats.write_shard_parts(path, counted(jobs, bar))
        log(f"writing {n:,} tokens to {path} ({formats.HEADER_BYTES + 2 * n:,} bytes) "
            f"in the gpt-2 format")
    ensure_tokenizer_file(data_dir, log)
    return train_path, val_path


# ----------------------------------------------------------------------------
# hellaswag (dev/data/hellaswag.py's files)

def prepare_hellaswag(data_dir="data", source=None, log=print):
    """<data_dir>/hellaswag/hellaswag_val.jsonl, where llmnb-eval hellaswag reads it (copied from
    source, else downloaded when missing), and hellaswag_val.bin, llm.c's eval file of it ->
    (jsonl, bin). The tokens: the context, and each ending after a space, as hellaswag.py."""
    jsonl = os.path.join(data_dir, hellaswag.VAL_FILENAME)
    bin_path = os.path.splitext(jsonl)[0] + ".bin"
    if source:
        hellaswag.read_examples(source)  # checked before it takes the place of a good one
        log(f"copying {source} to {jsonl}")
        copy_file(source, jsonl)
    elif os.path.exists(jsonl):
        log(f"{jsonl} already exists, skipping download")
    else:
        hellaswag.val_file(data_dir, log)
    examples = hellaswag.read_examples(jsonl)
    enc = get_tiktoken_encoding("gpt2")
    rows = [(ex["label"], enc.encode_ordinary(ex["ctx"]),
             [enc.encode_ordinary(" " + end) for end in ex["endings"]]) for ex in examples]
    n = formats.write_eval_file(bin_path, rows)
    log(f"writing {n:,} examples to {bin_path}")
    return jsonl, bin_path


# ----------------------------------------------------------------------------
# command line

def _parser():
    p = argparse.ArgumentParser(
        prog="llmnb-prepro",
        description="Download and tokenize a dataset into llm.c's data files (GPT-2 tokens), byte "
                    "for byte what llm.c's dev/data scripts write; or your own text with --input. "
                    "A run that was stopped goes on where it left off.")
    p.add_argument("dataset", nargs="?", choices=DATASETS,
                   help="a dataset to download and tokenize into <data-dir>/<its folder>")
    p.add_argument("--data-dir", default="data",
                   help="where datasets and gpt2_tokenizer.bin go (default: data)")
    p.add_argument("--source", metavar="PATH",
                   help="a local copy to use instead of the network: tinyshakespeare's input.txt "
                        f"(also: ${TINYSHAKESPEARE_ENV}); fineweb's parquet or jsonl files (a file "
                        "or a folder of them); TinyStories_all_data.tar.gz or a folder of its json "
                        "files; hellaswag_val.jsonl")
    p.add_argument("--sample", choices=list(FINEWEB_CONFIGS), default=None,
                   help="fineweb and edu_fineweb: which sample, 10B or 100B tokens (default: 10B); "
                        "it names the folder, <data-dir>/fineweb10B...")
    p.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help=f"fineweb and edu_fineweb: tokens per shard (default: {FINEWEB_SHARD_SIZE:,})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help=f"fineweb, edu_fineweb, tinystories: tokenizing processes (default: every "
                        f"core but two, here {default_workers()})")
    p.add_argument("--input", metavar="FILE", help="a UTF-8 text file of your own to tokenize")
    p.add_argument("--out-dir", metavar="DIR",
                   help="where --input's token files go (default: <data-dir>/<input name>)")
    p.add_argument("--val-tokens", type=int, default=None, metavar="N",
                   help=f"tokens in --input's validation split (default: {VAL_TOKENS})")
    return p


# the options each kind of run takes, beyond --data-dir
OPTIONS = {
    "tinyshakespeare": {"source"},
    "fineweb": {"source", "sample", "shard_size", "workers"},
    "edu_fineweb": {"source", "sample", "shard_size", "workers"},
    "tinystories": {"source", "workers"},
    "hellaswag": {"source"},
    None: {"input", "out_dir", "val_tokens"},
}


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if (args.dataset is None) == (args.input is None):
        p.error(f"give either a dataset ({', '.join(DATASETS)}) or --input FILE")
    for option in ("source", "sample", "shard_size", "workers", "out_dir", "val_tokens"):
        if getattr(args, option) is not None and option not in OPTIONS[args.dataset]:
            flag = "--" + option.replace("_", "-")
            takers = [d or "--input" for d, o in OPTIONS.items() if option in o]
            p.error(f"{flag} goes with {' or '.join(takers)}")
    for option in ("shard_size", "workers", "val_tokens"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            p.error(f"--{option.replace('_', '-')} must be at least 1")
    log = tqdm.write  # lines between progress bars, on stdout
    try:
        if args.dataset == "tinyshakespeare":
            prepare_tinyshakespeare(args.data_dir, args.source, log)
        elif args.dataset in FINEWEB_REPOS:
            prepare_fineweb(args.dataset, args.sample or "10B", args.data_dir, args.source,
                            args.shard_size or FINEWEB_SHARD_SIZE, args.workers, log)
        elif args.dataset == "tinystories":
            prepare_tinystories(args.data_dir, args.source, args.workers, log)
        elif args.dataset == "hellaswag":
            prepare_hellaswag(args.data_dir, args.source, log)
        else:
            prepare_text(args.input, args.data_dir, args.out_dir, args.val_tokens or VAL_TOKENS, log)
    except (DownloadError, OSError, ValueError, RuntimeError) as e:
        print(f"llmnb-prepro: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llmnb-prepro: interrupted; the same command goes on from the last file written",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
