"""Data parallelism on MPI: llmnb-train on 2 ranks x 1 Numba thread against 1 rank x 2 threads at the
same global batch, the measured all-reduce bandwidth, and what it predicts for a cluster.

    python benchmarks/mpi_scaling.py                  # GPT-2 124M (d12), global batch 8 x 64, 4 steps
    python benchmarks/mpi_scaling.py --init d6 --steps 3

Prints tokens/s (median over the steps after the first) and the time per step in communication,
the all-reduce bus bandwidth on this machine (16 MiB buckets over a buffer the size of the
gradient), and on paper, for 8 and 64 ranks on a 100 Gb/s network, the ring all-reduce time of the
124M and 350M models' gradients against the compute time per step measured here. Needs mpiexec
and mpi4py (pip install -e '.[mpi]'). Run it on an otherwise idle machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from llmnb.config import GPT2Config, Tensors, param_shapes
from llmnb.dist import find_mpiexec
from llmnb.formats import write_shard
from llmnb.mfu import flops_per_step

NETWORK_BYTES_PER_S = 100e9 / 8   # a 100 Gb/s cluster network
LATENCY_S = 5e-6                  # per message, a typical MPI latency on such a network


def run_train(tmp, name, ranks, threads, B, args):
    """One llmnb-train run -> list of (ms, comm_ms) per step."""
    out = os.path.join(tmp, name)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "llmnb.train", "-i", os.path.join(tmp, "train.bin"),
           "-j", os.path.join(tmp, "train.bin"), "-e", args.init,
           "-o", out, "-b", str(B), "-t", str(args.T), "-x", str(args.steps), "-v", "0", "-s", "0",
           "--no-shuffle", "--data-dir", os.path.join(tmp, "data")]
    if ranks > 1:
        cmd = [find_mpiexec(), "-n", str(ranks), *cmd]
    print(f"{name}: {'mpiexec -n 2 ' if ranks > 1 else ''}llmnb-train -e {args.init} -b {B} -t {args.T} "
          f"-x {args.steps} ({threads} Numba thread(s) per rank)", flush=True)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        sys.exit(f"{name} failed:\n{p.stderr[-2000:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [(r["ms"], r.get("comm_ms", 0.0)) for r in recs if r.get("ms") is not None]


def allreduce_main(n, repeats):
    """Under mpiexec: time the bucketed all-reduce of n floats -> prints one JSON line on rank 0."""
    from mpi4py import MPI

    from llmnb.dist import buckets
    comm = MPI.COMM_WORLD
    g = np.ones(n, np.float32)
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        for a, b in buckets(0, n):
            comm.Allreduce(MPI.IN_PLACE, g[a:b], op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "bytes": 4 * n, "seconds": times}))


# GPT-2 small and medium: llm.c's d12 and d24 (train_gpt2.cu's gpt2_set_hyperparameters)
MODELS = {"124M": GPT2Config.depth(12), "350M": GPT2Config.depth(24)}


def num_parameters(config):
    return Tensors.count(param_shapes(config))


def ring_allreduce_s(nbytes, N, buckets):
    """A ring all-reduce (reduce-scatter + all-gather; ZeRO-1 moves the same bytes): every rank
    sends and receives 2 (N-1)/N of the buffer, in 2 (N-1) messages per bucket."""
    return 2 * (N - 1) / N * nbytes / NETWORK_BYTES_PER_S + 2 * (N - 1) * buckets * LATENCY_S


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", default="d12", help="model: d12 = GPT-2 124M (default)")
    p.add_argument("-b", dest="B", type=int, default=8, help="global batch size (default 8)")
    p.add_argument("-t", dest="T", type=int, default=64, help="sequence length (default 64)")
    p.add_argument("--steps", type=int, default=4, help="training steps per run (default 4; the first is not timed)")
    p.add_argument("--allreduce", type=int, default=0, help=argparse.SUPPRESS)  # internal: the mpiexec'd timer
    args = p.parse_args()
    if args.allreduce:
        return allreduce_main(args.allreduce, 3)
    if find_mpiexec() is None:
        sys.exit("mpi_scaling.py needs mpiexec: pip install -e '.[mpi]'")
    print(f"load average before: {os.getloadavg()}")
    n = num_parameters(GPT2Config.depth(int(args.init[1:])))
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        write_shard(os.path.join(tmp, "train.bin"), rng.integers(0, 50257, args.B * args.T * (args.steps + 2) + 1))
        one = run_train(tmp, "1 rank x 2 threads", 1, 2, args.B, args)
        two = run_train(tmp, "2 ranks x 1 thread", 2, 1, args.B // 2, args)
        env = dict(os.environ, NUMBA_NUM_THREADS="1")
        ar = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, os.path.abspath(__file__),
                             "--allreduce", str(n)], env=env, capture_output=True, text=True, timeout=600)
        if ar.returncode != 0:
            sys.exit(f"all-reduce timing failed:\n{ar.stderr[-2000:]}")
        ar = json.loads(ar.stdout.strip().splitlines()[-1])
    print(f"load average after: {os.getloadavg()}")

    tokens = args.B * args.T
    print(f"\nGPT-2 {args.init} ({n:,} parameters), global batch {args.B} x {args.T} = {tokens} tokens, "
          f"median of steps 2..{args.steps}")
    print("| run | ms/step | tokens/s | comm ms/step | comm share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = {}
    for name, steps in (("1 rank x 2 threads", one), ("2 ranks x 1 thread", two)):
        ms = statistics.median(s[0] for s in steps[1:])
        comm = statistics.median(s[1] for s in steps[1:])
        rows[name] = ms, comm
        print(f"| {name} | {ms:,.0f} | {tokens / ms * 1000:,.0f} | {comm:,.0f} | {100 * comm / ms:.1f}% |")
    ratio = rows["1 rank x 2 threads"][0] / rows["2 ranks x 1 thread"][0]
    print(f"2 ranks reach {100 * ratio:.0f}% of the one-process throughput")

    best = min(ar["seconds"])
    busbw = 2 * (ar["ranks"] - 1) / ar["ranks"] * ar["bytes"] / best
    print(f"\nall-reduce of {ar['bytes'] / 2**20:,.0f} MiB on {ar['ranks']} ranks (this machine, shared memory): "
          f"{best * 1000:,.0f} ms, algorithm bandwidth {ar['bytes'] / best / 1e9:.2f} GB/s, "
          f"bus bandwidth {busbw / 1e9:.2f} GB/s")

    # on paper: the compute per step of one rank at B/2 x T with 1 thread (measured), scaled by
    # llmnb.mfu's FLOP count to the other model, against a ring all-reduce of its gradient
    compute_s = (rows["2 ranks x 1 thread"][0] - rows["2 ranks x 1 thread"][1]) / 1000
    measured_flops = flops_per_step(GPT2Config.depth(int(args.init[1:])), args.B // 2, args.T)
    print(f"\non paper: 100 Gb/s network ({NETWORK_BYTES_PER_S / 1e9:.1f} GB/s per rank), {LATENCY_S * 1e6:.0f} us "
          f"per message, 16 MiB buckets, no overlap; compute per rank per step as measured here "
          f"({args.B // 2} x {args.T} tokens, 1 core: {compute_s:.2f} s for {args.init}, scaled by FLOPs)")
    print("| model | ranks | gradient MiB | all-reduce ms | compute s/step/rank | comm share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, config in MODELS.items():
        m = num_parameters(config)
        nbytes = 4 * m
        c = compute_s * flops_per_step(config, args.B // 2, args.T) / measured_flops
        for N in (8, 64):
            t = ring_allreduce_s(nbytes, N, -(-m // (1 << 22)))
            print(f"| {name} | {N} | {nbytes / 2**20:,.0f} | {t * 1000:,.0f} | {c:,.2f} | {100 * t / (t + c):.1f}% |")


if __name__ == "__main__":
    main()
