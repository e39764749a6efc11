"""SLURM through submitit, without a cluster: sbatch, srun and sacct are stand-ins that record the job scripts
submitit writes (resources, dependencies); the job function itself runs through submitit's LocalExecutor."""

import os
import sys
from pathlib import Path

import pytest
import submitit

from experiments.pipeline import Step, is_finished, read_record, settings_keys, write_record
from experiments.slurm import StepJob, submit_steps

ROOT = Path(__file__).resolve().parent.parent
FAKE_SBATCH = """#!/bin/sh
folder=$(dirname "$0"); n=$(cat "$folder/count" 2>/dev/null || echo 100); n=$((n + 1)); echo $n > "$folder/count"
cp "$1" "$folder/job-$n.sh"; echo "Submitted batch job $n"
"""
FAKE_SACCT = """#!/bin/sh
echo "JobID|State|NodeList"; cat "$(dirname "$0")/states"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("sacct", FAKE_SACCT), ("srun", "#!/bin/sh\nexit 1\n")):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    (tools / "states").write_text("")
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    return tools


def job_script(tools: Path, job: str) -> str:
    return (tools / f"job-{job}.sh").read_text()


def grid(out: Path) -> list[Step]:
    command = [sys.executable, "-c", "pass"]
    return [Step("train", command, out / "train", minutes=480),
            Step("attack", command, out / "attack", needs=["train"]),
            Step("fit", command, out / "fit", gpus=0)]


def test_one_job_per_step_with_gpus_and_dependencies(fake_slurm, tmp_path):
    out = tmp_path / "out"
    submit = lambda: submit_steps(grid(out), log_dir=out / "logs", root=out, cwd=ROOT, partition="gpu",
                                  extra={"account": "lab"})
    jobs = submit()
    assert jobs == {"train": "101", "attack": "102", "fit": "103"}
    train, attack, fit = (job_script(fake_slurm, job) for job in ("101", "102", "103"))
    for script in (train, attack, fit):
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --account=lab" in script
        assert "#SBATCH --kill-on-invalid-dep=yes" in script and "-m submitit.core._submit" in script
    assert "#SBATCH --gpus-per-node=1" in train and "#SBATCH --gpus-per-node=1" in attack
    assert "gpus" not in fit
    assert "#SBATCH --time=480" in train and "#SBATCH --job-name=train" in train
    assert "--dependency" not in train and "#SBATCH --dependency=afterok:101" in attack
    assert read_record(out / "logs", "attack")["status"] == "submitted"

    # Submitted again while the jobs are queued: nothing is submitted twice.
    (fake_slurm / "states").write_text("101|RUNNING|node1\n102|PENDING|\n103|RUNNING|node2\n")
    assert submit() == jobs and not (fake_slurm / "job-104.sh").exists()

    # The training job started, then failed (SLURM then cancels its dependant): both are submitted anew, in
    # order, and the new training job knows to resume what the first one left.
    write_record(out / "logs", **{**read_record(out / "logs", "train"), "status": "running"})
    (fake_slurm / "states").write_text("101|FAILED|node1\n102|CANCELLED|\n103|RUNNING|node2\n")
    assert submit() == {"train": "104", "attack": "105", "fit": "103"}
    assert "#SBATCH --dependency=afterok:104" in job_script(fake_slurm, "105")
    assert read_record(out / "logs", "train")["attempted"] and not read_record(out / "logs", "attack")["attempted"]


def test_a_job_runs_its_step_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # what the sbatch script's setup line exports
    out = tmp_path / "out"
    write_arguments = f"import sys; open({str(out / 'fit')!r}, 'w').write(' '.join(sys.argv[1:]))"
    step = Step("fit", [sys.executable, "-c", write_arguments, "--settings"], out / "fit", gpus=0,
                fresh=["--overwrite"], resume=["--resume"], checkpoint=out / "fit")
    key, settings = settings_keys([step], out)["fit"]
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=5)
    job = executor.submit(StepJob(), {"step": step, "key": key, "settings": settings, "log_dir": str(out / "logs"),
                                      "cwd": str(ROOT)})
    assert job.result() > 0
    # a first attempt: the fresh arguments, as a local run adds them
    assert (out / "fit").read_text() == "--settings --overwrite" and is_finished(step, key, out / "logs")
