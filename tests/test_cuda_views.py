"""llmnb/cuda/launch.py's ViewCachingArray, on the host alone (no GPU: numba-cuda's DeviceNDArray
over a stand-in for device memory): a view asked for again is the view made the first time, and
every view is the one numba's DeviceNDArray makes (shape, strides, memory, offset)."""
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba_cuda")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dev.cuda_views import host_device_array, without_a_context  # noqa: E402


@pytest.fixture
def arrays():
    from llmnb.cuda import launch
    if launch.SIMULATOR or not launch.VIEW_CACHE:
        pytest.skip("the simulator's arrays are its own" if launch.SIMULATOR else "LLMNB_CUDA_VIEW_CACHE=0")
    plain = host_device_array(12 * 3 * 64)
    with without_a_context():
        yield plain, launch.cached_views(plain), launch.ViewCachingArray


def same_view(a, b):
    return (a.shape, a.strides, a.gpu_data.offset, a.gpu_data.size) == (b.shape, b.strides, b.gpu_data.offset,
                                                                       b.gpu_data.size)


def test_views_are_made_once_and_are_numbas_views(arrays):
    plain, cached, cls = arrays
    stacked = cached[192:].reshape(11, 3, 64)   # a layer stack: views of views
    assert stacked is cached[192:].reshape(11, 3, 64) and isinstance(stacked, cls)
    want = plain[192:].reshape(11, 3, 64)
    for l in (0, 5, 10):
        v = stacked[l]
        assert v is stacked[l] and v is stacked[np.int64(l)] and same_view(v, want[l])
        assert v.reshape(-1) is v.reshape(-1) and v.reshape(192) is v.reshape((192,)) is not v.reshape(3, 64)
        assert same_view(v.reshape(-1), want[l].reshape(-1))
    assert stacked[3] is not stacked[4] and same_view(stacked[2, 1], want[2, 1]) and stacked[2, 1] is stacked[2, 1]
    assert same_view(stacked[1:7:2], want[1:7:2]) and stacked[1:7:2] is stacked[1:7:2] is not stacked[1:7]
    assert same_view(cached[:7], plain[:7]) and cached[:7] is not cached[:8]


def test_an_element_read_is_never_cached(arrays, monkeypatch):
    plain, cached, cls = arrays
    stacked = cached.reshape(12, 192)
    # an element read is a copy to the host (numba's device_to_host): read again, it copies again
    from numba.cuda.cudadrv import devicearray
    reads = []
    monkeypatch.setattr(devicearray._driver, "device_to_host",
                        lambda dst, src, size, stream=0: (reads.append(src.offset), dst.__setitem__(0, len(reads))))
    assert stacked[1, 2] == 1 and stacked[1, 2] == 2 and reads == [4 * 194, 4 * 194]


def test_the_low_occupancy_warning_is_off_and_filtered_whatever_its_class():
    # llmnb launches small grids by design: numba-cuda's check is switched off, and its warning (a
    # class of numba-cuda's own, not numba's) is filtered should a numba without the switch raise it
    import warnings
    from llmnb.cuda import launch
    from numba.cuda.core import config, errors
    assert not config.CUDA_LOW_OCCUPANCY_WARNINGS
    with warnings.catch_warnings(record=True) as seen:
        launch.quiet_low_occupancy()   # (as at import; pytest gives each test filters of its own)
        warnings.warn(errors.NumbaPerformanceWarning("Grid size 3 will likely result in GPU under-utilization "
                                                     "due to low occupancy."))
        warnings.warn(errors.NumbaPerformanceWarning("another performance warning"))
    assert [str(w.message) for w in seen] == ["another performance warning"]


def test_a_copy_makes_views_of_its_own_and_the_cache_is_bounded(arrays):
    import copy
    plain, cached, cls = arrays
    stacked = cached.reshape(12, 192)
    v = stacked[3]
    other = copy.copy(stacked)   # (as DeviceNDArray.bind(stream) makes one)
    assert other[3] is not v and same_view(other[3], v) and other[3] is other[3]
    flat = cached.reshape(-1)
    for i in range(cls.MAX_VIEWS + 10):
        flat[i % 2000:i % 2000 + 1 + i // 2000]
    assert len(flat._views) == cls.MAX_VIEWS and same_view(flat[5:5 + 3], plain[5:8])
