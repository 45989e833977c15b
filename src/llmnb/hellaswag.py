"""HellaSwag as llm.c's dev/data/hellaswag.py evaluates it (completion style).

Each example (one JSON line: ctx, endings (4), label) is rendered as 4 rows of tokens, context +
one ending each (the ending encoded with a leading space, as GPT-2's tokenizer wants), with a mask
over the ending's tokens. The model scores each row by the cross-entropy of the ending's tokens
given what precedes them: acc takes the ending of least summed loss, acc_norm the least mean
loss (per token). llm.c's script gets acc 0.2859, acc_norm 0.2955 on the 10,042 val examples with
GPT-2 124M.
"""
import json
import os

import numpy as np

from .download import download
from .fileio import FormatError

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_FILENAME = os.path.join("hellaswag", "hellaswag_val.jsonl")
T_MULTIPLE = 32  # rows are padded to a multiple of this: few shapes, so few activation re-allocations


def val_file(data_dir, log=print):
    """<data_dir>/hellaswag/hellaswag_val.jsonl, downloaded from llm.c's URL when missing."""
    path = os.path.join(data_dir, VAL_FILENAME)
    if not os.path.exists(path):
        log(f"downloading HellaSwag's val set to {path}")
        download(VAL_URL, path, retries=1, timeout=20)
    return path


def read_examples(path):
    """The examples of a HellaSwag jsonl file: a list of dict(ctx, endings, label), checked."""
    examples = []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"{path}:{n}: not JSON ({e.msg})") from None
            ok = (isinstance(ex, dict) and isinstance(ex.get("ctx"), str)
                  and isinstance(ex.get("endings"), list) and len(ex["endings"]) == 4
                  and all(isinstance(e, str) for e in ex["endings"])
                  and isinstance(ex.get("label"), int) and 0 <= ex["label"] < 4)
            if not ok:
                raise FormatError(f"{path}:{n}: not a HellaSwag example (needs ctx: text, endings: "
                                  f"4 texts, label: 0 to 3)")
            examples.append({"ctx": ex["ctx"], "endings": ex["endings"], "label": ex["label"]})
    if not examples:
        raise FormatError(f"{path}: no examples")
    return examples


def render(example, encode):
    """-> tokens (4, n) int32 and mask (4, n) (1 on the ending's tokens), n = the longest row;
    shorter rows are padded with token 0 under mask 0."""
    ctx = encode(example["ctx"])
    rows = [ctx + encode(" " + ending) for ending in example["endings"]]
    n = max(len(r) for r in rows)
    tokens = np.zeros((4, n), dtype=np.int32)
    mask = np.zeros((4, n), dtype=np.int32)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
        mask[i, len(ctx):len(row)] = 1
    return tokens, mask


def prepare(examples, encode, config):
    """Render every example up front (so a bad one stops the run before it starts) ->
    list of (tokens, mask, label)."""
    rendered = []
    max_seq_len = config.max_seq_len
    for i, ex in enumerate(examples):
        tokens, mask = render(ex, encode)
        if tokens.max() >= config.vocab_size:
            raise ValueError(f"example {i + 1} holds token {tokens.max()}, outside the model's "
                             f"vocabulary [0, {config.vocab_size})")
        if tokens.shape[1] > max_seq_len:
            raise ValueError(f"example {i + 1} is {tokens.shape[1]} tokens long, longer than the model's "
                             f"max_seq_len {max_seq_len}")
        if (mask.sum(axis=1) == 0).any():
            raise ValueError(f"example {i + 1} has an ending with no tokens")
        rendered.append((tokens, mask, ex["label"]))
    return rendered


def ending_losses(model, tokens, mask):
    """(sum, mean) of the cross-entropy over each row's ending tokens -> two (4,) float64 arrays.

    Position t predicts token t+1, so the loss at t counts where mask[t+1] is 1 (llm.c's shifted
    mask). The rows are padded to a multiple of T_MULTIPLE; padding is causally invisible.
    """
    B, n = tokens.shape
    T = min(model.config.max_seq_len, -(-n // T_MULTIPLE) * T_MULTIPLE)
    inputs = np.zeros((B, T), dtype=np.int32)
    inputs[:, :n] = tokens
    targets = np.zeros((B, T), dtype=np.int32)
    targets[:, :n - 1] = tokens[:, 1:]
    model.forward(inputs, targets)
    losses = model.backend.to_host(model.acts.losses)[:, :n - 1].astype(np.float64)
    m = mask[:, 1:]
    total = (losses * m).sum(axis=1)
    return total, total / m.sum(axis=1)


def evaluate(model, examples, encode, progress=None):
    """-> dict(n, acc, acc_norm) of the model on the examples. progress: a callable taking
    (done, correct, correct_norm), called once before the first example and after each."""
    return score(model, prepare(examples, encode, model.config), progress)


def score(model, rendered, progress=None):
    """evaluate() on examples already rendered by prepare()."""
    if progress is not None:
        progress(0, 0, 0)
    correct = correct_norm = 0
    for i, (tokens, mask, label) in enumerate(rendered):
        total, mean = ending_losses(model, tokens, mask)
        correct += int(np.argmin(total) == label)
        correct_norm += int(np.argmin(mean) == label)
        if progress is not None:
            progress(i + 1, correct, correct_norm)
    n = len(rendered)
    return {"n": n, "acc": correct / n, "acc_norm": correct_norm / n}


def evaluate_with_bar(model, examples, encode, desc="hellaswag"):
    """evaluate() with a tqdm progress bar (on stderr) showing the running acc and acc_norm,
    opened once the examples are rendered."""
    from tqdm import tqdm
    bar = None

    def progress(done, correct, correct_norm):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=len(examples), desc=desc, unit="ex", dynamic_ncols=True)
            return
        bar.update(1)
        bar.set_postfix(acc=f"{correct / done:.4f}", acc_norm=f"{correct_norm / done:.4f}", refresh=False)
    try:
        return evaluate(model, examples, encode, progress)
    finally:
        if bar is not None:
            bar.close()
