"""Many processes: data-parallel training over MPI, as llm.c's train_gpt2.cu with llmc/zero.cuh.
This module holds the collectives; optim.AdamW says when a step uses them.

    world(zero_stage)  -> Single() in a plain process, or MPIWorld under `mpiexec -n N` (N > 1)
    world.reduce_grads(model)        sum the flat gradient buffer over the ranks, in buckets
                                     (ZeRO-1: each rank keeps its shard's sum in world.grad_shard)
    world.all_gather(params)         ZeRO-1: every rank's updated shard to every rank
    world.sum(x), world.mean(x), world.barrier(), world.abort(code)

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


@contextlib.contextmanager
def rank_zero_first(world):
    """Rank 0 runs the block (a download, a data preparation) before the others do."""
    if world.rank != 0:
        world.barrier()
    yield
    if world.rank == 0:
        world.barrier()


class Single:
    """One process: every collective is the identity."""
    rank, size = 0, 1
    sharded = False  # AdamW's m and v are for the whole buffer (-z 1 needs more than one rank)
    grad_shard = None

    def __init__(self, zero_stage=0):
        self.zero_stage = zero_stage
        self.comm_seconds = 0.0

    def shard(self, n):
        return 0, n

    def reduce_grads(self, model):
        pass

    def all_gather(self, params):
        pass

    def sum(self, x):
        return x

    def mean(self, x):
        return x

    def barrier(self):
        pass

    def abort(self, code):
        sys.exit(code)

    def describe(self, model):
        return None

    def select_device(self, device):
        pass


class MPIWorld:
    """N ranks over MPI_COMM_WORLD. Collectives on the flat float32 buffers, in buckets."""

    def __init__(self, zero_stage=0):
        self.zero_stage = zero_stage
        self.sharded = zero_stage == 1
        self.comm_seconds = 0.0
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

    def all_gather(self, params):
        """ZeRO-1: every rank's shard of the flat params (which it has just updated) to every rank,
        in place, one collective per bucket."""
        n = params.shape[0]
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

    def sum(self, x):
        return self.comm.allreduce(float(x), op=self.MPI.SUM)

    def mean(self, x):
        return self.sum(x) / self.size

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

