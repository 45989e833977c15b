"""llmnb-train's command line is train_gpt2.cu's (issue 26): every flag of its main() with its
meaning, the defaults it gives the flags train_gpt2.c lacks, what llmnb refuses and why, and
llm.c's main.log read by llm.c's own parser (dev/vislog.ipynb's parse_logfile)."""
import json
import os

import numpy as np
import pytest

from llmnb import train
from llmnb.config import PARAM_NAMES, GPT2Config
from llmnb.formats import write_checkpoint, write_shard
from llmnb.model import GPT2, init_params
from llmnb.optim import DECAYED
from llmnb.settings import build_parser, parse

TINY = GPT2Config(max_seq_len=32, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=2, channels=32)

# every flag train_gpt2.cu's main() parses (its `argv[i][1] == ...` chain, at llm.c f1e2ace), with
# its default where llmnb takes train_gpt2.cu's: Settings field, default
TRAIN_GPT2_CU = {
    "-i": None, "-j": None, "-e": None, "-o": None, "-n": ("checkpoint_every", 0), "-y": ("resume", 0),
    "-b": ("batch_size", 4), "-t": None, "-d": ("total_batch_size", -1), "-l": None,
    "-lg": ("log_gpu_every", -1), "-u": ("warmup", 0), "-q": ("final_lr_frac", 1.0), "-c": ("weight_decay", 0.0),
    "-x": None, "-v": None, "-m": None, "-s": ("sample_every", 20), "-ge": ("gelu_fusion", 0),
    "-g": ("gen_tokens", 64), "-a": ("overfit_single_batch", 0), "-f": None, "-w": ("master_weights", 1),
    "-z": ("zero_stage", 0), "-r": None, "-h": ("hellaswag", 0), "-k": ("lr_scheduler", "cosine"),
    "-pi": ("nccl_init_method", "mpi"), "-pf": ("fs_path", ""), "-ps": ("server_ip", ""),
    "-pn": None, "-pr": None, "-pg": ("gpus_per_node", 8), "-sl": ("skip_update_lossz", 0.0),
    "-sg": ("skip_update_gradz", 0.0), "-nk": ("checkpoints_keep", 0), "-nm": ("major_checkpoint_every", 0),
}
# where llmnb's default is train_gpt2.c's (or llmnb's own), not train_gpt2.cu's: --help says so
DIFFERS = ("-i", "-e", "-o", "-t", "-l", "-x", "-v", "-m", "-f", "-r")


def test_every_train_gpt2cu_flag_is_accepted_with_its_default():
    p = build_parser()
    options = {o: a for a in p._actions for o in a.option_strings}
    assert set(TRAIN_GPT2_CU) <= set(options)
    s = parse([])
    for flag, known in TRAIN_GPT2_CU.items():
        if known is not None:
            name, default = known
            assert options[flag].dest == name and getattr(s, name) == default, flag
    for flag in DIFFERS:
        assert "llm.c: " in options[flag].help, flag
    # train_gpt2.c's run stays the default
    assert (s.batch_size, s.seq_len, s.steps, s.learning_rate, s.val_every, s.val_batches) == (4, 64, 40, 1e-4, 10, 5)


def test_the_long_names_are_aliases():
    assert parse(["--warmup", "7"]).warmup == parse(["-u", "7"]).warmup == 7
    assert parse(["--wd", "0.1"]).weight_decay == parse(["-c", "0.1"]).weight_decay == 0.1
    assert parse(["-l", "1e-3", "--lr-min", "1e-4"]).final_lr_frac == pytest.approx(0.1, rel=1e-12)  # -q lr_min/lr
    assert parse(["--hellaswag-every", "5"]).hellaswag_period == 5
    assert parse(["-h", "1", "-v", "4"]).hellaswag_period == 4  # llm.c's: at the val loss's steps


def test_h_alone_is_help_and_h_n_is_hellaswag(capsys):
    for argv in (["-h"], ["--help"], ["-x", "3", "-h"], ["-h", "-x", "3"]):
        with pytest.raises(SystemExit) as e:
            parse(argv)
        assert e.value.code == 0 and "usage: llmnb-train" in capsys.readouterr().out
    assert parse(["-h", "1"]).hellaswag == 1 and parse(["-h", "0"]).hellaswag == 0
    with pytest.raises(SystemExit) as e:
        parse(["-h", "yes"])
    assert e.value.code == 2 and "-h" in capsys.readouterr().err


def test_d_derives_the_gradient_accumulation_as_llmc():
    s = parse(["-b", "4", "-t", "64", "-d", "1024"])
    assert s.for_world(1).grad_accum == 4 and s.for_world(2).grad_accum == 2 and s.for_world(4).grad_accum == 1
    assert parse(["-b", "4", "-t", "64"]).for_world(3).total_batch_size == 4 * 64 * 3  # -d's default
    assert parse(["-b", "4", "-t", "64", "--grad-accum", "3"]).for_world(2).total_batch_size == 4 * 64 * 2 * 3
    assert parse(["-b", "4", "-t", "64", "-d", "512", "--grad-accum", "2"]).for_world(1).grad_accum == 2
    with pytest.raises(ValueError, match=r"-d 1000 is not a multiple of B\*T\*processes = 4\*64\*1 = 256"):
        parse(["-b", "4", "-t", "64", "-d", "1000"]).for_world(1)
    with pytest.raises(ValueError, match="-d 1024 is not a multiple of .* = 768"):
        parse(["-b", "4", "-t", "64", "-d", "1024"]).for_world(3)
    with pytest.raises(ValueError, match="--grad-accum 3 and -d 512 disagree"):
        parse(["-b", "4", "-t", "64", "-d", "512", "--grad-accum", "3"]).for_world(1)


def test_pn_and_pr_must_be_the_mpi_worlds():
    assert parse(["-pn", "2"]).for_world(2).num_processes == 2
    with pytest.raises(ValueError, match="-pn 2: this job has 1 process .*mpiexec -n 2"):
        parse(["-pn", "2"]).for_world(1)
    with pytest.raises(ValueError, match="-pr 1: this process is rank 0 of 1"):
        parse(["-pr", "1"]).for_world(1)
    assert parse(["-pr", "0"]).for_world(1).process_rank == 0
    with pytest.raises(ValueError, match="-pr 0: under mpiexec -n 2 each process takes its rank from MPI"):
        parse(["-pr", "0"]).for_world(2, rank=0)


@pytest.mark.parametrize("argv,says", [
    (["-w", "0"], "always keeps fp32 master weights"), (["-z", "2"], "ZeRO stage 1 only"), (["-z", "3"], "ZeRO stage 1 only"),
    (["-pi", "tcp"], "mpiexec"), (["-pi", "fs"], "mpiexec"), (["-r", "3"], "-r must be one of 0, 1, 2"),
    (["-a", "2"], "-a must be one of 0, 1"), (["-q", "-0.5"], "-q must be"), (["-x", "-2"], "-x must be"),
    (["-m", "0"], "-m must be"), (["-h", "1", "-v", "0"], "-v 0 has none"),
    (["-q", "0.1", "--lr-min", "1e-5"], "give one of them"), (["-sl", "nan"], "-sl must be"),
])
def test_what_llmnb_cannot_do_is_one_line_with_the_reason(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]


def test_accepted_flags_llmnb_does_not_act_on_say_so():
    assert parse([]).notes() == []
    notes = parse(["-r", "1", "-ge", "2", "-lg", "10", "-f", "1"]).notes()
    assert [n.split(":")[0] for n in notes] == ["-r 1", "-ge 2", "-lg 10", "-f 1"]
    assert "same" in notes[0] and "ignored on the CPU" in notes[2]
    # llm.c's scripts give no -x (train_gpt2.cu: one epoch); llmnb's -x 40 with a decay says so
    assert parse(["-q", "0.0"]).notes()[0].startswith("-x 40 (llmnb's default")
    assert parse(["-q", "0.0", "-x", "-1"]).notes() == parse(["-q", "0.0", "-k", "constant"]).notes() == []


def test_e_dl_is_train_gpt2cus_model_of_that_depth():
    # gpt2_set_hyperparameters: d12 is GPT-2 124M, d24 the 350M (C 1024, 16 heads), d48 the 1558M
    from llmnb.config import Tensors, param_shapes
    shapes = {L: (GPT2Config.depth(L).channels, GPT2Config.depth(L).num_heads) for L in (6, 12, 24, 36, 48)}
    assert shapes == {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25)}
    assert Tensors.count(param_shapes(GPT2Config.depth(12))) == 124_475_904
    assert Tensors.count(param_shapes(GPT2Config.depth(24))) == 354_871_296
    assert (GPT2Config.depth(2).channels, GPT2Config.depth(2).num_heads) == (128, 2)  # llmnb's small ones


def test_weight_decay_is_on_train_gpt2cus_tensors():
    # train_gpt2.cu's gpt2_update: wd for its parameter tensors i == 0, 1, 4, 6, 10, 12, in the
    # order of its ParameterTensors (llmnb's PARAM_NAMES); none on biases and layernorms
    assert set(DECAYED) == {PARAM_NAMES[i] for i in (0, 1, 4, 6, 10, 12)}


# ----------------------------------------------------------------------------------------------
# runs

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    rng = np.random.default_rng(0)
    stream = np.tile(rng.integers(0, 300, 37), 40)
    write_shard(d / "tr_000.bin", stream[:100])  # 99 // 32 = 3 batches of B*T = 32
    write_shard(d / "tr_001.bin", stream[100:200])
    write_shard(d / "va.bin", stream[1000:1200])
    write_checkpoint(d / "tiny.bin", TINY, init_params(TINY, seed=3))
    return d


def run(data, out, *extra):
    return train.main(["-i", str(data / "tr_*.bin"), "-j", str(data / "va.bin"), "-e", str(data / "tiny.bin"),
                       "-o", str(out), "-b", "2", "-t", "16", "-l", "1e-3", "-s", "0",
                       "--data-dir", str(data / "d"), *extra])


def table(text):
    """train_gpt2.cu's parameter table rows: {name: value}."""
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ")]
    return {k.strip(): v.strip() for k, v in rows}


def read_log(out):
    with open(out / "log.jsonl") as f:
        return [json.loads(line) for line in f]


def parse_logfile(logfile):
    """dev/vislog.ipynb's parse_logfile (llm.c f1e2ace), its logic as it stands: {stream: (steps, values)}."""
    streams = {}
    with open(logfile, "r") as f:
        for line in f:
            parts = line.split()
            step = int(parts[0].split(":")[1])
            stream = parts[1].split(":")[0]
            val = float(parts[1].split(":")[1])
            streams.setdefault(stream, {})[step] = val
    return {k: tuple(zip(*sorted(v.items()))) for k, v in streams.items()}


def test_x_minus_1_is_one_epoch_and_m_minus_1_the_whole_val_split(data, tmp_path, capsys):
    # 200 train tokens over -d 64 = 3 steps; the val shard serves 199 // 32 = 6 batches
    assert run(data, tmp_path / "o", "-x", "-1", "-d", "64", "-m", "-1", "-v", "3") == 0
    t = table(capsys.readouterr().out)
    assert t["max_steps"] == "-1" and t["train_num_batches"] == "3"
    assert t["val_max_steps"] == "-1" and t["val_num_batches"] == "6"
    assert [r["step"] for r in read_log(tmp_path / "o") if r["train_loss"] is not None] == [0, 1, 2]


def test_main_log_is_llmcs_and_its_parser_reads_it(data, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(data, out, "-x", "4", "-v", "2", "-m", "2", "-u", "2", "-q", "0.0") == 0
    records = read_log(out)
    lines = (out / "main.log").read_text().splitlines()
    train_r = [r for r in records if r["train_loss"] is not None]
    val_r = [r for r in records if r["val_loss"] is not None]
    # logger.h's formats, in its order: a step's val loss before its training step
    assert lines[0] == f"s:0 tel:{val_r[0]['val_loss']:.4f}"
    assert lines[1] == f"s:0 trl:{train_r[0]['train_loss']:.4f} lr:{train_r[0]['lr']:.6f} norm:{train_r[0]['grad_norm']:.2f}"
    assert len(lines) == len(train_r) + len(val_r) == 4 + 3
    streams = parse_logfile(out / "main.log")
    assert streams["trl"][0] == (0, 1, 2, 3) and streams["tel"][0] == (0, 2, 4)
    np.testing.assert_allclose(streams["trl"][1], [r["train_loss"] for r in train_r], atol=5e-5)
    np.testing.assert_allclose(streams["tel"][1], [r["val_loss"] for r in val_r], atol=5e-5)
    # a fresh run into the same -o (no checkpoints there) starts main.log again, as logger_init
    assert run(data, out, "-x", "1", "-v", "0") == 0
    assert [line.split()[0] for line in (out / "main.log").read_text().splitlines()] == ["s:0"]


def test_main_log_reads_back_into_records_as_llmcs_parser_keeps_a_steps_last_values(tmp_path):
    # (resuming llm.c's own checkpoint: llmnb's log before it comes from llm.c's main.log, which a
    # resumed llm.c run appends to, so a step can appear twice: the last values count)
    from llmnb.fileio import FormatError
    from llmnb.logger import lines, read_records
    path = tmp_path / "main.log"
    path.write_text("s:0 tel:10.9000\ns:0 trl:10.8514 lr:0.000200 norm:2.88\ns:1 trl:9.5000 lr:0.000400 norm:1.50\n"
                    "s:2 eval:0.2950\ns:2 trl:9.0000 lr:0.000600 norm:1.00\n"
                    "s:1 trl:9.2500 lr:0.000400 norm:1.25\ns:3 tel:8.5000\n")
    r = read_records(path)
    assert [x["step"] for x in r] == [0, 1, 2]   # (step 3 has no training line: a run's last val loss)
    assert r[0] == {"step": 0, "train_loss": 10.8514, "val_loss": 10.9, "lr": 0.0002, "grad_norm": 2.88, "ms": None}
    assert r[1]["train_loss"] == 9.25 and r[1]["grad_norm"] == 1.25 and r[2]["hellaswag_acc_norm"] == 0.295
    assert "".join(line for x in r for line in lines(x)).startswith("s:0 tel:10.9000\ns:0 trl:10.8514 lr:0.000200")
    path.write_text("s:0 trl:1.0 lr:0.1 norm:1.0\ns:1 trl:2.0 lr:0.1 norm:1.0\ns:2 trl:3.4")   # (cut by a kill)
    assert [x["train_loss"] for x in read_records(path)] == [1.0, 2.0]
    path.write_text("s:0 trl:1.0 lr:0.1 norm:1.0\ngarbage\x0bs:1 trl:2.0 lr:0.1 norm:1.0\n")   # (a line is a \n's)
    with pytest.raises(FormatError, match="line 2 is not one of llm.c's log lines"):
        read_records(path)
    path.write_text("s:0 trl:1.0 lr:0.1 norm:1.0\nstep 1/10 loss 9.0\n")
    with pytest.raises(FormatError, match="main.log: line 2 is not one of llm.c's log lines"):
        read_records(path)


def test_sl_and_sg_skip_the_update_on_a_spike(data, tmp_path, capsys, monkeypatch):
    # a detector that reports a z-score of 5 at step 2 (the real one needs 64 steps to fill)
    class Spike:
        def __init__(self):
            self.n = 0

        def update(self, x):
            self.n += 1
            return 5.0 if self.n == 3 else float("nan") if self.n < 3 else 0.5
    monkeypatch.setattr(train, "OutlierDetector", Spike)
    updates = []
    real = GPT2.update
    monkeypatch.setattr(GPT2, "update", lambda self, *a, **k: (updates.append(a[-1]), real(self, *a, **k)))
    for flags, skipped in ((("-sl", "4"), "loss"), (("-sg", "4.5"), "grad"), (("-sl", "5"), None), ((), None)):
        updates.clear()
        out = tmp_path / f"o{len(flags) and flags[1]}"
        assert run(data, out, "-x", "4", "-v", "0", *flags) == 0
        text = capsys.readouterr().out
        log = read_log(out)
        if skipped:
            assert f"skipping update due to {skipped} z-score of 5.000000\n" in text
            assert updates == [1, 2, 4] and [r.get("skipped", False) for r in log] == [False, False, True, False]
        else:
            assert "skipping" not in text and updates == [1, 2, 3, 4]


def test_a_overfits_the_val_datas_first_batches(data, tmp_path, capsys, monkeypatch):
    seen = []
    real = GPT2.forward
    monkeypatch.setattr(GPT2, "forward", lambda self, x, y=None: (seen.append(int(x[0, 0])), real(self, x, y))[1])
    assert run(data, tmp_path / "o", "-a", "1", "-x", "3", "-d", "64", "-v", "0") == 0
    assert table(capsys.readouterr().out)["train data pattern"] == str(data / "va.bin")
    from llmnb.data import DataLoader
    val = DataLoader(data / "va.bin", 2, 16)
    first = [int(val.next_batch()[0][0, 0]) for _ in range(2)]
    assert seen == first * 3  # each step: the same two micro-batches
    losses = [r["train_loss"] for r in read_log(tmp_path / "o")]
    assert losses[2] < losses[1] < losses[0]


@pytest.mark.slow
def test_y_1_into_an_empty_dir_starts_and_then_resumes(data, tmp_path, capsys):
    # llm.c's scripts pass -y 1 on every launch: the first starts fresh, the next resume
    out = tmp_path / "o"
    args = ("-x", "4", "-v", "2", "-n", "2", "-y", "1")
    assert run(data, out, "-x", "2", *args[2:]) == 0
    assert "-y 1: no checkpoint in" in capsys.readouterr().out
    assert run(data, out, *args) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and table(text)["weight init method"] == "intermediate checkpoint"
    whole = tmp_path / "whole"
    assert run(data, whole, "-x", "4", "-v", "2", "-n", "2") == 0
    assert [r["train_loss"] for r in read_log(out)] == [r["train_loss"] for r in read_log(whole)]
    assert (out / "main.log").read_text() == (whole / "main.log").read_text()
    saved = json.loads((out / "state_00000002.json").read_text())["args"]
    assert saved["resume"] == 0  # it started fresh: llmnb's resume checks stay exact
    assert os.path.exists(out / "DONE_00000004")


def test_f_1_and_precision_tf32_are_the_tensor_cores_on_a_gpu_only(capsys):
    # llm.c's -f 1 (enable TF32) is llmnb's --precision tf32 on --device cuda; on the CPU -f means
    # nothing (a note), and --precision tf32 is refused in one line
    assert parse(["--device", "cuda", "-f", "1"]).matmul_precision == "tf32"
    assert parse(["--device", "cuda", "--precision", "tf32"]).matmul_precision == "tf32"
    assert parse(["--device", "cuda"]).matmul_precision == "fp32"   # llmnb's default until a card ran TF32
    assert parse(["-f", "1"]).matmul_precision == "fp32"
    assert any("-f 1" in n for n in parse(["-f", "1"]).notes())
    with pytest.raises(SystemExit):
        parse(["--precision", "tf32"])
    assert "--precision tf32 is for --device cuda" in capsys.readouterr().err


def test_precision_bf16_is_for_one_gpu_process_without_zero():
    s = parse(["--device", "cuda", "--precision", "bf16"])
    assert s.matmul_precision == "bf16" and s.for_world(1).precision == "bf16"
    assert any("bf16" in line and "not yet run on a card" in line for line in s.notes())
    from llmnb.settings import Settings
    with pytest.raises(ValueError, match="is for --device cuda"):
        Settings(precision="bf16")
    with pytest.raises(ValueError, match="-z 1 with --precision bf16"):
        Settings(device="cuda", precision="bf16", zero_stage=1)
    with pytest.raises(ValueError, match="--precision bf16 trains on one process; this job has 2"):
        parse(["--device", "cuda", "--precision", "bf16"]).for_world(2)
