"""llmnb-train: llm.c's training run — GPT-2 on tinyshakespeare with val loss, samples and checkpoints.

The loop is train_gpt2.c's main (and train_gpt2.cu's flags): every `-v` steps the val loss over
`-m` batches, every `-s` steps a sample of `-g` tokens, and in between training steps of
forward, backward and AdamW on B x T tokens from the train shards.
"""
import argparse
import json
import os
import re
import signal
import sys
import time


STARTER_PACK_URL = "https://huggingface.co/datasets/karpathy/llmc-starter-pack/resolve/main/"
DEFAULT_INIT = "gpt2_124M.bin"


# ----------------------------------------------------------------------------------------------
# FLOPs, for MFU

def flops_per_step(config, num_parameters, B, T):
    """llm.c's estimate: 6N per token for the matmuls plus 6*L*C*T for attention."""
    per_token = 6 * num_parameters + 6 * config.num_layers * config.channels * T
    return per_token * B * T


# ----------------------------------------------------------------------------------------------
# the model to start from

def build_model(args, log):
    from .config import GPT2Config
    from .model import GPT2, init_params

    m = re.fullmatch(r"d(\d+)", args.init)
    if m:
        config = GPT2Config.depth(int(m.group(1)))
        log(f"initialising a fresh GPT-2 {args.init}: {config.num_layers} layers, {config.num_heads} heads, "
            f"{config.channels} channels (seed {args.seed})")
        return GPT2(config, init_params(config, seed=args.seed), device=args.device, copy=False)
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
            from .data import DownloadError, download
            log(f"{DEFAULT_INIT} not found: fetching llm.c's starter pack to {path}")
            try:
                download(STARTER_PACK_URL + DEFAULT_INIT, path, retries=1, timeout=20)
            except DownloadError as e:
                log(f"could not fetch the pretrained GPT-2 ({e}); training a fresh d12 model instead")
                args.init = "d12"
                return build_model(args, log)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file (-e takes an llm.c checkpoint or d6/d12/d24...)")
    model = GPT2.from_checkpoint(path, device=args.device)
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

    def __init__(self, args, log=print):
        from .data import DataLoader
        from .sampler import Rng
        from .tokenizer import load_tokenizer

        self.args, self.log = args, log
        self.model = build_model(args, log)
        cfg = self.model.config
        log(f"[GPT-2] max_seq_len: {cfg.max_seq_len} vocab_size: {cfg.vocab_size} padded_vocab_size: "
            f"{cfg.padded_vocab_size} num_layers: {cfg.num_layers} num_heads: {cfg.num_heads} "
            f"channels: {cfg.channels}")
        log(f"num_parameters: {self.model.num_parameters:,}")
        if args.seq_len > cfg.max_seq_len:
            raise ValueError(f"-t {args.seq_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
        train_pattern, val_pattern = find_data(args, log)
        B, T = args.batch_size, args.seq_len
        self.train_loader = DataLoader(train_pattern, B, T, shuffle=args.shuffle, seed=args.seed)
        self.val_loader = DataLoader(val_pattern, B, T) if args.val_every > 0 else None
        log(f"train dataset num_batches: {len(self.train_loader)}")
        if self.val_loader is not None:
            log(f"val dataset num_batches: {len(self.val_loader)}")
        try:
            self.tokenizer = load_tokenizer(args.data_dir)
        except Exception as e:  # e.g. no network for tiktoken's files: print token ids instead
            log(f"no tokenizer ({e}); samples will be printed as token ids")
            self.tokenizer = None
        self.prompt_tokens = self.encode_prompt(args.prompt)
        self.hellaswag = self.load_hellaswag() if args.hellaswag_every > 0 else None
        self.rng = Rng(args.sampler_seed)
        self.records = []
        self.start_step = 0
        import numba
        from .mfu import estimate_peak_flops
        self.threads = numba.get_num_threads()
        self.peak, how = estimate_peak_flops(self.threads, args.device)
        self.flops = flops_per_step(cfg, self.model.num_parameters, B, T) * args.grad_accum
        log(f"peak fp32 FLOP/s estimate: {self.peak / 1e9:.0f} GFLOP/s = {how}")
        log(f"FLOP per step (llm.c's 6N + attention estimate): {self.flops / 1e9:.1f} GFLOP")

    def encode_prompt(self, text):
        """--prompt as token ids, checked now rather than at the first sample."""
        if not text:
            return []
        tok, V = self.tokenizer, self.model.config.vocab_size
        if tok is None or not tok.can_encode:
            raise ValueError("--prompt needs tiktoken's gpt2 encoding to encode the prompt")
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
        return total / n

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
        generate(cfg, self.model.params_host(), prompt, a.gen_tokens, self.rng,
                 temperature=a.temperature, top_k=a.top_k, on_token=show)
        out.write(dec.flush() if tok is not None else "")
        print("\n---", flush=True)

    def train_step(self, step):
        from .optim import DECAYED, clip_grad_norm
        a, model = self.args, self.model
        lr = self.lr(step)
        t0 = time.perf_counter()
        loss = 0.0
        for micro in range(a.grad_accum):
            x, y = self.train_loader.next_batch()
            loss += model.forward(x, y) / a.grad_accum
            model.zero_grad(params=(micro == 0))
            model.backward(grad_scale=1.0 / a.grad_accum)
        norm = clip_grad_norm(model, a.grad_clip) if a.grad_clip > 0 else None
        model.update(lr, 0.9, 0.999, 1e-8, a.weight_decay, step + 1,
                     decay=DECAYED if a.weight_decay > 0 else None)
        model.backend.synchronize()
        ms = (time.perf_counter() - t0) * 1000
        return loss, lr, ms, norm

    # -- checkpoints and logs

    def checkpoint_extra(self):
        return {"train_loader": self.train_loader.state(), "rng_state": self.rng.state,
                "args": {k: v for k, v in vars(self.args).items() if k != "init_is_default"}}

    def resume(self):
        from . import checkpoint
        from .checkpoint import read_state
        from .model import GPT2
        out = self.args.output_dir
        step = checkpoint.latest(out)
        if step is None:
            self.log(f"-y 1: no complete checkpoint in {out}, starting from step 0")
            return
        model_path, state_path, extra = checkpoint.load(out, step)
        model = GPT2.from_checkpoint(model_path, device=self.args.device)
        if model.config != self.model.config:
            raise ValueError(f"{model_path}: its model shape {model.config} differs from -e's {self.model.config}")
        state = read_state(state_path, model.num_parameters)
        k = model.backend
        model.m_memory, model.v_memory = k.asarray(state["m"]), k.asarray(state["v"])
        self.model = model
        self.train_loader.load_state(extra["train_loader"])
        self.rng.state = extra["rng_state"]
        self.start_step = step
        self.records = [r for r in read_log(self.log_path) if r["step"] < step]
        self.log(f"resumed from {model_path} at step {step}")

    @property
    def log_path(self):
        return os.path.join(self.args.output_dir, "log.jsonl")

    def start_log(self):
        """Write the records kept so far (none, or those before a resumed step) atomically."""
        from .formats import atomic_write
        with atomic_write(self.log_path) as f:
            for r in self.records:
                f.write((json.dumps(r) + "\n").encode())

    def append_log(self, record):
        """One JSON line per step, appended and flushed (read_log skips a line cut by a kill)."""
        self.records.append(record)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop

    def run(self):
        from . import checkpoint
        from .plot import write_loss_svg
        a, log = self.args, self.log
        os.makedirs(a.output_dir, exist_ok=True)
        if a.resume:
            self.resume()
        resumed_at = self.start_step if a.resume else None
        self.start_log()
        tokens_per_step = a.batch_size * a.seq_len * a.grad_accum
        for step in range(self.start_step, a.steps + 1):
            last = step == a.steps
            record = {"step": step, "train_loss": None, "val_loss": None, "lr": None, "ms": None}
            if a.val_every > 0 and (step % a.val_every == 0 or last):
                record["val_loss"] = self.val_loss()
                log(f"val loss {record['val_loss']:f}")
            if a.hellaswag_every > 0 and ((step > 0 and step % a.hellaswag_every == 0) or last):
                from .hellaswag import score  # as train_gpt2.cu's -h 1: after step 0, and last
                hs = score(self.model, self.hellaswag)
                record.update(hellaswag_acc=hs["acc"], hellaswag_acc_norm=hs["acc_norm"])
                log(f"HellaSwag: acc {hs['acc']:.4f} acc_norm {hs['acc_norm']:.4f} ({hs['n']} examples)")
            if a.sample_every > 0 and ((step > 0 and step % a.sample_every == 0) or last):
                self.sample()
            if a.checkpoint_every > 0 and step != resumed_at and \
                    ((step > 0 and step % a.checkpoint_every == 0) or last):
                path = checkpoint.save(a.output_dir, step, self.model, self.checkpoint_extra())
                log(f"saved checkpoint {path}")
            if last:
                if record["val_loss"] is not None or "hellaswag_acc" in record:
                    self.append_log(record)
                break
            loss, lr, ms, norm = self.train_step(step)
            record.update(train_loss=loss, lr=lr, ms=ms)
            if norm is not None:
                record["grad_norm"] = norm
            self.append_log(record)
            mfu = self.flops / (ms / 1000) / self.peak
            log(f"step {step + 1:4d}/{a.steps} | train loss {loss:f} | lr {lr:.2e} | {ms:.1f} ms | "
                f"{tokens_per_step / (ms / 1000):.0f} tok/s | MFU {100 * mfu:.1f}%"
                + (f" | grad norm {norm:.3f}" if norm is not None else ""))
        final = os.path.join(a.output_dir, "model.bin")
        self.model.save_checkpoint(final)
        write_loss_svg(os.path.join(a.output_dir, "loss.svg"), self.records)
        log(f"wrote {final}, {self.log_path} and {os.path.join(a.output_dir, 'loss.svg')}")


def read_log(path):
    """The records of a log.jsonl; a last line cut short by a killed run is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise ValueError(f"{path}: a line is not JSON: {line[:60]!r}")
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
    a("-g", dest="gen_tokens", type=int, default=64, help="tokens to generate per sample (default: 64)")
    a("-n", dest="checkpoint_every", type=int, default=0, help="save model + optimizer state every N steps (default: 0, off)")
    a("-y", dest="resume", type=int, default=0, choices=[0, 1], help="1 = resume from the latest checkpoint in -o (default: 0)")
    a("--seed", type=int, default=1337, help="seed of fresh model init and data shuffling (default: 1337)")
    a("--sampler-seed", type=int, default=1337, help="seed of the sampler's xorshift rng (default: 1337, as llm.c)")
    a("--shuffle", action="store_true", help="shuffle the training samples (default: in order, like llm.c's CPU run)")
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
    return p


def check_args(p, args):
    for name in ("batch_size", "seq_len", "grad_accum", "val_batches"):
        if getattr(args, name) < 1:
            p.error(f"{name} must be >= 1")
    for name in ("steps", "val_every", "sample_every", "gen_tokens", "checkpoint_every", "warmup", "top_k",
                 "hellaswag_every", "hellaswag_limit"):
        if getattr(args, name) < 0:
            p.error(f"{name} must be >= 0")
    if not args.temperature > 0:
        p.error("--temperature must be > 0")
    args.init_is_default = args.init is None
    if args.init is None:
        args.init = DEFAULT_INIT


def main(argv=None):
    from .data import DownloadError
    from .formats import FormatError
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)

    def log(msg):
        print(msg, flush=True)
    # Ctrl-C: stop between steps' writes; every file is written atomically, so nothing is half-written
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        Run(args, log).run()
    except KeyboardInterrupt:
        print("\ninterrupted: checkpoints already written are complete; resume with -y 1", file=sys.stderr)
        return 130
    except (FormatError, DownloadError, ValueError, RuntimeError, OSError) as e:
        print(f"llmnb-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
