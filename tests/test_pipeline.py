"""The pipeline runner behind `make demo` and `make paper`: skips, order, devices, failures."""

import subprocess
import sys
from pathlib import Path

import pytest

from kwta.pipeline import Step, run_steps, step_seconds

ROOT = Path(__file__).resolve().parent.parent


def writer(path: Path, text: str = "$CUDA_VISIBLE_DEVICES") -> list[str]:
    """A command that appends `text` (environment variables expanded) to `path`."""
    code = f"import os; open({str(path)!r}, 'a').write(os.path.expandvars({text!r}) + chr(10))"
    return [sys.executable, "-c", code]


def test_runs_in_dependency_order_and_skips_finished(tmp_path):
    order = tmp_path / "order.txt"
    steps = [
        Step("b", writer(order, "b"), tmp_path / "b", needs=["a"]),
        Step("a", writer(order, "a"), tmp_path / "a"),
    ]
    # the done files: each step "finishes" by writing its own marker after the order line
    steps = [Step(s.name, [sys.executable, "-c", f"{s.command[2]}; open({str(s.done)!r}, 'w')"], s.done, s.needs)
             for s in steps]
    run_steps(steps, devices=[None], log_dir=tmp_path / "logs")
    assert order.read_text().split() == ["a", "b"]
    seconds = step_seconds(tmp_path / "logs")
    assert sorted(seconds) == ["a", "b"] and all(0 < s < 60 for s in seconds.values())
    run_steps(steps, devices=[None], log_dir=tmp_path / "logs")  # both done: nothing runs again
    assert order.read_text().split() == ["a", "b"]
    assert step_seconds(tmp_path / "logs") == seconds  # the times of the run that did the work are kept


def test_each_device_gets_its_own_steps(tmp_path):
    seen = tmp_path / "devices.txt"
    steps = [Step(f"s{i}", [sys.executable, "-c", f"{writer(seen)[2]}; open({str(tmp_path / str(i))!r}, 'w')"],
                  tmp_path / str(i)) for i in range(4)]
    run_steps(steps, devices=["0", "1"], log_dir=tmp_path / "logs")
    assert sorted(seen.read_text().split()) == ["0", "0", "1", "1"]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["s0.log", "s1.log", "s2.log", "s3.log", "seconds.json"]


def test_failure_skips_dependents_but_not_the_rest(tmp_path):
    steps = [
        Step("broken", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "never"),
        Step("after-broken", [sys.executable, "-c", "pass"], tmp_path / "never2", needs=["broken"]),
        Step("independent", [sys.executable, "-c", f"open({str(tmp_path / 'ok')!r}, 'w')"], tmp_path / "ok"),
    ]
    with pytest.raises(RuntimeError, match="broken, after-broken"):
        run_steps(steps, devices=["0"], log_dir=tmp_path / "logs")
    assert (tmp_path / "ok").exists()


def test_a_step_that_exits_0_without_its_file_has_failed(tmp_path):
    with pytest.raises(RuntimeError, match="1 step"):
        run_steps([Step("lazy", [sys.executable, "-c", "pass"], tmp_path / "x")], devices=[None], log_dir=tmp_path)


def test_bad_steps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dependencies"):
        run_steps([Step("a", ["true"], tmp_path / "a", needs=["z"])], devices=[None], log_dir=tmp_path)
    with pytest.raises(ValueError, match="unique"):
        run_steps([Step("a", ["true"], tmp_path / "a")] * 2, devices=[None], log_dir=tmp_path)


def test_paper_grid_dry_run_lists_every_run(tmp_path):
    result = subprocess.run([sys.executable, "scripts/paper.py", "--dry-run", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    trains = [line for line in lines if line.startswith("[would run] train-")]
    attacks = [line for line in lines if line.startswith("[would run] attack-")]
    assert len(trains) == len(attacks) == 2 * 2 * 2 * 3 + 4
    assert sum("--pretrained" in line for line in trains) == 12
    assert sum("--ratio-schedule 0.2:0.1:0.005:2" in line for line in trains) == 1
    assert sum("--source-checkpoint" in line for line in attacks) == len(attacks) - 9  # all but the 9 ReLU models
