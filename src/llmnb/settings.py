"""llmnb-train's command line, parsed once into Settings: the run's configuration, fixed.

    build_parser()   the flags (train_gpt2.cu's, plus llmnb's long options)
    parse(argv)      -> Settings, checked; a bad value is argparse's one error line (exit 2)

Settings is a frozen dataclass: the run reads it and never changes it. Every checkpoint saves it
(as_json, under "args" in state_N.json), and a resumed run says which settings differ from the
ones that wrote its checkpoint.
"""
import argparse
import dataclasses
import math
import re
from dataclasses import dataclass

DEFAULT_INIT = "gpt2_124M.bin"  # -e's default (loading.py finds or fetches it)


@dataclass(frozen=True)
class Settings:
    train: str = None             # -i: train shards (None: tinyshakespeare's, prepared if missing)
    val: str = None               # -j: val shards
    init: str = None              # -e: the model to start from (None: DEFAULT_INIT, see loading.py)
    output_dir: str = "out"       # -o
    batch_size: int = 4           # -b: B
    seq_len: int = 64             # -t: T
    learning_rate: float = 1e-4   # -l
    steps: int = 40               # -x
    val_every: int = 10           # -v
    val_batches: int = 5          # -m
    sample_every: int = 20        # -s
    gen_tokens: int = 64          # -g: llm.c's genT, counting the start token
    checkpoint_every: int = 0     # -n
    checkpoints_keep: int = 0     # -nk: 0 keeps every checkpoint
    major_checkpoint_every: int = 0  # -nm: checkpoints -nk never deletes
    resume: int = 0               # -y
    overwrite: bool = False
    seed: int = 1337
    sampler_seed: int = 1337
    shuffle: bool = True
    warmup: int = 0
    lr_min: float = None
    grad_clip: float = 0.0
    weight_decay: float = 0.0     # --wd
    grad_accum: int = 1
    prompt: str = None
    temperature: float = 1.0
    top_k: int = 0
    hellaswag_every: int = 0
    hellaswag_file: str = None
    hellaswag_limit: int = 0
    data_dir: str = "data"
    device: str = "cpu"
    precision: str = "fp32"       # --device cuda's matmuls and attention: fp32 or tf32
    zero_stage: int = 0           # -z

    def __post_init__(self):
        if self.precision != "fp32" and self.device != "cuda":
            raise ValueError(f"--precision {self.precision} is for --device cuda (the CPU computes in fp32)")
        for name in ("batch_size", "seq_len", "grad_accum", "val_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("steps", "val_every", "sample_every", "gen_tokens", "checkpoint_every", "checkpoints_keep",
                     "major_checkpoint_every", "warmup", "top_k", "hellaswag_every", "hellaswag_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError("--temperature must be a finite number > 0")
        for flag, name in (("-l", "learning_rate"), ("--wd", "weight_decay"), ("--grad-clip", "grad_clip"),
                           ("--lr-min", "lr_min")):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{flag} must be a finite number >= 0, got {v}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite starts a fresh run; it cannot go with -y 1")

    def as_json(self, **changes):
        """The settings as a JSON object (what a checkpoint saves), with `changes` applied (the
        model a run really started from, when a fresh one stood in for -e's)."""
        d = dataclasses.asdict(self)
        d["init"] = d["init"] if d["init"] is not None else DEFAULT_INIT
        d.update(changes)
        return d

    def differences(self, saved):
        """"-l 0.0003 (was 0.001)" for each setting that differs from `saved` (a checkpoint's
        as_json), leaving out what a resumed run is meant to change (-y, -x, -o, --overwrite)."""
        flags = _flags()
        mine = self.as_json()
        out = []
        for name, value in mine.items():
            if name in ("resume", "steps", "output_dir", "overwrite", "init") or name not in saved:
                continue
            if saved[name] != value:
                out.append(f"{flags.get(name, name)} {value} (was {saved[name]})")
        return out


# -1e-4 is a number, not an option: argparse (before Python 3.13) takes an argument that starts
# with "-" for an option unless it looks like -1 or -.5, so "-l -1e-4" failed as a missing value
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def _flags():
    """{Settings field: its flag} from the parser, for messages."""
    return {a.dest: a.option_strings[0] for a in build_parser()._actions if a.option_strings}


def build_parser():
    D = Settings
    p = argparse.ArgumentParser(
        prog="llmnb-train",
        description="Train GPT-2 like llm.c's train_gpt2.c: by default fine-tune GPT-2 124M on "
                    "tinyshakespeare for 40 steps of B=4 x T=64 tokens (flags as train_gpt2.cu's).")
    p._negative_number_matcher = NEGATIVE_NUMBER  # (argparse's own, for the numbers above)
    a = p.add_argument
    a("-i", dest="train", default=D.train, help="train data pattern (default: data/tinyshakespeare/tiny_shakespeare_train.bin, prepared if missing)")
    a("-j", dest="val", default=D.val, help="val data pattern (default: data/tinyshakespeare/tiny_shakespeare_val.bin)")
    a("-e", dest="init", default=D.init,
      help=f"llm.c model file to start from, d6/d12/d24/... for a fresh GPT-2 of that depth, or "
           f"gpt2/gpt2-medium/gpt2-large/gpt2-xl: --data-dir's {DEFAULT_INIT}/gpt2_350M.bin/..., converted "
           f"from Hugging Face if missing (needs the hf extra) "
           f"(default: {DEFAULT_INIT}, fetched from llm.c's starter pack if missing, else d12)")
    a("-o", dest="output_dir", default=D.output_dir, help="output dir for the log, checkpoints, model and loss curve (default: out)")
    a("-b", dest="batch_size", type=int, default=D.batch_size, help="batch size B (default: 4)")
    a("-t", dest="seq_len", type=int, default=D.seq_len, help="sequence length T (default: 64)")
    a("-l", dest="learning_rate", type=float, default=D.learning_rate, help="learning rate (default: 1e-4)")
    a("-x", dest="steps", type=int, default=D.steps, help="number of training steps (default: 40)")
    a("-v", dest="val_every", type=int, default=D.val_every, help="val loss every N steps, 0 = off (default: 10)")
    a("-m", dest="val_batches", type=int, default=D.val_batches, help="val batches per val loss (default: 5)")
    a("-s", dest="sample_every", type=int, default=D.sample_every, help="sample every N steps, 0 = off (default: 20)")
    a("-g", dest="gen_tokens", type=int, default=D.gen_tokens,
      help="sample length counting the start token, as llm.c's genT: 64 = 63 new tokens (llmnb-sample's -g "
           "counts new tokens only) (default: 64)")
    a("-n", dest="checkpoint_every", type=int, default=D.checkpoint_every, help="save model + optimizer state every N steps (default: 0, off)")
    a("-nk", dest="checkpoints_keep", type=int, default=D.checkpoints_keep, metavar="K",
      help="keep the last K checkpoints: after writing the one of step s, delete that of step s - K*N "
           "(-n N), as llm.c's -nk (default: 0, keep all)")
    a("-nm", dest="major_checkpoint_every", type=int, default=D.major_checkpoint_every, metavar="M",
      help="with -nk: never delete the checkpoints of steps that are multiples of M, as llm.c's -nm "
           "(default: 0, none)")
    a("-y", dest="resume", type=int, default=D.resume, choices=[0, 1], help="1 = resume from the latest checkpoint in -o (default: 0)")
    a("--overwrite", action="store_true",
      help="a fresh run (no -y 1) into an -o holding an earlier run's checkpoints deletes them first "
           "(default: refuse to start)")
    a("--seed", type=int, default=D.seed, help="seed of a fresh model's init (default: 1337)")
    a("--sampler-seed", type=int, default=D.sampler_seed, help="seed of the sampler's xorshift rng (default: 1337, as llm.c)")
    a("--shuffle", action=argparse.BooleanOptionalAction, default=D.shuffle,
      help="shuffle the train shards and batches as llm.c does (its mt19937, seed 42, permutations "
           "of llmc/dataloader.h); --no-shuffle reads them in order (default: shuffle)")
    a("--warmup", type=int, default=D.warmup, help="linear warmup steps (default: 0)")
    a("--lr-min", type=float, default=D.lr_min, help="cosine-decay the lr to this by the last step (default: constant lr)")
    a("--grad-clip", type=float, default=D.grad_clip, help="clip gradients to this global norm (default: 0, off)")
    a("--wd", dest="weight_decay", type=float, default=D.weight_decay, help="AdamW weight decay on 2-D weights (default: 0)")
    a("--grad-accum", type=int, default=D.grad_accum, help="micro-batches per step: same update as an N-times larger batch (default: 1)")
    a("--prompt", default=D.prompt, help="text to start the samples from (default: the EOT token alone)")
    a("--temperature", type=float, default=D.temperature, help="sampling temperature (default: 1.0)")
    a("--top-k", type=int, default=D.top_k, help="sample from the k most likely tokens only (default: 0, all)")
    # llm.c's train_gpt2.cu calls this -h, which argparse keeps for --help
    a("--hellaswag-every", type=int, default=D.hellaswag_every, metavar="N",
      help="HellaSwag acc/acc_norm every N steps and at the end, logged (llm.c's -h; -h is --help "
           "here) (default: 0, off)")
    a("--hellaswag-file", default=D.hellaswag_file, metavar="JSONL",
      help="HellaSwag jsonl for --hellaswag-every (default: <data-dir>/hellaswag/hellaswag_val.jsonl, "
           "downloaded if missing)")
    a("--hellaswag-limit", type=int, default=D.hellaswag_limit, metavar="K",
      help="evaluate the first K examples only (default: 0, all 10,042: slow on a CPU)")
    a("--data-dir", default=D.data_dir, help="where datasets, the tokenizer and downloads go (default: data)")
    a("--device", default=D.device, choices=["cpu", "cuda"], help="where to train (default: cpu)")
    a("--precision", default=D.precision, choices=["fp32", "tf32"],
      help="--device cuda's matmuls and attention: fp32 (exact, CUDA cores) or tf32 (tensor cores; not yet "
           "run on a card) (default: fp32)")
    a("-z", dest="zero_stage", type=int, default=D.zero_stage, choices=[0, 1],
      help="under mpiexec: 0 = every rank updates all parameters, 1 = ZeRO stage 1, each rank keeps "
           "AdamW's m and v for its 1/N shard only (default: 0)")
    return p


def parse(argv=None):
    """The command line -> Settings; a value Settings refuses is argparse's error (exit 2)."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        return Settings(**vars(args))
    except ValueError as e:
        p.error(str(e))
