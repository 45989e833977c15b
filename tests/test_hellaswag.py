"""llmnb-eval hellaswag on a hand-made file in HellaSwag's format, scored by a model whose answers
are known by construction: it predicts that the next token repeats the current one. An ending
that repeats the context's last word costs ~0 per token, any other token ~C nats; so the summed
loss (acc) and the per-token loss (acc_norm) pick endings we can say in advance."""
import json

import numpy as np
import pytest

from llmnb import evaluate, hellaswag
from llmnb.config import GPT2Config, Tensors, param_shapes
from llmnb.formats import write_checkpoint
from llmnb.model import GPT2, init_params
from llmnb.tokenizer import Tokenizer

CFG = GPT2Config(max_seq_len=64, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=1,
                 channels=64)

# (ctx, endings, label, index acc picks, index acc_norm picks)
EXAMPLES = [
    # the repeating ending wins both ways and is the label: right twice
    ("A man is sitting on the", ["the the the", "roof and smiles", "ladder", "is blue"], 0, 0, 0),
    ("She picks up the", ["ball", "the the the the the", "dog runs", "cat sat down"], 1, 1, 1),
    # the repeating ending wins both ways, the label is another: wrong twice
    ("They walk to the", ["the the", "park", "house now", "car"], 2, 0, 0),
    # 6 near-free repeats and 2 costly tokens: the least mean loss, not the least sum (that is a
    # one-token ending): right for acc_norm only
    ("He looks at the", ["cat", "the the the the the dog the", "dog cat bird", "bird"], 1, None, 1),
]


def repeat_model():
    """Blocks that add nothing (zero projections), so logits = ln_f(wte[token]) . wte: with
    wte rows of mean 0 and variance 1, token i's own logit is C = 64 and the others ~N(0, 64)."""
    p = Tensors.allocate(param_shapes(CFG))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((CFG.vocab_size, CFG.channels))
    w = (w - w.mean(axis=1, keepdims=True)) / w.std(axis=1, keepdims=True)
    p.wte[:CFG.vocab_size] = w
    p.ln1w[:] = p.ln2w[:] = p.lnfw[:] = 1.0
    return p.memory


@pytest.fixture(scope="module")
def tok():
    try:
        return Tokenizer.tiktoken()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("hellaswag")
    with open(d / "hs.jsonl", "w") as f:
        for i, (ctx, endings, label, _, _) in enumerate(EXAMPLES):
            # the other fields of the real file, which the eval ignores
            f.write(json.dumps({"ind": i, "activity_label": "x", "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                                "split": "val", "split_type": "indomain", "label": label,
                                "endings": endings, "source_id": "test"}) + "\n")
    write_checkpoint(d / "repeat.bin", CFG, repeat_model())
    return d


def test_render_masks_the_ending_tokens(tok):
    tokens, mask = hellaswag.render({"ctx": "A man is sitting on the", "endings": ["the the the", "roof", "a b", "x"],
                                     "label": 0}, tok.encode)
    ctx = tok.encode("A man is sitting on the")
    assert tokens.shape == (4, len(ctx) + 3)
    assert tokens[0].tolist() == ctx + tok.encode(" the the the")
    assert tokens[1].tolist() == ctx + tok.encode(" roof") + [0, 0]
    assert mask[0].tolist() == [0] * len(ctx) + [1, 1, 1]
    assert mask[1].tolist() == [0] * len(ctx) + [1, 0, 0]


@pytest.mark.slow
def test_the_repeat_model_gets_the_known_answers(files, tok):
    model = GPT2(CFG, repeat_model())
    for ctx, endings, label, pick, pick_norm in EXAMPLES:
        tokens, mask = hellaswag.render({"ctx": ctx, "endings": endings, "label": label}, tok.encode)
        total, mean = hellaswag.ending_losses(model, tokens, mask)
        repeats = [i for i, e in enumerate(endings) if set(e.split()) == {"the"}]
        for i in repeats:
            assert total[i] < 1e-3  # every token a repeat: free
        for i in set(range(4)) - set(repeats):
            assert mean[i] > 10  # at least one costly token
        if pick is not None:
            assert np.argmin(total) == pick
        assert np.argmin(mean) == pick_norm
    result = hellaswag.evaluate(model, hellaswag.read_examples(files / "hs.jsonl"), tok.encode)
    assert result == {"n": 4, "acc": 2 / 4, "acc_norm": 3 / 4}


@pytest.mark.slow
def test_cli_prints_acc_and_acc_norm(files, capsys):
    argv = ["hellaswag", "--model", str(files / "repeat.bin"), "--file", str(files / "hs.jsonl")]
    assert evaluate.main(argv) == 0
    out, err = capsys.readouterr()
    assert "4 examples, acc 0.5000, acc_norm 0.7500" in out
    assert "4/4" in err  # tqdm's progress bar
    assert evaluate.main(argv + ["--limit", "2"]) == 0
    assert "2 examples, acc 1.0000, acc_norm 1.0000" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(files, tmp_path, capsys):
    def error(*argv):
        assert evaluate.main(["hellaswag", "--model", str(files / "repeat.bin"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return err
    assert "nope.jsonl: no such file" in error("--file", str(tmp_path / "nope.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 1}\n{"ctx": "a"}\n')
    assert "bad.jsonl:2: not a HellaSwag example" in error("--file", str(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert "bad.jsonl:1: not JSON" in error("--file", str(tmp_path / "bad.jsonl"))
    (tmp_path / "long.jsonl").write_text(json.dumps({"ctx": "word " * 80, "endings": ["a", "b", "c", "d"],
                                                     "label": 0}) + "\n")
    assert "max_seq_len 64" in error("--file", str(tmp_path / "long.jsonl"))


@pytest.mark.slow
def test_losses_match_llmc_hellaswag_py_on_transformers(files, tok):
    """llm.c's script scores with HF's GPT2LMHeadModel in PyTorch: the same losses and picks."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from llmnb.convert import hf_config, hf_tensors
    config = GPT2Config(max_seq_len=64, vocab_size=50257, padded_vocab_size=50304, num_layers=2,
                        num_heads=2, channels=32)
    params = init_params(config, seed=3) * 8  # opinions strong enough to differ between endings
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{k: v for k, v in hf_config(config).items()
                                                                 if k != "architectures"})).eval()
    state = {k: torch.from_numpy(v) for k, v in hf_tensors(config, params).items()}
    hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    model = GPT2(config, params)
    for ctx, endings, label, _, _ in EXAMPLES:
        tokens, mask = hellaswag.render({"ctx": ctx, "endings": endings, "label": label}, tok.encode)
        total, mean = hellaswag.ending_losses(model, tokens, mask)
        # llm.c's evaluate(): shifted logits and tokens, the mask shifted to start at the last ctx token
        t, m = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask)
        with torch.no_grad():
            logits = hf(t).logits
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                   t[:, 1:].reshape(-1), reduction="none").view(4, -1)
        want_sum = (losses * m[:, 1:]).sum(dim=1)
        want_avg = want_sum / m[:, 1:].sum(dim=1)
        np.testing.assert_allclose(total, want_sum.double().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(mean, want_avg.double().numpy(), rtol=1e-4, atol=1e-4)
        assert np.argmin(total) == int(want_sum.argmin()) and np.argmin(mean) == int(want_avg.argmin())


@pytest.mark.slow
def test_train_logs_hellaswag_every_n_steps(files, tmp_path, capsys):
    from llmnb.formats import write_shard
    from llmnb.rundir import read_log
    from llmnb.settings import build_parser
    from llmnb.train import main
    assert "--hellaswag-every" in build_parser().format_help()
    write_shard(tmp_path / "tr.bin", np.random.default_rng(0).integers(0, 1000, 400))
    argv = ["-e", str(files / "repeat.bin"), "-i", str(tmp_path / "tr.bin"), "-j", str(tmp_path / "tr.bin"),
            "-o", str(tmp_path / "o"), "-b", "1", "-t", "8", "-x", "3", "-v", "0", "-s", "0", "-l", "0",
            "--data-dir", str(tmp_path / "d"), "--hellaswag-every", "2", "--hellaswag-file", str(files / "hs.jsonl")]
    assert main(argv) == 0  # lr 0: the model stays the repeat model, whose answers are known
    assert capsys.readouterr().out.count("HellaSwag: acc 0.5000 acc_norm 0.7500 (4 examples)") == 2
    log = read_log(str(tmp_path / "o" / "log.jsonl"))
    evals = [(r["step"], r["hellaswag_acc"], r["hellaswag_acc_norm"]) for r in log if "hellaswag_acc" in r]
    assert evals == [(2, 0.5, 0.75), (3, 0.5, 0.75)]  # after step 0 as llm.c, and at the end
    assert main(argv + ["--hellaswag-limit", "2", "-x", "2"]) == 0
    assert "HellaSwag: acc 1.0000 acc_norm 1.0000 (2 examples)" in capsys.readouterr().out
    assert main(argv[:-2] + ["--hellaswag-file", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_train_h_1_evaluates_at_the_val_steps_as_llmc(files, tmp_path, capsys):
    # train_gpt2.cu's -h 1: HellaSwag where the val loss is taken (after step 0) and at the end,
    # acc_norm logged to main.log as `s:STEP eval:ACC`
    from llmnb.formats import write_shard
    from llmnb.train import main
    write_shard(tmp_path / "tr.bin", np.random.default_rng(0).integers(0, 1000, 400))
    out = tmp_path / "o"
    argv = ["-e", str(files / "repeat.bin"), "-i", str(tmp_path / "tr.bin"), "-j", str(tmp_path / "tr.bin"),
            "-o", str(out), "-b", "1", "-t", "8", "-x", "5", "-v", "2", "-m", "1", "-s", "0", "-l", "0",
            "--data-dir", str(tmp_path / "d"), "-h", "1", "--hellaswag-file", str(files / "hs.jsonl")]
    assert main(argv) == 0
    assert "| run hellaswag         | yes " in capsys.readouterr().out
    evals = [line for line in (out / "main.log").read_text().splitlines() if "eval:" in line]
    assert evals == ["s:2 eval:0.7500", "s:4 eval:0.7500", "s:5 eval:0.7500"]
