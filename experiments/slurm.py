"""Run a pipeline's steps on a SLURM cluster through submitit: one job per step, dependencies between jobs.

Each unfinished step becomes one sbatch job (`--gpus-per-node` as the step asks, its time limit, the
partition and any extra sbatch options given) that depends (`afterok`) on the jobs of the unfinished steps
it needs; a job whose dependency failed is cancelled by SLURM (`kill-on-invalid-dep`). The job runs
`experiments.pipeline.execute_step`: it takes the step's lock, continues an interrupted attempt (same settings
key, checkpoint present) or starts afresh, runs the command and records the result, exactly as a local run does. A job
that reaches its time limit is requeued by submitit (checkpointing), and resumes.

Submission holds the pipeline lock, so two submitters never race; a step whose job from an earlier
submission is still queued or running, with the same settings, is not submitted twice: its job id is
reused for the dependencies. Finished steps are skipped, as locally. Submission returns at once; run the
same command again later to see what finished and to resubmit what failed.
"""

from pathlib import Path

import submitit

from experiments.pipeline import (
    LOCK_FILE,
    Step,
    attempted,
    check_steps,
    downstream,
    exclusive_lock,
    execute_step,
    now,
    plan,
    read_record,
    settings_keys,
    write_record,
)

# sacct states of a job that may still run (anything else has ended, one way or another). UNKNOWN means
# sacct does not know the job (yet, or accounting is off): counted as queued rather than submitted twice.
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "UNKNOWN"}


class StepJob(submitit.helpers.Checkpointable):
    """The function a job runs. Checkpointable: at its time limit submitit requeues it with the same step, which
    then resumes from its checkpoint (the record says an attempt with these settings was interrupted)."""

    def __call__(self, payload: dict) -> float:
        return execute_step(payload)


def job_state(folder: Path, job_id: str) -> str:
    """What sacct says of a job (UNKNOWN when it cannot tell)."""
    return submitit.SlurmJob(folder=folder, job_id=job_id).watcher.get_state(job_id, mode="force")


def submit_steps(steps: list[Step], *, log_dir: Path, root: Path, cwd: Path, partition: str | None = None,
                 cpus_per_step: int = 8, mem_gb: int | None = None, extra: dict[str, str] | None = None,
                 rerun: set[str] = frozenset()) -> dict[str, str]:
    """Submit every unfinished step as one SLURM job; return step name -> job id for the jobs it depends on."""
    check_steps(steps)
    log_dir, folder = Path(log_dir), Path(log_dir) / "slurm"
    keys = settings_keys(steps, root)
    rerun = downstream(steps, set(rerun))
    jobs: dict[str, str] = {}
    with exclusive_lock(log_dir / LOCK_FILE, what=f"the pipeline in {log_dir.parent}"):
        pending = {step.name for step in plan(steps, keys, log_dir, set(rerun))}
        for step in steps:  # the grid lists needs before the steps that need them
            if step.name not in pending:
                continue
            key, settings = keys[step.name]
            record = read_record(log_dir, step.name)
            previous = record.get("slurm_job")
            if (step.name not in rerun and previous and record.get("key") == key
                    and record.get("status") in ("submitted", "running")):
                state = job_state(folder, previous)
                if state.split()[0] in ACTIVE_STATES:
                    jobs[step.name] = previous
                    print(f"[queued] {step.name}: job {previous} ({state}) from an earlier submission")
                    continue
            waits_for = [jobs[need] for need in step.needs if need in jobs]
            if any(need in pending and need not in jobs for need in step.needs):
                raise RuntimeError(f"steps: {step.name} is listed before a step it needs")
            executor = submitit.SlurmExecutor(folder=folder / "%j")
            executor.update_parameters(
                job_name=step.name, time=step.minutes, nodes=1, ntasks_per_node=1, cpus_per_task=cpus_per_step,
                gpus_per_node=step.gpus or None, partition=partition, mem=f"{mem_gb}GB" if mem_gb else None,
                dependency=f"afterok:{':'.join(waits_for)}" if waits_for else None,
                additional_parameters={"kill-on-invalid-dep": "yes", **(extra or {})},
                setup=[f"export PYTHONPATH={cwd}${{PYTHONPATH:+:$PYTHONPATH}}"],  # the job unpickles kwta objects
            )
            payload = {"step": step, "key": key, "settings": settings, "log_dir": str(log_dir), "cwd": str(cwd)}
            submitted = dict(name=step.name, key=key, settings=settings, status="submitted", submitted=now(),
                             attempted=attempted(record, key))
            write_record(log_dir, **submitted)  # before the job exists: a job that starts at once overwrites it
            job = executor.submit(StepJob(), payload)
            jobs[step.name] = job.job_id
            if read_record(log_dir, step.name).get("status") == "submitted":
                write_record(log_dir, **submitted, slurm_job=job.job_id)
            after = f" after {', '.join(waits_for)}" if waits_for else ""
            print(f"[submitted] {step.name}: job {job.job_id}{after}", flush=True)
    return jobs
