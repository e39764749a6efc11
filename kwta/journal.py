"""An evaluation's journal: every finished (attack, eps, batch) appended to disk, so an interrupted run resumes
and a run too long for one machine is shared between several.

A full-strength evaluation runs for hours on a CPU. `kwta.evaluate(..., journal=PATH)` appends one JSON line
per finished unit (an attack at one eps on one batch: its per-image robust mask, its seconds, what
AutoAttack's checks logged meanwhile, and the machine and commit it ran on) and flushes it to disk. Run again
with the same journal and every finished unit is read back instead of attacked; the figures come out as an
uninterrupted run's, because every random draw is seeded per batch and attack. The binarization test's units
are (attack, image), each a JSON record (`record`), so the test resumes and shards too.

PATH is a file (attack.py's OUT.journal, deleted once the results are saved), or a folder: a campaign's
journal, kept and committed. In a folder every run appends to a shard file of its own
(UTC-TIME-HOST-PID-RANK-RANDOM.jsonl) and reads the units of every shard there, so runs made apart (other
sessions, other machines, a GPU beside a CPU) merge by copying their shards into one folder. A run may do
only a part of the units: `shard=(i, n)` takes the batches whose index is i modulo n, `deadline` (a
time.time()) starts no unit after it. What it leaves is `deferred`, and evaluate then raises Incomplete
instead of returning a result. plan.json lists every unit of the evaluation, so that `progress` can say how
far a folder is from its files alone.

Each journal (each shard) begins with the evaluation's fingerprint: a hash of the models' weights and
configuration (every module's type and place, every k-WTA layer's ratio, k and mode), of the images and
labels, of every setting that changes a figure and of the suite's version (kwta.attacks.SUITE_VERSION). A
journal of another evaluation is never mixed in: a file is set aside (renamed to PATH.stale), a folder's
shard is left where it is and not read. The k-WTA backend, the torch version and the machine are not in the
fingerprint (the backends are bit-identical, and a GPU's units must merge with a CPU's): each run records
them in its header.
"""

import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib import metadata

import torch
from torch import nn

from kwta import distributed
from kwta.checkpoint import atomic_write
from kwta.machine import commit, machine
from kwta.modules import KWTA

JOURNAL_FORMAT = "kwta-journal-2"
SHARD_SUFFIX = ".jsonl"
PLAN = "plan.json"


class Incomplete(RuntimeError):
    """The journal holds only part of the evaluation (a shard, or a deadline, left units for another run)."""

    def __init__(self, done: int, deferred: int, path: str | None):
        self.done, self.deferred, self.path = done, deferred, path
        super().__init__(f"{done} unit(s) done, {deferred} left to another run of the same evaluation (journal "
                         f"{path})")


def process_path(path: str | os.PathLike) -> str:
    """This process's journal: a folder as it is (each process writes its own shard there); a file as it is,
    or path.rankR under torchrun (each process attacks its own batches)."""
    path = os.fspath(path)
    return path if distributed.world_size() == 1 or os.path.isdir(path) else f"{path}.rank{distributed.rank()}"


def configuration(model: nn.Module) -> list[list]:
    """What the weights do not say about a network: each module's place and type, each k-WTA layer's sparsity."""
    rows = []
    for name, module in model.named_modules():
        rows.append([name, type(module).__qualname__,
                     *([module.ratio, module.k, module.mode] if isinstance(module, KWTA) else [])])
    return rows


def fingerprint(*, models: Iterable[nn.Module | None], batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
                **settings) -> str:
    """sha256 over the models' configurations and state dicts, the (index, images, labels) batches and the JSON
    of `settings`."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for model in models:
        digest.update(b"model" if model is not None else b"none")
        if model is None:
            continue
        digest.update(json.dumps(configuration(model)).encode())
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for index, images, labels in batches:
        digest.update(str(index).encode())
        for tensor in (images, labels):
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def provenance(device=None) -> dict:
    """Where and with what a run computes: recorded in its header, and the machine and commit in every unit."""
    versions = {}
    for package in ("torch", "triton", "pyautoattack", "foolbox"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"machine": machine(device), "commit": commit(), "host": socket.gethostname(), "versions": versions,
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


class Journal:
    """Finished units by key, each run once (`unit`). A journal with path None keeps them in memory only.

    `with Journal(path).open(fingerprint, logged) as journal:` reads back what a journal of the same
    evaluation holds and closes the file at the end. A file journal stays on disk: delete it once its result
    is saved (attack.py does), or keep it, and the same evaluation called again reads everything back at once.
    """

    def __init__(self, path: str | os.PathLike | None = None, print_fn=None, *, shard: tuple[int, int] | None = None,
                 deadline: float | None = None, device=None):
        self.path = None if path is None else os.fspath(path)
        self.folder = self.path is not None and os.path.isdir(self.path)
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
        self.shard, self.deadline, self.device = shard, deadline, device
        self.units: dict[str, dict] = {}
        self.visited: list[str] = []  # every unit key asked for, finished or deferred: the evaluation's plan
        self.resumed = self.deferred = 0
        self.refused: list[str] = []  # a folder's shards of other evaluations
        self.logged = []
        self.say = print_fn or (lambda *_: None)
        self._file = None
        self._header = None
        self._ran = None

    def open(self, fingerprint_: str, logged: list | None = None) -> "Journal":
        """Read back the units of a journal with this fingerprint; set aside one with another.

        logged: the live list AutoAttack's checks append to (kwta.attacks.autoattack_checks); a unit keeps the
        entries it added, and a unit read back adds them again, so its warnings survive an interruption too.
        """
        self.logged = self.logged if logged is None else logged
        if self.path is None:
            return self
        ran = provenance(self.device)
        self._header = {"format": JOURNAL_FORMAT, "fingerprint": fingerprint_, "ran": ran}
        self._ran = {"machine": ran["machine"], "commit": ran["commit"]}
        if self.folder:
            return self._open_folder(fingerprint_)
        if os.path.exists(self.path):
            lines = _read_lines(self.path)
            if _belongs(lines, fingerprint_):
                self._read(lines)
                self.say(f"journal: resuming {self.path}, {self.resumed} finished unit(s) read back")
                self._file = open(self.path, "a")
                if lines and not lines[-1].endswith("}"):
                    self._file.write("\n")
                return self
            os.replace(self.path, self.path + ".stale")
            self.say(f"journal: {self.path} belongs to another evaluation (other model, images, settings or "
                        f"suite version); set aside as {self.path}.stale")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "w")
        self._write(self._header)
        return self

    def _open_folder(self, fingerprint_: str) -> "Journal":
        shards = sorted(name for name in os.listdir(self.path) if name.endswith(SHARD_SUFFIX))
        for name in shards:
            lines = _read_lines(os.path.join(self.path, name))
            if _belongs(lines, fingerprint_):
                self._read(lines)
            else:
                self.refused.append(name)
        self.say(f"journal: {self.path}, {self.resumed} finished unit(s) read back from "
                    f"{len(shards) - len(self.refused)} shard(s)")
        for name in self.refused:
            self.say(f"journal: {self.path}/{name} belongs to another evaluation (other model, images, settings "
                        "or suite version): not read")
        return self

    def _read(self, lines: list[str]) -> None:
        for line in lines[1:]:
            unit = _parse(line)  # a line cut short by a crash is the one unit to redo
            if unit is not None and "key" in unit:
                self.units.setdefault(unit["key"], unit)
        self.resumed = len(self.units)

    def takes(self, batch: int) -> bool:
        """Does this run attack `batch` (if unfinished), or leave it to another run?"""
        in_shard = self.shard is None or batch % self.shard[1] == self.shard[0]
        return in_shard and (self.deadline is None or time.time() < self.deadline)

    def unit(self, key: str, compute: Callable[[], tuple[torch.Tensor, float]],
             batch: int = 0) -> tuple[torch.Tensor, float] | None:
        """(robust mask, seconds) of the unit `key`: read back if finished, else compute() and append it;
        None (and counted in `deferred`) when this run leaves the batch to another."""
        def encoded() -> tuple[dict, float]:
            mask, seconds = compute()
            return {"mask": mask.int().tolist()}, seconds

        done = self._unit(key, encoded, batch)
        return None if done is None else (torch.tensor(done["mask"], dtype=torch.bool), done["seconds"])

    def record(self, key: str, compute: Callable[[], tuple[dict, float]], batch: int = 0) -> dict | None:
        """The same for a unit whose result is a JSON object: compute() -> (value, seconds); returns the value."""
        done = self._unit(key, lambda: (lambda value, seconds: ({"value": value}, seconds))(*compute()), batch)
        return None if done is None else done["value"]

    def _unit(self, key: str, compute: Callable[[], tuple[dict, float]], batch: int) -> dict | None:
        self.visited.append(key)
        unit = self.units.get(key)
        if unit is not None:
            self.logged.extend(tuple(entry) for entry in unit["logged"])
            return unit
        if not self.takes(batch):
            self.deferred += 1
            return None
        before = len(self.logged)
        fields, seconds = compute()
        unit = {"key": key, **fields, "seconds": seconds, "logged": [list(entry) for entry in self.logged[before:]],
                "ran": self._ran}
        self.units[key] = unit
        if self.path is not None:
            self._write(unit)
        return unit

    def write_plan(self, keys: list[str]) -> None:
        """A folder's PLAN (plan.json): the fingerprint and every unit key of the evaluation (every process's),
        once it has been walked through whole (all units done or deferred), so that progress can be read
        without torch."""
        if not self.folder or not distributed.is_main():
            return
        plan = {"format": JOURNAL_FORMAT, "fingerprint": self._header["fingerprint"], "units": keys,
                "written": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        atomic_write(os.path.join(self.path, PLAN), json.dumps(plan, indent=0) + "\n")

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *_) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: dict) -> None:
        if self._file is None:  # a folder's shard: made at the first unit, so a run that adds none leaves none
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            name = (f"{stamp}-{socket.gethostname()}-{os.getpid()}-{distributed.rank()}-{uuid.uuid4().hex[:6]}"
                    f"{SHARD_SUFFIX}")
            self._file = open(os.path.join(self.path, name), "x")
            self._write(self._header)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def progress(folder: str | os.PathLike) -> dict | None:
    """What a journal folder holds, read from its files alone (no torch, no model): None before any run has
    walked its evaluation through (no plan.json); else {"planned", "done", "seconds" (summed over the done
    units), "per_attack": {attack: [done, planned, seconds]}, "machines": {machine: units}, "refused": shards
    of another evaluation}."""
    folder = os.fspath(folder)
    plan_path = os.path.join(folder, PLAN)
    if not os.path.exists(plan_path):
        return None
    with open(plan_path) as file:
        plan = json.load(file)
    units, refused = {}, []
    for name in sorted(n for n in os.listdir(folder) if n.endswith(SHARD_SUFFIX)):
        lines = _read_lines(os.path.join(folder, name))
        if not _belongs(lines, plan["fingerprint"]):
            refused.append(name)
            continue
        for line in lines[1:]:
            unit = _parse(line)
            if unit is not None and "key" in unit:
                units.setdefault(unit["key"], unit)
    per_attack, machines = {}, {}
    for key in dict.fromkeys(plan["units"]):
        attack = key.split("/")[1]
        row = per_attack.setdefault(attack, [0, 0, 0.0])
        row[1] += 1
        if key in units:
            row[0] += 1
            row[2] += units[key]["seconds"]
            where = units[key].get("ran", {}).get("machine", "unrecorded")
            machines[where] = machines.get(where, 0) + 1
    return {"planned": sum(r[1] for r in per_attack.values()), "done": sum(r[0] for r in per_attack.values()),
            "seconds": sum(r[2] for r in per_attack.values()), "per_attack": per_attack, "machines": machines,
            "refused": refused}


def _read_lines(path: str) -> list[str]:
    with open(path) as file:
        return file.read().splitlines()


def _belongs(lines: list[str], fingerprint_: str) -> bool:
    header = _parse(lines[0]) if lines else None
    return bool(header) and header.get("format") == JOURNAL_FORMAT and header.get("fingerprint") == fingerprint_


def _parse(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
