"""benchmarks/torch_step.py, the PyTorch baseline of benchmarks.step: both of its models hold llmnb's
weights and compute llmnb's loss on llmnb's batch, and run alone it prints one JSON line per model."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_step  # noqa: E402
from llmnb.config import GPT2Config  # noqa: E402
from llmnb.model import GPT2, init_params  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = GPT2Config(max_seq_len=32, vocab_size=300, padded_vocab_size=384, num_layers=2, num_heads=2, channels=32)


def llmnb_logits_and_loss(params, x, y):
    model = GPT2(TINY, params.copy())
    loss = model.forward(x, y)
    return model.acts.logits.astype(np.float64), loss


def test_both_models_compute_llmnbs_loss_from_llmnbs_weights():
    params = init_params(TINY, seed=3) * np.float32(3.0)  # larger weights: every layer shows in the loss
    x, y = torch_step.make_batch(TINY, 2, 16)
    logits, loss = llmnb_logits_and_loss(params, x, y)
    xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))
    pytest.importorskip("transformers")
    with torch.no_grad():
        _, hf_loss = torch_step.hf_model(torch, TINY, params)
        assert hf_loss(xt, yt).item() == pytest.approx(loss, rel=1e-5)
        # nanoGPT's softmax runs over all Vp logits; the padded rows of wte are zero, so are their logits
        _, nano_loss = torch_step.nanogpt_model(torch, TINY, params)
        lse = np.log(np.exp(logits).sum(-1))  # (B,T) over Vp, padded logits included
        want = np.mean(lse - np.take_along_axis(logits, y[..., None].astype(np.int64), -1)[..., 0])
        assert nano_loss(xt, yt).item() == pytest.approx(want, rel=1e-5)
        assert abs(want - loss) > 0.1  # (the padding is seen: not the V-only loss)


def test_the_models_train_with_llmcs_adamw():
    params = init_params(TINY, seed=4)
    x, y = torch_step.make_batch(TINY, 2, 16)
    xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))
    model, loss_fn = torch_step.nanogpt_model(torch, TINY, params)
    r = torch_step.time_steps(torch, model, loss_fn, xt, yt, warmup=1, steps=3, adamw="default")
    assert len(r["times_s"]) == 3 and r["times_s"] == sorted(r["times_s"])
    assert loss_fn(xt, yt).item() < r["loss"]  # five AdamW steps on one batch lower its loss


@pytest.mark.slow
def test_run_alone_it_prints_a_json_line_per_model():
    pytest.importorskip("transformers")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]))
    r = subprocess.run([sys.executable, "-m", "benchmarks.torch_step", "-d", "1", "-B", "1", "-T", "8", "--steps", "2",
                        "--warmup", "0", "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = [json.loads(line)[torch_step.JSON_KEY] for line in r.stdout.splitlines() if line.startswith("{")]
    assert [res["model"] for res in results] == ["nanogpt", "hf"]
    assert all(res["threads"] == 1 and len(res["times_s"]) == 2 for res in results)
