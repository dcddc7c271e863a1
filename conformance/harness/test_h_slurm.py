"""Sweeps on a real single-node Slurm through submitit (docs/harness.md "Sweeps on a Slurm cluster"):
submit and return, collect and report with ``--status``, a cancelled job resubmitted, a requeued job resumed
from its checkpoint; the results equal the sweep's in one process. Skipped, with the reason, where Slurm or
submitit is missing (.ci/run installs both)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from slurm_cluster import Cluster, start
from test_h_parallel import RUNS, TIMING_FIELDS, assert_same_results

from muonlab.harness.config import validate_run


@pytest.fixture(scope="module")
def slurm() -> Iterator[Cluster]:
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'muonlab[slurm]')")
    # not under pytest's tmp dirs: munged wants its socket's directories open to everyone (0755)
    root = Path(tempfile.mkdtemp(prefix="muonlab-slurm-"))
    root.chmod(0o755)
    cluster = start(root)
    if isinstance(cluster, str):
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(cluster)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _sweep(cluster: Cluster, data_dir: Path, *args: str) -> tuple[int, str]:
    """One ``muonlab sweep`` invocation against the cluster: (exit status, output)."""
    env = {**cluster.env, "MUONLAB_DATA_DIR": os.fspath(data_dir)}
    res = subprocess.run(
        [sys.executable, "-m", "muonlab.harness", "sweep", *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res.returncode, res.stdout + res.stderr


def _until_reported(cluster: Cluster, data_dir: Path, out: Path, timeout: float = 180) -> list[str]:
    """``muonlab sweep --status OUT`` every 2 s until the report is written; every pass's output."""
    passes = []
    deadline = time.monotonic() + timeout
    while not (out / "RESULTS.md").is_file():
        assert time.monotonic() < deadline, "\n".join(passes[-3:]) + cluster.logs()
        time.sleep(2)
        rc, log = _sweep(cluster, data_dir, "--status", os.fspath(out))
        assert rc == 0, log
        passes.append(log)
    return passes


def _step(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"])
    except (OSError, IndexError, ValueError):
        return 0


def _wait_for(pred: Any, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{cluster.logs()}"
        time.sleep(0.1)


def test_sweep_as_job_arrays_with_a_cancelled_job_resubmitted(
    slurm: Cluster, par_sweep_file: Path, par_sequential: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    rc, log = _sweep(slurm, data_dir, os.fspath(par_sweep_file), "--out", os.fspath(out), "--executor", "slurm")
    assert rc == 0 and "sweep submitted: 4 runs queued or running on Slurm" in log, log
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    array = {j["job_id"].split("_")[0] for j in jobs.values()}
    assert sorted(jobs) == sorted(RUNS) and len(array) == 1, jobs  # one job array for the phase
    assert jobs["adamw_s0"]["job_id"].endswith("_0")  # the pilot first
    # cancel the pilot's job mid-run: it stops checkpointed (SIGTERM); the next pass resubmits it
    pilot = out / "runs" / "adamw_s0"
    _wait_for(lambda: _step(pilot) >= 20, 120, "the pilot's job to train", slurm)
    slurm.run("scancel", jobs["adamw_s0"]["job_id"])
    passes = _until_reported(slurm, data_dir, out)
    text = "\n".join(passes)
    assert "adamw_s0: Slurm job" in text and "ended before the run finished; resubmitting" in text, text
    assert json.loads((out / "slurm" / "jobs.json").read_text())["adamw_s0"]["submissions"] == 2
    assert_same_results(par_sequential, out)


def test_requeued_job_resumes_from_its_checkpoint(
    slurm: Cluster, micro: Any, text_file: Path, data_dir: Path, tmp_path: Path
) -> None:
    base = micro(text_file, tmp_path / "cache", train={"steps": 800, "threads": 1, "log_every": 10})
    base["train"].update(eval_every=400, stats_every=200, checkpoint_every=100)
    base["abort"] = {"enabled": False}  # the micro model overfits its 12 KB; not what this test is about
    base["sweep"] = {"name": "requeue", "variants": [{"name": "muon"}]}
    cfg_file = tmp_path / "requeue.yaml"
    cfg_file.write_text(yaml.safe_dump(base))
    out = tmp_path / "sweep"
    rc, log = _sweep(slurm, data_dir, os.fspath(cfg_file), "--out", os.fspath(out), "--executor", "slurm")
    assert rc == 0 and "queued as Slurm job" in log, log
    job = json.loads((out / "slurm" / "jobs.json").read_text())["muon_s0"]["job_id"]
    run = out / "runs" / "muon_s0"
    _wait_for(lambda: _step(run) >= 100, 120, "the job to pass step 100", slurm)
    slurm.run("scontrol", "requeue", job)
    # Slurm holds a requeued batch job back about two minutes once it is pending again; let it start at once
    _wait_for(lambda: "PENDING" in slurm.run("squeue", "-h", "-r", "-j", job, "-o", "%T"), 60, "the requeue", slurm)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    _until_reported(slurm, data_dir, out, timeout=180)
    job_log = (out / "slurm" / "jobs" / f"{job}_0_log.out").read_text()
    assert "(Slurm job" in job_log and "restart 1)" in job_log and "resuming from step_" in job_log, job_log
    assert json.loads((run / "metrics.json").read_text())["status"] == "complete"
    # the requeued run equals the same run trained without interruption, line for line (timing aside)
    from muonlab.harness.train import train

    ref = tmp_path / "ref"
    train(validate_run(json.loads((run / "config.json").read_text())["config"]), ref, data_dir=data_dir, progress=False)

    def lines(d: Path) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in (d / "metrics.jsonl").read_text().splitlines()
        ]

    assert lines(run) == lines(ref)
