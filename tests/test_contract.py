"""Both backends implement llmnb.contract.Backend: every kernel, with the contract's arguments in
the contract's order (a reader of model.py follows k.<kernel> to the contract, so it must hold).
The CPU backend is checked everywhere; the CUDA one where numba.cuda imports (no GPU needed)."""
import inspect
import os
import subprocess
import sys

import pytest

from llmnb.backend import CPUBackend
from llmnb.contract import KERNEL_NAMES, MEMORY_HELPERS, Backend

# a Python whose `import numba.cuda` fails, as where numba-cuda is not installed
NO_NUMBA_CUDA = "import sys; sys.modules['numba.cuda'] = None; import pytest; sys.exit(pytest.main(sys.argv[1:]))"


def parameters(fn):
    fn = getattr(fn, "py_func", fn)  # a Numba dispatcher: the Python function it compiles
    names = list(inspect.signature(fn).parameters)
    return names[1:] if names and names[0] == "self" else names


def backend_class(device):
    if device == "cpu":
        return CPUBackend
    try:
        from llmnb.cuda.backend import CUDABackend  # importing compiles nothing and needs no GPU
    except ImportError as e:  # numba-cuda not installed
        pytest.skip(f"numba.cuda not importable ({e}): the CUDA backend is not checked")
    return CUDABackend


def test_the_contract_lists_every_kernel_the_model_calls():
    import re
    from pathlib import Path
    import llmnb.model
    called = set(re.findall(r"\bk\.(\w+)\(", Path(llmnb.model.__file__).read_text()))
    assert called - set(MEMORY_HELPERS) <= set(KERNEL_NAMES)
    assert {"matmul_forward", "attention_backward", "adamw_update"} <= set(KERNEL_NAMES)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", KERNEL_NAMES + MEMORY_HELPERS)
def test_every_backend_implements_the_contract_with_its_arguments(name, device):
    want = [p for p in parameters(getattr(Backend, name)) if p != "dtype"]
    cls = backend_class(device)
    impl = getattr(cls, name)
    assert impl is not getattr(Backend, name), f"{cls.__name__} lacks {name}"
    got = [p for p in parameters(impl) if p not in ("dtype", "scratch")]
    assert got == want, f"{cls.__name__}.{name}{tuple(got)} differs from the contract's {tuple(want)}"


def test_without_numba_cuda_the_cpu_backend_is_still_checked():
    # in a process where numba.cuda cannot be imported: every CPU check passes, every CUDA one skips
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", NO_NUMBA_CUDA, "-q", "-rs", "-p", "no:cacheprovider",
                        __file__, "-k", "every_backend"], env=env, capture_output=True, text=True, timeout=300)
    n = len(KERNEL_NAMES + MEMORY_HELPERS)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"{n} passed, {n} skipped" in r.stdout, r.stdout[-3000:]
    assert "numba.cuda not importable" in r.stdout
