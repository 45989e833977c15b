"""The documented test commands are what CI runs (.ci/run), in the same order: the README's first code
block (the main job, then the tests), then the simulator runs of docs/development.md's Tests section."""
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


def _code_blocks(text):
    """The fenced code blocks of a markdown text, each as its list of lines."""
    return [block.splitlines()[1:] for block in text.split("```")[1::2]]


def _section(text, heading):
    """The markdown text from `heading` (a whole line) to the next heading of the same level."""
    level = heading.split(" ")[0]
    lines = text.splitlines()
    assert heading in lines, f"no {heading!r} heading"
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(level + " ")), len(lines))
    return "\n".join(lines[start:end])


def readme_commands():
    """The README's first code block: exactly the main job and the tests."""
    block = [line for line in _code_blocks((ROOT / "README.md").read_text())[0] if line.strip()]
    assert len(block) == 2, f"the README's first code block holds {len(block)} lines, not the two commands"
    assert "llmnb-train" in block[0]
    return _pytest_commands(block)


def simulator_commands():
    """The first code block of docs/development.md's "## Tests" section."""
    tests = _section((ROOT / "docs" / "development.md").read_text(), "## Tests")
    return _pytest_commands(_code_blocks(tests)[0])


def test_readme_opens_with_the_main_job_and_the_tests():
    assert readme_commands() == ["python -m pytest"]


def test_development_page_holds_the_simulator_runs():
    cmds = simulator_commands()
    assert cmds and all(c.startswith("NUMBA_ENABLE_CUDASIM=1 ") and "tests/cuda" in c for c in cmds)


def test_documented_test_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _pytest_commands(ci) == readme_commands() + simulator_commands()


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
