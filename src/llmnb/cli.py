"""The console scripts (pyproject.toml's [project.scripts]): each imports its command's module
only once it runs, inside a guard, so that Ctrl-C while Numba and NumPy load (the first few tenths
of a second) ends as Ctrl-C does later, with one line and exit 130, not a traceback.

    llmnb-train -> train.main      llmnb-sample -> sample.main    llmnb-eval -> evaluate.main
    llmnb-prepro -> prepro.main    llmnb-convert -> convert.main  llmnb-test -> parity.main
    llmnb-reference -> reference_torch.main
"""
import importlib
import sys


def _run(module):
    try:
        return importlib.import_module(f"llmnb.{module}").main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def train():
    return _run("train")


def sample():
    return _run("sample")


def evaluate():
    return _run("evaluate")


def prepro():
    return _run("prepro")


def convert():
    return _run("convert")


def parity():
    return _run("parity")


def reference():
    return _run("reference_torch")
