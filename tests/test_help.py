"""Every command line answers --help at once, with its defaults, before torch (or matplotlib, numba) loads.

Each entry point runs as `python -m` runs it (a module) or as a file from the checkout's root (train.py,
attack.py), in a fresh interpreter that then reports which heavy modules --help brought in.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "matplotlib", "numba")
MODULES = ["scripts.demo", "scripts.results", "scripts.paper", "scripts.gpu_check", "plots.landscape", "plots.fit1d",
           "plots.curves", "plots.bench", "bench", "bench.training"]
FILES = ["train.py", "attack.py"]
WRAPPER = """
import json, runpy, sys
kind, target, *heavy = sys.argv[1:]
sys.argv = [target, "--help"]
try:
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
    code = 0
except SystemExit as exit:
    code = exit.code
print(json.dumps({"exit": code, "loaded": [name for name in heavy if name in sys.modules]}))
"""


@pytest.mark.parametrize("kind, target", [*(("module", m) for m in MODULES), *(("file", f) for f in FILES)])
def test_help_shows_defaults_without_importing_torch(kind, target):
    result = subprocess.run([sys.executable, "-c", WRAPPER, kind, target, *HEAVY], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    *help_lines, report = result.stdout.splitlines()
    outcome = json.loads(report)
    assert outcome["exit"] == 0, result.stderr[-3000:]
    assert "usage:" in help_lines[0] and "default" in "\n".join(help_lines)
    assert outcome["loaded"] == [], f"{target} --help imported {', '.join(outcome['loaded'])}"
