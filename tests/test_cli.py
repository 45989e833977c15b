"""The console scripts: every one goes through llmnb.cli, whose guard makes Ctrl-C during the
imports one line and exit 130, as Ctrl-C during a run (issue 27)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Ctrl-C arrives while the command's module is being imported (when it first imports numpy). Python's
# own SIGINT handler first, as in a terminal: a process started in the background by a shell without job
# control (`cmd &` in a script, as some CI runners do) inherits SIGINT ignored, and Python then installs none
INTERRUPTED_IMPORT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
class CtrlC:
    def find_spec(self, name, path, target=None):
        if name == "numpy":
            os.kill(os.getpid(), signal.SIGINT)
        return None
from llmnb import cli
sys.meta_path.insert(0, CtrlC())
sys.argv = [sys.argv[1], "--help"]
sys.exit(getattr(cli, sys.argv[0])())
"""


def scripts():
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("[project.scripts]")[1].split("\n[")[0]
    return dict(re.findall(r'^(llmnb-[\w-]+) = "([\w.:]+)"', block, re.M))


def test_every_console_script_goes_through_the_guard():
    found = scripts()
    assert set(found) == {"llmnb-train", "llmnb-sample", "llmnb-eval", "llmnb-prepro", "llmnb-convert",
                          "llmnb-test", "llmnb-reference"}
    assert all(target.startswith("llmnb.cli:") for target in found.values()), found


@pytest.mark.parametrize("script", sorted(scripts()))
def test_ctrl_c_during_the_imports_is_one_line(script):
    name = scripts()[script].split(":")[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, name], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 130, p.stderr
    assert p.stderr.strip() == "interrupted" and "Traceback" not in p.stderr
