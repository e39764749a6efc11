"""Run the project's scripts as the steps of a pipeline (the demo, the paper's grid), on this machine.

A step is a command line, the file it leaves behind when it has finished, and the steps it needs. A step
counts as finished only when its file exists *and* its record (`log_dir/steps/NAME.json`) says it finished
with the same settings key: a hash of its command line (paths under the output folder made relative, the
interpreter and the data location left out), of the keys of the steps it needs, and of the contents of any
outside file it reads (`inputs`). A changed setting therefore reruns the step and everything after it; a
step interrupted with unchanged settings resumes (`resume` arguments are added when its `checkpoint`
exists); any other attempt starts afresh (`fresh` arguments are added: train.py's --overwrite, since its
folder may hold an earlier attempt's files). Code changes do not change a key: `rerun` names steps to run
again anyway. Two kinds of step bend these rules, for work that spans sessions: an `intermediate` step (a
training) is not run once every step that needs it has finished, and a `final` one (a release) counts as
finished as soon as its file exists. A step that exits with INCOMPLETE did a part and stopped in time: what
needs it waits for the next run.

One invocation at a time: `run_steps` holds an exclusive lock on `log_dir/pipeline.lock` (flock, so it is
released if the process dies) and a lock per running step, which SLURM jobs (experiments/slurm.py) take as
well. Steps run in order of their dependencies; with several slots (GPUs, or CPU shares) independent steps
run at once, each in its own slot and logging to its own file. A failed step does not stop the steps that
do not need it; the failures are reported at the end.
"""

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kwta.checkpoint import atomic_write
from kwta.released import sha256 as file_digest

STATE_DIR = "steps"
LOCK_FILE = "pipeline.lock"
# A step's exit status for "did a part and stopped in time" (attack.py at its deadline): not a failure; what
# needs it waits for a later run, which continues it.
INCOMPLETE = 3


@dataclass
class Step:
    name: str
    command: list[str]
    done: Path  # exists once the step has finished
    needs: list[str] = field(default_factory=list)  # names of steps that must finish first
    resume: list[str] = field(default_factory=list)  # added to the command to continue an interrupted attempt
    fresh: list[str] = field(default_factory=list)  # added to the command when it does not resume (--overwrite)
    checkpoint: Path | None = None  # what an interrupted attempt leaves to continue from
    location: list[str] = field(default_factory=list)  # where data lives (--data-dir): run, but not a setting
    inputs: list[Path] = field(default_factory=list)  # files from outside the pipeline whose contents matter
    gpus: int = 1  # for a cluster job
    minutes: int = 60  # a cluster job's time limit
    intermediate: bool = False  # needed only until every step that needs it has finished (then not run again)
    final: bool = False  # finished once `done` exists, whatever its settings now (a released network): replaced
    #                      only by deleting it, never silently rerun, so that what was made from it stays valid


def python_command(script: str, *args) -> list[str]:
    """A command line that runs one of the project's scripts with this interpreter, from the checkout's root:
    a top-level file ("train.py") as itself, a module of a package ("plots.landscape") with -m."""
    return [sys.executable, *([script] if script.endswith(".py") else ["-m", script]), *map(str, args)]


def gpu_slots(ids: list[str]) -> list[dict[str, str]]:
    """One slot per GPU: each step sees only its own."""
    return [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in ids]


def cpu_slots(count: int, cores: int | None = None) -> list[dict[str, str]]:
    """`count` slots sharing the CPU cores, no GPU: each step gets its share of threads (torch and numba)."""
    threads = str(max(1, (cores or os.cpu_count() or 1) // count))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}] * count


# --------------------------------------------------------------------------------------------------------
# Settings keys and step records



def step_settings(step: Step, root: Path, need_keys: dict[str, str]) -> dict:
    """What the step's result depends on, in a form that does not depend on where the output folder lives."""
    prefix = str(root).rstrip(os.sep) + os.sep
    portable = lambda text: "$OUT/" + text[len(prefix):] if text.startswith(prefix) else text
    return {
        "command": [portable(arg) for arg in step.command[1:]],  # the interpreter is where it runs, not what
        "needs": {name: need_keys[name] for name in step.needs},
        "inputs": {portable(str(path)): file_digest(path) if path.exists() else None for path in step.inputs},
    }


def settings_keys(steps: list[Step], root: Path) -> dict[str, tuple[str, dict]]:
    """name -> (key, settings) for every step, needs before the steps that need them."""
    by_name = {step.name: step for step in steps}
    keys: dict[str, tuple[str, dict]] = {}

    def visit(step: Step, trail: tuple[str, ...]) -> str:
        if step.name in trail:
            raise ValueError(f"steps: {' -> '.join((*trail, step.name))} is a cycle")
        if step.name not in keys:
            need_keys = {need: visit(by_name[need], (*trail, step.name)) for need in step.needs}
            settings = step_settings(step, root, need_keys)
            digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
            if step.final and step.done.exists():  # what needs it depends on the file made, not the recipe
                digest = "file-" + file_digest(step.done)[:16]
            keys[step.name] = (digest, settings)
        return keys[step.name][0]

    for step in steps:
        visit(step, ())
    return keys


def record_path(log_dir: Path, name: str) -> Path:
    return Path(log_dir) / STATE_DIR / f"{name}.json"


def read_record(log_dir: Path, name: str) -> dict:
    path = record_path(log_dir, name)
    return json.loads(path.read_text()) if path.exists() else {}


def write_record(log_dir: Path, **record) -> None:
    atomic_write(record_path(log_dir, record["name"]), json.dumps(record, indent=1) + "\n")


def is_finished(step: Step, key: str, log_dir: Path) -> bool:
    if step.final:
        return step.done.exists()
    record = read_record(log_dir, step.name)
    return record.get("status") == "done" and record.get("key") == key and step.done.exists()


def step_seconds(log_dir: Path) -> dict[str, float]:
    """Wall seconds each finished step took in the run that finished it, in the order they finished."""
    folder = Path(log_dir) / STATE_DIR
    records = [json.loads(path.read_text()) for path in folder.glob("*.json")] if folder.is_dir() else []
    done = sorted((r for r in records if r.get("status") == "done"), key=lambda r: r["finished"])
    return {record["name"]: record["seconds"] for record in done}


def describe_change(old: dict, new: dict) -> str:
    """The arguments that differ between two settings, e.g. '--epochs 80 -> --epochs 10'."""
    before, after = old.get("command", []), new["command"]
    changes = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if tag != "equal":
            changes.append(f"{' '.join(before[max(i1 - 1, 0):i2]) or '(nothing)'} -> "
                           f"{' '.join(after[max(j1 - 1, 0):j2]) or '(nothing)'}")
    if old.get("needs") != new["needs"]:
        changes.append("a step it needs changed")
    if old.get("inputs") != new["inputs"]:
        changes.append("an input file changed")
    return "; ".join(changes) or "settings changed"


def attempted(record: dict, key: str) -> bool:
    """Did an attempt with settings `key` start and not finish? (A job only submitted has not started, unless
    it was resubmitted after one that had: then the record carries `attempted`.)"""
    started = record.get("status") in ("running", "failed") or record.get("attempted", False)
    return record.get("key") == key and started


def resumes(step: Step, key: str, log_dir: Path) -> bool:
    """Does this attempt resume: the step can (`resume`), and an earlier attempt with these settings was
    interrupted, leaving its checkpoint?"""
    if not step.resume or step.checkpoint is None or not step.checkpoint.exists():
        return False
    return attempted(read_record(log_dir, step.name), key)


def start_arguments(step: Step, key: str, log_dir: Path) -> list[str]:
    """What this attempt adds to the command: `step.resume` when it resumes, else `step.fresh`."""
    return step.resume if resumes(step, key, log_dir) else step.fresh


def attempt_command(step: Step, key: str, log_dir: Path) -> list[str]:
    """The command line this attempt runs: the step's command, resume or fresh arguments, the data location."""
    return step.command + start_arguments(step, key, log_dir) + step.location


# --------------------------------------------------------------------------------------------------------
# Locks


class Busy(RuntimeError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: Path, *, wait: bool = False, what: str = "it"):
    """Hold an fcntl lock on `path` (created if missing) for the block; raise Busy naming the holder if taken.

    flock locks die with their process, so a crash never leaves a stale lock; on NFS, Linux turns them into
    POSIX locks, which hold across the nodes of a cluster.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            raise Busy(f"{what} is in use by {holder} (lock {path})") from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()}")
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------
# Running


def finish(step: Step, key: str, settings: dict, log_dir: Path, returncode: int, seconds: float, **extra) -> bool:
    """Record how the step ended; True when it finished (exit 0 and its file there)."""
    ok = returncode == 0 and step.done.exists()
    status = "done" if ok else "incomplete" if returncode == INCOMPLETE else "failed"
    write_record(log_dir, name=step.name, key=key, settings=settings,
                 status=status, returncode=returncode, seconds=round(seconds, 1),
                 finished=now(), host=socket.gethostname(), **extra)
    return ok


def execute_step(payload: dict) -> float:
    """Run one step here and record it: what a cluster job does (experiments/slurm.py). Returns its wall seconds.

    payload: step (a Step), key, settings, log_dir, cwd. Raises RuntimeError when the step fails.
    """
    step, key, settings, log_dir = payload["step"], payload["key"], payload["settings"], Path(payload["log_dir"])
    job = os.environ.get("SLURM_JOB_ID")
    with exclusive_lock(log_dir / STATE_DIR / f"{step.name}.lock", what=f"step {step.name}"):
        command = attempt_command(step, key, log_dir)
        write_record(log_dir, name=step.name, key=key, settings=settings, status="running",
                     started=now(), host=socket.gethostname(), slurm_job=job)
        print(f"[run] {step.name}: {shlex.join(map(str, command))}", flush=True)
        started = time.perf_counter()
        returncode = subprocess.run(command, cwd=payload["cwd"]).returncode
        seconds = time.perf_counter() - started
        if not finish(step, key, settings, log_dir, returncode, seconds, slurm_job=job):
            raise RuntimeError(f"step {step.name} failed: exit code {returncode}"
                               + ("" if returncode else f", but {step.done} is missing"))
    return seconds


def check_steps(steps: list[Step]) -> None:
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ValueError("steps: names must be unique")
    unknown = {need for step in steps for need in step.needs} - set(names)
    if unknown:
        raise ValueError(f"steps: unknown dependencies {sorted(unknown)}")


def downstream(steps: list[Step], names: set[str]) -> set[str]:
    """`names` and every step that needs one of them, directly or not."""
    found, grew = set(names), True
    while grew:
        more = {step.name for step in steps if found & set(step.needs)} - found
        found, grew = found | more, bool(more)
    return found


def upstream(steps: list[Step], names: set[str]) -> list[Step]:
    """The steps named and every step they need, directly or not, in their original order."""
    by_name, found, todo = {step.name: step for step in steps}, set(), list(names)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += by_name[name].needs
    return [step for step in steps if step.name in found]


def plan(steps: list[Step], keys: dict, log_dir: Path, rerun: set[str], commands: bool = False) -> list[Step]:
    """Print what is finished and what will run (and why); return the steps to run, in the given order.

    rerun: steps to run again although finished; what follows them runs again too.
    commands: print each step's command line under it.
    """
    rerun = downstream(steps, rerun)
    finished = {step.name for step in steps
                if step.name not in rerun and is_finished(step, keys[step.name][0], log_dir)}
    pending = []
    for step in steps:
        key, settings = keys[step.name]
        record = read_record(log_dir, step.name)
        if step.name in finished:
            print(f"[done] {step.name}: {step.done}")
            if commands:
                print(f"    {shlex.join(map(str, step.command + step.location))}")
            continue
        needed_by = [other.name for other in steps if step.name in other.needs]
        if step.intermediate and needed_by and set(needed_by) <= finished:
            print(f"[not needed] {step.name}: {', '.join(needed_by)} finished")
            continue
        if step.name in rerun:
            why = "asked to rerun"
        elif record.get("status") == "done" and record.get("key") != key:
            why = f"settings changed since it finished: {describe_change(record.get('settings', {}), settings)}"
        elif record.get("key") == key and record.get("status") in ("running", "submitted", "failed", "incomplete"):
            why = f"{record['status']} before" + (", resuming" if resumes(step, key, log_dir) else "")
        else:
            why = "new"
        print(f"[to run] {step.name} ({why})")
        if commands:
            print(f"    {shlex.join(map(str, attempt_command(step, key, log_dir)))}")
        pending.append(step)
    return pending


def run_steps(steps: list[Step], *, slots: list[dict[str, str]], log_dir: Path, root: Path, cwd: Path | None = None,
              dry_run: bool = False, rerun: set[str] = frozenset()) -> list[str]:
    """Run every unfinished step; raise RuntimeError naming the steps that failed or could not run. Returns the
    steps left incomplete (exit status INCOMPLETE) and those waiting on them: a later run continues them.

    slots: one environment overlay per step that may run at once (gpu_slots, cpu_slots, or [{}]).
    root: the output folder; paths under it do not count towards the settings keys.
    cwd: where the commands run (their script paths are relative to it); None: here.
    dry_run: print every step, its status and its command, run nothing.
    """
    check_steps(steps)
    log_dir = Path(log_dir)
    keys = settings_keys(steps, root)
    if dry_run:
        plan(steps, keys, log_dir, set(rerun), commands=True)
        return []
    with exclusive_lock(log_dir / LOCK_FILE, what=f"the pipeline in {log_dir.parent}"):
        pending = plan(steps, keys, log_dir, set(rerun))
        finished = {step.name for step in steps} - {step.name for step in pending}
        return run_pending(pending, finished, keys, slots, log_dir, cwd, rekey=lambda: settings_keys(steps, root))


def run_pending(pending: list[Step], finished: set[str], keys: dict, slots: list[dict[str, str]],
                log_dir: Path, cwd: Path | None, rekey=None) -> list[str]:
    """rekey: the keys again, taken as each step starts: a final step's key is its file's, known once it ran."""
    live_output = len(slots) == 1  # one step at a time: its progress bars go straight to the terminal
    free, running, failed, left = list(range(len(slots))), {}, [], []
    with contextlib.ExitStack() as held:
        while pending or running:
            for step in [s for s in pending if any(need in failed for need in s.needs)]:
                pending.remove(step)
                failed.append(step.name)
                print(f"[skipped] {step.name}: a step it needs failed", flush=True)
            for step in [s for s in pending if any(need in left for need in s.needs)]:
                pending.remove(step)
                left.append(step.name)
                print(f"[waiting] {step.name}: a step it needs is incomplete", flush=True)
            for step in [s for s in pending if all(need in finished for need in s.needs)][: len(free)]:
                pending.remove(step)
                if rekey is not None and any(need in finished for need in step.needs):
                    keys[step.name] = rekey()[step.name]
                key, settings = keys[step.name]
                step_lock = contextlib.ExitStack()
                try:
                    step_lock.enter_context(exclusive_lock(log_dir / STATE_DIR / f"{step.name}.lock",
                                                           what=f"step {step.name}"))
                except Busy as busy:
                    failed.append(step.name)
                    print(f"[busy] {busy}", flush=True)
                    continue
                held.push(step_lock)
                slot = free.pop(0)
                command = attempt_command(step, key, log_dir)
                write_record(log_dir, name=step.name, key=key, settings=settings, status="running",
                             started=now(), host=socket.gethostname())
                log_path = log_dir / f"{step.name}.log"
                where = ", ".join(f"{k}={v}" for k, v in slots[slot].items())
                print(f"[run] {step.name}{f' ({where})' if where else ''}: {shlex.join(map(str, command))}", flush=True)
                log = None if live_output else open(log_path, "w")  # noqa: SIM115 (closed when the step ends)
                process = subprocess.Popen(command, env={**os.environ, **slots[slot]}, stdout=log,
                                           stderr=subprocess.STDOUT, cwd=cwd)
                running[step.name] = (step, process, slot, log, log_path, time.perf_counter(), step_lock)
            if not running:
                if any(need in failed for s in pending for need in s.needs):
                    continue  # a step just found busy: skip what needs it
                if pending:
                    raise RuntimeError(f"steps: {', '.join(s.name for s in pending)} wait on each other")
                break
            time.sleep(0.2)
            for name, (step, process, slot, log, log_path, started, step_lock) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                free.append(slot)
                if log is not None:
                    log.close()
                seconds = time.perf_counter() - started
                key, settings = keys[name]
                if finish(step, key, settings, log_dir, process.returncode, seconds):
                    finished.add(name)
                    print(f"[finished] {name} in {seconds / 60:.1f} min", flush=True)
                elif process.returncode == INCOMPLETE:
                    left.append(name)
                    print(f"[incomplete] {name}: stopped in time after {seconds / 60:.1f} min; run again to continue",
                          flush=True)
                else:
                    failed.append(name)
                    print(f"[failed] {name}: exit code {process.returncode}"
                          + ("" if live_output else f", log {log_path}"), flush=True)
                step_lock.close()
    if failed:
        raise RuntimeError(f"{len(failed)} step(s) failed or were skipped: {', '.join(failed)}")
    return left
