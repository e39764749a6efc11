"""The pipeline runner behind `make demo` and `make paper`: settings keys, reruns, resume, locks, slots, failures."""

import json
import sys
from pathlib import Path

import pytest

from experiments.pipeline import Busy, Step, cpu_slots, exclusive_lock, read_record, run_steps, step_seconds


def step(tmp_path: Path, name: str, text: str = "x", needs=(), args=(), **options) -> Step:
    """A step that appends `name text` to tmp_path/order.txt and then writes its done file (args: ignored)."""
    done = tmp_path / "out" / name
    code = (f"import os; open({str(tmp_path / 'order.txt')!r}, 'a').write({name!r} + ' ' + {text!r} + ' '"
            f" + os.environ.get('OMP_NUM_THREADS', '-') + chr(10)); open({str(done)!r}, 'w')")
    return Step(name, [sys.executable, "-c", code, *args], done, needs=list(needs), **options)


def ran(tmp_path: Path) -> list[str]:
    """The steps that ran so far, in order (and forget them)."""
    path = tmp_path / "order.txt"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    path.unlink(missing_ok=True)
    return [line.split()[0] for line in lines]


def run(steps, tmp_path, **options):
    (tmp_path / "out").mkdir(exist_ok=True)
    return run_steps(steps, slots=options.pop("slots", [{}]), log_dir=tmp_path / "out" / "logs", root=tmp_path / "out",
              **options)


def test_dependency_order_then_reuse_then_rerun_on_changed_settings(tmp_path):
    grid = lambda b_text="x", c_needs=("b",): [step(tmp_path, "c", needs=c_needs), step(tmp_path, "b", b_text,
                                                                                         needs=["a"]),
                                               step(tmp_path, "a"), step(tmp_path, "d")]
    run(grid(), tmp_path)
    assert ran(tmp_path) in (["a", "b", "c", "d"], ["a", "d", "b", "c"], ["d", "a", "b", "c"], ["a", "b", "d", "c"])
    seconds = step_seconds(tmp_path / "out" / "logs")
    assert sorted(seconds) == ["a", "b", "c", "d"] and all(0 < s < 60 for s in seconds.values())

    run(grid(), tmp_path)  # unchanged: nothing runs again, and the times of the run that did the work stay
    assert ran(tmp_path) == [] and step_seconds(tmp_path / "out" / "logs") == seconds

    run(grid(b_text="y"), tmp_path)  # b's command changed: b reruns, and c, which needs it; a and d are reused
    assert ran(tmp_path) == ["b", "c"]
    record = read_record(tmp_path / "out" / "logs", "b")
    assert record["status"] == "done" and record["settings"]["command"][-1].count("'y'") == 1

    (tmp_path / "out" / "d").unlink()  # a finished step whose result is gone runs again
    run(grid(b_text="y"), tmp_path, rerun={"a"})  # and one asked for by name, with what follows it
    assert sorted(ran(tmp_path)) == ["a", "b", "c", "d"]


def test_keys_ignore_where_the_output_lives_but_not_input_contents(tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"1")
    steps = lambda data_dir: [step(tmp_path, "fine-tune", args=["--out", str(tmp_path / "out" / "run")],
                                   inputs=[weights], location=["--data-dir", data_dir])]
    run(steps("/data"), tmp_path)
    assert ran(tmp_path) == ["fine-tune"]
    run(steps("/elsewhere"), tmp_path)  # the data moved: same settings
    assert ran(tmp_path) == []
    record = read_record(tmp_path / "out" / "logs", "fine-tune")
    assert record["settings"]["command"][-2:] == ["--out", "$OUT/run"]  # the output folder may move
    assert "/data" not in json.dumps(record["settings"])
    weights.write_bytes(b"2")
    capsys.readouterr()
    run(steps("/data"), tmp_path)
    assert ran(tmp_path) == ["fine-tune"] and "an input file changed" in capsys.readouterr().out


def test_an_interrupted_step_resumes_only_with_unchanged_settings(tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint"
    (tmp_path / "out").mkdir()
    crash = Step("train", [sys.executable, "-c", f"open({str(checkpoint)!r}, 'w'); raise SystemExit(1)"],
                 tmp_path / "out" / "summary", resume=["--resume"], checkpoint=checkpoint)
    with pytest.raises(RuntimeError, match="1 step"):
        run([crash], tmp_path)
    # The same settings again: the resume arguments are added (here they make the command finish the step).
    finish = [sys.executable, "-c", f"import sys; assert sys.argv[1:] == ['--resume']; "
              f"open({str(tmp_path / 'out' / 'summary')!r}, 'w')"]
    crash.command = finish  # a changed command is a changed setting: no --resume then
    with pytest.raises(RuntimeError):
        run([crash], tmp_path)
    assert read_record(tmp_path / "out" / "logs", "train")["status"] == "failed"
    run([crash], tmp_path)  # the failed attempt had these settings and left its checkpoint: resume
    assert read_record(tmp_path / "out" / "logs", "train")["status"] == "done"


# A stand-in for train.py's --out rules: a non-empty folder is refused unless --resume (continue its checkpoint)
# or --overwrite (start afresh) says what to do with it, never both. With --crash, a fresh attempt dies after
# writing its checkpoint; a resumed one finishes.
FUSSY_TRAIN = """
import os, sys
args = sys.argv[1:]
out = args[args.index("--out") + 1]
resume, overwrite = "--resume" in args, "--overwrite" in args
if resume and overwrite:
    sys.exit("--resume and --overwrite are mutually exclusive")
if os.path.isdir(out) and os.listdir(out) and not (resume or overwrite):
    sys.exit(f"--out {out} is not empty: give --resume or --overwrite")
if resume and not os.path.exists(os.path.join(out, "checkpoint")):
    sys.exit("--resume: no checkpoint")
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "attempts"), "a").write(" ".join(args) + chr(10))
open(os.path.join(out, "checkpoint"), "w")
if "--crash" in args and not resume:
    sys.exit(1)
open(os.path.join(out, "summary"), "w")
"""


def test_train_steps_resume_or_start_afresh_in_a_folder_with_old_files(tmp_path, capsys):
    script, run_dir = tmp_path / "train.py", tmp_path / "out" / "run"
    script.write_text(FUSSY_TRAIN)
    train = lambda *settings: Step("train", [sys.executable, str(script), *settings, "--out", str(run_dir)],
                                   run_dir / "summary", resume=["--resume"], fresh=["--overwrite"],
                                   checkpoint=run_dir / "checkpoint")
    attempts = lambda: [line.split() for line in (run_dir / "attempts").read_text().splitlines()]
    with pytest.raises(RuntimeError, match="1 step"):  # the first attempt, interrupted
        run([train("--epochs", "1", "--crash")], tmp_path)
    run([train("--epochs", "1", "--crash")], tmp_path)  # the same settings: it resumes
    run([train("--epochs", "2")], tmp_path, dry_run=True)  # new settings: a fresh start, over the old files
    assert f"--out {run_dir} --overwrite" in capsys.readouterr().out
    run([train("--epochs", "2")], tmp_path)
    assert [attempt[-1] for attempt in attempts()] == ["--overwrite", "--resume", "--overwrite"]
    assert read_record(tmp_path / "out" / "logs", "train")["status"] == "done"


def test_two_invocations_do_not_collide(tmp_path):
    (tmp_path / "out" / "logs").mkdir(parents=True)
    with exclusive_lock(tmp_path / "out" / "logs" / "pipeline.lock", what="test"):
        with pytest.raises(Busy, match=r"in use by pid \d+"):
            run([step(tmp_path, "a")], tmp_path)
    with exclusive_lock(tmp_path / "out" / "logs" / "steps" / "a.lock", what="step a"):  # a cluster job runs a
        with pytest.raises(RuntimeError, match="2 step.*: a, b"):
            run([step(tmp_path, "a"), step(tmp_path, "b", needs=["a"]), step(tmp_path, "c")], tmp_path)
    assert ran(tmp_path) == ["c"]
    run([step(tmp_path, "a")], tmp_path)  # locks die with their holder: nothing stale is left behind
    assert ran(tmp_path) == ["a"]


def test_slots_run_side_by_side_with_their_environment(tmp_path):
    steps = [step(tmp_path, f"s{i}") for i in range(4)]
    run(steps, tmp_path, slots=cpu_slots(2, cores=4))
    lines = (tmp_path / "order.txt").read_text().split("\n")[:-1]
    assert sorted(line.split()[-1] for line in lines) == ["2"] * 4  # each of 2 slots gets 4 // 2 threads
    logs = sorted(p.name for p in (tmp_path / "out" / "logs").iterdir() if p.suffix == ".log")
    assert logs == ["s0.log", "s1.log", "s2.log", "s3.log"]


def test_failure_skips_dependents_but_not_the_rest(tmp_path):
    steps = [
        Step("broken", [sys.executable, "-c", "raise SystemExit(4)"], tmp_path / "never"),
        Step("after-broken", [sys.executable, "-c", "pass"], tmp_path / "never2", needs=["broken"]),
        step(tmp_path, "independent"),
        Step("lazy", [sys.executable, "-c", "pass"], tmp_path / "not-written"),  # exit 0 without its file
    ]
    with pytest.raises(RuntimeError, match="3 step.*broken, .*after-broken"):
        run(steps, tmp_path, slots=cpu_slots(2))
    assert ran(tmp_path) == ["independent"]


def test_an_incomplete_step_is_no_failure_and_what_needs_it_waits_for_the_next_run(tmp_path, capsys):
    flag = tmp_path / "enough-time"
    done = tmp_path / "out" / "long"
    code = (f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) and not open({str(done)!r}, 'w').close() "
            "else 3)")  # 3: stopped in time, as attack.py at its deadline
    steps = [Step("long", [sys.executable, "-c", code], done),
             step(tmp_path, "after", needs=["long"]), step(tmp_path, "beside")]
    assert run(steps, tmp_path) == ["long", "after"]
    assert ran(tmp_path) == ["beside"] and read_record(tmp_path / "out" / "logs", "long")["status"] == "incomplete"
    assert "[incomplete] long" in capsys.readouterr().out
    flag.touch()
    assert run(steps, tmp_path) == []
    assert ran(tmp_path) == ["after"] and "[to run] long (incomplete before)" in capsys.readouterr().out


def test_an_intermediate_step_runs_only_while_something_needs_it(tmp_path, capsys):
    """A training whose network is released: once the release has finished, a clean clone, where the training's
    own files are gone, does not train again."""
    steps = lambda text="x": [step(tmp_path, "train", text, intermediate=True),
                              step(tmp_path, "release", needs=["train"], final=True),
                              step(tmp_path, "attack", needs=["release"])]
    run(steps(), tmp_path)
    assert ran(tmp_path) == ["train", "release", "attack"]
    (tmp_path / "out" / "train").unlink()  # what stays out of git
    run(steps(), tmp_path)
    assert ran(tmp_path) == [] and "[not needed] train: release finished" in capsys.readouterr().out
    run(steps("another recipe"), tmp_path)  # a release is final: nothing made from it is silently replaced
    assert ran(tmp_path) == []
    (tmp_path / "out" / "release").unlink()  # needed again: trained, released and attacked again
    run(steps(), tmp_path)
    assert ran(tmp_path) == ["train", "release", "attack"]


def test_bad_steps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dependencies"):
        run([Step("a", ["true"], tmp_path / "a", needs=["z"])], tmp_path)
    with pytest.raises(ValueError, match="unique"):
        run([Step("a", ["true"], tmp_path / "a")] * 2, tmp_path)
    with pytest.raises(ValueError, match="cycle"):
        run([Step("a", ["true"], tmp_path / "a", needs=["b"]), Step("b", ["true"], tmp_path / "b", needs=["a"])],
            tmp_path)
