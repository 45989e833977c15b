"""The README's test commands are what CI runs (.ci/run), in the same order."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pytest_commands(lines):
    """The pytest command lines, comments and the install before `&&` dropped."""
    cmds = []
    for line in lines:
        line = line.split("  #")[0].split("&&")[-1].strip()
        if re.search(r"\bpython -m pytest\b", line):
            cmds.append(line)
    return cmds


def test_readme_test_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text().split("```")[1].splitlines()  # the first code block
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    want = _pytest_commands(readme)
    assert want and want[0] == "python -m pytest"
    assert any("tests/cuda" in c for c in want)
    assert _pytest_commands(ci) == want


def _install_commands(lines):
    """The `pip install ...` commands (before any `&&`), comments dropped, `python -m pip` as `pip`."""
    cmds = []
    for line in lines:
        line = line.split("  #")[0].split("&&")[0].strip().replace("python -m pip", "pip")
        if line.startswith("pip install") and "--upgrade pip" not in line:
            cmds.append(line)
    return cmds


def test_ci_installs_what_the_readme_test_line_installs_into_a_fresh_venv():
    readme = (ROOT / "README.md").read_text().split("```")[1].splitlines()
    test_line = next(line for line in readme if re.search(r"&& python -m pytest\b", line))
    ci = (ROOT / ".ci" / "run").read_text()
    assert _install_commands(ci.splitlines()) == _install_commands([test_line])
    # the tests' optional needs are in that line's extras: NVIDIA's numba-cuda, MPI, PyTorch
    for extra in ("test", "reference", "mpi", "cuda"):
        assert extra in test_line.split("[")[1].split("]")[0].split(",")
    # a fresh environment, activated (its mpiexec on PATH), not whatever this machine has
    assert "python3 -m venv" in ci and 'source "$venv/bin/activate"' in ci
