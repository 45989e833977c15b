"""Generation on the GPU (on the CUDA simulator): the one-query attention kernel against the CPU's,
and the model's cached one-token step on a CUDA backend against the CPU's, with nothing but the
token in and the next token's probabilities out per step."""
import numpy as np
import pytest

from llmnb import kernels as cpu
from llmnb.backend import CPUBackend
from llmnb.config import GPT2Config
from llmnb.cuda.backend import CUDABackend
from llmnb.generate import generate
from llmnb.model import GPT2, Decoder, init_params
from llmnb.rand import Rng

F32 = np.float32
RTOL = 1e-5


@pytest.fixture(scope="module")
def be():
    return CUDABackend()


@pytest.mark.gpu_geometry
@pytest.mark.parametrize("maxT,B,NH,C", [(11, 1, 2, 16), (20, 3, 3, 36)])
def test_attention_query(be, maxT, B, NH, C):
    # out (B, C) for queries at the first, a middle and the last position; the cache's rows past t
    # hold NaN (a read of them poisons out) and the output sits inside NaN slack (a write past it
    # shows); qkv must come back unchanged
    rng = np.random.default_rng(maxT)
    for t in (0, maxT // 2, maxT - 1):
        qkv = (rng.standard_normal((maxT, B, 3 * C)) * 2).astype(F32)
        qkv[t + 1:] = np.nan
        want = np.zeros((B, C), F32)
        cpu.attention_query(want, np.zeros((B, NH, maxT), F32), qkv, t)
        flat = be.asarray(np.full(B * C + 6, np.nan, F32))
        out = flat[3:3 + B * C].reshape(B, C)
        dqkv = be.asarray(qkv)
        be.attention_query(out, be.zeros(B * NH * maxT).reshape(B, NH, maxT), dqkv, t)
        got = be.to_host(flat)
        assert np.isnan(got[:3]).all() and np.isnan(got[3 + B * C:]).all(), "wrote outside out"
        np.testing.assert_allclose(got[3:3 + B * C].reshape(B, C), want, rtol=RTOL, atol=RTOL * np.abs(want).max())
        np.testing.assert_array_equal(be.to_host(dqkv), qkv)


def test_attention_query_bad_shapes_are_one_clear_error(be):
    qkv = be.zeros(8 * 48).reshape(8, 1, 48)
    att = be.zeros(2 * 8).reshape(1, 2, 8)
    with pytest.raises(ValueError, match="llmnb/cuda/kernels.py: attention_query: out"):
        be.attention_query(be.zeros(15).reshape(1, 15), att, qkv, 0)
    with pytest.raises(ValueError, match="position 8"):
        be.attention_query(be.zeros(16).reshape(1, 16), att, qkv, 8)


CFG = GPT2Config(max_seq_len=10, vocab_size=64, padded_vocab_size=128, num_layers=2, num_heads=2, channels=16)


class Counting(CUDABackend):
    """A CUDA backend that records every host <-> device copy: (what, number of elements)."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def asarray(self, host):
        self.copies.append(("asarray", np.size(host)))
        return super().asarray(host)

    def copy_(self, dst, host):
        self.copies.append(("copy_", np.size(host)))
        super().copy_(dst, host)

    def to_host(self, arr):
        self.copies.append(("to_host", arr.size))
        return super().to_host(arr)


def test_cached_step_on_cuda_matches_the_cpu_and_copies_no_weights():
    params = init_params(CFG, seed=5) * 6
    tokens = np.random.default_rng(4).integers(0, CFG.vocab_size, CFG.max_seq_len)
    models = [Decoder(GPT2(CFG, params, backend=CPUBackend())), Decoder(GPT2(CFG, params, backend=Counting()))]
    dev = models[1].backend
    dev.copies.clear()
    for tok in tokens:  # every position, up to max_seq_len
        want, got = (m.step(int(tok)).copy() for m in models)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)
        logits = [m.backend.to_host(m.acts.logits).reshape(-1) for m in models]
        np.testing.assert_allclose(logits[1], logits[0], rtol=RTOL, atol=RTOL * np.abs(logits[0]).max())
    # per step: the token id in, the (Vp,) probabilities out; the logits are the test's own reads
    Vp = CFG.padded_vocab_size
    assert dev.copies == [("copy_", 1), ("to_host", Vp), ("to_host", Vp)] * CFG.max_seq_len
    # llm.c's sampling loop on both: the same tokens
    dev.copies.clear()
    outs = [generate(m, [CFG.vocab_size - 1, 3], 6, Rng(7), temperature=0.9) for m in models]
    assert outs[0] == outs[1] and len(outs[1]) == 6
    assert dev.copies == [("copy_", 1), ("to_host", Vp)] * (2 + 5)  # the last sample needs no step


def test_a_batch_of_sequences_on_cuda_matches_the_cpu():
    # Decoder(batch=3) on the device: the KV cache (L, maxT, B, 3C), one step's B rows of qkv
    # written in place, attention over B sequences; the same probabilities as the CPU's, every step
    params = init_params(CFG, seed=6) * 6
    tokens = np.random.default_rng(2).integers(0, CFG.vocab_size, (3, 5))
    models = [Decoder(GPT2(CFG, params, backend=b), batch=3) for b in (CPUBackend(), CUDABackend())]
    for t in range(tokens.shape[1]):
        want, got = (m.step(tokens[:, t]).copy() for m in models)
        assert got.shape == (3, CFG.padded_vocab_size)
        # (float32 sums in another order: the logits within 1e-5 of their largest, the
        # probabilities of this sharp model, exp of them, within 1e-4)
        logits = [m.backend.to_host(m.acts.logits).reshape(3, -1) for m in models]
        np.testing.assert_allclose(logits[1], logits[0], rtol=RTOL, atol=RTOL * np.abs(logits[0]).max())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
