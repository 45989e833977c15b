"""llmnb-train: llm.c's training run — GPT-2 on tinyshakespeare with val loss, samples and checkpoints.

The loop is train_gpt2.c's main (and train_gpt2.cu's flags): every `-v` steps the val loss over
`-m` batches, every `-s` steps a sample of `-g` tokens, and in between training steps of
forward, backward and AdamW on B x T tokens from the train shards.

The output directory belongs to one run (a lock in it); a run stops, writing nothing more, when its
loss, gradient norm or parameters stop being finite.
"""
import argparse
import contextlib
import errno
import fcntl
import json
import math
import os
import re
import signal
import sys
import time


STARTER_PACK_URL = "https://huggingface.co/datasets/karpathy/llmc-starter-pack/resolve/main/"
DEFAULT_INIT = "gpt2_124M.bin"


# ----------------------------------------------------------------------------------------------
# the model to start from

def check_memory(args, config, log):
    """Print what the run's buffers take (llm.c prints its allocations) and stop at once, before
    allocating any, when they need more than the machine (or the GPU) has free."""
    from .memory import GiB, available_bytes, check_memory, describe, run_memory
    sizes = run_memory(config, args.batch_size, args.seq_len)
    available = available_bytes(args.device)
    where = "the GPU" if args.device == "cuda" else "this machine"
    log(f"memory: {describe(sizes)}"
        + (f" of {available / GiB:,.2f} GiB available on {where}" if available is not None else ""))
    check_memory(sizes, available, where)


def build_model(args, log):
    from .config import GPT2Config
    from .formats import read_checkpoint_config
    from .model import GPT2, init_params

    m = re.fullmatch(r"d(\d+)", args.init)
    if m:
        config = GPT2Config.depth(int(m.group(1)))
        log(f"initialising a fresh GPT-2 {args.init}: {config.num_layers} layers, {config.num_heads} heads, "
            f"{config.channels} channels (seed {args.seed})")
        check_memory(args, config, log)
        return GPT2(config, init_params(config, seed=args.seed), device=args.device, copy=False,
                    precision=args.precision)
    path = args.init
    from .convert import HF_GPT2_FILES, ConvertError, pretrained_checkpoint
    if args.init in HF_GPT2_FILES:  # gpt2, gpt2-medium...: llm.c's file in --data-dir, else from HF
        try:
            path = pretrained_checkpoint(args.init, args.data_dir, log)
        except ConvertError as e:
            log(f"could not get {args.init} ({e}); training a fresh d12 model instead")
            args.init = "d12"
            return build_model(args, log)
    if not os.path.exists(path) and args.init_is_default:
        path = os.path.join(args.data_dir, DEFAULT_INIT)
        if not os.path.exists(path):
            from .download import DownloadError, download
            log(f"{DEFAULT_INIT} not found: fetching llm.c's starter pack to {path}")
            try:
                download(STARTER_PACK_URL + DEFAULT_INIT, path, retries=1, timeout=20)
            except DownloadError as e:
                log(f"could not fetch the pretrained GPT-2 ({e}); training a fresh d12 model instead")
                args.init = "d12"
                return build_model(args, log)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file (-e takes an llm.c checkpoint or d6/d12/d24...)")
    check_memory(args, read_checkpoint_config(path), log)
    model = GPT2.from_checkpoint(path, device=args.device, precision=args.precision)
    log(f"loaded {path}")
    return model


def find_data(args, log):
    """(train pattern, val pattern), preparing tinyshakespeare when the defaults are missing."""
    import glob
    from .prepro import ensure_tinyshakespeare, tinyshakespeare_paths
    default_train, default_val = tinyshakespeare_paths(args.data_dir)
    train = args.train or default_train
    val = args.val or default_val
    if (train == default_train and not glob.glob(train)) or (val == default_val and not glob.glob(val)):
        log("tinyshakespeare token files not found: preparing them (llmnb-prepro tinyshakespeare)")
        ensure_tinyshakespeare(args.data_dir, log=log)
    return train, val


# ----------------------------------------------------------------------------------------------
# the run

class Run:
    """Everything a training run holds, and its steps."""

    def __init__(self, args, log=print, world=None):
        from .data import DataLoader
        from .dist import Single
        from .outlier import OutlierDetector
        from .sampler import Rng
        from .tokenizer import load_tokenizer

        self.args, self.log = args, log
        self.world = world = world if world is not None else Single()
        with world.rank_zero_first():  # one rank downloads or prepares what is missing
            self.model = build_model(args, log)
            train_pattern, val_pattern = find_data(args, log)
        if world.describe(self.model):
            log(world.describe(self.model))
        cfg = self.model.config
        log(f"[GPT-2] max_seq_len: {cfg.max_seq_len} vocab_size: {cfg.vocab_size} padded_vocab_size: "
            f"{cfg.padded_vocab_size} num_layers: {cfg.num_layers} num_heads: {cfg.num_heads} "
            f"channels: {cfg.channels}")
        log(f"num_parameters: {self.model.num_parameters:,}")
        if args.seq_len > cfg.max_seq_len:
            raise ValueError(f"-t {args.seq_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
        B, T = args.batch_size, args.seq_len
        V = cfg.vocab_size
        # as train_gpt2.c: train batches shuffled by llm.c's mt19937 (seed 42), val in order
        # under MPI each rank reads its slice of every global batch of world.size * B rows
        ranks = dict(process_rank=world.rank, num_processes=world.size)
        self.train_loader = DataLoader(train_pattern, B, T, shuffle=args.shuffle, vocab_size=V, **ranks)
        self.val_loader = DataLoader(val_pattern, B, T, vocab_size=V, **ranks) if args.val_every > 0 else None
        # llm.c prints num_tokens / (B*T), which ignores the one extra target token a batch reads:
        # one more than the batches a shard serves when B*T divides its tokens (val: 128, not 127)
        BT = B * T * world.size  # the global batch's tokens
        log(f"train dataset num_batches: {self.train_loader.num_tokens // BT}")
        if self.val_loader is not None:
            log(f"val dataset num_batches: {self.val_loader.num_tokens // BT}")
        try:  # --prompt: the tokenizer file's table plus tiktoken's encoder
            self.tokenizer = load_tokenizer(args.data_dir, encode=bool(args.prompt))
        except Exception as e:  # e.g. no network for tiktoken's files: print token ids instead
            log(f"no tokenizer ({e}); samples will be printed as token ids")
            self.tokenizer = None
        self.prompt_tokens = self.encode_prompt(args.prompt)
        self.hellaswag = self.load_hellaswag() if args.hellaswag_every > 0 else None
        self.rng = Rng(args.sampler_seed)
        self.loss_outliers, self.norm_outliers = OutlierDetector(), OutlierDetector()
        self.rng_at_step = self.rng.state  # the sampler's state as the current step began
        self.records = []
        self.start_step = 0
        import numba
        from .mfu import estimate_peak_flops, flops_per_step
        self.threads = numba.get_num_threads()
        self.peak, how = estimate_peak_flops(self.threads, args.device)
        self.flops = flops_per_step(cfg, B, T) * args.grad_accum
        log(f"peak fp32 FLOP/s estimate: {self.peak / 1e9:.0f} GFLOP/s = {how}")
        log(f"FLOP per step (matmuls + causal attention, x3 for the backward): {self.flops / 1e9:.1f} GFLOP")

    def encode_prompt(self, text):
        """--prompt as token ids, checked now rather than at the first sample."""
        if not text:
            return []
        tok, V = self.tokenizer, self.model.config.vocab_size
        if tok is None or not tok.can_encode:
            raise ValueError("--prompt needs tiktoken's gpt2 encoding to encode the prompt "
                             "(it needs the network once, or TIKTOKEN_CACHE_DIR)")
        ids = tok.encode(text)
        if ids and max(ids) >= V:
            raise ValueError(f"--prompt encodes to token {max(ids)}, outside the model's vocabulary [0, {V})")
        if len(ids) + 1 > self.model.config.max_seq_len:
            raise ValueError(f"--prompt is {len(ids)} tokens, longer than the model's max_seq_len")
        return ids

    def load_hellaswag(self):
        """--hellaswag-every's examples, rendered and checked now rather than at the first eval."""
        from . import hellaswag
        from .tokenizer import Tokenizer
        a = self.args
        path = a.hellaswag_file or hellaswag.val_file(a.data_dir, self.log)
        examples = hellaswag.read_examples(path)[:a.hellaswag_limit or None]
        rendered = hellaswag.prepare(examples, Tokenizer.tiktoken().encode, self.model.config)
        self.log(f"HellaSwag: {len(rendered)} examples from {path}")
        return rendered

    # -- pieces of a step

    def lr(self, step):
        from .optim import learning_rate
        a = self.args
        return learning_rate(step, a.learning_rate, a.warmup, a.steps, a.lr_min)

    def val_loss(self):
        self.val_loader.reset()
        total = 0.0
        n = min(self.args.val_batches, len(self.val_loader))
        for _ in range(n):
            x, y = self.val_loader.next_batch()
            total += self.model.forward(x, y)
        return self.world.mean(total / n)

    def sample(self):
        from .generate import generate
        from .tokenizer import StreamDecoder
        a, cfg = self.args, self.model.config
        tok = self.tokenizer
        if tok is not None and tok.vocab_size < cfg.vocab_size:
            tok = None  # it cannot decode every token the model can produce: print ids instead
        # generation starts from the EOT token, as llm.c's; a model with a smaller vocabulary than
        # GPT-2's uses its last token
        eot = tok.eot_token if tok is not None and tok.eot_token is not None else None
        eot = eot if eot is not None and eot < cfg.vocab_size else cfg.vocab_size - 1
        prompt = [eot] + self.prompt_tokens
        dec = StreamDecoder()
        out = sys.stdout
        print("generating:\n---", flush=True)
        if a.prompt:
            out.write(a.prompt)

        def show(t):
            out.write(dec.feed(tok.decode(t)) if tok is not None else f"{t} ")
            out.flush()
        # -g counts the start token, as llm.c's genT: -g 64 samples 63 new tokens
        generate(self.model, prompt, max(a.gen_tokens - 1, 0), self.rng,
                 temperature=a.temperature, top_k=a.top_k, on_token=show)
        out.write(dec.flush() if tok is not None else "")
        print("\n---", flush=True)

    def train_step(self, step):
        from .optim import DECAYED
        a, model, world = self.args, self.model, self.world
        lr = self.lr(step)
        t0 = time.perf_counter()
        loss = 0.0
        for micro in range(a.grad_accum):
            x, y = self.train_loader.next_batch()
            loss += model.forward(x, y) / a.grad_accum
            model.zero_grad(params=(micro == 0))
            model.backward(grad_scale=1.0 / (a.grad_accum * world.size))  # the sum over ranks is the mean
        world.reduce_grads(model)
        loss = world.mean(loss)
        norm = world.clip_grad_norm(model, a.grad_clip)  # grad_clip 0: measures only
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise Diverged(f"training diverged at step {step + 1}: train loss {loss}, grad norm {norm}; "
                           "stopped before the update, no checkpoint written from it (lower -l, or "
                           "try --grad-clip)")
        world.update(model, lr, 0.9, 0.999, 1e-8, a.weight_decay, step + 1,
                     decay=DECAYED if a.weight_decay > 0 else None)
        model.backend.synchronize()
        ms = (time.perf_counter() - t0) * 1000
        return loss, lr, ms, norm

    # -- checkpoints and logs

    def checkpoint_extra(self):
        # the sampler's state from before this step's sample: a resumed run draws that sample again
        # and goes on exactly as the uninterrupted one
        return {"train_loader": self.train_loader.state(), "rng_state": self.rng_at_step,
                "args": {k: v for k, v in vars(self.args).items() if k != "init_is_default"}}

    def resume(self):
        from . import checkpoint
        from .checkpoint import read_state
        from .formats import FormatError
        from .model import GPT2
        out = self.args.output_dir
        step = checkpoint.latest(out)
        if step is None:
            self.log(f"-y 1: no complete checkpoint in {out}, starting from step 0")
            return
        if step > self.args.steps:
            raise ValueError(f"-y 1: the latest checkpoint in {out} is at step {step}, past -x {self.args.steps}: "
                             f"nothing to train (give an -x above {step}, or another -o)")
        world = self.world
        model_path, state_path, extra = checkpoint.load(out, step, rank=world.rank)
        json_path = checkpoint.paths(out, step)[2]
        checkpoint.check_world(out, step, extra, world.size, self.args.zero_stage, world.rank)
        model = GPT2.from_checkpoint(model_path, device=self.args.device, precision=self.args.precision)
        if model.config != self.model.config:
            raise ValueError(f"{model_path}: its model shape {model.config} differs from -e's {self.model.config}")
        lo, hi = world.shard(model.num_parameters)  # -z 1: this rank's m and v shard
        state = read_state(state_path, hi - lo, step=step)
        model.load_optimizer_state(state["m"], state["v"])
        self.model = model
        try:
            self.train_loader.load_state(dict(extra["train_loader"], process_rank=world.rank),
                                         llmc_tail=state["shuffle_tail"] or None)
            self.rng.state = self.rng_at_step = extra["rng_state"]
        except (ValueError, TypeError, KeyError) as e:
            raise FormatError(f"{json_path} with {state_path}: the data loader's or sampler's state: {e}") from None
        self.start_step = step
        self.records = [r for r in read_log(self.log_path) if r["step"] < step]
        for r in self.records:  # the spike detectors see the same window as an uninterrupted run
            if r.get("train_loss") is not None:
                self.loss_outliers.update(r["train_loss"])
            if r.get("grad_norm") is not None:
                self.norm_outliers.update(r["grad_norm"])
        self.log(f"resumed from {model_path} at step {step}")

    def check_finite(self, step, what):
        """Stop before `what` (a checkpoint, the final model) when the parameters hold NaN or inf."""
        if not self.model.params_finite():
            raise Diverged(f"training diverged by step {step}: the parameters hold NaN or inf; "
                           f"{what} not written (lower -l, or try --grad-clip)")

    @property
    def log_path(self):
        return os.path.join(self.args.output_dir, "log.jsonl")

    def start_log(self):
        """Write the records kept so far (none, or those before a resumed step) atomically."""
        from .formats import atomic_write
        if self.world.rank != 0:
            return
        with atomic_write(self.log_path) as f:
            for r in self.records:
                f.write((log_line(r) + "\n").encode())

    def append_log(self, record):
        """One JSON line per step, appended and flushed (read_log skips a line cut by a kill)."""
        from .formats import disk_error
        self.records.append(record)
        if self.world.rank != 0:
            return
        try:
            with open(self.log_path, "a") as f:
                f.write(log_line(record) + "\n")
        except OSError as e:
            raise disk_error(e, self.log_path) if not e.filename else e from None

    # -- the loop

    def run(self):
        from . import checkpoint
        from .plot import write_loss_svg
        a, log, world = self.args, self.log, self.world
        os.makedirs(a.output_dir, exist_ok=True)
        if a.resume:
            self.resume()
        resumed_at = self.start_step if a.resume else None
        self.start_log()
        tokens_per_step = a.batch_size * a.seq_len * a.grad_accum * world.size
        for step in range(self.start_step, a.steps + 1):
            last = step == a.steps
            record = {"step": step, "train_loss": None, "val_loss": None, "lr": None, "ms": None}
            self.rng_at_step = self.rng.state
            if a.val_every > 0 and (step % a.val_every == 0 or last):
                record["val_loss"] = self.val_loss()
                log(f"val loss {record['val_loss']:f}")
                if not math.isfinite(record["val_loss"]):
                    self.append_log(record)
                    raise Diverged(f"training diverged by step {step}: val loss {record['val_loss']}; "
                                   "no checkpoint written from this state (lower -l, or try --grad-clip)")
            if a.hellaswag_every > 0 and ((step > 0 and step % a.hellaswag_every == 0) or last) \
                    and world.rank == 0:
                from .hellaswag import score  # as train_gpt2.cu's -h 1: after step 0, and last
                hs = score(self.model, self.hellaswag)
                record.update(hellaswag_acc=hs["acc"], hellaswag_acc_norm=hs["acc_norm"])
                log(f"HellaSwag: acc {hs['acc']:.4f} acc_norm {hs['acc_norm']:.4f} ({hs['n']} examples)")
            if a.sample_every > 0 and ((step > 0 and step % a.sample_every == 0) or last) and world.rank == 0:
                self.sample()
            if a.checkpoint_every > 0 and step != resumed_at and \
                    ((step > 0 and step % a.checkpoint_every == 0) or last):
                self.check_finite(step, "checkpoint")
                path = checkpoint.save(a.output_dir, step, self.model, self.checkpoint_extra(),
                                       shuffle_tail=self.train_loader.llmc_state_tail(), world=world)
                log(f"saved checkpoint {path}")
            if last:
                if record["val_loss"] is not None or "hellaswag_acc" in record:
                    self.append_log(record)
                break
            comm0 = world.comm_seconds
            loss, lr, ms, norm = self.train_step(step)
            comm_ms = (world.comm_seconds - comm0) * 1000
            # spikes, as llm.c's outlier detector: z-scores over the last 64 steps (NaN until then)
            zloss, znorm = self.loss_outliers.update(loss), self.norm_outliers.update(norm)
            record.update(train_loss=loss, lr=lr, ms=ms, grad_norm=norm, loss_z=zloss, norm_z=znorm)
            if world.size > 1:
                record["comm_ms"] = comm_ms
            self.append_log(record)
            mfu = self.flops / (ms / 1000) / self.peak
            log(f"step {step + 1:4d}/{a.steps} | train loss {loss:f}{z_text(zloss)} | "
                f"grad norm {norm:.4f}{z_text(znorm)} | lr {lr:.2e} | {ms:.1f} ms | "
                f"{tokens_per_step / (ms / 1000):.0f} tok/s | MFU {100 * mfu:.1f}%"
                + (f" | comm {comm_ms:.1f} ms" if world.size > 1 else ""))
        final = os.path.join(a.output_dir, "model.bin")
        self.check_finite(a.steps, final)
        if world.rank != 0:
            return
        self.model.save_checkpoint(final)
        write_loss_svg(os.path.join(a.output_dir, "loss.svg"), self.records)
        log(f"wrote {final}, {self.log_path} and {os.path.join(a.output_dir, 'loss.svg')}")


class Diverged(RuntimeError):
    """A non-finite loss, gradient norm or parameter: the run stops before writing from it."""


def z_text(z):
    """ (+1.23z) after a value in the step line, as llm.c's; nothing while the window fills."""
    return f" ({z:+.2f}z)" if math.isfinite(z) else ""


def log_line(record):
    """A record as one line of strict JSON: NaN and inf become null (json.dumps would write NaN)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)


def read_log(path):
    """The records of a log.jsonl; a last line cut short by a killed run is skipped. Every other
    line must be a JSON object with an integer "step" (else ValueError naming file and line)."""
    from .formats import open_regular
    if not os.path.exists(path):
        return []
    with open_regular(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    records = []
    for i, line in enumerate(text.splitlines(keepends=True), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            if line.endswith("\n"):
                raise ValueError(f"{path}: line {i} is not JSON: {line[:60]!r}") from None
            continue
        if not isinstance(r, dict) or not isinstance(r.get("step"), int) or isinstance(r["step"], bool):
            raise ValueError(f"{path}: line {i} is not a step record (a JSON object with an integer "
                             f"\"step\"): {line.strip()[:60]!r}")
        records.append(r)
    return records


# ----------------------------------------------------------------------------------------------
# command line

def build_parser():
    p = argparse.ArgumentParser(
        prog="llmnb-train",
        description="Train GPT-2 like llm.c's train_gpt2.c: by default fine-tune GPT-2 124M on "
                    "tinyshakespeare for 40 steps of B=4 x T=64 tokens (flags as train_gpt2.cu's).")
    a = p.add_argument
    a("-i", dest="train", default=None, help="train data pattern (default: data/tinyshakespeare/tiny_shakespeare_train.bin, prepared if missing)")
    a("-j", dest="val", default=None, help="val data pattern (default: data/tinyshakespeare/tiny_shakespeare_val.bin)")
    a("-e", dest="init", default=None,
      help=f"llm.c model file to start from, d6/d12/d24/... for a fresh GPT-2 of that depth, or "
           f"gpt2/gpt2-medium/gpt2-large/gpt2-xl: --data-dir's {DEFAULT_INIT}/gpt2_350M.bin/..., converted "
           f"from Hugging Face if missing (needs the hf extra) "
           f"(default: {DEFAULT_INIT}, fetched from llm.c's starter pack if missing, else d12)")
    a("-o", dest="output_dir", default="out", help="output dir for the log, checkpoints, model and loss curve (default: out)")
    a("-b", dest="batch_size", type=int, default=4, help="batch size B (default: 4)")
    a("-t", dest="seq_len", type=int, default=64, help="sequence length T (default: 64)")
    a("-l", dest="learning_rate", type=float, default=1e-4, help="learning rate (default: 1e-4)")
    a("-x", dest="steps", type=int, default=40, help="number of training steps (default: 40)")
    a("-v", dest="val_every", type=int, default=10, help="val loss every N steps, 0 = off (default: 10)")
    a("-m", dest="val_batches", type=int, default=5, help="val batches per val loss (default: 5)")
    a("-s", dest="sample_every", type=int, default=20, help="sample every N steps, 0 = off (default: 20)")
    a("-g", dest="gen_tokens", type=int, default=64,
      help="sample length counting the start token, as llm.c's genT: 64 = 63 new tokens (default: 64)")
    a("-n", dest="checkpoint_every", type=int, default=0, help="save model + optimizer state every N steps (default: 0, off)")
    a("-y", dest="resume", type=int, default=0, choices=[0, 1], help="1 = resume from the latest checkpoint in -o (default: 0)")
    a("--overwrite", action="store_true",
      help="a fresh run (no -y 1) into an -o holding an earlier run's checkpoints deletes them first "
           "(default: refuse to start)")
    a("--seed", type=int, default=1337, help="seed of a fresh model's init (default: 1337)")
    a("--sampler-seed", type=int, default=1337, help="seed of the sampler's xorshift rng (default: 1337, as llm.c)")
    a("--shuffle", action=argparse.BooleanOptionalAction, default=True,
      help="shuffle the train shards and batches as llm.c does (its mt19937, seed 42, permutations "
           "of llmc/dataloader.h); --no-shuffle reads them in order (default: shuffle)")
    a("--warmup", type=int, default=0, help="linear warmup steps (default: 0)")
    a("--lr-min", type=float, default=None, help="cosine-decay the lr to this by the last step (default: constant lr)")
    a("--grad-clip", type=float, default=0.0, help="clip gradients to this global norm (default: 0, off)")
    a("--wd", dest="weight_decay", type=float, default=0.0, help="AdamW weight decay on 2-D weights (default: 0)")
    a("--grad-accum", type=int, default=1, help="micro-batches per step: same update as an N-times larger batch (default: 1)")
    a("--prompt", default=None, help="text to start the samples from (default: the EOT token alone)")
    a("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    a("--top-k", type=int, default=0, help="sample from the k most likely tokens only (default: 0, all)")
    # llm.c's train_gpt2.cu calls this -h, which argparse keeps for --help
    a("--hellaswag-every", type=int, default=0, metavar="N",
      help="HellaSwag acc/acc_norm every N steps and at the end, logged (llm.c's -h; -h is --help "
           "here) (default: 0, off)")
    a("--hellaswag-file", default=None, metavar="JSONL",
      help="HellaSwag jsonl for --hellaswag-every (default: <data-dir>/hellaswag/hellaswag_val.jsonl, "
           "downloaded if missing)")
    a("--hellaswag-limit", type=int, default=0, metavar="K",
      help="evaluate the first K examples only (default: 0, all 10,042: slow on a CPU)")
    a("--data-dir", default="data", help="where datasets, the tokenizer and downloads go (default: data)")
    a("--device", default="cpu", choices=["cpu", "cuda"], help="where to train (default: cpu)")
    a("--precision", default="fp32", choices=["fp32", "tf32"],
      help="--device cuda's matmuls: fp32 (exact, CUDA cores) or tf32 (tensor cores; not yet run on a card) "
           "(default: fp32)")
    a("-z", dest="zero_stage", type=int, default=0, choices=[0, 1],
      help="under mpiexec: 0 = every rank updates all parameters, 1 = ZeRO stage 1, each rank keeps "
           "AdamW's m and v for its 1/N shard only (default: 0)")
    return p


def check_args(p, args):
    for name in ("batch_size", "seq_len", "grad_accum", "val_batches"):
        if getattr(args, name) < 1:
            p.error(f"{name} must be >= 1")
    for name in ("steps", "val_every", "sample_every", "gen_tokens", "checkpoint_every", "warmup", "top_k",
                 "hellaswag_every", "hellaswag_limit"):
        if getattr(args, name) < 0:
            p.error(f"{name} must be >= 0")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        p.error("--temperature must be a finite number > 0")
    for flag, name in (("-l", "learning_rate"), ("--wd", "weight_decay"), ("--grad-clip", "grad_clip"),
                       ("--lr-min", "lr_min")):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v >= 0):
            p.error(f"{flag} must be a finite number >= 0, got {v}")
    if args.overwrite and args.resume:
        p.error("--overwrite starts a fresh run; it cannot go with -y 1")
    args.init_is_default = args.init is None
    if args.init is None:
        args.init = DEFAULT_INIT


# ----------------------------------------------------------------------------------------------
# the output directory: one run at a time

LOCK_NAME = ".llmnb-train.lock"


def lock_output_dir(out):
    """Take the output directory's lock (flock on a file in it, released by the kernel when this
    process ends, however it ends) -> the open lock file, to keep open for the run. A directory
    locked by another run: RuntimeError naming it and that run's pid."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_NAME)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise RuntimeError(f"{out}: another llmnb-train (pid {pid}) is writing to this directory; "
                           "wait for it, or use another -o") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        return f  # a filesystem without locks (some NFS): the run goes on unguarded, as before
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def prepare_output_dir(args, log):
    """Under the lock: remove temporary files a killed run left, and keep a fresh run from
    mixing with an earlier run's checkpoints (refuse, or delete them under --overwrite)."""
    from . import checkpoint
    from .formats import TEMP_NAME
    out = args.output_dir
    stale = [n for n in os.listdir(out) if re.fullmatch(TEMP_NAME, n)]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, name))
    if stale:
        log(f"removed {len(stale)} temporary file{'s' if len(stale) > 1 else ''} left in {out} by a stopped run")
    if args.resume:
        return
    old = checkpoint.files(out)
    if old and not args.overwrite:
        raise RuntimeError(f"{out} holds checkpoints of an earlier run ({old[0]}...): use -y 1 to resume "
                           "it, another -o, or --overwrite to delete them")
    for path in old:
        os.remove(path)
    if old:
        log(f"--overwrite: deleted {len(old)} checkpoint files of an earlier run in {out}")


def _terminate(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)

    from . import dist
    try:
        world = dist.world(args.zero_stage)
    except RuntimeError as e:
        print(f"llmnb-train: error: {e}", file=sys.stderr)
        return 2
    if world.size > 1:  # no rank may leave the others waiting in a collective: abort the world
        code = run_guarded(args, world)
        if code != 0:
            world.abort(code)
        return code
    return run_guarded(args, world)


def run_guarded(args, world):
    """The run, with its errors as one line and an exit code."""
    from .download import DownloadError
    from .formats import FormatError

    def log(msg):  # rank 0 speaks for every rank
        if world.rank == 0:
            print(msg, flush=True)
    who = f" (rank {world.rank} of {world.size})" if world.size > 1 else ""
    # Ctrl-C and SIGTERM (what schedulers and `timeout` send): stop between steps' writes; every
    # file is written atomically, so nothing is half-written and no temporary file is left
    handlers = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, _terminate)
    lock = None
    try:
        if world.rank == 0:  # the output directory is rank 0's; the others wait until it is ready
            lock = lock_output_dir(args.output_dir)
            prepare_output_dir(args, log)
        world.barrier()
        world.select_device(args.device)
        Run(args, log, world).run()
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if e.args == ("SIGTERM",) else "interrupted"
        print(f"\n{how}{who}: checkpoints already written are complete; resume with -y 1", file=sys.stderr)
        return 143 if e.args == ("SIGTERM",) else 130
    except (FormatError, DownloadError, ValueError, RuntimeError, OSError, MemoryError) as e:
        print(f"llmnb-train: error{who}: {e}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        if world.size == 1:
            raise
        import traceback  # a bug on one rank: show it, then the caller aborts the world
        traceback.print_exc()
        return 1
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        if lock is not None:
            lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
