"""dev/tf32_emulation.py: TF32 emulated on the CPU, to size llmnb-test's --precision tf32 tolerances
before a card runs the tensor-core kernels."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dev import tf32_emulation
from llmnb.cuda.lanes import round_tf32


def test_emulation_rounds_as_the_lane_model_of_cvt_rna():
    # the emulation's rounding is the card's (lanes.py's model of cvt.rna.tf32), ties included
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000) * 10.0 ** rng.integers(-30, 30, 10_000),
                        [1.0 + 2.0 ** -11, -(1.0 + 2.0 ** -11), 1.0 + 3 * 2.0 ** -12, 0.0, -0.0]]).astype(np.float32)
    to_tf32, _ = tf32_emulation.define_tf32_products(torch)
    got = to_tf32(torch.from_numpy(x)).numpy()
    assert np.array_equal(got.view(np.uint32), round_tf32(x).view(np.uint32))
    assert got[-5] == np.float32(1.0 + 2.0 ** -10)   # a tie goes away from zero
    assert got[-4] == -got[-5]


def test_products_round_both_operands_forward_and_backward():
    to_tf32, matmul = tf32_emulation.define_tf32_products(torch)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 7, generator=g, requires_grad=True)
    b = torch.randn(7, 3, generator=g, requires_grad=True)
    up = torch.randn(5, 3, generator=g)
    out = matmul(a, b)
    out.backward(up)
    r = lambda t: to_tf32(t.detach()).double()
    assert torch.allclose(out.double(), r(a) @ r(b), rtol=0, atol=1e-6)
    assert not torch.allclose(out.double(), a.detach().double() @ b.detach().double(), rtol=0, atol=1e-6)
    assert torch.allclose(a.grad.double(), r(up) @ r(b).T, rtol=0, atol=1e-6)
    assert torch.allclose(b.grad.double(), r(a).T @ r(up), rtol=0, atol=1e-6)


def test_a_small_model_passes_and_the_script_prints_every_check(capsys):
    rc = tf32_emulation.main(["--layers", "2", "--heads", "2", "--channels", "32", "--vocab", "100",
                              "--max-seq-len", "16", "--batch", "2", "--seq-len", "16", "--steps", "3",
                              "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("of llmnb-test's tf32 tolerance") == 1 + 3 + 16
    assert "would pass" in out
