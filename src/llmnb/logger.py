"""main.log: llm.c's run log (llmc/logger.h), written beside log.jsonl so that llm.c's own tooling
(dev/vislog.ipynb's parse_logfile) reads an llmnb run.

One line per event, as logger.h's fprintf formats:

    s:STEP tel:VAL_LOSS                          the val loss before step STEP's update
    s:STEP eval:ACC_NORM                         HellaSwag's acc_norm there (-h 1)
    s:STEP trl:LOSS lr:LR norm:GRAD_NORM         step STEP's training step (0-based, as llm.c)

Rank 0 writes it; each line is appended and flushed as it comes (llm.c opens, appends and closes the
file per line). A fresh run starts it empty, as logger_init with resume 0. A resumed run rewrites it
from log.jsonl's records before the resumed step, so it holds what the uninterrupted run would have
written; llm.c appends instead, and relies on its parser keeping the last value of a step.
"""
import os
import re

from .fileio import FormatError, atomic_write, disk_error, open_regular

NAME = "main.log"


def lines(record):
    """main.log's lines for one log.jsonl record, in llm.c's order (val, eval, train)."""
    step, out = record["step"], []
    if record.get("val_loss") is not None:
        out.append(f"s:{step} tel:{record['val_loss']:.4f}\n")
    if record.get("hellaswag_acc_norm") is not None:
        out.append(f"s:{step} eval:{record['hellaswag_acc_norm']:.4f}\n")
    if record.get("train_loss") is not None:
        out.append(f"s:{step} trl:{record['train_loss']:.4f} lr:{record['lr']:.6f} norm:{record['grad_norm']:.2f}\n")
    return out


LINE = re.compile(r"s:(\d+) (?:(tel|eval):(\S+)|trl:(\S+) lr:(\S+) norm:(\S+))")


def read_records(path):
    """llm.c's main.log -> log.jsonl-like records (step, train_loss, lr, grad_norm, val_loss,
    hellaswag_acc_norm, ms None), one per step that has a train line, in step order. As llm.c's
    parser: a step logged again (a resumed llm.c run appends) keeps its last values. A line that is
    none of logger.h's three: FormatError naming the file and line (but a last line cut short is
    skipped)."""
    steps = {}
    with open_regular(path, "rb") as f:
        raw = f.read()
    lines = raw.decode("utf-8", errors="replace").split("\n")
    for i, line in enumerate(lines[:-1], 1):   # (the piece after the last newline: a line cut by a kill,
        m = LINE.fullmatch(line.strip())       # skipped as read_log skips it)
        if not m:
            if line.strip():
                raise FormatError(f"{path}: line {i} is not one of llm.c's log lines (s:N tel:X, s:N eval:X, "
                                  f"s:N trl:X lr:X norm:X): {line.strip()[:60]!r}")
            continue
        step, kind, value, loss, lr, norm = m.groups()
        try:
            fields = ({"val_loss" if kind == "tel" else "hellaswag_acc_norm": float(value)} if kind else
                      {"train_loss": float(loss), "lr": float(lr), "grad_norm": float(norm)})
        except ValueError:
            raise FormatError(f"{path}: line {i} holds a value that is not a number: {line.strip()[:60]!r}") from None
        steps.setdefault(int(step), {"step": int(step), "train_loss": None, "val_loss": None, "lr": None,
                                     "ms": None}).update(fields)
    return [r for _, r in sorted(steps.items()) if r["train_loss"] is not None]


class Logger:
    """llmc/logger.h's Logger for the output directory `out_dir` (rank 0's; other ranks: active False)."""

    def __init__(self, out_dir, active=True):
        self.path = os.path.join(out_dir, NAME)
        self.active = active

    def start(self, records=()):
        """The log holding the lines of `records` (none for a fresh run), written atomically."""
        if self.active:
            with atomic_write(self.path) as f:
                f.write("".join(line for r in records for line in lines(r)).encode())

    def log(self, record):
        """Append a record's lines (a step's val loss, HellaSwag and training step)."""
        if not self.active:
            return
        text = "".join(lines(record))
        if not text:
            return
        try:
            with open(self.path, "a") as f:
                f.write(text)
        except OSError as e:
            raise disk_error(e, self.path) if not e.filename else e from None
