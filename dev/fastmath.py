"""Kernel lab: the package's non-matmul kernels (llmnb.kernels as built: REDUCE_FASTMATH on the
reductions) against the same source compiled with fastmath=True, at the GPT-2 124M shapes (B=4, T=64).

Without fastmath LLVM may not reorder a float sum, so every reduction (attention's q.k dot
products and value sums, softmax's max and sum, layernorm's mean and variance) runs one element
at a time; fastmath lets it use vector accumulators, as llm.c's -Ofast build does for everything
but gelu. The sums are still done in one fixed order by one thread, so results stay deterministic;
they differ from the non-fastmath ones by float32 rounding (printed: max |difference| / max |value|).

    python -m dev.fastmath [--runs 10]

The package now builds attention_forward/backward, softmax_forward, the fused classifier
(crossentropy_forward/crossentropy_softmax_backward) and layernorm_forward/backward with fastmath={'reassoc', 'contract'} (kernels.REDUCE_FASTMATH), so for those "as is" already has
the vector sums; this script's fastmath=True adds nnan/ninf/arcp/nsz/afn on top. Measured before
the change: `git show b106f80:benchmarks/RESULTS.md` (its issue-4 sections).
"""
import argparse

import numba
import numpy as np

from benchmarks.cases import memory_bound_cases
from dev import common

KERNELS = ("attention_forward", "attention_backward", "crossentropy_forward", "layernorm_forward",
           "layernorm_backward", "crossentropy_softmax_backward", "adamw_update")
CALLS_PER_STEP = {"attention_forward": 12, "attention_backward": 12, "crossentropy_forward": 1,
                  "layernorm_forward": 25, "layernorm_backward": 25,
                  "crossentropy_softmax_backward": 1, "adamw_update": 1}


def with_fastmath(dispatcher):
    """The kernel's Python source compiled again with fastmath=True (not cached)."""
    opts = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    opts["fastmath"] = True
    return numba.njit(**opts)(dispatcher.py_func)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    cases = {c[0]: c for c in memory_bound_cases()}
    rows = []
    for name in KERNELS:
        _, kernel, kargs, _ = cases[name]
        fast = with_fastmath(kernel)
        a1 = [a.copy() if isinstance(a, np.ndarray) else a for a in kargs]
        a2 = [a.copy() if isinstance(a, np.ndarray) else a for a in kargs]
        kernel(*a1)
        fast(*a2)
        diff = max(common.max_rel_error(x, y) for x, y in zip(a2, a1)
                   if isinstance(x, np.ndarray) and x.dtype == np.float32)
        t1 = common.time_runs(lambda: kernel(*kargs), runs=args.runs)
        t2 = common.time_runs(lambda: fast(*kargs), runs=args.runs)
        m1, m2 = t1[len(t1) // 2], t2[len(t2) // 2]
        n = CALLS_PER_STEP[name]
        rows.append([name, f"{1e3 * t1[0]:.3f}", f"{1e3 * m1:.3f}", f"{1e3 * t2[0]:.3f}",
                     f"{1e3 * m2:.3f}", f"{m1 / m2:.1f}x", f"{1e3 * n * (m1 - m2):.1f}", f"{diff:.1e}"])
    print("ms per call (min, median); saving per step = calls per step x median difference")
    print(common.format_table(["kernel", "as is min", "as is med", "fastmath min", "fastmath med",
                                "speed-up", "ms/step saved", "rel diff"], rows))


if __name__ == "__main__":
    main()
