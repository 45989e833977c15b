"""benchmarks/time_to_loss.py: llmnb and PyTorch train the same model with the same optimizer (same
losses step by step, same weights after), the comparison interpolates between evaluations, the
picture is well-formed SVG, and the command runs end to end in a few seconds."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from benchmarks import time_to_loss as ttl
from llmnb.config import GPT2Config
from llmnb.formats import write_shard
from llmnb.model import init_params
from llmnb.prepro import tinyshakespeare_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a vocabulary padded by 84 rows: the padded logits must not enter PyTorch's loss
TINY = GPT2Config(max_seq_len=32, vocab_size=300, padded_vocab_size=384, num_layers=2, num_heads=2, channels=32)


def batches(n, B, T, V, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, V, size=B * T + 1).astype(np.int32)
        out.append((tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)))
    return out


def test_both_trainers_take_the_same_steps():
    torch = pytest.importorskip("torch")
    from llmnb.reference_torch import to_llmc
    # warmup 3: the lr changes each step; clip 0.5 and weight decay 0.5: both matter
    recipe = ttl.LAPTOP._replace(lr=1e-2, warmup=3, grad_clip=0.5, weight_decay=0.5)
    params = init_params(TINY, seed=5)
    mine, theirs = ttl.LlmnbTrainer(TINY, params, recipe), ttl.TorchTrainer(torch, TINY, params, recipe)
    data = batches(6, 2, 16, TINY.vocab_size)
    for step, (x, y) in enumerate(data):
        a, b = mine.step(x, y, step), theirs.step(x, y, step)
        assert a == pytest.approx(b, abs=1e-4), step
    x, y = data[0]
    assert mine.loss(x, y) == pytest.approx(theirs.loss(x, y), abs=1e-4)
    got, want = to_llmc(theirs.model), mine.model.params_host()
    assert not np.array_equal(want, params)  # they trained
    np.testing.assert_allclose(got, want, atol=1e-4)  # (a wrong decay group or no clip: > 1e-2)
    # the padded rows of wte: zero in both (no gradient reaches them, decay keeps zero at zero)
    assert not want[TINY.vocab_size * TINY.channels:TINY.padded_vocab_size * TINY.channels].any()
    assert not got[TINY.vocab_size * TINY.channels:TINY.padded_vocab_size * TINY.channels].any()


def points(*pairs):
    return [{"train_s": t, "step": i, "val_loss": v} for i, (t, v) in enumerate(pairs)]


def test_time_to_reach_interpolates_between_evaluations():
    p = points((0.0, 10.0), (10.0, 8.0), (20.0, 6.0), (30.0, 6.5), (40.0, 5.0))
    assert ttl.time_to_reach(p, 7.0) == pytest.approx(15.0)   # halfway from 8 to 6
    assert ttl.time_to_reach(p, 6.0) == pytest.approx(20.0)   # reached at an evaluation
    assert ttl.time_to_reach(p, 5.5) == pytest.approx(30.0 + 10.0 * 1.0 / 1.5)  # the first crossing
    assert ttl.time_to_reach(p, 11.0) == 0.0
    assert ttl.time_to_reach(p, 4.9) is None


def test_compare_gives_each_the_time_to_the_others_final_loss():
    a = {"impl": "llmnb", "points": points((0, 10.0), (10, 6.0), (20, 4.0)), "final_val_loss": 4.0}
    b = {"impl": "torch", "points": points((0, 10.0), (10, 8.0), (20, 6.0)), "final_val_loss": 6.0}
    ttl.compare([a, b])
    assert a["reached_other_final_s"] == pytest.approx(10.0) and b["reached_other_final_s"] is None
    assert a["other_final_val_loss"] == 6.0 and b["other_final_val_loss"] == 4.0


def test_the_picture_is_well_formed_svg():
    results = [{"impl": "llmnb", "points": points((0, 10.9), (30.5, 7.25), (60.1, 6.5)), "final_val_loss": 6.5},
               {"impl": "torch", "points": points((0, 10.9), (31.0, 8.0), (60.2, float("nan"))),
                "final_val_loss": float("nan")}]
    root = ET.fromstring(ttl.val_loss_svg(results, "d6 <B=4 & T=256>"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 and len(lines[1].get("points").split()) == 2  # the NaN is left out
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "d6 <B=4 & T=256>" in texts and any("llmnb: final val loss 6.5000" in t for t in texts)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """tinyshakespeare's token files where the benchmark looks for them, of random GPT-2 tokens."""
    d = tmp_path_factory.mktemp("ttl_data")
    train, val = tinyshakespeare_paths(str(d))
    os.makedirs(os.path.dirname(train))
    rng = np.random.default_rng(1)
    write_shard(train, rng.integers(0, 50257, 4000))
    write_shard(val, rng.integers(0, 50257, 1000))
    return d


@pytest.mark.slow
def test_a_tiny_run_of_both_starts_from_the_same_loss_and_writes_its_outputs(data_dir, tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]))
    out_json, out_svg = tmp_path / "ttl.jsonl", tmp_path / "ttl.svg"
    r = subprocess.run([sys.executable, "-m", "benchmarks.time_to_loss", "--budget", "2", "-d", "2", "-B", "2",
                        "-T", "32", "--val-batches", "2", "--sample-tokens", "5", "--threads", "1",
                        "--data-dir", str(data_dir), "--json", str(out_json), "--svg", str(out_svg)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = [json.loads(l)[ttl.JSON_KEY] for l in r.stdout.splitlines() if l.startswith("{")]
    written = [json.loads(l)[ttl.JSON_KEY] for l in out_json.read_text().splitlines()]
    assert printed == written and [w["impl"] for w in written] == ["llmnb", "torch"]
    llmnb, torch_ = written
    # the same d2 model from the same weights on the same first batch
    assert llmnb["first_train_loss"] == pytest.approx(torch_["first_train_loss"], abs=1e-4)
    assert llmnb["points"][0]["val_loss"] == pytest.approx(torch_["points"][0]["val_loss"], abs=1e-4)
    for res in written:
        assert res["recipe"]["depth"] == 2 and res["versions"]["threads"] == 1 and res["val_batches"] == 2
        assert res["steps"] >= 1 and res["train_s"] >= 2.0 and len(res["points"]) >= 2
        assert res["points"][-1]["train_s"] == res["train_s"] and res["final_val_loss"] == res["points"][-1]["val_loss"]
        assert [p["step"] for p in res["points"]] == sorted(p["step"] for p in res["points"])
        assert len(res["sample_tokens"]) == 5 and all(0 <= t < 50257 for t in res["sample_tokens"])
        assert "reached_other_final_s" in res and res["other_final_val_loss"] is not None
        assert res["warmup_s"] > 0 and res["eval_s"] > 0
    ET.parse(out_svg)
    assert "final val loss" in r.stdout


def test_bad_flags_are_one_line(capsys):
    with pytest.raises(SystemExit):
        ttl.parse_args(["--budget", "0"])
    assert "--budget must be" in capsys.readouterr().err
