"""llmnb-train: llm.c's training run, GPT-2 on tinyshakespeare with val loss, samples and checkpoints.

Read as train_gpt2.c's main with train_gpt2.cu's flags: the settings (settings.py), then build
(Run.__init__: the checkpoint to resume or the -e model, the data loaders, the tokenizer, the
learning rate schedule, and train_gpt2.cu's parameter table), then the loop (Run.loop: every -v
steps the val loss over -m batches, with -h 1 HellaSwag, every -s steps a sample of -g tokens,
every -n steps a checkpoint, and in between training steps of forward and backward over -d's
micro-batches of B x T tokens, then AdamW unless -sl/-sg skip it), then finish (the final model
and the loss curve). What it prints is laid out as train_gpt2.cu's output, and it writes llm.c's
main.log beside log.jsonl (logger.py).

The output directory belongs to one run (rundir.py); a run stops, writing nothing more, when its
loss, gradient norm or parameters stop being finite.
"""
import functools
import math
import os
import signal
import sys
import time
import traceback

import numba
import numpy as np

from . import backend as backends
from . import dist, hellaswag, loading, memory
from . import logger as mainlog
from . import tokenizer as tokenizers
from .data import DataLoader
from .download import DownloadError
from .fileio import FormatError
from .formats import HEADER_BYTES
from .generate import TextStream, decoding_tokenizer, generate, prompt_tokens
from .mfu import device_name, estimate_peak_flops, flops_per_step
from .model import Decoder, compile_kernels
from .optim import AdamW, learning_rate
from .outlier import OutlierDetector
from .plot import write_loss_svg
from .rand import Rng
from .rundir import CheckpointState, RunDir
from .settings import build_parser, parse  # noqa: F401  (build_parser: the CLI's flags, for tools)


class Diverged(RuntimeError):
    """A non-finite loss, gradient norm or parameter: the run stops before writing from it."""


# ----------------------------------------------------------------------------------------------
# main

def main(argv=None):
    s = parse(argv)
    try:
        world = dist.world(s.zero_stage)
    except RuntimeError as e:
        print(f"llmnb-train: error: {e}", file=sys.stderr)
        return 2
    try:  # -d's gradient accumulation, -pn and -pr: what the world makes of the settings
        s = s.for_world(world.size, world.rank)
    except ValueError as e:
        if world.rank == 0:
            print(f"llmnb-train: error: {e}", file=sys.stderr, flush=True)
        if world.size > 1:
            world.abort(2)
        return 2
    code = run_guarded(s, world)
    if code != 0 and world.size > 1:  # no rank may leave the others waiting in a collective
        world.abort(code)
    return code


def run_guarded(s, world):
    """The run, with its errors as one line and an exit code."""
    def log(msg):  # rank 0 speaks for every rank
        if world.rank == 0:
            print(msg, flush=True)
    who = f" (rank {world.rank} of {world.size})" if world.size > 1 else ""
    # Ctrl-C and SIGTERM (what schedulers and `timeout` send): stop between steps' writes; every
    # file is written atomically, so nothing is half-written and no temporary file is left
    handlers = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, _terminate)
    rundir = RunDir(s.output_dir)
    try:
        if world.rank == 0:  # the output directory is rank 0's; the others wait until it is ready
            rundir.lock()
            rundir.remove_temporaries(log)
            if not s.resume:
                rundir.prepare_fresh(s.overwrite, log)
        world.barrier()
        world.select_device(s.device)
        run = Run(s, world, rundir, log)
        run.loop()
        run.finish()
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
        traceback.print_exc()  # a bug on one rank: show it, then the caller aborts the world
        return 1
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        rundir.unlock()
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


# ----------------------------------------------------------------------------------------------
# the run

class Run:
    """Everything a training run holds (built in __init__), its loop and its steps."""

    def __init__(self, s, world, rundir, log=print):
        self.s, self.world, self.rundir, self.log = s, world, rundir, log
        # what to start from: the latest checkpoint (-y 1), decided before anything is built or
        # downloaded, else -e's model
        ckpt = find_checkpoint(s, world, rundir, log) if s.resume else None
        with dist.rank_zero_first(world):  # one rank downloads or prepares what is missing
            self.model, self.init_name = build_model(s, ckpt, log)
            train_pattern, val_pattern = loading.find_data(s.train, s.val, s.data_dir, log)
        if s.overfit_single_batch:  # -a 1: as llm.c, the val data's first batch (smaller, faster)
            train_pattern = val_pattern
        self.patterns = train_pattern, val_pattern
        if world.describe(self.model):
            log(world.describe(self.model))
        cfg = self.model.config
        if s.seq_len > cfg.max_seq_len:
            raise ValueError(f"-t {s.seq_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
        self.train_loader, self.val_loader = build_loaders(s, world, *self.patterns, cfg.vocab_size, log)

        # -x -1: one epoch, as train_gpt2.cu: the train tokens over the tokens of a step
        self.steps = s.steps if s.steps >= 0 else self.train_loader.num_tokens // s.total_batch_size
        if ckpt is not None and s.steps < 0:
            check_resume_step(ckpt.step, self.steps, rundir, "-x -1 (one epoch)")
        # -m -1: the whole val split (every batch the val loader serves)
        self.val_batches = 0 if self.val_loader is None else \
            len(self.val_loader) if s.val_batches < 0 else min(s.val_batches, len(self.val_loader))

        # the sampler: the tokenizer and the prompt (checked now rather than at the first sample),
        # llm.c's xorshift rng, generation's state (KV cache, made by the first sample)
        self.tokenizer = load_tokenizer(s, log)
        self.prompt = prompt_tokens(s.prompt, self.tokenizer, cfg)
        self.rng = Rng(s.sampler_seed)
        self.rng_at_step = self.rng.state  # the sampler's state as the current step began
        self.decoder = None
        self.hellaswag = self.load_hellaswag() if s.hellaswag_period > 0 else None

        # AdamW with llmc/schedulers.h's learning rate schedule over the run's steps
        schedule = functools.partial(learning_rate, lr=s.learning_rate, warmup=s.warmup, total=self.steps,
                                     final_frac=s.final_lr_frac, kind=s.lr_scheduler)
        self.optimizer = AdamW(world, schedule, s.weight_decay, s.grad_clip, beta2=s.beta2)
        self.loss_outliers, self.norm_outliers = OutlierDetector(), OutlierDetector()
        self.records = []
        self.start_step = 0
        self.threads = numba.get_num_threads()
        self.peak, how = estimate_peak_flops(self.threads, s.device, s.matmul_precision)
        self.flops = flops_per_step(cfg, s.batch_size, s.seq_len) * s.grad_accum
        self.logger = mainlog.Logger(rundir.path, active=world.rank == 0)

        # what train_gpt2.cu prints before it trains: its parameter table, then its lines on the
        # parameters' bytes and the gradient accumulation; then llmnb's own
        for line in self.header(ckpt):
            log(line)
        n = self.model.num_parameters
        size = self.model.params.memory.dtype.itemsize   # (train_gpt2.cu's floatX: 2 in bf16)
        log(f"num_parameters: {n} => bytes: {size * n}")
        log(f"allocated {round(size * n / memory.MiB)} MiB for model parameters")
        log(f"batch_size B={s.batch_size} * seq_len T={s.seq_len} * num_processes={world.size} and "
            f"total_batch_size={s.total_batch_size}")
        log(f"=> setting grad_accum_steps={s.grad_accum}")
        log(f"peak {s.matmul_precision} FLOP/s estimate: {self.peak / 1e9:.0f} GFLOP/s = {how}" if math.isfinite(self.peak)
            else f"peak {s.matmul_precision} FLOP/s: {how}")
        log(f"FLOP per step (matmuls + causal attention, x3 for the backward): {self.flops / 1e9:.1f} GFLOP")
        if s.checkpoint_every > 0:
            log(self.checkpoint_sizes())
        for note in s.notes():
            log(note)
        if s.device == "cpu" and backends.kernels_cached() is False:  # the first run: say why it waits
            log("compiling the kernels: first run only (Numba caches them for the next runs), about a minute")
            t0 = time.perf_counter()
            compile_kernels(self.model.backend)
            log(f"compiled the kernels in {time.perf_counter() - t0:.0f} s")
        if ckpt is not None:
            self.restore(ckpt)
        self.resumed_at = self.start_step if ckpt is not None else None
        if world.rank == 0:
            rundir.write_log(self.records)
        self.logger.start(self.records)

    def header(self, ckpt):
        """train_gpt2.cu's parameter table: its rows, in its order and formats."""
        s, world, cfg = self.s, self.world, self.model.config
        rule = "+-----------------------+----------------------------------------------------+"
        def row(name, value):
            return f"| {name:<21} | {value:<50} |"
        def f32(x, how):  # a C float, printed by printf's %e or %f
            return format(float(np.float32(x)), how)
        return [
            rule, row("Parameter", "Value"), rule,
            row("train data pattern", self.patterns[0]),
            row("val data pattern", self.patterns[1]),
            row("output log dir", s.output_dir),
            row("checkpoint_every", s.checkpoint_every),
            row("resume", s.resume),
            row("micro batch size B", s.batch_size),
            row("sequence length T", s.seq_len),
            row("total batch size", s.total_batch_size),
            row("LR scheduler", s.lr_scheduler),
            row("learning rate (LR)", f32(s.learning_rate, "e")),
            row("warmup iterations", s.warmup),
            row("final LR fraction", f32(s.final_lr_frac, "e")),
            row("weight decay", f32(s.weight_decay, "e")),
            row("skip update lossz", f32(s.skip_update_lossz, "f")),
            row("skip update gradz", f32(s.skip_update_gradz, "f")),
            row("max_steps", s.steps),
            row("val_loss_every", s.val_every),
            row("val_max_steps", s.val_batches),
            row("sample_every", s.sample_every),
            row("genT", s.gen_tokens),
            row("overfit_single_batch", s.overfit_single_batch),
            row("use_master_weights", "enabled"),  # (fp32 weights: -w 0 is refused)
            row("gelu_fusion", 0),                 # (what llmnb does: s.notes() says when asked otherwise)
            row("recompute", 0),
            rule,
            row("device", device_name(s.device)),
            row("peak TFlops", f"{self.peak / 1e12:.1f}" if math.isfinite(self.peak) else "n/a"),
            row("precision", s.matmul_precision.upper()),
            rule,
            row("weight init method", "intermediate checkpoint" if ckpt is not None else self.init_name),
            row("max_sequence_length T", cfg.max_seq_len),
            row("vocab_size V", cfg.vocab_size),
            row("padded_vocab_size Vp", cfg.padded_vocab_size),
            row("num_layers L", cfg.num_layers),
            row("num_heads NH", cfg.num_heads),
            row("channels C", cfg.channels),
            row("num_parameters", self.model.num_parameters),
            rule,
            row("train_num_batches", self.steps),
            row("val_num_batches", self.val_batches if self.val_loader is not None else s.val_batches),
            rule,
            row("run hellaswag", "yes" if self.hellaswag is not None else "no"),
            rule,
            *([f"| {'Zero Optimization is disabled':<74} |"] if s.zero_stage == 0 else []),  # (zero.cuh's)
            row("num_processes", world.size),
            row("zero_stage", s.zero_stage),
            rule,
        ]

    # -- the loop: train_gpt2.cu's, step by step

    def loop(self):
        s, log, world = self.s, self.log, self.world
        ema, timed, total_s = 0.0, 0, 0.0  # tokens/s, smoothed as llm.c (the first step left out)
        for step in range(self.start_step, self.steps + 1):
            last = step == self.steps
            record = {"step": step, "train_loss": None, "val_loss": None, "lr": None, "ms": None}
            self.rng_at_step = self.rng.state
            if due(s.val_every, step, last, at_zero=True):
                record["val_loss"] = self.validate(step, record)
            if due(s.hellaswag_period, step, last) and world.rank == 0:  # -h 1: at the val steps
                record.update(self.evaluate_hellaswag())
            if due(s.sample_every, step, last) and world.rank == 0:
                self.sample()
            if due(s.checkpoint_every, step, last) and step != self.resumed_at:
                self.checkpoint(step)
            if last:
                if record["val_loss"] is not None or "hellaswag_acc" in record:
                    self.append_log(record)
                break
            comm0 = world.comm_seconds
            record.update(self.train_step(step))
            comm_ms = (world.comm_seconds - comm0) * 1000
            if world.size > 1:
                record["comm_ms"] = comm_ms
            self.append_log(record)
            tokens = s.total_batch_size / (record["ms"] / 1000)
            if step > self.start_step:  # the first step (warm-up, a compile) is not averaged in
                timed += 1
                total_s += record["ms"] / 1000
                ema = 0.95 * ema + 0.05 * tokens
                tokens = ema / (1 - 0.95 ** timed)
            mfu = self.flops / (record["ms"] / 1000) / self.peak
            log(step_line(step + 1, self.steps, record, mfu, tokens, s.matmul_precision) + (f" | comm {comm_ms:.1f} ms" if world.size > 1 else ""))
            if s.log_gpu_every > 0 and (step + 1) % s.log_gpu_every == 0 and s.device == "cuda":
                line = memory.gpu_memory_line()
                if line:
                    log(" " * 18 + line)
        if timed:
            log(f"total average iteration time: {total_s / timed * 1000:f} ms")

    def finish(self):
        """The final model (rank 0's), the loss curve, and where they are."""
        rd = self.rundir
        self.check_finite(self.steps, rd.model_path)
        if self.world.rank != 0:
            return
        self.model.save_checkpoint(rd.model_path)
        write_loss_svg(rd.loss_svg_path, self.records)
        self.log(f"wrote {rd.model_path}, {rd.log_path}, {rd.main_log_path} and {rd.loss_svg_path}")

    # -- the pieces of a step

    def train_step(self, step):
        """Forward and backward over the micro-batches of -d (grad_accum of them), the gradient
        reduced over the ranks and clipped, then AdamW, unless the loss's or the gradient norm's
        z-score is above -sl / -sg (as train_gpt2.cu) -> the step's record fields: train_loss, lr,
        ms, grad_norm, loss_z, norm_z (and skipped: True when the update was skipped)."""
        s, model, world = self.s, self.model, self.world
        t0 = time.perf_counter()
        if s.overfit_single_batch:  # -a 1: the same first batches every step
            self.train_loader.reset()
        loss = 0.0
        for micro in range(s.grad_accum):
            x, y = self.train_loader.next_batch()
            loss += model.forward(x, y) / s.grad_accum
            model.zero_grad(params=(micro == 0))
            model.backward(grad_scale=1.0 / (s.grad_accum * world.size))  # the sum over ranks is the mean
        norm = self.optimizer.reduce_and_clip(model)  # grad_clip 0: measures only
        loss = world.mean(loss)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise Diverged(f"training diverged at step {step + 1}: train loss {loss}, grad norm {norm}; "
                           "stopped before the update, no checkpoint written from it (lower -l, or "
                           "try --grad-clip)")
        # spikes, as llm.c's outlier detector: z-scores over the last 64 steps (NaN until then)
        zloss, znorm = self.loss_outliers.update(loss), self.norm_outliers.update(norm)
        out = dict(train_loss=loss, lr=self.optimizer.lr(step), grad_norm=norm, loss_z=zloss, norm_z=znorm)
        skip = skipped_by(zloss, s.skip_update_lossz, "loss") or skipped_by(znorm, s.skip_update_gradz, "grad")
        if skip:
            self.log(skip)
            out["skipped"] = True
        else:
            self.optimizer.update(model, step)
        model.backend.synchronize()
        out["ms"] = (time.perf_counter() - t0) * 1000
        return out

    def validate(self, step, record):
        """The mean loss over -m val batches, from the first (the same batches every time)."""
        self.val_loader.reset()
        n = self.val_batches
        total = 0.0
        for _ in range(n):
            x, y = self.val_loader.next_batch()
            total += self.model.forward(x, y)
        loss = self.world.mean(total / n)
        self.log(f"val loss {loss:f}")
        if not math.isfinite(loss):
            record["val_loss"] = loss
            self.append_log(record)
            raise Diverged(f"training diverged by step {step}: val loss {loss}; "
                           "no checkpoint written from this state (lower -l, or try --grad-clip)")
        return loss

    def sample(self):
        """-g tokens from the EOT token (and --prompt), printed as they come."""
        s = self.s
        if self.decoder is None:
            self.decoder = Decoder(self.model)
        stream = TextStream(sys.stdout, decoding_tokenizer(self.tokenizer, self.model.config))
        print("generating:\n---", flush=True)
        if s.prompt:
            sys.stdout.write(s.prompt)
        # -g counts the start token, as llm.c's genT: -g 64 samples 63 new tokens
        generate(self.decoder, self.prompt, max(s.gen_tokens - 1, 0), self.rng,
                 temperature=s.temperature, top_k=s.top_k, on_token=stream.write)
        stream.close()
        print("\n---", flush=True)

    def load_hellaswag(self):
        """--hellaswag-every's examples, rendered and checked now rather than at the first eval."""
        s = self.s
        path = s.hellaswag_file or hellaswag.val_file(s.data_dir, self.log)
        examples = hellaswag.read_examples(path)[:s.hellaswag_limit or None]
        rendered = hellaswag.prepare(examples, tokenizers.Tokenizer.tiktoken().encode, self.model.config)
        self.log(f"HellaSwag: {len(rendered)} examples from {path}")
        return rendered

    def evaluate_hellaswag(self):
        hs = hellaswag.score(self.model, self.hellaswag)
        self.log(f"HellaSwag: acc {hs['acc']:.4f} acc_norm {hs['acc_norm']:.4f} ({hs['n']} examples)")
        return {"hellaswag_acc": hs["acc"], "hellaswag_acc_norm": hs["acc_norm"]}

    # -- checkpoints and the log

    def checkpoint(self, step):
        self.check_finite(step, "checkpoint")
        # the sampler's state from before this step's sample: a resumed run draws that sample
        # again and goes on exactly as the uninterrupted one
        # (resume: whether this run resumed, not -y: -y 1 into an empty -o starts fresh)
        state = CheckpointState(step, self.train_loader.state(), self.rng_at_step,
                                self.s.as_json(init=self.init_name, resume=int(self.resumed_at is not None)))
        path = self.rundir.save(step, self.model, state, shuffle_tail=self.train_loader.llmc_state_tail(),
                                world=self.world)
        self.log(f"saved checkpoint {path}")
        # -nk K: keep the last K, as llm.c: delete the one of step - K*N, unless a major one (-nm)
        s = self.s
        old = step - s.checkpoints_keep * s.checkpoint_every
        if s.checkpoints_keep > 0 and old > 0 and (s.major_checkpoint_every == 0 or old % s.major_checkpoint_every):
            if self.rundir.delete(old, self.world):
                self.log(f"deleted the checkpoint of step {old} (-nk {s.checkpoints_keep})")

    def checkpoint_sizes(self):
        """One line: what a checkpoint takes on disk (llm.c's files: the model, and AdamW's m and v
        with the data loader's shuffle state for each rank), and how many are kept."""
        s, world, n = self.s, self.world, self.model.num_parameters
        lo, hi = world.shard(n)
        model_bytes = HEADER_BYTES + 4 * n
        arrays = 2 if (lo, hi) != (0, n) else 3   # m, v, and the master weights but under -z 1's shards
        state_bytes = HEADER_BYTES + 4 * arrays * (hi - lo) + len(self.train_loader.llmc_state_tail())
        total = model_bytes + world.size * state_bytes
        ranks = f" x {world.size} ranks" if world.size > 1 else ""
        kept = (f"; the last {s.checkpoints_keep} kept (-nk)" if s.checkpoints_keep else "; every one kept (-nk 0)")
        major = f", and every one at a multiple of {s.major_checkpoint_every} steps (-nm)" if \
            s.checkpoints_keep and s.major_checkpoint_every else ""
        return (f"checkpoints every {s.checkpoint_every} steps into {self.rundir.path}: {mb(total)} each "
                f"(model {mb(model_bytes)} + optimizer state {mb(state_bytes)} per rank{ranks}){kept}{major}")

    def restore(self, ckpt):
        """Go on from a checkpoint: AdamW's m and v, the data loader's position, the sampler's rng,
        the log's records before it (and the spike detectors' windows over them). What they read
        is checked against what the run can have written: a damaged file is one line naming it.
        llm.c's own checkpoint (ckpt.llmc) gives the weights too (its master weights), keeps no
        epoch (found from the step) and no sampler state (sampling starts from the seed, as in
        llm.c's resume), and its log before the step is its main.log."""
        world, state, step = self.world, ckpt.state, ckpt.step
        lo, hi = world.shard(self.model.num_parameters)  # -z 1: this rank's m and v shard
        if ckpt.llmc:
            self.check_llmc_shards(ckpt)
        opt = self.rundir.read_optimizer(ckpt, hi - lo, world.rank)
        # the fp32 master weights (llm.c's default -w 1 writes them, and llmnb since 2026-12-08): llm.c's
        # checkpoint takes its weights from them, as llm.c's resume does (its model file may be bf16);
        # llmnb's are its model file's weights, bit for bit
        master = opt["master_weights"]
        if self.model.master is not None:   # --precision bf16: the weights are the master weights
            if master is None:
                raise FormatError(f"{ckpt.state_path}: no master weights, which --precision bf16 resumes from "
                                  "(llm.c writes them with -w 1, its default)")
            self.model.load_master_weights(master, opt["rng_last_update"])
        elif master is not None and ckpt.llmc:   # (whole: check_llmc_shards refused -z 1)
            self.model.backend.copy_(self.model.params.memory, master)
        elif master is not None and not np.array_equal(master.view(np.uint32),
                                                       self.model.params_host()[lo:hi].view(np.uint32)):
            raise FormatError(f"{ckpt.state_path}: its master weights are not the weights of {ckpt.model_path}: "
                              "the files of one checkpoint disagree")
        self.model.load_optimizer_state(opt["m"], opt["v"])
        loader = self.train_loader
        # each rank's position in its own shard order is in its state file, as llm.c's load_state
        position = dict(state.train_loader, process_rank=world.rank, shard=opt["shard"], sample=opt["sample"])
        where = ckpt.state_path if ckpt.llmc else f"{ckpt.json_path} with {ckpt.state_path}"
        try:
            loader.load_state(dict(position, epoch=0) if ckpt.llmc else position, llmc_tail=opt["shuffle_tail"] or None)
            if ckpt.llmc:
                self.find_epoch(ckpt)
            else:
                self.rng.state = self.rng_at_step = state.rng_state
        except (ValueError, TypeError, KeyError) as e:
            raise FormatError(f"{where}: the data loader's or sampler's state: {e}") from None
        # every step reads --grad-accum batches (a run that started fresh at that --grad-accum: exactly
        # step x it), and a shuffling loader has drawn what its position takes
        # (-a 1 starts every step from the first batch: its position says nothing of the steps)
        served, accum = loader.batches_served(), state.settings.get("grad_accum", 1)
        exact = state.settings.get("resume") == 0
        if not self.s.overfit_single_batch and (served < step or (exact and served != step * accum)):
            raise FormatError(f"{ckpt.json_path}: the data loader is {served:,} batches in (epoch "
                              f"{loader.epoch}), but {step} steps of --grad-accum {accum} read "
                              f"{'' if exact else 'at least '}{step * accum if exact else step:,}")
        draws = loader.draws_at_position()
        if world.rank == 0 and not ckpt.llmc and state.train_loader.get("draws", 0) != draws and \
                not self.s.overfit_single_batch:  # (the JSON's count is rank 0's)
            raise FormatError(f"{ckpt.json_path}: the data loader's draws {state.train_loader['draws']} are not "
                              f"the {draws} its position takes")
        loader.draws = draws
        self.start_step = step
        records, path = self.llmc_records(step) if ckpt.llmc else (self.rundir.read_log(), self.rundir.log_path)
        self.records = self.rundir.check_log(records, step, path)
        for r in self.records:  # the spike detectors see the same window as an uninterrupted run
            # (after llm.c's checkpoint: main.log's values, to its 4 decimals; llm.c's own resume starts
            # them empty, but then a later resume here would not see what this run saw)
            self.loss_outliers.update(r["train_loss"])
            if r.get("grad_norm") is not None:
                self.norm_outliers.update(r["grad_norm"])
        self.log(f"resumed from {ckpt.model_path} at step {step}" +
                 (" (its weights: the state file's fp32 master weights, as llm.c resumes)" if ckpt.llmc and master is not None else ""))

    def check_llmc_shards(self, ckpt):
        """llm.c's ZeRO-1 (-z 1) shards m, v and the master weights tensor by tensor (each rank a
        slice of every tensor), llmnb's by one flat range: its state files cannot be read here. One
        line for that, and for -z 1 here, before a size mismatch would say 'truncated'."""
        n = self.model.num_parameters
        if self.world.size == 1:
            return
        master = ckpt.llmc["master"]
        if os.path.getsize(ckpt.state_path) < HEADER_BYTES + (3 if master else 2) * 4 * n:
            raise FormatError(f"{ckpt.state_path}: holds less than m, v{' and the master weights' if master else ''} "
                              f"of all {n} parameters: a state file of llm.c's ZeRO-1 (-z 1)? llmnb cannot read "
                              "those (llm.c shards them tensor by tensor, llmnb by one flat range): resume it in "
                              "llm.c, or from a checkpoint of llm.c's -z 0 run")
        if self.s.zero_stage == 1:
            raise FormatError(f"{ckpt.state_path}: llm.c's checkpoint cannot be resumed with -z 1: llm.c shards "
                              "AdamW's state tensor by tensor, llmnb by one flat range; resume it with -z 0")

    def find_epoch(self, ckpt):
        """llm.c's state file has the loader's shard and sample but not its epoch: the one at which
        the batches served are the checkpoint's steps x --grad-accum (every step of llm.c's reads
        that many). None fits: the run's -b, -t, -d or data are not the ones llm.c ran with."""
        loader, step, accum = self.train_loader, ckpt.step, self.s.grad_accum
        if self.s.overfit_single_batch:
            return
        within = loader.batches_served()   # (at epoch 0)
        epochs, rest = divmod(step * accum - within, loader.num_batches)
        if epochs < 0 or rest:
            raise ValueError(f"its position (shard {ckpt.state.train_loader['shard']}, sample "
                             f"{ckpt.state.train_loader['sample']}) is not where {step} steps of --grad-accum {accum} "
                             f"({step * accum:,} batches of {loader.num_batches:,} an epoch) end: run with the "
                             "-b, -t, -d and data that llm.c's run had")
        loader.epoch = epochs

    def llmc_records(self, step):
        """-> (the records before a resumed llm.c checkpoint, their file): llm.c's main.log, read back
        (not a log.jsonl that an llmnb run left here: llm.c's run may have gone on past it since)."""
        if not os.path.exists(self.rundir.main_log_path):
            raise FormatError(f"{self.rundir.main_log_path}: missing: llm.c's log of the steps before its checkpoint "
                              f"of step {step} (llmnb's log.jsonl and main.log go on from them)")
        return mainlog.read_records(self.rundir.main_log_path), self.rundir.main_log_path

    def append_log(self, record):
        """One JSON line per step, appended and flushed, and its llm.c main.log lines (rank 0's)."""
        self.records.append(record)
        if self.world.rank == 0:
            self.rundir.append_log(record)
            self.logger.log(record)

    def check_finite(self, step, what):
        """Stop before `what` (a checkpoint, the final model) when the parameters hold NaN or inf."""
        if not self.model.params_finite():
            raise Diverged(f"training diverged by step {step}: the parameters hold NaN or inf; "
                           f"{what} not written (lower -l, or try --grad-clip)")


# ----------------------------------------------------------------------------------------------
# helpers of the build and the loop

def build_model(s, ckpt, log):
    """gpt2_build_from_checkpoint: the checkpoint's model (-y 1) or -e's, its memory counted before
    it is read -> (model, the name of what the run started from, which checkpoints keep)."""
    source = loading.find_model(ckpt.model_path if ckpt else s.init, s.data_dir, log, seed=s.seed, flag="-e",
                                fresh_instead=None if ckpt else "d12")
    if source.fresh:
        log(source.describe())
    check_memory(s, source.config, log)
    model = source.load(s.device, log, s.matmul_precision)
    if not source.fresh:
        log(source.describe())
    return model, ckpt.state.settings.get("init", source.name) if ckpt else source.name


def build_loaders(s, world, train_pattern, val_pattern, V, log):
    """The train and val DataLoaders: as train_gpt2.c, train batches shuffled by llm.c's mt19937
    (seed 42), val in order; under MPI each rank reads its slice of every global batch of
    world.size * B rows. Every shard's tokens checked to be below V."""
    B, T = s.batch_size, s.seq_len
    ranks = dict(process_rank=world.rank, num_processes=world.size)
    # (-a 1 reads the val data's first batches in order, as llm.c's permute_train_loader = 0)
    train = DataLoader(train_pattern, B, T, shuffle=s.shuffle and not s.overfit_single_batch, vocab_size=V, **ranks)
    val = DataLoader(val_pattern, B, T, vocab_size=V, **ranks) if s.val_every > 0 else None
    # llm.c prints num_tokens / (B*T), which ignores the one extra target token a batch reads:
    # one more than the batches a shard serves when B*T divides its tokens (val: 128, not 127)
    BT = B * T * world.size  # the global batch's tokens
    log(f"train dataset num_batches: {train.num_tokens // BT}")
    if val is not None:
        log(f"val dataset num_batches: {val.num_tokens // BT}")
    return train, val


def load_tokenizer(s, log):
    """The samples' tokenizer (--prompt: the file's table plus tiktoken's encoder), or None, said
    in one line, when there is none (offline without tiktoken's files): ids are printed then."""
    try:
        return tokenizers.load_tokenizer(s.data_dir, encode=bool(s.prompt))
    except Exception as e:
        log(f"no tokenizer ({e}); samples will be printed as token ids")
        return None


def find_checkpoint(s, world, rundir, log):
    """-y 1: the latest complete checkpoint in -o (rundir.Checkpoint). None there: into a directory
    that holds nothing of an earlier run, None (a fresh run, as llm.c's -y 1, which its scripts
    pass on every launch); else one line saying what the directory holds instead, and the run
    stops before it changes anything."""
    step = rundir.latest()
    if step is None:
        if rundir.holds_a_run():
            raise ValueError(f"-y 1: {rundir.without_checkpoint()}")
        log(f"-y 1: no checkpoint in {rundir.path} yet: starting a fresh run")
        return None
    if s.steps >= 0:  # (-x -1: checked once the data says how many steps an epoch is)
        check_resume_step(step, s.steps, rundir, f"-x {s.steps}")
    ckpt = rundir.load(step, world.size, s.zero_stage, world.rank)
    if ckpt.llmc:
        log(f"-y 1: resuming llm.c's checkpoint of step {step} (no state_{step:08d}.json: llm.c's train_gpt2.cu "
            "wrote it); llm.c keeps no settings in it: this run's flags must be those it ran with "
            "(-i, -j, -b, -t, -d, -l, -x, ...)")
    changed = s.differences(ckpt.state.settings)
    if changed:
        log(f"resuming with settings that differ from the checkpoint's: {', '.join(changed)}")
    return ckpt


def check_resume_step(step, steps, rundir, flag):
    """A checkpoint past the run's last step leaves nothing to train: one line."""
    if step > steps:
        raise ValueError(f"-y 1: the latest checkpoint in {rundir.path} is at step {step}, past {flag}"
                         f"{f' = {steps} steps' if flag.startswith('-x -1') else ''}: nothing to train "
                         f"(give an -x above {step}, or another -o)")


def check_memory(s, config, log):
    """Print what the run's buffers take (llm.c prints its allocations) and stop at once, before
    allocating any, when they need more than the machine (or the GPU) has free."""
    sizes = memory.run_memory(config, s.batch_size, s.seq_len, s.matmul_precision)
    available = memory.available_bytes(s.device)
    where = "the GPU" if s.device == "cuda" else "this machine"
    log(f"memory: {memory.describe(sizes)}"
        + (f" of {available / memory.GiB:,.2f} GiB available on {where}" if available is not None else ""))
    memory.check_memory(sizes, available, where)


def due(every, step, last, at_zero=False):
    """Whether something done every `every` steps (0: never) runs at this step: at multiples of
    every (from step 0 when at_zero, as llm.c's val loss; else after it) and at the last step."""
    return every > 0 and ((step % every == 0 and (at_zero or step > 0)) or last)


def mb(nbytes):
    return f"{nbytes / 1e6:,.1f} MB"


def step_line(step, steps, r, mfu, tokens_per_s, precision="fp32"):
    """train_gpt2.cu's step line (its printf0 of each step), the MFU (against the peak of the
    matmuls' precision: fp32, or tf32 on the tensor cores) and tok/s as llmnb measures them."""
    return (f"step {step:4d}/{steps} | loss {r['train_loss']:7.6f}{z_text(r['loss_z'])}| norm "
            f"{r['grad_norm']:6.4f}{z_text(r['norm_z'])}| lr {r['lr']:.2e} | {r['ms']:.2f} ms | "
            f"{f'{100 * mfu:.1f}%' if math.isfinite(mfu) else 'n/a'} {precision} MFU | {tokens_per_s:.0f} tok/s")


def z_text(z):
    """ (+1.23z) after a value in the step line, as llm.c's; a space while the window fills (llm.c
    prints (+nanz))."""
    return f" ({z:+.2f}z)" if math.isfinite(z) else " "


def skipped_by(z, limit, what):
    """train_gpt2.cu's -sl / -sg: the line saying the update is skipped, when z (finite) is above
    limit (0: off), else None."""
    if math.isfinite(z) and limit != 0 and z > limit:
        return f"skipping update due to {what} z-score of {z:f}"
    return None


if __name__ == "__main__":
    sys.exit(main())
