"""Sweeps on a Slurm cluster through submitit (docs/harness.md "Sweeps on a Slurm cluster").

`SlurmJobs` is the sweep's executor for ``--executor slurm``. Each invocation of ``muonlab sweep`` is one
pass: runs that finished are collected (their rows written), runs whose job is still queued or running are
left alone, and every other run of the current phase (never submitted, or its job ended without finishing
the run: failed, cancelled, out of time) is submitted, all of them as one job array. The command then
returns (`sweep.SweepStopped`, exit 0); the next ``muonlab sweep CONFIG`` or ``muonlab sweep --status DIR``
makes the next pass, advancing to the next phase once one is complete and writing the report at the end.

A job runs `SlurmRun`: the run trains with `runs.train_run`, which resumes from the run's last checkpoint,
so a job that Slurm requeues (``scontrol requeue``, preemption, node failure) or a resubmitted one continues
where the run's checkpoints left it. SIGTERM (what Slurm sends before it kills a job) stops the run
checkpointed after its current step (harness/interrupt.py); submitit requeues a job that reaches its time
limit. A run with ``gpus_per_run > 1`` runs under ``torchrun --nproc_per_node G`` inside its job.

State: ``SWEEP_DIR/slurm/executor.json`` (the Slurm options; a later pass reuses them) and ``jobs.json``
(run -> job id, submissions); submitit's files and each job's log in ``SWEEP_DIR/slurm/jobs/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import rundir as rd
from .progress import SweepProgress
from .runs import RunSpec, skip_finished

if TYPE_CHECKING:
    from .runs import OnDone, RunOptions

ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED")
"""squeue states of a job that may still finish its run."""

MAX_SUBMISSIONS = 3
"""Submissions of one run before the sweep gives up on it (each one resumes from the run's checkpoints)."""


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how the runs' jobs are submitted (stored in ``SWEEP_DIR/slurm/executor.json``)."""

    partition: str | None = None
    account: str | None = None
    time_min: int = 60
    """Each job's time limit in minutes (a run that hits it is requeued and resumes)."""
    gpus_per_run: int = 0
    cpus_per_run: int = 1

    def __post_init__(self) -> None:
        for name in ("time_min", "cpus_per_run"):
            if getattr(self, name) < 1:
                raise ValueError(f"--slurm-{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_run < 0:
            raise ValueError(f"--gpus-per-run: must be >= 0, got {self.gpus_per_run}")


def options_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "slurm" / "executor.json"


def stored_options(sweep_dir: Path) -> SlurmOptions | None:
    """The Slurm options a previous pass stored, or None for a sweep that was never submitted to Slurm."""
    path = options_path(sweep_dir)
    return SlurmOptions(**json.loads(path.read_text())) if path.is_file() else None


def _squeue(job_ids: list[str]) -> dict[str, str]:
    """job id -> state, for the ids among ``job_ids`` that Slurm still knows (array tasks one per line)."""
    if not job_ids:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    states = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    return {j: states[j].strip() for j in job_ids if j in states}


class SlurmRun:
    """What one Slurm job runs: train (or resume) one sweep run. Picklable (submitit sends it to the job)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job

    def __call__(self) -> str:
        from .interrupt import request_stop

        # Slurm sends SIGTERM before it kills a job (scancel, requeue, preemption): stop checkpointed
        signal.signal(signal.SIGTERM, lambda signum, frame: request_stop("stopped by Slurm (SIGTERM)"))
        run_dir = Path(self.job["run_dir"])
        ckpt = rd.latest_checkpoint(run_dir)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(
            f"{run_dir}: {'resuming from ' + ckpt.name if ckpt else 'training'} "
            f"(Slurm job {os.environ.get('SLURM_JOB_ID')}, restart {restarts})",
            flush=True,
        )
        if int(self.job["gpus"]) > 1:
            return self._torchrun(run_dir, resume=ckpt is not None)
        from .config import validate_run
        from .runs import train_run

        summary = train_run(
            validate_run(self.job["config"]),
            run_dir,
            data_dir=Path(self.job["data_dir"]) if self.job.get("data_dir") else None,
            progress=False,
            track=self.job.get("track"),
            track_group=tuple(self.job["track_group"]) if self.job.get("track_group") else None,
        )
        print(f"{run_dir}: {summary['status']}", flush=True)
        return str(summary["status"])

    def _torchrun(self, run_dir: Path, *, resume: bool) -> str:
        """The run on every GPU of the job: ``torchrun --standalone --nproc_per_node G muonlab train``."""
        config = run_dir.parent.parent / "slurm" / "configs" / f"{run_dir.name}.yaml"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.job['gpus']}"]
        cmd += ["-m", "muonlab.harness", "train", os.fspath(config), "--out", os.fspath(run_dir), "--no-progress"]
        if self.job.get("data_dir"):
            cmd += ["--data-dir", self.job["data_dir"]]
        if resume:
            cmd.append("--resume")
        elif rd.is_nonempty(run_dir):
            cmd.append("--force")
        for tracker in self.job.get("track") or []:
            cmd += ["--track", tracker]
        subprocess.run(cmd, check=True)
        summary = rd.read_summary(run_dir) or {}
        return str(summary.get("status"))

    def checkpoint(self) -> Any:
        """submitit's hook at the time limit or preemption: requeue the same run (it resumes)."""
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRun(self.job))


class SlurmJobs:
    """The sweep executor that submits a phase's unfinished runs as one Slurm job array."""

    jobs = 1

    def __init__(self, opts: RunOptions, slurm: SlurmOptions) -> None:
        missing = [c for c in ("sbatch", "squeue") if shutil.which(c) is None]
        if missing:
            raise ValueError(f"--executor slurm: {', '.join(missing)} not found on PATH (is this a Slurm login node?)")
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ValueError("--executor slurm: submitit is not installed (pip install 'muonlab[slurm]')") from None
        self.opts = opts
        self.slurm = slurm
        self.stopped: str | None = None
        self.dir = Path(opts.sweep_dir) / "slurm"

    def describe(self, tracker: SweepProgress) -> None:
        s = self.slurm
        where = f"partition {s.partition or '(default)'}" + (f", account {s.account}" if s.account else "")
        tracker.log(f"Slurm: {where}, {s.cpus_per_run} CPUs and {s.gpus_per_run} GPUs per run, {s.time_min} min")

    def close(self) -> None:
        pass

    def _jobs(self) -> dict[str, dict[str, Any]]:
        path = self.dir / "jobs.json"
        return dict(json.loads(path.read_text())) if path.is_file() else {}

    def run(self, specs: list[RunSpec], tracker: SweepProgress, on_done: OnDone) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        rd.atomic_write_json(options_path(self.opts.sweep_dir), asdict(self.slurm))
        jobs = self._jobs()
        live = _squeue([j["job_id"] for j in jobs.values()])
        submit: list[RunSpec] = []
        waiting = 0
        for spec in specs:
            run_dir = self.opts.sweep_dir / "runs" / spec.name
            summary = skip_finished(spec, run_dir, tracker)
            if summary is not None:
                on_done(spec, summary)
                continue
            entry = jobs.get(spec.name)
            if entry is not None and entry["job_id"] in live:
                waiting += 1
                tracker.log(f"{spec.name}: Slurm job {entry['job_id']} {live[entry['job_id']].lower()}")
                continue
            if entry is not None:
                if entry["submissions"] >= MAX_SUBMISSIONS:
                    raise RuntimeError(
                        f"run {spec.name}: {entry['submissions']} Slurm jobs ended without finishing it; see "
                        f"{self.dir / 'jobs' / (entry['job_id'] + '_0_log.err')} and {run_dir}"
                    )
                tracker.log(f"{spec.name}: Slurm job {entry['job_id']} ended before the run finished; resubmitting")
            submit.append(spec)
        if submit:
            ids = self._submit(submit)
            for spec, job_id in zip(submit, ids, strict=True):
                n = jobs.get(spec.name, {}).get("submissions", 0) + 1
                jobs[spec.name] = {"job_id": job_id, "submissions": n}
                tracker.log(f"{spec.name}: queued as Slurm job {job_id}")
            rd.atomic_write_json(self.dir / "jobs.json", jobs)
        if submit or waiting:
            self.stopped = (
                f"{len(submit) + waiting} runs queued or running on Slurm "
                f"(muonlab sweep --status {self.opts.sweep_dir} collects them and goes on)"
            )

    def _submit(self, specs: list[RunSpec]) -> list[str]:
        import submitit
        import yaml  # type: ignore[import-untyped]

        s = self.slurm
        ex = submitit.SlurmExecutor(folder=self.dir / "jobs")
        params: dict[str, Any] = {
            "job_name": f"muonlab-{self.opts.sweep_name}",
            "time": s.time_min,
            "cpus_per_task": s.cpus_per_run,
            "ntasks_per_node": 1,
            "signal_delay_s": 60,
        }
        if s.partition:
            params["partition"] = s.partition
        if s.account:
            params["account"] = s.account
        if s.gpus_per_run:
            params["gpus_per_node"] = s.gpus_per_run
        ex.update_parameters(**params)
        configs = self.dir / "configs"
        configs.mkdir(exist_ok=True)
        runs = []
        for spec in specs:
            cfg = spec.config.model_dump(mode="json")
            rd.atomic_write_text(configs / f"{spec.name}.yaml", yaml.safe_dump(cfg))  # torchrun's `muonlab train`
            runs.append(
                SlurmRun(
                    {
                        "config": cfg,
                        "run_dir": os.fspath(self.opts.sweep_dir / "runs" / spec.name),
                        "data_dir": os.fspath(self.opts.data_dir) if self.opts.data_dir is not None else None,
                        "gpus": s.gpus_per_run,
                        "track": self.opts.track,
                        "track_group": self.opts.track_group(spec),
                    }
                )
            )
        with ex.batch():
            submitted = [ex.submit(r) for r in runs]
        return [str(j.job_id) for j in submitted]
