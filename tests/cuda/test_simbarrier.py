"""simbarrier.py (the simulator's waiting barrier, installed by conftest.py under the simulator):
every thread sees every other thread's writes from before the barrier, rounds do not overtake one
another, threads that return early leave the count, and an exception in one thread is raised."""
import numpy as np
import pytest
from numba import config, cuda

pytestmark = pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="the simulator's barrier (on a card: CUDA's own)")

N, ROUNDS = 48, 5


@cuda.jit
def _rotate(out, rounds):
    # each round: thread t writes its value, the barrier, then reads thread t+1's value: a barrier
    # that released early (or let a round overtake the next) reads a stale or future value
    buf = cuda.shared.array(N, np.float32)
    t = cuda.threadIdx.x
    v = np.float32(t)
    for _ in range(rounds):
        buf[t] = v
        cuda.syncthreads()
        v = buf[(t + 1) % N] + np.float32(1)
        cuda.syncthreads()
    out[t] = v


@cuda.jit
def _early_return(out):
    buf = cuda.shared.array(N, np.float32)
    t = cuda.threadIdx.x
    if t >= N // 2:
        return
    buf[t] = t
    cuda.syncthreads()
    out[t] = buf[N // 2 - 1 - t]


@cuda.jit
def _fails(out):
    t = cuda.threadIdx.x
    cuda.syncthreads()
    out[t + (100 if t == 3 else 0)] = 1   # one thread indexes out of bounds
    cuda.syncthreads()


def test_the_waiting_barrier_is_installed_once():
    # (conftest.py installs it; installing again changes nothing: each thread still leaves once)
    import simbarrier
    from numba.cuda.simulator import kernel as sim
    if not getattr(sim.BlockManager, "_llmnb_waiting_barrier", False):
        pytest.skip("this numba-cuda's simulator is not the one simbarrier.py knows (conftest.py said so)")
    run = sim.BlockManager.run
    assert simbarrier.install() and sim.BlockManager.run is run


def test_every_round_sees_the_other_threads_writes():
    out = np.zeros(N, np.float32)
    _rotate[1, N](out, ROUNDS)
    np.testing.assert_array_equal(out, (np.arange(N) + ROUNDS) % N + ROUNDS)


def test_threads_that_returned_leave_the_barrier():
    out = np.full(N, -1, np.float32)
    _early_return[1, N](out)
    np.testing.assert_array_equal(out[:N // 2], np.arange(N // 2)[::-1])


def test_an_exception_in_one_thread_is_raised_from_the_launch():
    with pytest.raises(IndexError, match="tid=\\[3, 0, 0\\]"):
        _fails[2, N](np.zeros(N, np.float32))
