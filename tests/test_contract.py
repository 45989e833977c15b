"""Both backends implement llmnb.contract.Backend: every kernel, with the contract's arguments in
the contract's order (a reader of model.py follows k.<kernel> to the contract, so it must hold)."""
import inspect

import pytest

from llmnb.backend import CPUBackend
from llmnb.contract import KERNEL_NAMES, MEMORY_HELPERS, Backend


def parameters(fn):
    fn = getattr(fn, "py_func", fn)  # a Numba dispatcher: the Python function it compiles
    names = list(inspect.signature(fn).parameters)
    return names[1:] if names and names[0] == "self" else names


def backend_classes():
    classes = [CPUBackend]
    try:
        from llmnb.cuda.backend import CUDABackend  # importing compiles nothing and needs no GPU
        classes.append(CUDABackend)
    except ImportError as e:  # numba-cuda not installed
        pytest.skip(f"numba.cuda not importable: {e}")
    return classes


def test_the_contract_lists_every_kernel_the_model_calls():
    import re
    from pathlib import Path
    import llmnb.model
    called = set(re.findall(r"\bk\.(\w+)\(", Path(llmnb.model.__file__).read_text()))
    assert called - set(MEMORY_HELPERS) <= set(KERNEL_NAMES)
    assert {"matmul_forward", "attention_backward", "adamw_update"} <= set(KERNEL_NAMES)


@pytest.mark.parametrize("name", KERNEL_NAMES + MEMORY_HELPERS)
def test_every_backend_implements_the_contract_with_its_arguments(name):
    want = [p for p in parameters(getattr(Backend, name)) if p != "dtype"]
    for cls in backend_classes():
        impl = getattr(cls, name)
        assert impl is not getattr(Backend, name), f"{cls.__name__} lacks {name}"
        got = [p for p in parameters(impl) if p not in ("dtype", "scratch")]
        assert got == want, f"{cls.__name__}.{name}{tuple(got)} differs from the contract's {tuple(want)}"
