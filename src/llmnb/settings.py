"""llmnb-train's command line, parsed once into Settings: the run's configuration, fixed.

    build_parser()        the flags: train_gpt2.cu's (main's parsing, error_usage's meanings), with
                          llmnb's long names as aliases and llmnb's own long options
    parse(argv)           -> Settings, checked; a bad value is argparse's error line (exit 2)
    s.for_world(world)    -> the Settings of this run: -d's gradient accumulation derived for the
                          world's processes, -pn/-pr checked against it

Settings is a frozen dataclass: the run reads it and never changes it. Every checkpoint saves it
(as_json, under "args" in state_N.json), and a resumed run says which settings differ from the
ones that wrote its checkpoint.

The defaults are train_gpt2.c's CPU run (B=4, T=64, 40 steps at lr 1e-4, val every 10 steps over 5
batches, a sample every 20); the flags train_gpt2.c lacks take train_gpt2.cu's defaults. Flags that
only tune llm.c's GPU internals are accepted where llmnb does the same thing (-w 1, -r 0, -ge 0,
-pi mpi), accepted with a note where only speed or memory would differ (-r 1/2, -ge 1/2), and
refused with the reason where llmnb cannot do what they ask (-w 0, -z 2/3, -pi tcp/fs).
"""
import argparse
import dataclasses
import math
import re
from dataclasses import dataclass

from .optim import SCHEDULERS

DEFAULT_INIT = "gpt2_124M.bin"  # -e's default (loading.py finds or fetches it)


@dataclass(frozen=True)
class Settings:
    # file system input / output
    train: str = None             # -i: train shards (None: tinyshakespeare's, prepared if missing)
    val: str = None               # -j: val shards
    init: str = None              # -e: the model to start from (None: DEFAULT_INIT, see loading.py)
    output_dir: str = "out"       # -o
    log_gpu_every: int = -1       # -lg: --device cuda: the GPU's memory every N steps (<= 0: off)
    checkpoint_every: int = 0     # -n
    checkpoints_keep: int = 0     # -nk: 0 keeps every checkpoint
    major_checkpoint_every: int = 0  # -nm: checkpoints -nk never deletes
    resume: int = 0               # -y
    # token layout of each step
    batch_size: int = 4           # -b: B (per process, per micro-step)
    seq_len: int = 64             # -t: T
    total_batch_size: int = -1    # -d: tokens per step; -1: B*T*processes (no accumulation)
    grad_accum: int = None        # micro-steps per step: from -d (for_world), or --grad-accum
    # workload and optimization
    steps: int = 40               # -x: -1 = one epoch of the train shards
    lr_scheduler: str = "cosine"  # -k
    learning_rate: float = 1e-4   # -l
    warmup: int = 0               # -u
    final_lr_frac: float = 1.0    # -q: the lr at the end, as a fraction of -l (1.0: no decay)
    weight_decay: float = 0.0     # -c
    skip_update_lossz: float = 0.0  # -sl: skip the update when the loss's z-score is above (0: off)
    skip_update_gradz: float = 0.0  # -sg: the same for the gradient norm's z-score
    grad_clip: float = 0.0
    beta2: float = 0.999
    # evaluation
    val_every: int = 10           # -v
    val_batches: int = 5          # -m: -1 = the whole val split
    sample_every: int = 20        # -s
    gen_tokens: int = 64          # -g: llm.c's genT, counting the start token
    hellaswag: int = 0            # -h N: 1 = HellaSwag at the val-loss steps (llm.c's)
    hellaswag_every: int = 0      # --hellaswag-every: HellaSwag every N steps instead
    hellaswag_file: str = None
    hellaswag_limit: int = 0
    # debugging, numerics, memory
    overfit_single_batch: int = 0  # -a
    tf32: int = 0                 # -f: --device cuda: TF32 matmuls (llm.c's default: 1)
    master_weights: int = 1       # -w: llmnb trains in fp32: its weights are the master weights
    gelu_fusion: int = 0          # -ge: llmnb does not fuse; 1/2 are accepted with a note
    recompute: int = 0            # -r: llmnb keeps every activation; 1/2 are accepted with a note
    zero_stage: int = 0           # -z
    # many processes: llmnb takes its world from mpiexec
    num_processes: int = None     # -pn: checked against the MPI world when given
    process_rank: int = None      # -pr: the same
    gpus_per_node: int = 8        # -pg
    nccl_init_method: str = "mpi"  # -pi
    server_ip: str = ""           # -ps
    fs_path: str = ""             # -pf
    # llmnb's own
    overwrite: bool = False
    seed: int = 1337
    sampler_seed: int = 1337
    shuffle: bool = True
    prompt: str = None
    temperature: float = 1.0
    top_k: int = 0
    data_dir: str = "data"
    device: str = "cpu"
    precision: str = "fp32"       # --device cuda: fp32, tf32 (as -f 1) or bf16 (train_gpt2.cu's mixed precision)

    def __post_init__(self):
        if self.precision not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"--precision {self.precision}: expected fp32, tf32 or bf16")
        if self.precision != "fp32" and self.device != "cuda":
            raise ValueError(f"--precision {self.precision} is for --device cuda (the CPU computes in fp32)")
        for flag, name in (("-b", "batch_size"), ("-t", "seq_len")):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if self.grad_accum is not None and self.grad_accum < 1:
            raise ValueError(f"--grad-accum must be >= 1, got {self.grad_accum}")
        for flag, name in (("-d", "total_batch_size"), ("-m", "val_batches")):
            v = getattr(self, name)
            if v != -1 and v < 1:
                raise ValueError(f"{flag} must be >= 1 (or -1: {'B*T*processes' if flag == '-d' else 'the whole val split'}), got {v}")
        if self.steps < -1:
            raise ValueError(f"-x must be >= 0 (or -1: one epoch), got {self.steps}")
        for flag, name in (("-v", "val_every"), ("-s", "sample_every"), ("-g", "gen_tokens"), ("-n", "checkpoint_every"),
                           ("-nk", "checkpoints_keep"), ("-nm", "major_checkpoint_every"), ("-u/--warmup", "warmup"),
                           ("--top-k", "top_k"), ("-h", "hellaswag"), ("--hellaswag-every", "hellaswag_every"),
                           ("--hellaswag-limit", "hellaswag_limit")):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag} must be >= 0, got {getattr(self, name)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError("--temperature must be a finite number > 0")
        for flag, name in (("-l", "learning_rate"), ("-c/--wd", "weight_decay"), ("--grad-clip", "grad_clip"),
                           ("-q", "final_lr_frac"), ("-sl", "skip_update_lossz"), ("-sg", "skip_update_gradz")):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{flag} must be a finite number >= 0, got {v}")
        if not 0 <= self.beta2 < 1:
            raise ValueError(f"--beta2 must be in [0, 1), got {self.beta2}")
        if self.lr_scheduler not in SCHEDULERS:
            raise ValueError(f"-k {self.lr_scheduler}: unknown learning rate scheduler (llm.c's: {', '.join(SCHEDULERS)})")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite starts a fresh run; it cannot go with -y 1")
        if self.hellaswag and self.val_every == 0 and self.hellaswag_every == 0:
            raise ValueError("-h 1 evaluates HellaSwag at the val loss's steps, and -v 0 has none: give -v N, "
                             "or --hellaswag-every N")
        # what llmnb cannot do, refused with the reason
        if self.master_weights == 0:
            raise ValueError("-w 0: llmnb always keeps fp32 master weights (in fp32 and tf32 its weights are them; "
                             "with --precision bf16 they sit beside the bf16 weights); use -w 1, the default")
        if self.precision == "bf16" and self.zero_stage == 1:
            raise ValueError("-z 1 with --precision bf16: llmnb's bf16 update runs over whole tensors; ZeRO-1's "
                             "shards are for fp32 and tf32 (use -z 0)")
        if self.zero_stage in (2, 3):
            raise ValueError(f"-z {self.zero_stage}: llmnb has ZeRO stage 1 only (AdamW's m and v sharded over the "
                             "ranks); stages 2 and 3 (gradients, parameters) are not implemented (use -z 1)")
        if self.nccl_init_method in ("tcp", "fs"):
            raise ValueError(f"-pi {self.nccl_init_method}: llmnb's processes find each other through mpiexec "
                             "(MPI), not NCCL's tcp or fs rendezvous: launch with mpiexec -n N (and -pi mpi)")
        for flag, name, values in (("-a", "overfit_single_batch", (0, 1)), ("-f", "tf32", (0, 1)),
                                   ("-w", "master_weights", (1,)), ("-r", "recompute", (0, 1, 2)),
                                   ("-ge", "gelu_fusion", (0, 1, 2)), ("-z", "zero_stage", (0, 1)),
                                   ("-y", "resume", (0, 1)), ("-pi", "nccl_init_method", ("mpi",))):
            if getattr(self, name) not in values:
                raise ValueError(f"{flag} must be one of {', '.join(map(str, values))}, got {getattr(self, name)}")
        for flag, name in (("-pn", "num_processes"), ("-pg", "gpus_per_node")):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{flag} must be >= 1, got {v}")
        if self.process_rank is not None and self.process_rank < 0:
            raise ValueError(f"-pr must be >= 0, got {self.process_rank}")

    @property
    def hellaswag_period(self):
        """Steps between HellaSwag evals (0: none): --hellaswag-every, else -h 1's val-loss steps."""
        if self.hellaswag_every > 0:
            return self.hellaswag_every
        return self.val_every if self.hellaswag else 0

    def for_world(self, size, rank=0):
        """These settings for a world of `size` processes (this one rank `rank`): -d's gradient
        accumulation as train_gpt2.cu derives it (-d must be a multiple of B*T*processes;
        --grad-accum, llmnb's name for the same, must agree with it when both are given), -pn and
        -pr checked against the world mpiexec made. ValueError (one line, the same on every rank)
        when they do not fit."""
        if self.num_processes is not None and self.num_processes != size:
            raise ValueError(f"-pn {self.num_processes}: this job has {size} process{'es' if size != 1 else ''} "
                             f"(llmnb takes the world from mpiexec: mpiexec -n {self.num_processes} llmnb-train ...)")
        if self.process_rank is not None and size > 1:  # (every rank reads the same -pr)
            raise ValueError(f"-pr {self.process_rank}: under mpiexec -n {size} each process takes its rank from "
                             "MPI; leave -pr out")
        if self.precision == "bf16" and size > 1:
            raise ValueError(f"--precision bf16 trains on one process; this job has {size} (the ranks' gradient "
                             "all-reduce is fp32's)")
        if self.process_rank is not None and self.process_rank != rank:
            raise ValueError(f"-pr {self.process_rank}: this process is rank {rank} of {size} (llmnb takes the "
                             "ranks from mpiexec)")
        per_step = self.batch_size * self.seq_len * size  # one micro-step's tokens over the world
        what = f"B*T*processes = {self.batch_size}*{self.seq_len}*{size} = {per_step}"
        if self.total_batch_size == -1:
            accum = self.grad_accum or 1
        elif self.total_batch_size % per_step != 0:
            raise ValueError(f"-d {self.total_batch_size} is not a multiple of {what} tokens (llm.c asserts "
                             "total_batch_size % (B*T*processes) == 0): change -d, -b or -t")
        else:
            accum = self.total_batch_size // per_step
            if self.grad_accum is not None and self.grad_accum != accum:
                raise ValueError(f"--grad-accum {self.grad_accum} and -d {self.total_batch_size} disagree: -d "
                                 f"{self.total_batch_size} with {what} is {accum} micro-steps; give one of them")
        return dataclasses.replace(self, grad_accum=accum, total_batch_size=per_step * accum)

    def notes(self):
        """One line for each flag accepted that llmnb does not act on, saying so."""
        out = []
        if self.steps == 40 and self.final_lr_frac < 1 and self.lr_scheduler != "constant":
            out.append("-x 40 (llmnb's default, train_gpt2.c's) with a decaying learning rate: it decays over 40 "
                       "steps; train_gpt2.cu's default is -x -1, one epoch of the train data (give -x -1 for that)")
        if self.recompute:
            out.append(f"-r {self.recompute}: llmnb keeps every activation for the backward and recomputes none "
                       "(the memory printed above); the results are the same, only llm.c's memory and speed differ")
        if self.gelu_fusion:
            out.append(f"-ge {self.gelu_fusion}: llmnb does not fuse the GELU into the matmuls; the results are the "
                       "same, only llm.c's speed differs")
        if self.log_gpu_every > 0 and self.device != "cuda":
            out.append(f"-lg {self.log_gpu_every}: GPU information is printed with --device cuda only; ignored on the CPU")
        if self.tf32 and self.device != "cuda":
            out.append("-f 1: TF32 is a GPU matmul mode; the CPU trains in fp32")
        if self.matmul_precision == "tf32":
            out.append("TF32 (-f 1 / --precision tf32): the matmuls and attention on tensor cores, which have not "
                       "yet run on a card (docs/gpu.md)")
        if self.matmul_precision == "bf16":
            out.append("bf16 (--precision bf16): bf16 parameters, gradients and activations with fp32 master weights "
                       "(train_gpt2.cu's), the matmuls on tensor cores, which have not yet run on a card (docs/gpu.md)")
        return out

    @property
    def matmul_precision(self):
        """What --device cuda's model computes in: "bf16" for --precision bf16 (bf16 tensors, master
        weights in fp32), "tf32" when --precision tf32 or llm.c's -f 1 asks for it on a GPU, else
        "fp32" (the CPU's, always)."""
        if self.device == "cuda" and self.precision == "bf16":
            return "bf16"
        return "tf32" if self.device == "cuda" and (self.precision == "tf32" or self.tf32 == 1) else "fp32"

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


class HelpOrHellaswag(argparse.Action):
    """-h: alone (or before another flag) the help, as -h usually is; -h N (an integer) llm.c's
    HellaSwag switch (train_gpt2.cu's -h 1)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            parser.print_help()
            parser.exit()
        setattr(namespace, self.dest, values)


def build_parser():
    D = Settings
    p = argparse.ArgumentParser(
        prog="llmnb-train", add_help=False,
        description="Train GPT-2 like llm.c: by default train_gpt2.c's run, fine-tuning GPT-2 124M on "
                    "tinyshakespeare for 40 steps of B=4 x T=64 tokens. The flags are train_gpt2.cu's, with "
                    "its meanings and, where a flag is not train_gpt2.c's, its defaults; 'llm.c: X' marks "
                    "where train_gpt2.cu's default differs.")
    p._negative_number_matcher = NEGATIVE_NUMBER  # (argparse's own, for the numbers above)
    g = p.add_argument_group("file system input / output").add_argument
    g("-i", dest="train", default=D.train, metavar="PATTERN",
      help="train data pattern (default: data/tinyshakespeare/tiny_shakespeare_train.bin, prepared if missing; "
           "llm.c: dev/data/tinyshakespeare/...)")
    g("-j", dest="val", default=D.val, metavar="PATTERN",
      help="val data pattern (default: data/tinyshakespeare/tiny_shakespeare_val.bin)")
    g("-e", dest="init", default=D.init, metavar="MODEL",
      help=f"llm.c model file to start from, d6/d12/d24/... for a fresh GPT-2 of that depth, or "
           f"gpt2/gpt2-medium/gpt2-large/gpt2-xl: --data-dir's {DEFAULT_INIT}/gpt2_350M.bin/..., converted "
           f"from Hugging Face if missing (needs the hf extra) (default: {DEFAULT_INIT}, fetched from llm.c's "
           f"starter pack if missing, else d12; llm.c: gpt2_124M_bf16.bin)")
    g("-o", dest="output_dir", default=D.output_dir, metavar="DIR",
      help="output dir for the logs (log.jsonl, and llm.c's main.log), checkpoints, model and loss curve "
           "(default: out; llm.c: none, no logging)")
    g("-lg", dest="log_gpu_every", type=int, default=D.log_gpu_every, metavar="N",
      help="--device cuda: print the GPU's memory every N steps; ignored on the CPU (default: -1, off)")
    g("-n", dest="checkpoint_every", type=int, default=D.checkpoint_every, metavar="N",
      help="save model + optimizer state every N steps (default: 0, off)")
    g("-nk", dest="checkpoints_keep", type=int, default=D.checkpoints_keep, metavar="K",
      help="keep the last K checkpoints: after writing the one of step s, delete that of step s - K*N "
           "(-n N) (default: 0, keep all)")
    g("-nm", dest="major_checkpoint_every", type=int, default=D.major_checkpoint_every, metavar="M",
      help="with -nk: never delete the checkpoints of steps that are multiples of M (default: 0, none)")
    g("-y", dest="resume", type=int, default=D.resume, metavar="0|1",
      help="1 = resume from the latest checkpoint in -o; into an empty or missing -o, start a fresh run "
           "(llm.c's scripts pass -y 1 on every launch) (default: 0)")
    g = p.add_argument_group("token layout of each step").add_argument
    g("-b", dest="batch_size", type=int, default=D.batch_size, metavar="B",
      help="(per-process, micro) batch size B (default: 4)")
    g("-t", dest="seq_len", type=int, default=D.seq_len, metavar="T",
      help="sequence length T (default: 64; llm.c: 1024)")
    g("-d", dest="total_batch_size", type=int, default=D.total_batch_size, metavar="TOKENS",
      help="total batch size in tokens per step: gradient accumulation over d / (B*T*processes) micro-steps, "
           "which must divide it (default: -1, B*T*processes, no accumulation)")
    g("--grad-accum", type=int, default=D.grad_accum, metavar="N",
      help="micro-steps per step, llmnb's other way to say -d (= B*T*processes*N); both given must agree "
           "(default: from -d)")
    g = p.add_argument_group("workload and optimization").add_argument
    g("-x", dest="steps", type=int, default=D.steps, metavar="N",
      help="steps of optimization; -1 = one epoch of the train data (default: 40; llm.c: -1)")
    g("-k", dest="lr_scheduler", default=D.lr_scheduler, choices=SCHEDULERS,
      help="learning rate scheduler, llmc/schedulers.h's (default: cosine)")
    g("-l", dest="learning_rate", type=float, default=D.learning_rate, metavar="LR",
      help="learning rate (default: 1e-4; llm.c: 3e-4)")
    g("-u", "--warmup", dest="warmup", type=int, default=D.warmup, metavar="N",
      help="learning rate warmup steps, linear (default: 0)")
    g("-q", dest="final_lr_frac", type=float, default=None, metavar="FRAC",
      help="learning rate at the end of training, as a fraction of -l (default: 1.0, no decay)")
    g("--lr-min", type=float, default=None, metavar="LR",
      help="the learning rate at the end, as a value: -q LR/-l (default: -l, no decay)")
    g("-c", "--wd", dest="weight_decay", type=float, default=D.weight_decay, metavar="WD",
      help="AdamW weight decay, on llm.c's tensors: the embeddings and matmul weights (default: 0.0)")
    g("-sl", dest="skip_update_lossz", type=float, default=D.skip_update_lossz, metavar="Z",
      help="skip the update when the loss's z-score over the last 64 steps is above Z (default: 0.0, off)")
    g("-sg", dest="skip_update_gradz", type=float, default=D.skip_update_gradz, metavar="Z",
      help="skip the update when the gradient norm's z-score is above Z (default: 0.0, off)")
    g("--grad-clip", type=float, default=D.grad_clip,
      help="clip gradients to this global norm, train_gpt2.c's none; train_gpt2.cu always clips to 1.0 "
           "(default: 0, off)")
    g("--beta2", type=float, default=D.beta2,
      help="AdamW's beta2: train_gpt2.c's 0.999; train_gpt2.cu uses 0.95 (default: 0.999)")
    g = p.add_argument_group("evaluation").add_argument
    g("-v", dest="val_every", type=int, default=D.val_every, metavar="N",
      help="val loss every N steps, 0 = off (default: 10; llm.c: 20)")
    g("-m", dest="val_batches", type=int, default=D.val_batches, metavar="N",
      help="val batches per val loss; -1 = the whole val split (default: 5; llm.c: 20)")
    g("-s", dest="sample_every", type=int, default=D.sample_every, metavar="N",
      help="sample every N steps, 0 = off (default: 20)")
    g("-g", dest="gen_tokens", type=int, default=D.gen_tokens, metavar="G",
      help="sample length counting the start token, as llm.c's genT (and llmnb-sample's -g): 64 = 63 new "
           "tokens (default: 64)")
    g("-h", dest="hellaswag", type=int, default=D.hellaswag, nargs="?", action=HelpOrHellaswag, metavar="N",
      help="-h N: 1 = HellaSwag at every val loss's step after step 0 and at the end, as llm.c; -h alone: "
           "this help (default: 0)")
    g("--hellaswag-every", type=int, default=D.hellaswag_every, metavar="N",
      help="HellaSwag every N steps instead of -h 1's val steps (default: 0)")
    g("--hellaswag-file", default=D.hellaswag_file, metavar="JSONL",
      help="HellaSwag jsonl (default: <data-dir>/hellaswag/hellaswag_val.jsonl, downloaded if missing)")
    g("--hellaswag-limit", type=int, default=D.hellaswag_limit, metavar="K",
      help="evaluate the first K examples only (default: 0, all 10,042: slow on a CPU)")
    g = p.add_argument_group("debugging, numerics, memory").add_argument
    g("-a", dest="overfit_single_batch", type=int, default=D.overfit_single_batch, metavar="0|1",
      help="1 = overfit one batch: every step trains on the val data's first batches (default: 0)")
    g("-f", dest="tf32", type=int, default=D.tf32, metavar="0|1",
      help="--device cuda: 1 = TF32 matmuls; nothing on the CPU (default: 0 until llmnb's TF32 has run on a "
           "GPU; llm.c: 1)")
    g("-w", dest="master_weights", type=int, default=D.master_weights, metavar="1",
      help="keep fp32 master weights: llmnb trains in fp32, so always; -w 0 is refused (default: 1)")
    g("-ge", dest="gelu_fusion", type=int, default=D.gelu_fusion, metavar="0|1|2",
      help="GELU fusion: llmnb fuses none (0); 1 and 2 are accepted with a note (default: 0)")
    g("-r", dest="recompute", type=int, default=D.recompute, metavar="0|1|2",
      help="recompute activations in the backward: llmnb keeps them all (0); 1 and 2 are accepted with a "
           "note, the results being the same (default: 0; llm.c: 1)")
    g("-z", dest="zero_stage", type=int, default=D.zero_stage, metavar="0|1",
      help="under mpiexec: 0 = every rank updates all parameters, 1 = ZeRO stage 1, each rank keeps "
           "AdamW's m and v for its 1/N shard only; 2 and 3 are refused (default: 0)")
    g = p.add_argument_group("many processes: llmnb's world is mpiexec's").add_argument
    g("-pn", dest="num_processes", type=int, default=D.num_processes, metavar="N",
      help="number of processes: must be mpiexec's (default: mpiexec's)")
    g("-pr", dest="process_rank", type=int, default=D.process_rank, metavar="R",
      help="this process's rank: 0 in one process; under mpiexec leave it out (default: mpiexec's)")
    g("-pg", dest="gpus_per_node", type=int, default=D.gpus_per_node, metavar="N",
      help="GPUs per node: accepted; each rank takes GPU rank modulo the visible GPUs (default: 8)")
    g("-pi", "-pm", dest="nccl_init_method", default=D.nccl_init_method, metavar="mpi",
      help="how processes find each other: mpi only (mpiexec); tcp and fs are refused (default: mpi; "
           "llm.c's usage text calls it -pm)")
    g("-ps", dest="server_ip", default=D.server_ip, metavar="IP", help="-pi tcp's server: unused")
    g("-pf", "-pp", dest="fs_path", default=D.fs_path, metavar="PATH", help="-pi fs's folder: unused")
    g = p.add_argument_group("llmnb's own").add_argument
    g("--help", action="help", help="this help (so is -h alone)")
    g("--overwrite", action="store_true",
      help="a fresh run (no -y 1) into an -o holding an earlier run's checkpoints deletes them first "
           "(default: refuse to start)")
    g("--seed", type=int, default=D.seed, help="seed of a fresh model's init (default: 1337)")
    g("--sampler-seed", type=int, default=D.sampler_seed, help="seed of the sampler's xorshift rng (default: 1337)")
    g("--shuffle", action=argparse.BooleanOptionalAction, default=D.shuffle,
      help="shuffle the train shards and batches as llm.c does (its mt19937, seed 42, permutations "
           "of llmc/dataloader.h); --no-shuffle reads them in order (default: shuffle)")
    g("--prompt", default=D.prompt, help="text to start the samples from (default: the EOT token alone)")
    g("--temperature", type=float, default=D.temperature, help="sampling temperature (default: 1.0)")
    g("--top-k", type=int, default=D.top_k, help="sample from the k most likely tokens only (default: 0, all)")
    g("--data-dir", default=D.data_dir, help="where datasets, the tokenizer and downloads go (default: data)")
    g("--device", default=D.device, choices=["cpu", "cuda"], help="where to train (default: cpu)")
    g("--precision", default=D.precision, choices=["fp32", "tf32", "bf16"],
      help="--device cuda: fp32 (exact, CUDA cores), tf32 (the matmuls and attention on tensor cores, as llm.c's "
           "-f 1) or bf16 (bf16 parameters, gradients and activations, fp32 master weights, as llm.c's "
           "train_gpt2.cu); tf32 and bf16 not yet run on a card (default: fp32)")
    return p


def parse(argv=None):
    """The command line -> Settings; a value Settings refuses is argparse's error (exit 2)."""
    p = build_parser()
    args = vars(p.parse_args(argv))
    lr_min = args.pop("lr_min")
    if lr_min is not None:  # --lr-min X is -q X/lr
        if args["final_lr_frac"] is not None:
            p.error("-q and --lr-min both set the final learning rate: give one of them")
        if not (math.isfinite(lr_min) and lr_min >= 0):
            p.error(f"--lr-min must be a finite number >= 0, got {lr_min}")
        lr = args["learning_rate"]
        if lr == 0 and lr_min > 0:
            p.error("--lr-min above -l 0: the final fraction -q would be infinite")
        args["final_lr_frac"] = lr_min / lr if lr > 0 else 1.0
    if args["final_lr_frac"] is None:
        args["final_lr_frac"] = Settings.final_lr_frac
    try:
        return Settings(**args)
    except ValueError as e:
        p.error(str(e))
