"""`llmnb-test --device cuda` end to end on a tiny PyTorch reference, under the CUDA simulator:
the whole step (forward, backward, AdamW) on device-resident flat buffers."""
import pytest

pytest.importorskip("torch")


def _tiny_reference(tmp_path, capsys):
    """llmnb-reference's files for a tiny GPT-2 (1 layer, 2 heads, 32 channels, B=2 T=8, 3 steps) in
    tmp_path -> llmnb-test's arguments for them on --device cuda."""
    from llmnb import reference_torch
    assert reference_torch.main(["--out", str(tmp_path), "--layers", "1", "--heads", "2", "--channels", "32",
                                 "--vocab", "60", "--max-seq-len", "16", "--batch", "2", "--seq-len", "8",
                                 "--steps", "3", "--seed", "5"]) == 0
    capsys.readouterr()
    return ["--model", str(tmp_path / "model.bin"), "--state", str(tmp_path / "debug_state.bin"),
            "--losses", str(tmp_path / "expected_losses.json"), "--device", "cuda"]


def test_llmnb_test_device_cuda_passes_on_a_tiny_reference(tmp_path, capsys):
    from llmnb import parity
    files = _tiny_reference(tmp_path, capsys)
    rc = parity.main(files)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "overall okay: 1" in out and out.count("TENSOR OK") == 16 and out.count("OK = 1") == 3


def test_llmnb_test_device_cuda_precision_tf32_passes_llmc_cu_tolerances(tmp_path, capsys):
    # the TF32 matmuls (tensor cores; on the simulator their lane models) through the whole step,
    # within llmnb-test's tf32 tolerances (parity.TOLERANCES); and they are not fp32's results (the
    # logits differ). Three steps, as the fp32 test above: the updates too
    from llmnb import parity
    files = _tiny_reference(tmp_path, capsys)
    rc = parity.main(files + ["--precision", "tf32"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "precision: tf32" in out and "overall okay: 1" in out and out.count("TENSOR OK") == 16 and out.count("OK = 1") == 3
    assert "OK (LOGITS), max_diff = 0.000000e+00" not in out


def test_llmnb_test_device_cuda_precision_bf16_passes_llmc_cu_bf16_tolerances(tmp_path, capsys):
    # --precision bf16 (bf16 tensors, master weights, stochastic rounding) through the whole step
    # within test_gpt2.cu's bf16 tolerances; the gradients checked in fp32 after their bf16 rounding
    from llmnb import parity
    files = _tiny_reference(tmp_path, capsys)
    rc = parity.main(files + ["--precision", "bf16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "precision: bf16" in out and "overall okay: 1" in out and out.count("TENSOR OK") == 16
    # the logits are within far less than the 25.0 llm.c allows: bf16's rounding, not a wrong kernel
    logits_diff = float(out.split("OK (LOGITS), max_diff = ")[1].split()[0])
    assert 0 < logits_diff < 0.05, out
