"""Run the project's scripts as the steps of a pipeline (the demo, the paper's grid).

A step is a command line and the file it leaves behind when it has finished; a step whose file exists
is skipped, so a pipeline that was interrupted picks up where it stopped (train.py additionally
resumes a half-finished run from its own checkpoint). Steps run in order of their dependencies; with
several devices, independent steps run at once, one per device (CUDA_VISIBLE_DEVICES), each logging to
its own file. A failed step does not stop the steps that do not need it; the failures are reported at
the end. How long each step took when it ran is kept in `log_dir/seconds.json` (`step_seconds`).
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kwta.checkpoint import atomic_write

SECONDS_FILE = "seconds.json"


@dataclass
class Step:
    name: str
    command: list[str]
    done: Path  # exists once the step has finished
    needs: list[str] = field(default_factory=list)  # names of steps that must finish first


def python_command(script: str, *args) -> list[str]:
    """A command line that runs one of the project's scripts with this interpreter."""
    return [sys.executable, script, *map(str, args)]


def step_seconds(log_dir: Path) -> dict[str, float]:
    """Wall seconds each finished step took in the run that finished it ({} before any has)."""
    path = Path(log_dir) / SECONDS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def run_steps(steps: list[Step], *, devices: list[str | None], log_dir: Path, dry_run: bool = False) -> None:
    """Run every unfinished step; raise RuntimeError naming the steps that failed or could not run."""
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ValueError("steps: names must be unique")
    unknown = {need for step in steps for need in step.needs} - set(names)
    if unknown:
        raise ValueError(f"steps: unknown dependencies {sorted(unknown)}")
    finished = {step.name for step in steps if step.done.exists()}
    for step in steps:
        if step.name in finished:
            print(f"[done] {step.name}: {step.done}")
    pending = [step for step in steps if step.name not in finished]
    if dry_run:
        for step in pending:
            print(f"[would run] {step.name}: {' '.join(step.command)}")
        return

    log_dir.mkdir(parents=True, exist_ok=True)
    live_output = len(devices) == 1  # one step at a time: its progress bars go straight to the terminal
    free, running, failed = list(devices), {}, []
    while pending or running:
        for step in [s for s in pending if any(need in failed for need in s.needs)]:
            pending.remove(step)
            failed.append(step.name)
            print(f"[skipped] {step.name}: a step it needs failed", flush=True)
        for step in [s for s in pending if all(need in finished for need in s.needs)][: len(free)]:
            pending.remove(step)
            device = free.pop(0)
            env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": device} if device is not None else {}))
            log_path = log_dir / f"{step.name}.log"
            print(f"[run] {step.name}{f' on GPU {device}' if device is not None else ''}: {' '.join(step.command)}",
                  flush=True)
            log = None if live_output else open(log_path, "w")  # noqa: SIM115 (closed when the step ends)
            process = subprocess.Popen(step.command, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[step.name] = (step, process, device, log, log_path, time.perf_counter())
        if not running:
            raise RuntimeError(f"steps: {', '.join(s.name for s in pending)} wait on each other")
        time.sleep(0.5)
        for name, (step, process, device, log, log_path, started) in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            free.append(device)
            if log is not None:
                log.close()
            if process.returncode == 0 and step.done.exists():
                finished.add(name)
                seconds = time.perf_counter() - started
                atomic_write(log_dir / SECONDS_FILE, json.dumps({**step_seconds(log_dir), name: round(seconds, 1)},
                                                                indent=1))
                print(f"[finished] {name} in {seconds / 60:.1f} min", flush=True)
            else:
                failed.append(name)
                print(f"[failed] {name}: exit code {process.returncode}"
                      + ("" if live_output else f", log {log_path}"), flush=True)
    if failed:
        raise RuntimeError(f"{len(failed)} step(s) failed or were skipped: {', '.join(failed)}")
