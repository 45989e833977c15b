"""A barrier for Numba's CUDA simulator that waits instead of polling.

The simulator runs a block's threads as Python threads, and its BlockManager finds out that they
all reached `syncthreads` by polling their flags in a loop that never blocks. That loop holds the
GIL against the very threads it waits for: a kernel with many barriers (ptx.py's lane models call
two per `mma`) ran 45-126 s for one 256-thread TF32 GEMM, the spread set by the OS's scheduling.
`install()` swaps in a counting barrier (a Condition: the last thread to arrive wakes the others,
a finished thread leaves the count) with the same semantics: every live thread of the block must
arrive, an exception in any thread aborts the others and is raised from the launch. Test-only:
the package never changes the simulator.
"""
import threading

import numpy as np


class _Block:
    """The barrier state of one block's run: live threads, arrivals, and the generation."""

    def __init__(self, n):
        self.cond = threading.Condition()
        self.live, self.arrived, self.generation, self.aborted = n, 0, 0, False
        self.first_failure = None   # the thread whose exception aborted the others

    def _release_if_all_arrived(self):
        if self.arrived and self.arrived == self.live:
            self.arrived = 0
            self.generation += 1
            self.cond.notify_all()

    def wait(self):
        with self.cond:
            if self.aborted:
                raise RuntimeError("abort flag set on syncthreads call")
            gen = self.generation
            self.arrived += 1
            self._release_if_all_arrived()
            while gen == self.generation and not self.aborted:
                self.cond.wait()
            if self.aborted:
                raise RuntimeError("abort flag set on syncthreads clear")

    def leave(self, thread):
        with self.cond:
            self.live -= 1
            if thread.exception is not None:
                if not self.aborted:
                    self.first_failure = thread
                self.aborted = True
                self.cond.notify_all()
            else:
                self._release_if_all_arrived()


def install():
    """Replace the simulator's polling BlockManager.run and BlockThread.syncthreads; False where
    this numba-cuda's simulator does not have the shape this was written against (then nothing changes)."""
    try:
        from numba.cuda.simulator import kernel as sim
    except ImportError:
        return False
    BlockThread, BlockManager = getattr(sim, "BlockThread", None), getattr(sim, "BlockManager", None)
    if BlockThread is None or BlockManager is None or not hasattr(BlockThread, "syncthreads"):
        return False
    if getattr(BlockManager, "_llmnb_waiting_barrier", False):   # (installed once: twice would leave twice)
        return True

    def syncthreads(self):
        self._llmnb_block.wait()

    def run(self, grid_point, *args):
        block = _Block(int(np.prod(self._block_dim)))

        def target():
            self._f(*args)

        threads = []
        for block_point in np.ndindex(*self._block_dim):
            t = BlockThread(target, self, grid_point, block_point, self._debug)
            t._llmnb_block = block
            threads.append(t)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for t in [block.first_failure] + threads:   # the cause first, not the aborts it caused
            if t is not None and t.exception:
                raise t.exception[0].with_traceback(t.exception[1])

    thread_run = BlockThread.run

    def run_thread(self):
        try:
            thread_run(self)   # (stores the thread's exception in self.exception)
        finally:
            self._llmnb_block.leave(self)

    BlockThread.syncthreads = syncthreads
    BlockThread.run = run_thread
    BlockManager.run = run
    BlockManager._llmnb_waiting_barrier = True
    return True
