"""An evaluation's journal: every finished (attack, eps, batch) appended to a file, so an interrupted run resumes.

A full-strength evaluation runs for hours on a CPU. `kwta.evaluate(..., journal=PATH)` appends one JSON line
per finished unit (an attack at one eps on one batch: its per-image robust mask, its seconds and what
AutoAttack's checks logged meanwhile) and flushes it to disk. Run again with the same journal and every
finished unit is read back instead of attacked; the figures come out as an uninterrupted run's, because
every random draw is seeded per batch and attack. (The binarization test, run after the table, is not
journaled: an interruption there reruns it whole.)

The first line is the evaluation's fingerprint: a hash of the model's (and the twin's) weights, of the images
and labels, and of every setting that changes a figure. A journal written by another evaluation is set
aside (renamed to PATH.stale), never mixed in.
"""

import hashlib
import json
import os
from collections.abc import Callable, Iterable

import torch
from torch import nn

from kwta import distributed

JOURNAL_FORMAT = "kwta-journal-1"


def process_path(path: str | os.PathLike) -> str:
    """This process's journal: `path`, or path.rankR under torchrun (each process attacks its own batches)."""
    return os.fspath(path) if distributed.world_size() == 1 else f"{os.fspath(path)}.rank{distributed.rank()}"


def fingerprint(*, models: Iterable[nn.Module | None], batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
                **settings) -> str:
    """sha256 over the models' state dicts, the (index, images, labels) batches and the JSON of `settings`."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for model in models:
        digest.update(b"model" if model is not None else b"none")
        for name, tensor in (model.state_dict().items() if model is not None else ()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for index, images, labels in batches:
        digest.update(str(index).encode())
        for tensor in (images, labels):
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Journal:
    """Finished units by key, each run once (`unit`). A journal with path None keeps them in memory only.

    `with Journal(path).open(fingerprint, logged) as journal:` reads back what a journal of the same
    evaluation holds and closes the file at the end. It stays on disk: delete it once its result is saved
    (attack.py does), or keep it, and the same evaluation called again reads everything back at once.
    """

    def __init__(self, path: str | os.PathLike | None = None, print_fn=None):
        self.path = None if path is None else os.fspath(path)
        self.units: dict[str, dict] = {}
        self.resumed = 0
        self.logged = []
        self._print = print_fn or (lambda *_: None)
        self._file = None

    def open(self, fingerprint_: str, logged: list | None = None) -> "Journal":
        """Read back the units of a journal with this fingerprint; set aside one with another.

        logged: the live list AutoAttack's checks append to (kwta.attacks.autoattack_checks); a unit keeps the
        entries it added, and a unit read back adds them again, so its warnings survive an interruption too.
        """
        self.logged = self.logged if logged is None else logged
        if self.path is None:
            return self
        if os.path.exists(self.path):
            with open(self.path) as file:
                lines = file.read().splitlines()
            header = _parse(lines[0]) if lines else None
            if header and header.get("format") == JOURNAL_FORMAT and header.get("fingerprint") == fingerprint_:
                for line in lines[1:]:
                    unit = _parse(line)  # a line cut short by a crash is the one unit to redo
                    if unit is not None and "key" in unit:
                        self.units[unit["key"]] = unit
                self.resumed = len(self.units)
                self._print(f"journal: resuming {self.path}, {self.resumed} finished unit(s) read back")
                self._file = open(self.path, "a")
                if lines and not lines[-1].endswith("}"):
                    self._file.write("\n")
                return self
            os.replace(self.path, self.path + ".stale")
            self._print(f"journal: {self.path} belongs to another evaluation (other model, images or settings); "
                        f"set aside as {self.path}.stale")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "w")
        self._write({"format": JOURNAL_FORMAT, "fingerprint": fingerprint_})
        return self

    def unit(self, key: str, compute: Callable[[], tuple[torch.Tensor, float]]) -> tuple[torch.Tensor, float]:
        """(robust mask, seconds) of the unit `key`: read back if finished, else compute() and append it."""
        unit = self.units.get(key)
        if unit is not None:
            self.logged.extend(tuple(entry) for entry in unit["logged"])
            return torch.tensor(unit["mask"], dtype=torch.bool), unit["seconds"]
        before = len(self.logged)
        mask, seconds = compute()
        unit = {"key": key, "mask": mask.int().tolist(), "seconds": seconds,
                "logged": [list(entry) for entry in self.logged[before:]]}
        self.units[key] = unit
        if self._file is not None:
            self._write(unit)
        return mask, seconds

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *_) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def _parse(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
