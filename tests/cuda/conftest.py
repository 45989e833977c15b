"""tests/cuda: the CUDA kernels against the CPU kernels, on Numba's CUDA simulator.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, and it then holds for the
whole process. So these tests have a pytest run of their own (.ci/run and docs/development.md run both):

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -n 2 tests/cuda
    NUMBA_ENABLE_CUDASIM=1 LLMNB_CUDA_GEOMETRY=gpu python -m pytest tests/cuda -m gpu_geometry

the second with launch.py's GPU geometry (the tile and block sizes a GPU runs), for the tests
marked gpu_geometry only (the simulator is slow at those sizes). A run started on tests/cuda alone turns
the simulator on by itself (this conftest is loaded before any test module is imported); a run
with other tests in it (`python -m pytest`) collects nothing here, so the other tests see no
simulator; it reports one skipped item, tests/cuda, that says how to run them. On a machine with a
GPU, LLMNB_TEST_CUDA_DEVICE=1 runs these tests on it instead.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"


def _only_this_directory(config):
    """True when every path pytest was started on lies in this directory."""
    args = [a.split("::")[0] for a in config.args if not a.startswith("-")]
    if not args:
        return False
    root = Path(str(config.invocation_params.dir))
    for a in args:
        p = (root / a).resolve()
        if p != HERE and HERE not in p.parents:
            return False
    return True


def _enable_simulator():
    """Turn on the CUDA simulator for this process, if numba.cuda is not imported yet."""
    if "numba.cuda" in sys.modules:
        return False
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if "numba.core.config" in sys.modules:  # numba already imported: re-read its environment
        sys.modules["numba.core.config"].reload_config()
    return True


def _wanted():
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or os.environ.get("LLMNB_TEST_CUDA_DEVICE") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu_geometry: also run with launch.py's GPU geometry "
                            "(LLMNB_CUDA_GEOMETRY=gpu -m gpu_geometry, see this file's docstring)")
    if not _wanted() and _only_this_directory(config):
        _enable_simulator()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        # the simulator's barrier, waiting instead of polling (simbarrier.py)
        sys.path.insert(0, str(HERE))
        import simbarrier
        if not simbarrier.install():   # (else the TF32 tests take ~10 minutes: say why)
            print("tests/cuda/conftest.py: this numba-cuda's simulator is not the one simbarrier.py knows: "
                  "its polling barrier stays (slow)", file=sys.stderr)
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))


NOT_COLLECTED = ("tests/cuda not collected: it needs Numba's CUDA simulator in a pytest run of its own "
                 "(NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda), or LLMNB_TEST_CUDA_DEVICE=1 on a GPU")
IGNORED = pytest.StashKey[bool]()


class NotCollected(pytest.Item):
    """Stands for this directory's tests in a run that ignored them: one skip with the reason."""

    def runtest(self):
        pytest.skip(NOT_COLLECTED)

    def reportinfo(self):
        return self.path, None, "tests/cuda"


def pytest_ignore_collect(collection_path, config):
    if collection_path.name.startswith("test_") and not _wanted():
        config.stash[IGNORED] = True
        return True
    return None


def pytest_collection_modifyitems(session, config, items):
    if config.stash.get(IGNORED, False):
        items.append(NotCollected.from_parent(session, name="tests/cuda", path=HERE, nodeid="tests/cuda"))
    # llmnb's CUDA kernels need NVIDIA's numba-cuda; numba's own CUDA target (and its simulator)
    # fails them at their first launch: say so once per test instead
    if importlib.util.find_spec("numba_cuda") is None:
        skip = pytest.mark.skip(reason="needs NVIDIA's numba-cuda: pip install -e '.[cuda]'")
        for item in items:
            if HERE in Path(str(item.fspath)).resolve().parents:  # (this hook sees every test)
                item.add_marker(skip)
