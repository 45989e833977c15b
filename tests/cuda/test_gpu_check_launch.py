"""benchmarks/gpu_check.py's launch phase runs to its end on a tiny model (on the simulator: the
count and the profile; the replay needs a card) and counts what the step launches."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_launch_profile_counts_the_steps_launches(monkeypatch, capsys):
    monkeypatch.setenv("LLMNB_GPU_CHECK_TINY", "1")
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import gpu_check
    from llmnb.cuda.launch import SIMULATOR
    gpu_check.launch_profile(2, 8)
    out = capsys.readouterr().out
    lines = {line.split(":")[0] for line in out.splitlines() if line.startswith("launch")}
    assert lines == {"launch B=2 T=8", "launch"}, out
    first = next(line for line in out.splitlines() if "launches per step" in line)
    count = int(first.split(": ")[1].split()[0])
    # one layer: encoder, 11 launches a layer forward and more backward, the classifier, AdamW
    assert 30 < count < 120, first
    assert ("replay n/a" in out) == SIMULATOR and "slice + reshape" in out and "tottime" in out
    if not SIMULATOR:   # on a card: the recorded launches replay, and capture into a CUDA graph
        assert "issued again as recorded" in out and "as one CUDA graph" in out, out


def test_the_bf16_bench_runs_and_times_every_kernel(monkeypatch, capsys):
    # the bench phase's --bench llmnb-bf16 on a tiny model: a step line and a per-kernel table in
    # which the bf16 update (adamw_update_master) is a kernel, not host time
    monkeypatch.setenv("LLMNB_GPU_CHECK_TINY", "1")
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import gpu_check
    gpu_check.bench_llmnb(1, 8, precision="bf16")
    out = capsys.readouterr().out
    assert "llmnb   B=1 T=8 (precision bf16): step ms" in out, out
    assert "adamw_update_master" in out and "matmul_forward" in out, out
