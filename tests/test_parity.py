"""End to end, like llm.c's test_gpt2.c: llmnb-reference (PyTorch) writes a model, a debug state and
the losses of 10 AdamW steps; llmnb-test must reproduce them and print `overall okay: 1`."""
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def reference_then_test(out, *shape):
    ref = cli("llmnb.reference_torch", "--out", str(out), *shape)
    assert ref.returncode == 0, ref.stderr
    res = cli("llmnb.parity", "--model", str(out / "model.bin"), "--state", str(out / "debug_state.bin"),
              "--losses", str(out / "expected_losses.json"))
    return res


def assert_losses_within(stdout, losses_path, rtol=2e-6):
    """Our own, tighter bar than llmnb-test's llm.c tolerance (1e-2): the 10 printed step losses
    (printed to 1e-6, i.e. ~1e-7 relative at losses ~10) within rtol of the reference's."""
    got = [float(x) for x in re.findall(r"^step \d+: loss (\S+)", stdout, re.M)]
    want = json.loads(losses_path.read_text())
    assert len(got) == len(want) == 10
    for step, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= rtol * abs(w) + 5e-7, f"step {step}: loss {g} vs the reference's {w}"


@pytest.mark.slow
def test_small_model_parity(tmp_path):
    res = reference_then_test(tmp_path, "--layers", "2", "--heads", "4", "--channels", "64",
                              "--vocab", "50257", "--max-seq-len", "64")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "overall okay: 1" in res.stdout
    assert res.stdout.count("TENSOR OK") == 16 and "LOSS OK" in res.stdout
    assert res.stdout.count("OK = 1") == 10
    assert_losses_within(res.stdout, tmp_path / "expected_losses.json")


@pytest.mark.slow
def test_gpt2_124M_parity(tmp_path):
    res = reference_then_test(tmp_path)  # the defaults: GPT-2 124M, B=4, T=64
    assert res.returncode == 0, res.stdout + res.stderr
    assert "num_parameters: 124475904" in res.stdout
    assert "overall okay: 1" in res.stdout
    # random weights fall from 11.0 to 3.3 in 10 steps: float32 noise reaches 2.8e-6 (step 6)
    assert_losses_within(res.stdout, tmp_path / "expected_losses.json", rtol=5e-6)


@pytest.mark.slow
def test_a_mismatch_is_reported_and_fails(tmp_path):
    # a wrong expected loss list must turn the verdict to 0 and the exit code to 1
    ref = cli("llmnb.reference_torch", "--out", str(tmp_path), "--layers", "1", "--heads", "2", "--channels", "32",
              "--vocab", "50257", "--max-seq-len", "16", "--batch", "2", "--seq-len", "8", "--steps", "3")
    assert ref.returncode == 0, ref.stderr
    (tmp_path / "wrong.json").write_text("[1.0, 2.0, 3.0]")
    res = cli("llmnb.parity", "--model", str(tmp_path / "model.bin"), "--state", str(tmp_path / "debug_state.bin"),
              "--losses", str(tmp_path / "wrong.json"))
    assert res.returncode == 1 and "overall okay: 0" in res.stdout


def test_bad_files_are_one_clear_line(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x01" * 2048)
    res = cli("llmnb.parity", "--model", str(bad), "--state", str(tmp_path / "missing.bin"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "model.bin" in res.stderr and "Traceback" not in res.stderr
