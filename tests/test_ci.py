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
