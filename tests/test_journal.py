"""kwta.evaluate's journal: an interrupted evaluation resumes where it stopped and gives the uninterrupted result;
a journal of another evaluation is never mixed in; attack.py keeps one beside --out until the results are saved."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import kwta
from kwta import evaluation
from kwta.attacks import AttackSettings
from kwta.journal import JOURNAL_FORMAT, Incomplete, Journal, progress

SETTINGS = AttackSettings(pgd_steps=3, pgd_restarts=1, bpda_temperatures=(1.0,), bpda_steps=3, bpda_iterations=2,
                          es_schedule=((2, 2),), es_restarts=1, eot_samples=1, eot_steps=3)
ATTACKS = ["pgd", "bpda", "es", "eot"]
REAL_ATTACK_BATCH = evaluation.attack_batch


def kwta_mlp() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    assert kwta.replace_relu(model, 0.5) == 1
    return model


def images() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(10, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    return x, kwta_mlp()(x).argmax(dim=1)


def run(model, journal, **overrides):
    x, y = images()
    kwargs = dict(eps=0.2, attacks=ATTACKS, settings=SETTINGS, eps_curve=[0.4], batch_size=4, journal=journal,
                  calibration_model=None)
    return kwta.evaluate(model, x, y, **{**kwargs, **overrides})


def figures(result) -> dict:
    """What a run reports, less its seconds (a read-back unit keeps the seconds of the run that made it)."""
    def without_seconds(value):
        if isinstance(value, dict):
            return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
        return [without_seconds(v) for v in value] if isinstance(value, list) else value
    return without_seconds(result.to_dict())


class Interrupt(Exception):
    pass


def counting_attack_batch(monkeypatch, stop_after: int | None = None) -> list:
    """Count the batches attacked; raise (a kill) once `stop_after` of them have finished."""
    calls = []

    def attack_batch(*args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            raise Interrupt
        calls.append(args[4])
        return REAL_ATTACK_BATCH(*args, **kwargs)
    monkeypatch.setattr(evaluation, "attack_batch", attack_batch)
    return calls


def test_an_interrupted_evaluation_resumes_and_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    model = kwta_mlp()
    whole = counting_attack_batch(monkeypatch)
    expected = run(model, None)
    units = len(whole)  # 3 batches x (4 attacks + the curve's PGD)
    assert units == 15

    journal = tmp_path / "not" / "yet" / "eval.journal"  # its folder is made
    finished = counting_attack_batch(monkeypatch, stop_after=7)
    with pytest.raises(Interrupt):
        run(model, journal)
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 7 and json.loads(lines[0])["format"] == JOURNAL_FORMAT

    rest = counting_attack_batch(monkeypatch)
    resumed = run(model, journal)
    assert len(rest) == units - len(finished)  # the finished units were read back, not attacked again
    assert figures(resumed) == figures(expected)
    assert journal.exists()  # left for the caller, who deletes it once the result is saved

    again = counting_attack_batch(monkeypatch)
    assert figures(run(model, journal)) == figures(expected) and again == []


def test_a_torn_last_line_is_the_one_unit_redone(tmp_path, monkeypatch):
    model, journal = kwta_mlp(), tmp_path / "eval.journal"
    counting_attack_batch(monkeypatch, stop_after=5)
    with pytest.raises(Interrupt):
        run(model, journal)
    text = journal.read_text()
    journal.write_text(text[: len(text) - 20])  # killed in the middle of writing the fifth unit
    rest = counting_attack_batch(monkeypatch)
    resumed = run(model, journal)
    assert len(rest) == 15 - 4
    assert figures(resumed) == figures(run(model, None))


@pytest.mark.parametrize("change", [
    {"seed": 1},
    {"settings": dataclasses.replace(SETTINGS, pgd_steps=4)},
    {"eps": 0.25},
    {"batch_size": 5},
    "weights",
    "ratio",
    "suite",
])
def test_a_journal_of_another_evaluation_is_set_aside(tmp_path, monkeypatch, change):
    """Another seed, budget, eps, batching, weights, k-WTA ratio (the same weights) or suite version."""
    model, journal = kwta_mlp(), tmp_path / "eval.journal"
    cheap = {"attacks": ["pgd"], "eps_curve": "none"}
    run(model, journal, **cheap)
    if change == "weights":
        with torch.no_grad():
            model[1].weight[0, 0] += 1e-3
    elif change == "ratio":
        assert kwta.modules.set_ratio(model, 0.25) == 1
    elif change == "suite":
        monkeypatch.setattr(evaluation, "SUITE_VERSION", evaluation.SUITE_VERSION + 1)
    change = change if isinstance(change, dict) else {}
    calls = counting_attack_batch(monkeypatch)
    result = run(model, journal, **cheap, **change)
    assert len(calls) == -(-10 // change.get("batch_size", 4))  # every batch attacked afresh
    assert (tmp_path / "eval.journal.stale").exists()
    assert figures(result) == figures(run(model, None, **cheap, **change))


def test_every_unit_records_the_machine_and_the_commit_it_ran_on(tmp_path):
    journal = tmp_path / "eval.journal"
    run(kwta_mlp(), journal, attacks=["pgd"], eps_curve="none")
    header, *units = [json.loads(line) for line in journal.read_text().splitlines()]
    assert set(header["ran"]) >= {"machine", "commit", "host", "versions", "started"}
    assert torch.__version__.startswith(header["ran"]["versions"]["torch"])
    assert len(units) == 3 and all(unit["ran"] == {key: header["ran"][key] for key in ("machine", "commit")}
                                   for unit in units)
    assert "(cpu)" in header["ran"]["machine"]


def shards(folder) -> list:
    return sorted(folder.glob("*.jsonl"))


def test_two_halves_run_apart_and_merged_give_the_table_of_one_run(tmp_path, monkeypatch):
    """Two machines each take every other batch into a journal folder of their own; their shards, copied into
    one folder, give the uninterrupted figures with no attack run again."""
    model = kwta_mlp()
    expected = run(model, None)
    halves = []
    for i in range(2):
        folder = tmp_path / f"machine-{i}"
        folder.mkdir()
        calls = counting_attack_batch(monkeypatch)
        with pytest.raises(Incomplete) as stopped:
            run(model, Journal(folder, shard=(i, 2)))
        mine = len(range(i, 3, 2))  # of the 3 batches, 0 and 2 or 1
        assert len(calls) == stopped.value.done == 5 * mine and stopped.value.deferred == 5 * (3 - mine)
        (shard,) = shards(folder)
        halves.append(shard)
    merged = tmp_path / "merged"
    merged.mkdir()
    for shard in halves:
        (merged / shard.name).write_bytes(shard.read_bytes())
    again = counting_attack_batch(monkeypatch)
    assert figures(run(model, merged)) == figures(expected) and again == []
    assert shards(merged) == sorted(merged / shard.name for shard in halves)  # a run that adds nothing writes nothing


def test_a_deadline_starts_no_unit_after_it_and_the_next_run_finishes(tmp_path, monkeypatch):
    model, folder = kwta_mlp(), tmp_path / "journal"
    folder.mkdir()
    calls = counting_attack_batch(monkeypatch)
    with pytest.raises(Incomplete) as stopped:
        run(model, Journal(folder, deadline=0.0))  # long past
    assert calls == [] and stopped.value.done == 0 and shards(folder) == []
    assert figures(run(model, Journal(folder))) == figures(run(model, None))


def test_a_folder_reads_no_shard_of_another_evaluation_and_moves_none(tmp_path, monkeypatch):
    model, folder = kwta_mlp(), tmp_path / "journal"
    folder.mkdir()
    run(model, folder, attacks=["pgd"], eps_curve="none")
    (theirs,) = shards(folder)
    calls = counting_attack_batch(monkeypatch)
    run(model, folder, attacks=["pgd"], eps_curve="none", seed=1)
    assert len(calls) == 3 and theirs.exists() and len(shards(folder)) == 2
    assert Journal(folder).open(json.loads(theirs.read_text().splitlines()[0])["fingerprint"]).resumed == 3


def test_a_folder_says_how_far_it_is_from_its_files_alone(tmp_path, monkeypatch):
    model, folder = kwta_mlp(), tmp_path / "journal"
    folder.mkdir()
    assert progress(folder) is None  # nothing walked through yet
    with pytest.raises(Incomplete):
        run(model, Journal(folder, shard=(1, 3)))
    seen = progress(folder)
    assert (seen["planned"], seen["done"]) == (15, 5) and seen["refused"] == []
    assert seen["per_attack"]["pgd"][:2] == [2, 6]  # the suite's and the curve's PGD, 3 batches each
    assert list(seen["machines"].values()) == [5] and seen["seconds"] > 0
    run(model, folder)
    assert (progress(folder)["planned"], progress(folder)["done"]) == (15, 15)
