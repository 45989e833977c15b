"""Launch geometry of the CUDA kernels, and small host-side helpers shared by the launchers.

Numba's CUDA simulator runs every GPU thread as a Python thread, and each one costs far more
than the arithmetic it does. So there are two geometries, the same kernels under both:
- "gpu": 64x64 tiles for the training matmuls (16x16 threads, 4x4 outputs each: the fastest of
  dev/cuda_gemm.py on an H200; 128x128 with LLMNB_CUDA_GEMM=v6s or v7s), attention's register tiles
  (attention.py), 128 threads per row, ...
- "sim": 16x16 matmul tiles on 4x4 threads, 8 threads per row, few blocks, ...
The simulator uses "sim" and a GPU "gpu"; LLMNB_CUDA_GEOMETRY=gpu|sim overrides that (read once,
at import: the tests use it to run the GPU's geometry under the simulator too).
"""
import os

import numpy as np

# numba-cuda (0.30 and earlier) registers a CUDA overload of np.row_stack when it first compiles a
# kernel; NumPy 2.5 removed that alias of np.vstack, so every compile fails with an AttributeError.
# Give NumPy the alias back (the same function it named until 2.4) before numba.cuda needs it.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

import warnings  # noqa: E402

from numba import cuda  # noqa: E402

# Small launches are by design here (a layer's bias gradient, one row per block of a B=4 batch):
# numba.cuda's "Grid size N will likely result in GPU under-utilization" would print at each new N,
# and builds and filters a warning at every launch of under 128 blocks (host time, ~400 launches a
# step). Its own switch turns the check off (NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0; for this process:
# kernels of other code in it are not checked either). The filter is for a numba that has no such
# switch; it names no category: numba-cuda's warning class is not numba's (the filter that named
# numba.core's let every one print on the last card run).
def quiet_low_occupancy():
    try:
        from numba.cuda.core import config   # NVIDIA's numba-cuda
    except ImportError:  # numba's built-in CUDA target
        from numba.core import config
    # (numba re-reads its environment at each compile: the variable keeps the switch off; one the
    # user set is kept)
    os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
    config.CUDA_LOW_OCCUPANCY_WARNINGS = os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"].strip() not in ("0", "")
    warnings.filterwarnings("ignore", message="Grid size .* will likely result in GPU under-utilization")


quiet_low_occupancy()

# numba.cuda (built into numba, or NVIDIA's numba-cuda) swaps in its simulator at import when
# NUMBA_ENABLE_CUDASIM=1; its is_available then comes from simulator_init
SIMULATOR = cuda.is_available.__module__.endswith("simulator_init")
# device functions inlined at the NVVM level (the simulator's jit takes no such option)
INLINE = cuda.jit(device=True) if SIMULATOR else cuda.jit(device=True, forceinline=True)

GEOMETRIES = {
    #       TX  TY  ROW_THREADS  COL_WIDTH  COL_ROWS  ELEM_THREADS  MAX_ELEM_BLOCKS
    "gpu": (16, 16, 128, 32, 8, 256, 4096),
    "sim": (4, 4, 8, 8, 2, 32, 4),
}


def _geometry_name():
    name = os.environ.get("LLMNB_CUDA_GEOMETRY", "") or ("sim" if SIMULATOR else "gpu")
    if name not in GEOMETRIES:
        raise ValueError(f"llmnb/cuda/launch.py: LLMNB_CUDA_GEOMETRY={name!r}, expected 'gpu' or 'sim'")
    return name


GEOMETRY = _geometry_name()
(TX,               # threads per tiled block along the output columns (threadIdx.x)
 TY,               # threads per tiled block along the output rows (threadIdx.y)
 ROW_THREADS,      # threads per block in the kernels that give one block to each row (power of 2)
 COL_WIDTH,        # columns per block in the column reductions (a warp wide on a GPU: coalesced)
 COL_ROWS,         # threads per column walking the rows in the column reductions
 ELEM_THREADS,     # threads per block in the elementwise kernels
 MAX_ELEM_BLOCKS,  # elementwise kernels loop (grid-stride) past this many blocks
 ) = GEOMETRIES[GEOMETRY]
TILE_BLOCK = (TX, TY)
# the training matmuls' kernel (matmul.py), picked by LLMNB_CUDA_GEMM (read once, at import):
#   v5s  4x4 outputs per thread, 64x64 tiles, scalar shared loads: the fastest timed on an H200
#   v6s  8x8 outputs per thread in groups of 4, 128x128 tiles, 128-bit shared loads (dev/cuda_gemm.py:
#        twice v5s's share of FMAs per instruction in the SASS; not yet timed on a card)
#   v7s  v6s whose slab loads are 128-bit global loads where both operands' rows are 16-byte aligned
#        (a scalar twin kernel otherwise); not yet timed on a card
# GEMM_TM: outputs per thread along each side (tile GEMM_TM * TY); GEMM_BK: K per shared-memory slab.
# (The simulator's cost is mostly the Python threads of its blocks: 4 x 4 outputs per thread on 16 x 16
# tiles run the tiny models' tests in half the time of 2 x 2 on 8 x 8.)
GEMM_SHAPES = {  # kernel: {geometry: (GEMM_TM, GEMM_BK)}
    "v5s": {"gpu": (4, 16), "sim": (4, 4)},
    "v6s": {"gpu": (8, 8), "sim": (4, 4)},
    "v7s": {"gpu": (8, 8), "sim": (4, 4)},
}
GEMM_KERNEL = os.environ.get("LLMNB_CUDA_GEMM", "") or "v5s"
if GEMM_KERNEL not in GEMM_SHAPES:
    raise ValueError(f"llmnb/cuda/launch.py: LLMNB_CUDA_GEMM={GEMM_KERNEL!r}, expected one of {', '.join(GEMM_SHAPES)}")
GEMM_TM, GEMM_BK = GEMM_SHAPES[GEMM_KERNEL][GEOMETRY]
GEMM_VEC4 = GEMM_KERNEL in ("v6s", "v7s")   # groups of 4 rows and columns, 128-bit shared loads
GEMM_VLOAD = GEMM_KERNEL == "v7s"           # 128-bit global loads of the slabs where rows are aligned
# attention's kernels (attention.py's Attention launches either), picked by LLMNB_CUDA_ATTENTION (read
# once, at import). The default is the version a card has run (issue 22: defaults are what ran on
# silicon); the other stays selectable and benchmarks/gpu_check.py times both:
#   v2  attention_v2.py: tiles staged transposed, read a float at a time (timed on an H200, 2026-11-26)
#   v3  attention.py: the same tiles staged as they lie and read 4 floats at a time (not yet on a card)
ATTENTION_KERNELS = ("v2", "v3")
ATTENTION_KERNEL = os.environ.get("LLMNB_CUDA_ATTENTION", "") or "v2"
if ATTENTION_KERNEL not in ATTENTION_KERNELS:
    raise ValueError(f"llmnb/cuda/launch.py: LLMNB_CUDA_ATTENTION={ATTENTION_KERNEL!r}, expected one of "
                     f"{', '.join(ATTENTION_KERNELS)}")
# attention (flash-style, attention.py): register tiles as the matmuls'. A block of ATT_TX x ATT_TY
# threads (ATT_TY_BWD in backward) holds ATT_RM rows per thread, ATT_CN score columns and ATT_DN head
# channels per thread: ATT_BQ queries per forward block, ATT_BR rows (queries or keys) per backward
# block, ATT_BK columns (keys or queries) per tile. Shared memory: at most 44 KB (under 48 KB static)
ATT_HS_MAX = 64    # the largest head size: GPT-2's at every size (and the d-family's)
ATT_TX = {"gpu": 16, "sim": 4}[GEOMETRY]
ATT_TY = {"gpu": 16, "sim": 2}[GEOMETRY]
ATT_TY_BWD = {"gpu": 8, "sim": 2}[GEOMETRY]
ATT_RM = {"gpu": 4, "sim": 2}[GEOMETRY]
ATT_CN = 2
ATT_DN = ATT_HS_MAX // ATT_TX
ATT_BQ = ATT_TY * ATT_RM
ATT_BR = ATT_TY_BWD * ATT_RM
ATT_BK = ATT_TX * ATT_CN
assert GEMM_BK % 4 == 0   # matmul.py walks a slab four k at a time
# shared tiles' padded rows: 4 floats of padding keep every row 16-byte aligned (128-bit loads) and
# put the same channel of neighbouring rows 4 banks apart
ATT_HS_P, ATT_BK_P = ATT_HS_MAX + 4, ATT_BK + 4
ATT_HS4 = ATT_HS_MAX // 4   # a staged row's groups of 4 channels
assert ATT_DN * ATT_TX == ATT_HS_MAX and ATT_DN % 4 == 0 and ATT_TX % 4 == 0 and ATT_BK % 4 == 0
assert ATT_BK <= ATT_TX * ATT_TY_BWD
# staging (attention._stage): every tile's groups of 4 channels split evenly over the block's threads
assert all(R * ATT_HS4 % n == 0 for R in (ATT_BQ, ATT_BR, ATT_BK) for n in (ATT_TX * ATT_TY, ATT_TX * ATT_TY_BWD))


def cdiv(a, b):
    return (a + b - 1) // b


def elementwise_grid(n):
    """Blocks for an elementwise kernel over n elements (at least 1)."""
    return max(1, min(cdiv(n, ELEM_THREADS), MAX_ELEM_BLOCKS))


def check(cond, where, msg):
    """Raise one clear ValueError naming the file and the launcher when a shape does not fit."""
    if not cond:
        raise ValueError(f"llmnb/cuda/{where}: {msg}")


def last_dim(arr):
    """arr.shape[-1] (device array shapes do not take negative indices)."""
    return arr.shape[len(arr.shape) - 1]


def size(arr):
    """The number of elements of an array."""
    n = 1
    for d in arr.shape:
        n *= d
    return n


# ----------------------------------------------------------------------------------------------
# device arrays whose views are made once

def _index_key(item):
    """A hashable key for an index of ints and slices (a slice is unhashable before Python 3.12),
    or None for any other index."""
    if isinstance(item, slice):
        return ("slice", item.start, item.stop, item.step)
    if isinstance(item, tuple):
        keys = tuple(_index_key(i) for i in item)
        return None if None in keys else keys
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return int(item)
    return None


# LLMNB_CUDA_VIEW_CACHE=0 (read once, at import) makes every view anew, as numba does: gpu_check times
# the step both ways
VIEW_CACHE = os.environ.get("LLMNB_CUDA_VIEW_CACHE", "1") != "0"

if not SIMULATOR:   # (the simulator's arrays are its own, and cheap to view)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    class ViewCachingArray(DeviceNDArray):
        """A DeviceNDArray whose views are made once: the same index, or the same reshape, again
        returns the view made the first time. numba makes a new DeviceNDArray for every index and
        reshape, 5-12 us of host time each, and a GPT-2 step makes about two thousand of them: the
        layers' views (params.qkvw[l]) and the launchers' reshapes. llmnb's buffers never move, so
        one view of each is enough. numba makes views of type(self), so views are cached too.
        What is not an array view (an element read) is never cached."""

        MAX_VIEWS = 4096   # per array: a generation's KV cache is viewed at (layer, position), L x maxT

        def _cached(self, key, make):
            views = self.__dict__.setdefault("_views", {})
            view = views.get(key)
            if view is None:
                view = make()
                if isinstance(view, DeviceNDArray) and len(views) < self.MAX_VIEWS:
                    views[key] = view
            return view

        def __copy__(self):   # (bind(stream) copies: a copy on another stream makes views of its own)
            other = object.__new__(type(self))
            other.__dict__.update((k, v) for k, v in self.__dict__.items() if k != "_views")
            return other

        def __getitem__(self, item):
            key = _index_key(item)
            if key is None:
                return super().__getitem__(item)
            return self._cached(("index", key), lambda: DeviceNDArray.__getitem__(self, item))

        def reshape(self, *newshape, **kws):
            shape = newshape[0] if len(newshape) == 1 and isinstance(newshape[0], (tuple, list)) else newshape
            key = _index_key(tuple(shape))   # (a tuple of ints; None for anything else)
            if kws or key is None:
                return super().reshape(*newshape, **kws)
            return self._cached(("reshape", key), lambda: DeviceNDArray.reshape(self, *shape))


def cached_views(arr):
    """The same device memory as a ViewCachingArray (arr's allocation stays alive with it); arr itself
    on the simulator or with LLMNB_CUDA_VIEW_CACHE=0."""
    if SIMULATOR or not VIEW_CACHE:
        return arr
    return ViewCachingArray(arr.shape, arr.strides, arr.dtype, stream=arr.stream, gpu_data=arr.gpu_data)
