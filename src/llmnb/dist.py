"""Many processes: data-parallel training over MPI, as llm.c's train_gpt2.cu with llmc/zero.cuh.

    world(zero_stage)  -> Single() in a plain process, or MPIWorld under `mpiexec -n N` (N > 1)
    world.reduce_grads(model)        average the flat gradient buffer over the ranks, in buckets
    world.clip_grad_norm(model, c)   the global L2 norm of the averaged gradient (over all shards)
    world.update(model, ...)         AdamW on this rank's part, then (ZeRO-1) all-gather the params
    world.mean(x), world.barrier(), world.abort(code)

Every rank runs the same model on its own slice of each global batch (data.DataLoader with
process_rank/num_processes). With -z 0 every rank all-reduces the whole gradient and updates the
whole parameter buffer; with -z 1 (ZeRO stage 1) the gradient is reduce-scattered, rank r keeps
AdamW's m and v only for its shard [lo, hi) of the flat buffer, updates that shard, and the
parameters are all-gathered. llm.c cuts each tensor into N equal pieces (and needs N to divide
every tensor); here the shard is one contiguous 1/N slice of the flat buffer (any N works), so
the state files of a -z 1 run hold a different slice than llm.c's.

mpi4py is imported only when the job runs under an MPI launcher with more than one process
(or LLMNB_MPI=1 asks for it): plain llmnb-train never imports it. --device cuda: one GPU per rank
(rank modulo the visible devices, -z 0 only); the all-reduce goes through a host copy of the
gradient (CUDA-aware MPI or NCCL could skip it).
"""
import contextlib
import math
import os
import shutil
import sys
import time

import numpy as np

ABORT_DRAIN_S = 0.5  # seconds an aborting rank waits for its last output to be forwarded

# launchers' environment variables that give the world size (MPICH/Intel MPI's Hydra and Slurm's
# srun --mpi=pmi2; Open MPI; MVAPICH; PMIx where set); any other launcher: LLMNB_MPI=1
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
BUCKET = 1 << 22  # floats per collective call (16 MiB): one call per bucket, not per tensor


def launched_size():
    """The number of processes the MPI launcher started (1 outside one)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def find_mpiexec():
    """The mpiexec to launch ranks with: the one beside this Python (the mpi extra's MPICH wheel
    puts it in the venv's bin, which is not on PATH when the venv's python is run by its path;
    it matches the libmpi that mpi4py loads), else the first on PATH; None without either."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpiexec")


def world(zero_stage=0):
    """The world this process trains in: MPIWorld under an MPI launcher with more than one
    process (or with LLMNB_MPI=1), else Single()."""
    if launched_size() > 1 or os.environ.get("LLMNB_MPI") == "1":
        return MPIWorld(zero_stage)
    return Single(zero_stage)


def shard_range(n, rank, size):
    """[lo, hi) of rank's contiguous shard when n floats are split over size ranks."""
    return rank * n // size, (rank + 1) * n // size


def buckets(lo, hi, bucket=None):
    """[a, b) pieces of at most `bucket` (default BUCKET) floats covering [lo, hi)."""
    bucket = bucket or BUCKET
    return [(a, min(a + bucket, hi)) for a in range(lo, hi, bucket)]


class Single:
    """One process: every collective is the identity."""
    rank, size = 0, 1

    def __init__(self, zero_stage=0):
        self.zero_stage = zero_stage
        self.comm_seconds = 0.0

    def shard(self, n):
        return 0, n

    def reduce_grads(self, model):
        pass

    def clip_grad_norm(self, model, max_norm):
        """optim.clip_grad_norm over the whole (averaged) gradient -> the norm before clipping."""
        from . import optim
        return optim.clip_grad_norm(model, max_norm)

    def update(self, model, *hyper, decay=None):
        model.update(*hyper, decay=decay)

    def mean(self, x):
        return x

    def barrier(self):
        pass

    @contextlib.contextmanager
    def rank_zero_first(self):
        """Rank 0 runs the block (a download, a data preparation) before the others do."""
        if self.rank != 0:
            self.barrier()
        yield
        if self.rank == 0:
            self.barrier()

    def abort(self, code):
        sys.exit(code)

    def describe(self, model):
        return None

    def select_device(self, device):
        pass


class MPIWorld(Single):
    """N ranks over MPI_COMM_WORLD. Collectives on the flat float32 buffers, in buckets."""

    def __init__(self, zero_stage=0):
        super().__init__(zero_stage)
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise RuntimeError(f"this job runs under an MPI launcher, but mpi4py is missing ({e}): "
                               "pip install 'llmnb[mpi]'") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.grad_shard = None   # ZeRO-1: the reduced gradient of this rank's shard
        self.host = None         # --device cuda: the host copy of the gradient

    def shard(self, n):
        return shard_range(n, self.rank, self.size) if self.zero_stage == 1 else (0, n)

    def _host_grads(self, model):
        """The gradient as a NumPy array (a host copy for a device backend)."""
        g = model.grads.memory
        if isinstance(g, np.ndarray):
            return g
        self.host = model.backend.to_host(g)
        return self.host

    def reduce_grads(self, model):
        """The sum over ranks of each rank's gradient (which backward() already scaled by
        1/num_processes, so the sum is the mean): all-reduce (-z 0) or reduce-scatter into this
        rank's shard (-z 1), one collective per bucket."""
        MPI, comm = self.MPI, self.comm
        g = self._host_grads(model)
        n = g.shape[0]
        t0 = time.perf_counter()
        if self.zero_stage == 0:
            for a, b in buckets(0, n):
                comm.Allreduce(MPI.IN_PLACE, g[a:b], op=MPI.SUM)
            if g is self.host:
                model.backend.copy_(model.grads.memory, g)
        else:
            lo, hi = self.shard(n)
            if self.grad_shard is None:
                self.grad_shard = np.empty(hi - lo, np.float32)
            ranges = [shard_range(n, r, self.size) for r in range(self.size)]
            for a, b in buckets(0, n):
                counts = [max(0, min(b, rhi) - max(a, rlo)) for rlo, rhi in ranges]
                mine = slice(max(a, lo) - lo, max(a, lo) - lo + counts[self.rank])
                comm.Reduce_scatter(g[a:b], self.grad_shard[mine], recvcounts=counts, op=MPI.SUM)
        self.comm_seconds += time.perf_counter() - t0

    def clip_grad_norm(self, model, max_norm):
        """-z 1: the global norm is the square root of the sum over ranks of each shard's squared
        norm; each rank scales its own shard. Returns the norm before clipping."""
        if self.zero_stage == 0:
            return super().clip_grad_norm(model, max_norm)
        k = model.backend
        norm = math.sqrt(self.comm.allreduce(float(k.global_norm_squared(self.grad_shard)), op=self.MPI.SUM))
        if max_norm > 0 and norm > max_norm:
            k.scale_(self.grad_shard, max_norm / (norm + 1e-6))
        return norm

    def update(self, model, learning_rate, beta1, beta2, eps, weight_decay, t, decay=None):
        """-z 0: AdamW on the whole buffer (every rank the same). -z 1: AdamW on this rank's shard
        with its own m, v, then all-gather the parameters, one collective per bucket."""
        if self.zero_stage == 0:
            return model.update(learning_rate, beta1, beta2, eps, weight_decay, t, decay=decay)
        n = model.num_parameters
        lo, hi = self.shard(n)
        model.update(learning_rate, beta1, beta2, eps, weight_decay, t, decay=decay,
                     shard=(lo, hi, self.grad_shard))
        params = model.params.memory
        MPI, comm = self.MPI, self.comm
        ranges = [shard_range(n, r, self.size) for r in range(self.size)]
        t0 = time.perf_counter()
        for a, b in buckets(0, n):
            counts = [max(0, min(b, rhi) - max(a, rlo)) for rlo, rhi in ranges]
            displs = [max(0, rlo - a) if c else 0 for c, (rlo, _) in zip(counts, ranges)]
            comm.Allgatherv(MPI.IN_PLACE, [params[a:b], counts, displs, MPI.FLOAT])
        self.comm_seconds += time.perf_counter() - t0

    def select_device(self, device):
        """--device cuda: this rank's GPU is rank modulo the visible devices. ZeRO-1 updates the
        shard on the host and is refused there (-z 0 only)."""
        if device != "cuda":
            return
        if self.zero_stage == 1:
            raise ValueError("-z 1 with --device cuda is not supported yet (use -z 0)")
        from .backend import numba_cuda_missing
        if numba_cuda_missing():
            raise RuntimeError(numba_cuda_missing())
        from numba import cuda
        gpus = len(cuda.gpus)
        cuda.select_device(self.rank % gpus)

    def mean(self, x):
        return self.comm.allreduce(float(x), op=self.MPI.SUM) / self.size

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        # Abort tears the job down at once; what this rank just wrote may still sit in the pipe to
        # mpiexec's I/O forwarding and be lost with it (seen once in a CI run of tests/test_mpi.py:
        # the error line of the rank that failed never arrived). A moment lets it drain.
        time.sleep(ABORT_DRAIN_S)
        self.comm.Abort(code)

    def describe(self, model):
        """One line on the world and what AdamW's m and v take on each rank."""
        lo, hi = self.shard(model.num_parameters)
        mb = 2 * 4 * (hi - lo) / 2 ** 20
        how = ("ZeRO-1: each rank updates a 1/%d shard of the flat buffers" % self.size
               if self.zero_stage == 1 else "-z 0: every rank updates the whole buffer")
        return (f"MPI: {self.size} processes, {how}; AdamW m+v per rank: {mb:,.1f} MiB "
                f"({hi - lo:,} of {model.num_parameters:,} parameters)")

