"""--precision bf16's model on the CUDA simulator (train_gpt2.cu's mixed precision): bf16 parameters,
gradients and activations, fp32 master weights, m and v, stochastic rounding. A tiny GPT-2 trained a
few steps beside the fp32 model from the same weights: the same losses within bf16's noise, the
gradients close to the fp32 ones, the bf16 parameters the stochastic rounding of the master weights."""
import numpy as np
import pytest

from llmnb.config import GPT2Config, Tensors
from llmnb.cuda import lanes
from llmnb.model import GPT2, init_params

CONFIG = GPT2Config(max_seq_len=16, vocab_size=61, padded_vocab_size=64, num_layers=1, num_heads=2, channels=32)


def _batch(seed=7, B=2, T=8):
    tokens = np.random.default_rng(seed).integers(0, CONFIG.vocab_size, size=(B, T + 1))
    return tokens[:, :-1], tokens[:, 1:]


def _train(model, steps, x, y):
    losses, grads = [], None
    for step in range(steps):
        losses.append(model.forward(x, y))
        model.zero_grad()
        model.backward()
        if step == 0:
            g = model.backend.to_host(model.grads.memory)
            grads = lanes.bf16_value(g) if g.dtype == np.uint16 else g.copy()
        model.update(1e-2, 0.9, 0.95, 1e-8, 0.1, step + 1, decay=("wte", "qkvw", "attprojw", "fcw", "fcprojw"))
    return losses, grads


def test_bf16_training_follows_fp32_within_bf16_noise():
    # fp32: the CPU's model (the CUDA fp32 model is the CPU's to 1e-5: test_cuda_kernels.py)
    from llmnb.backend import CPUBackend
    x, y = _batch()
    params = init_params(CONFIG, seed=3)
    fp32 = GPT2(CONFIG, params, backend=CPUBackend())
    bf16 = GPT2(CONFIG, params, device="cuda", precision="bf16")
    assert bf16.params.memory.dtype == np.uint16 and bf16.master.dtype == np.float32
    assert bf16.acts is None and bf16.params_host().dtype == np.float32
    loss32, g32 = _train(fp32, 3, x, y)
    loss16, g16 = _train(bf16, 3, x, y)
    assert bf16.acts.ln1.dtype == np.uint16 and bf16.acts.ln1_mean.dtype == np.float32
    assert bf16.acts.losses.dtype == np.float32 and bf16.grads_acts.losses.dtype == np.float32
    # what llmnb-train's memory line counts (memory.run_memory) is what the bf16 model allocated
    from llmnb.memory import run_memory
    sizes = run_memory(CONFIG, *x.shape, "bf16")
    assert sizes["parameters (bf16)"] == bf16.params.memory.nbytes and sizes["master weights"] == bf16.master.nbytes
    assert sizes["gradients (bf16)"] == bf16.grads.memory.nbytes == bf16.params.memory.nbytes
    assert sizes["AdamW m and v"] == bf16.m_memory.nbytes + bf16.v_memory.nbytes
    for key, t in (("activations", bf16.acts), ("activation gradients", bf16.grads_acts)):
        assert sizes[key] == t.memory.nbytes + t.fp32_memory.nbytes, key
    # the first forward: the same weights rounded to bf16, activations rounded at each layer
    assert abs(loss16[0] - loss32[0]) < 0.01 * loss32[0]
    # the gradient of that step: close to fp32's overall (cosine) and per tensor (relative norm)
    cos = float(g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32))
    assert cos > 0.995, cos
    shapes = fp32.grads.shapes
    for name in shapes:
        a, b = getattr(Tensors(g16, shapes), name), getattr(Tensors(g32, shapes), name)
        if np.linalg.norm(b) > 0:
            assert np.linalg.norm(a - b) < 0.1 * np.linalg.norm(b), name
    # the losses go down together (one batch, memorized) and stay within bf16's noise of fp32's
    assert loss16[-1] < loss16[0] - 0.3 and loss32[-1] < loss32[0] - 0.3, (loss16, loss32)
    assert max(abs(a - b) / b for a, b in zip(loss16, loss32)) < 0.05, (loss16, loss32)
    # the master weights moved as fp32's did, and the bf16 weights are their stochastic rounding
    master = bf16.params_host()
    assert np.abs(master - fp32.params_host()).max() < 0.05 * np.abs(fp32.params_host()).max()
    bits = bf16.backend.to_host(bf16.params.memory)
    trunc = (master.view(np.uint32) >> 16).astype(np.uint16)
    assert ((bits == trunc) | (bits == trunc + 1)).all()
    assert 0.1 < (bits != trunc).mean() < 0.9   # rounded stochastically, not always down or up


def test_bf16_model_saves_a_version_5_checkpoint_of_its_bf16_weights(tmp_path):
    from llmnb.formats import read_checkpoint
    model = GPT2(CONFIG, init_params(CONFIG, seed=1), device="cuda", precision="bf16")
    path = tmp_path / "model.bin"
    model.save_checkpoint(str(path))
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240326 and header[1] == 5
    config, params = read_checkpoint(str(path))
    bits = model.backend.to_host(model.params.memory)
    assert config == CONFIG and (params == lanes.bf16_value(bits)).all()


def test_bf16_needs_the_gpu():
    with pytest.raises(ValueError, match="--precision bf16 is for --device cuda"):
        GPT2(CONFIG, init_params(CONFIG), device="cpu", precision="bf16")


def test_a_bf16_models_decoder_reads_its_master_weights_in_place():
    from llmnb.model import Decoder
    params = init_params(CONFIG, seed=2)
    model = GPT2(CONFIG, params, device="cuda", precision="bf16")
    fp32 = GPT2(CONFIG, params, device="cuda")
    probs = Decoder(model).step(5)
    assert np.allclose(probs, Decoder(fp32).step(5), rtol=1e-5, atol=1e-7)   # the master weights, not bf16's
    dec = Decoder(model)
    model.backend.copy_(model.master, 0.5 * params)   # (what an update does in place)
    assert not np.allclose(dec.step(5), probs, atol=1e-4)


def test_llmnb_train_precision_bf16_resumes_exactly(tmp_path, monkeypatch):
    # llmnb-train --device cuda --precision bf16 end to end: checkpoints (a version-5 model file,
    # the master weights and the rounding's rng in the state file), and a run stopped after its
    # checkpoint and resumed gives the uninterrupted run's losses and weights, bit for bit
    import json

    from llmnb import rundir
    from llmnb.config import param_shapes
    from llmnb.formats import (read_checkpoint, read_optimizer_header, read_optimizer_state, write_checkpoint,
                               write_shard)
    from llmnb.train import Run, main
    stream = np.tile(np.random.default_rng(0).integers(0, CONFIG.vocab_size, 23), 40)
    write_shard(tmp_path / "t_train_000.bin", stream[:600])
    write_shard(tmp_path / "t_val.bin", stream[600:900])
    write_checkpoint(tmp_path / "tiny.bin", CONFIG, init_params(CONFIG, seed=4))

    def run(out, *extra):
        return main(["-i", str(tmp_path / "t_train_*.bin"), "-j", str(tmp_path / "t_val.bin"),
                     "-e", str(tmp_path / "tiny.bin"), "-o", str(out), "-b", "2", "-t", "8", "-l", "1e-2",
                     "-x", "2", "-n", "1", "-v", "0", "-m", "1", "-s", "0", "--wd", "0.1",
                     "--device", "cuda", "--precision", "bf16", "--data-dir", str(tmp_path / "data"), *extra])
    full = tmp_path / "full"
    assert run(full) == 0
    header = np.fromfile(full / "model_00000001.bin", dtype=np.int32, count=2)
    assert list(header) == [20240326, 5]
    h = read_optimizer_header(full / "state_00000001_00000.bin")
    assert h["master"] and h["rng_last_update"] != h["rng_state"]
    # the bf16 model file holds the bf16 weights, the state file their fp32 master weights
    state = read_optimizer_state(full / "state_00000001_00000.bin", Tensors.count(param_shapes(CONFIG)))
    bf16_weights = read_checkpoint(full / "model_00000001.bin")[1]
    assert not np.array_equal(bf16_weights, state["master_weights"])
    assert np.abs(bf16_weights - state["master_weights"]).max() < 0.01 * np.abs(state["master_weights"]).max()

    real_step = Run.train_step

    def interrupted(self, step):
        if step == 1:
            raise KeyboardInterrupt
        return real_step(self, step)
    part = tmp_path / "part"
    with monkeypatch.context() as m:
        m.setattr(Run, "train_step", interrupted)
        assert run(part) == 130
    assert rundir.latest(part) == 1
    assert run(part, "-y", "1") == 0

    def losses(out):
        return [json.loads(line)["train_loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(losses(full)) == 2 and losses(full) == losses(part)
    assert (full / "model.bin").read_bytes() == (part / "model.bin").read_bytes()
