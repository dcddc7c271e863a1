"""Parallel sweeps (`--jobs`): the same runs and results as one process, a clean Ctrl-C, a resumable
`--max-minutes` budget (docs/harness.md "Parallel sweeps")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from muonlab.harness.cli import main
from muonlab.harness.config import ConfigError, validate_sweep
from muonlab.harness.results import read_results
from muonlab.harness.sweep import SweepStopped, run_sweep
from muonlab.harness.train import TIMING_FIELDS

TIMING_COLUMNS = ("elapsed_s", "minutes_to_target_loss")
"""results.csv columns that measure the machine, not the run."""

RUNS = ["adamw_s0", "adamw_s1", "muon_s0", "muon_s1"]
"""The runs of conftest's `par_sweep_file` sweep, in results.csv order."""


def _cli(*args: str, data_dir: Path, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "MUONLAB_DATA_DIR": os.fspath(data_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "muonlab.harness", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


def _wait(proc: subprocess.Popen[str], timeout: float) -> str:
    """The process's output once it exits; killed (and the test failed) if it outlives ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{proc.args} did not finish in {timeout} s:\n{proc.communicate()[0]}") from None


def _results(sweep_dir: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_results(sweep_dir / "results.csv")]


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def assert_same_results(a: Path, b: Path) -> None:
    """results.csv row for row and every run's metrics.jsonl line for line, timing aside, bit for bit."""
    rows_a, rows_b = _results(a), _results(b)
    assert [r["run"] for r in rows_a] == RUNS
    assert rows_a == rows_b
    for run in RUNS:
        assert _metrics(a / "runs" / run) == _metrics(b / "runs" / run), run
    assert json.loads((a / "target.json").read_text()) == json.loads((b / "target.json").read_text())


def test_jobs_2_equals_jobs_1(par_sequential: Path, par_sweep_file: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = _cli(
        "sweep", os.fspath(par_sweep_file), "--out", os.fspath(out), "--jobs", "2", "--no-progress", data_dir=data_dir
    )
    log = _wait(proc, 300)
    assert proc.returncode == 0, log
    assert_same_results(par_sequential, out)
    assert "2 workers, 1 torch thread(s) each" in log
    # the pilot went first, and two runs were under way at once (worker 0 and worker 1)
    assert "run 1/4 adamw_s0: training (worker 0)" in log and "(worker 1)" in log
    for run in RUNS:
        assert json.loads((out / "runs" / run / "config.json").read_text())["torch_threads"] == 1
        assert (out / "logs" / f"{run}.log").read_text().strip().endswith("complete")
    assert not list(out.rglob(".lock"))


def _wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _steps_logged(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def test_sigint_stops_every_worker_and_the_sweep_resumes(
    par_sequential: Path, par_sweep_file: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    args = ("sweep", os.fspath(par_sweep_file), "--out", os.fspath(out), "--jobs", "2", "--no-progress")
    proc = _cli(*args, data_dir=data_dir)
    first_two = [out / "runs" / "adamw_s0", out / "runs" / "adamw_s1"]
    try:
        _wait_for(lambda: all(_steps_logged(r) >= 20 for r in first_two), 120, "both workers to train")
    finally:
        proc.send_signal(signal.SIGINT)  # to the sweep alone: it passes the interrupt on to its workers
    log = _wait(proc, 120)
    assert proc.returncode == 130, log
    assert "sweep stopped: interrupted (SIGINT)" in log
    stopped = [json.loads((r / "metrics.json").read_text()) for r in first_two]
    assert all(s["status"] == "stopped" and 20 <= s["steps"] < 300 for s in stopped), stopped
    assert all(list((r / "checkpoints").glob("step_*.pt")) for r in first_two)
    assert not (out / "runs" / "muon_s0").exists()  # nothing started after the interrupt
    assert not list(out.rglob(".lock"))  # every worker and the sweep released their locks

    proc = _cli(*args, data_dir=data_dir)
    log = _wait(proc, 300)
    assert proc.returncode == 0, log
    assert "adamw_s0: resuming from its last checkpoint (worker 0)" in log
    assert_same_results(par_sequential, out)


def test_bad_jobs_and_devices_are_named(
    par_sweep_file: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = os.fspath(tmp_path / "sweep")
    for extra, message in (
        (["--jobs", "0"], "--jobs: must be at least 1"),
        (["--jobs", "two"], "--jobs: expected a whole number"),
        (["--devices", "a,b"], "--devices: expected comma-separated device indices"),
        (["--max-minutes", "-1"], "--max-minutes: must be a positive number of minutes"),
    ):
        try:
            rc = main(["sweep", os.fspath(par_sweep_file), "--out", out, "--data-dir", os.fspath(data_dir), *extra])
        except SystemExit as exc:  # argparse's own refusal
            rc = exc.code
        assert rc == 2 and message in capsys.readouterr().err, extra
    with pytest.raises(ConfigError, match=r"sweep\.jobs: Input should be greater than 0"):
        validate_sweep({"train": {"steps": 1}, "sweep": {"jobs": 0}})
    # how a sweep runs is not part of what it computes: the same sha256 under any sweep.jobs
    one = validate_sweep({"train": {"steps": 1}, "sweep": {"jobs": 1}})
    assert validate_sweep({"train": {"steps": 1}, "sweep": {"jobs": 4}}).sha256() == one.sha256()


def test_max_minutes_stops_in_process_sweep_and_resumes(
    par_sequential: Path, par_sweep_file: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    sweep = validate_sweep(yaml.safe_load(par_sweep_file.read_text()))
    logs: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(SweepStopped, match=r"time budget \(--max-minutes\) spent"):
        run_sweep(sweep, out, data_dir=data_dir, progress=False, log=logs.append, max_minutes=0.02)
    assert time.monotonic() - t0 < 30
    # the runs in order: complete ones, the one the budget stopped (checkpointed), none started after it; on a
    # loaded machine the 1.2 s may be spent before the first run starts, and then no run has begun
    status = [
        json.loads(m.read_text())["status"] if m.is_file() else None
        for m in (out / "runs" / r / "metrics.json" for r in RUNS)
    ]
    if "stopped" not in status:
        assert status == [None] * len(RUNS), status
    else:
        k = status.index("stopped")
        assert status[:k] == ["complete"] * k and status[k + 1 :] == [None] * (len(RUNS) - k - 1), status
        assert 0 < json.loads((out / "runs" / RUNS[k] / "metrics.json").read_text())["steps"] < 300
    assert not (out / "RESULTS.md").exists()
    run_sweep(sweep, out, data_dir=data_dir, progress=False, log=logs.append)
    assert_same_results(par_sequential, out)


def test_max_minutes_stops_workers_and_resumes(
    par_sequential: Path, par_sweep_file: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    args = ("sweep", os.fspath(par_sweep_file), "--out", os.fspath(out), "--jobs", "2", "--no-progress")
    # 1.2 s: spent before the workers have started, so each trains one step and stops checkpointed
    proc = _cli(*args, "--max-minutes", "0.02", data_dir=data_dir)
    log = _wait(proc, 120)
    assert (
        proc.returncode == 0 and "sweep stopped: time budget (--max-minutes) spent" in log and "Traceback" not in log
    ), log
    stopped = [json.loads((out / "runs" / r / "metrics.json").read_text()) for r in RUNS[:2]]
    assert [s["status"] for s in stopped] == ["stopped", "stopped"] and all(s["steps"] < 300 for s in stopped)
    assert not (out / "runs" / RUNS[2]).exists() and not (out / "RESULTS.md").exists()
    proc = _cli(*args, data_dir=data_dir)
    log = _wait(proc, 300)
    assert proc.returncode == 0, log
    assert_same_results(par_sequential, out)
