"""benchmarks/gpu_check.py without a GPU: its plan, inputs and argument parsing (--dry-run)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_plans_every_phase_into_at_most_8_files(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (out / "summary.txt").read_text()
    for phase in ("env", "tests", "parity", "bench", "launch", "train", "lab"):
        assert f"\n{phase} " in summary, summary
    assert "llmnb.parity --device cuda" in summary and "-b 8 -t 1024" in summary
    # the lab: attention's versions before train (the only timing of v3 against v2), the fp32 matmuls' last
    assert summary.index("dev.cuda_attention") < summary.index("llmnb.train") < summary.rindex("dev.cuda_gemm")
    # the step is timed with the default matmul kernel and again with v6s and v7s, at both shapes, and
    # with --precision tf32 (the tensor cores) at both shapes, and at B=4 T=64 with numba's own views
    # after the launch profile; parity runs with fp32 and with tf32
    assert summary.count("--bench llmnb ") == 7 and summary.count("--bench llmnb-tf32 ") == 2
    assert summary.count("--bench llmnb-bf16 ") == 2
    assert summary.index("--launch 4x64") < summary.index("LLMNB_CUDA_VIEW_CACHE=0 ") < summary.index("LLMNB_CUDA_GEMM=v6s")
    assert summary.count("LLMNB_CUDA_GEMM=v6s ") == 2 and summary.count("LLMNB_CUDA_GEMM=v7s ") == 2
    assert summary.count("llmnb.parity --device cuda") == 3 and "--precision tf32 --model" in summary
    assert "--precision bf16 --model" in summary
    # the TF32 lab versions are checked and timed before train (the v6/v7 matmul lab is last)
    assert summary.index("v8t-128x128-bk16") < summary.index("llmnb.train")
    assert "arguments parse: ok" in summary
    gc = load_script()
    assert len(gc.OUT_FILES) <= 8
    targets = {line.rsplit("> ", 1)[1] for line in summary.splitlines() if " > " in line}
    assert targets <= set(gc.OUT_FILES)


def test_dry_run_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("earlier results")
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not empty" in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "earlier results"


def test_inputs_are_llmc_shards_and_a_tokenizer(tmp_path, monkeypatch):
    from llmnb.formats import read_shard, read_tokenizer
    gc = load_script()
    monkeypatch.setattr(gc, "ROOT", str(tmp_path))  # no tinyshakespeare there: the synthetic stream
    how = gc.prepare_inputs(str(tmp_path))
    assert "period 3001" in how
    train = np.asarray(read_shard(tmp_path / "data" / "train.bin"))
    assert train.size >= 8 * 1024 * 20 // 10 and train.max() < 50257
    assert np.array_equal(train[:3001], train[3001:6002]) and len(np.unique(train[:3001])) > 2000
    tokens, eot = read_tokenizer(tmp_path / "data" / "gpt2_tokenizer.bin")
    assert len(tokens) == 50257 and eot == 50256


def test_compare_names_the_fastest_kernels_and_the_ratio_to_pytorch():
    gc = load_script()
    bench = "\n".join([
        "llmnb   B=8 T=1024 (matmul v5s): step ms min/median/max 469.9 470.1 470.7 | 17428 tok/s",
        "PyTorch B=8 T=1024 TF32 off: step ms min/median/max 160.6 160.8 161.1 | 50936 tok/s",
        "PyTorch B=8 T=1024 TF32 on : step ms min/median/max 66.8 67.1 67.2 | 122133 tok/s",
        "llmnb   B=8 T=1024 (matmul v6s): step ms min/median/max 330.0 331.6 333.0 | 24000 tok/s",
        "llmnb   B=8 T=1024 (matmul v7s): step ms min/median/max 340.0 345.0 350.0 | 23000 tok/s",
        "llmnb   B=4 T=64 (matmul v5s): step ms min/median/max 164.9 176.4 182.6 | 1451 tok/s",
        "version  shape                      fwd ms  TFLOP/s   bwd ms  TFLOP/s",
        "v2       B=8 T=1024 NH=12 hs=64      2.127     6.06    6.841     4.71",
        "v3       B=8 T=1024 NH=12 hs=64      1.000    12.90    3.500     9.21",
    ])
    lines = gc.compare(bench)
    assert lines[0].startswith("compare llmnb B=4 T=64") and "(fastest v5s)" in lines[0] and "PyTorch" not in lines[0]
    assert "v5s 470.1, v6s 331.6, v7s 345.0 (fastest v6s); PyTorch fp32 160.8: 2.06x its time" in lines[1]
    assert lines[2].endswith("v2 8.968, v3 4.500 (fastest v3)")
    # a version that failed dev.cuda_attention's check is never the fastest
    failed = gc.compare("BAD v3 dinp  B=1 T=200 NH=2 hs=64: max rel err 3.1e-02\n" + bench)
    assert failed[2].endswith("v2 8.968, v3 4.500 (FAILED its check) (fastest v2)")


def test_compare_puts_the_step_without_the_view_cache_beside_the_step_with_it():
    gc = load_script()
    bench = "\n".join([
        "llmnb   B=4 T=64 (matmul v5s): step ms min/median/max 150.0 151.2 155.0 | 1700 tok/s",
        "llmnb   B=4 T=64 (matmul v5s, views uncached): step ms min/median/max 170.0 176.4 182.6 | 1451 tok/s",
    ])
    lines = gc.compare(bench)
    # the uncached step is not another matmul kernel's: it is a line of its own
    assert lines[0] == "compare llmnb B=4 T=64 step ms by matmul kernel: v5s 151.2 (fastest v5s)"
    assert lines[1] == "compare views B=4 T=64 matmul v5s: step ms 151.2 with the view cache, 176.4 without (+25.2 ms)"


def test_compare_puts_llmnb_tf32_beside_pytorch_tf32_and_parity_reads_each_precision():
    gc = load_script()
    bench = "\n".join([
        "llmnb   B=8 T=1024 (matmul v5s): step ms min/median/max 469.9 470.1 470.7 | 17428 tok/s",
        "PyTorch B=8 T=1024 TF32 off: step ms min/median/max 160.6 160.8 161.1 | 50936 tok/s",
        "PyTorch B=8 T=1024 TF32 on : step ms min/median/max 66.8 67.1 67.2 | 122133 tok/s",
        "llmnb   B=8 T=1024 (precision tf32): step ms min/median/max 99.0 100.6 101.0 | 81000 tok/s",
    ])
    lines = gc.compare(bench)
    assert "(fastest v5s)" in lines[0] and "tf32" not in lines[0]   # tf32 never decides fp32's kernel
    assert lines[1] == ("compare tf32 llmnb B=8 T=1024 step ms 100.6; PyTorch TF32 on 67.1: 1.50x its time; "
                        "llmnb fp32 470.1: 4.67x tf32's time")
    parity = "\n".join([
        "", "$ python -m llmnb.reference_torch --out x", "wrote x",
        "$ python -m llmnb.parity --device cuda --model m", "OK (LOGITS), max_diff = 5.960464e-06",
        "step 0: loss 11.0 (took 1 ms) OK = 1", "step 1: loss 9.5 (took 1 ms) OK = 1", "overall okay: 1",
        "$ python -m llmnb.parity --device cuda --precision tf32 --model m", "OK (LOGITS), max_diff = 4.1e-04",
        "TENSOR NOT OK, maxdiff = 1e-3, 120.0% of the tolerance",
        "step 0: loss 11.0 (took 1 ms) OK = 1 (diff 3.00e-06)", "step 1: loss 9.5 (took 1 ms) OK = 0 (diff 2.10e-05)",
        "overall okay: 0"])
    assert gc.parity_lines(parity) == [
        "parity fp32: overall okay 1, logits max diff 5.960464e-06, 0 gradient tensor(s) NOT OK, 2 steps OK",
        "parity tf32: overall okay 0, logits max diff 4.1e-04, 1 gradient tensor(s) NOT OK, "
        "steps' largest loss diff 2.10e-05"]


def test_compare_puts_the_labs_tensor_core_gemms_beside_cublas_and_skips_failed_ones():
    gc = load_script()
    bench = "\n".join([
        "sum of the 15 matmuls of one layer-equivalent set (ms), per version:",
        "  B*T=  256 cublas-bf16               0.500",
        "  B*T=  256 v9b-128x128-bk32          0.800",
        "  B*T= 8192 cublas-bf16               8.000",
        "  B*T= 8192 cublas-tf32              16.000",
        "  B*T= 8192 package                  60.000",
        "  B*T= 8192 v8t-128x128-bk16         24.000",
        "  B*T= 8192 v9b-128x128-bk32         10.000",
        "  B*T= 8192 v9b-64x64-bk32            9.000",
    ])
    lines = gc.compare(bench)
    assert lines[0] == "compare gemm B*T=256 the 15 matmuls of a 124M layer set, ms: cublas-bf16 0.50, " \
                       "v9b-128x128-bk32 0.80; fastest v9b v9b-128x128-bk32: 1.60x cublas-bf16's time"
    assert lines[1].endswith("; fastest v9b v9b-64x64-bk32: 1.12x cublas-bf16's time; "
                             "fastest v8t v8t-128x128-bk16: 1.50x cublas-tf32's time")
    # a version that failed dev.cuda_gemm's check is never the fastest
    failed = gc.compare("BAD v9b-64x64-bk32     forward  M=296 N=200 K=136: max rel err 3.1e-01 (bf16 output)\n" + bench)
    assert "fastest v9b v9b-128x128-bk32: 1.25x cublas-bf16's time" in failed[1]


def test_compare_and_parity_read_the_bf16_runs():
    gc = load_script()
    bench = "\n".join([
        "PyTorch B=8 T=1024 bf16 autocast: step ms min/median/max 40.0 41.0 42.0 | 200000 tok/s",
        "llmnb   B=8 T=1024 (precision bf16): step ms min/median/max 80.0 82.0 90.0 | 100000 tok/s",
    ])
    assert gc.compare(bench) == ["compare bf16 llmnb B=8 T=1024 step ms 82.0; PyTorch bf16 autocast 41.0: 2.00x its time"]
    parity = "\n".join([
        "", "$ python -m llmnb.parity --device cuda --precision bf16 --model m", "OK (LOGITS), max_diff = 3.1e-02",
        "step 0: loss 11.0 (took 1 ms) OK = 1 (diff 3.00e-03)", "overall okay: 1"])
    assert gc.parity_lines(parity) == ["parity bf16: overall okay 1, logits max diff 3.1e-02, 0 gradient tensor(s) "
                                       "NOT OK, steps' largest loss diff 3.00e-03"]
