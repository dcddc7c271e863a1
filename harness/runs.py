"""One run of a sweep (docs/harness.md "Sweeps"): its spec and how it is trained, skipped or resumed, shared by the
sweep's own process (harness/sweep.py) and its executors (harness/workers.py, harness/slurm.py), which the sweep
drives, so none of them imports the sweep."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rundir as rd
from .config import RunConfig
from .progress import SweepProgress
from .results import FINISHED

__all__ = [
    "Budget",
    "OnDone",
    "Point",
    "RunOptions",
    "RunSpec",
    "finish_detail",
    "is_finished",
    "run_one",
    "skip_finished",
    "start_action",
    "train_run",
]


@dataclass
class Point:
    name: str
    variant: str
    params: dict[str, Any]
    """Every dotted override of the base (variant ``set`` plus the grid assignment)."""
    grid: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSpec:
    name: str
    point: Point
    seed: int
    config: RunConfig


def is_finished(run_dir: Path) -> bool:
    s = rd.read_summary(run_dir)
    return s is not None and s.get("status") in FINISHED


def train_run(
    config: RunConfig,
    run_dir: Path,
    *,
    data_dir: Path | None,
    progress: bool,
    max_minutes: float | None = None,
    track: list[str] | None = None,
    track_group: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Train one run of a sweep, resuming it from its last checkpoint when it has one (restarting it when it
    has files but no checkpoint); returns its metrics.json summary. The one place both the sweep's own
    process and its workers (harness/workers.py) start a run."""
    from .train import train

    resume = rd.latest_checkpoint(run_dir) is not None
    force = rd.is_nonempty(run_dir) and not resume
    return train(
        config,
        run_dir,
        data_dir=data_dir,
        resume=resume,
        force=force,
        progress=progress,
        max_minutes=max_minutes,
        track=track,
        track_group=track_group,
    )


def start_action(run_dir: Path) -> str:
    return "resuming from its last checkpoint" if rd.latest_checkpoint(run_dir) is not None else "training"


def finish_detail(summary: dict[str, Any]) -> str:
    return (
        f"{summary['status']}, val_loss {_loss(summary.get('val_loss'))}, "
        f"smoothed train loss {_loss(summary.get('final_smoothed_loss'))}"
    )


def skip_finished(spec: RunSpec, run_dir: Path, tracker: SweepProgress) -> dict[str, Any] | None:
    """The summary of a run an earlier invocation finished (logged as skipped), else None."""
    if not is_finished(run_dir):
        return None
    summary = rd.read_summary(run_dir)
    assert summary is not None
    tracker.skip(spec.name, f"finished by an earlier invocation ({summary.get('status')}), skipped")
    return summary


def run_one(
    spec: RunSpec,
    run_dir: Path,
    *,
    data_dir: Path | None,
    progress: bool,
    tracker: SweepProgress,
    max_minutes: float | None = None,
    track: list[str] | None = None,
    track_group: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Train (or resume) one run in this process unless an earlier invocation finished it; returns its
    metrics.json summary."""
    summary = skip_finished(spec, run_dir, tracker)
    if summary is not None:
        return summary
    tracker.start(spec.name, start_action(run_dir))
    summary = train_run(
        spec.config,
        run_dir,
        data_dir=data_dir,
        progress=progress,
        max_minutes=max_minutes,
        track=track,
        track_group=track_group,
    )
    tracker.finish(spec.name, finish_detail(summary))
    return summary


def _loss(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else str(v)


OnDone = Callable[[RunSpec, dict[str, Any]], None]


class Budget:
    """The sweep's wall-clock budget (``--max-minutes``): what is left of it for the next run."""

    def __init__(self, max_minutes: float | None) -> None:
        if max_minutes is not None and not (0 < max_minutes < float("inf")):
            raise ValueError(f"max_minutes: must be a positive number of minutes, got {max_minutes!r}")
        self.deadline = time.monotonic() + 60.0 * max_minutes if max_minutes is not None else None

    def wall_deadline(self) -> float | None:
        """The deadline as a ``time.time()`` value, for a worker process's clock."""
        return None if self.deadline is None else time.time() + (self.deadline - time.monotonic())

    def left_minutes(self) -> float | None:
        return None if self.deadline is None else (self.deadline - time.monotonic()) / 60.0

    def spent(self) -> bool:
        left = self.left_minutes()
        return left is not None and left <= 0


@dataclass(frozen=True)
class RunOptions:
    """What every run of the sweep gets besides its config."""

    sweep_dir: Path
    data_dir: Path | None
    budget: Budget
    track: list[str]
    sweep_name: str

    def track_group(self, spec: RunSpec) -> tuple[str, str]:
        return (self.sweep_name, spec.point.name)
