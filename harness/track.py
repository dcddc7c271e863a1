"""Experiment trackers: TensorBoard and Weights & Biases (docs/harness.md "Trackers").

``--track tensorboard`` / ``--track wandb`` (or ``train.track`` / ``sweep.track``) mirror what the run writes
to metrics.jsonl and manifold_stats.jsonl, and its config, into the tracker. metrics.jsonl stays the source
of truth: a tracker that cannot be imported, started or written to prints one warning and is dropped, and
the run goes on.

Scalar names (`metric_scalars`, `stats_scalars`): every numeric field of a metrics.jsonl line under its own
name (``train_loss``, ``smoothed_loss``, ``val_loss``, ``lr``, ``tokens``, ``elapsed_s``, ``tokens_per_s``,
``mfu``), a per-layer list as ``<field>/<index>`` (``max_logit/0``), and each manifold statistic as
``stats/<layer>/<field>`` (``stats/blocks.0.attn.q.weight/weight_norm``); the x axis is the step.

* TensorBoard: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir SWEEP_DIR/runs`` shows a
  sweep's runs side by side); the config as the text ``config``. A resumed run purges what was logged past
  its checkpoint.
* W&B: ``RUN_DIR/wandb``; offline unless ``WANDB_MODE`` says otherwise (``WANDB_MODE=online`` with a key from
  ``wandb login`` or ``WANDB_API_KEY`` uploads; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads later).
  Project ``$WANDB_PROJECT`` or ``muonlab``; a sweep's runs are grouped by sweep (``group``) and arm
  (``job_type``); the run id is fixed by the run dir, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

TrackerName = Literal["tensorboard", "wandb"]
TRACKERS: tuple[TrackerName, ...] = ("tensorboard", "wandb")
_AXIS = ("step",)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def metric_scalars(rec: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record (None and non-numeric fields left out)."""
    out: dict[str, float] = {}
    for key, value in rec.items():
        if key in _AXIS:
            continue
        if isinstance(value, list):
            for i, v in enumerate(value):
                x = _number(v)
                if x is not None:
                    out[f"{key}/{i}"] = x
            continue
        x = _number(value)
        if x is not None:
            out[key] = x
    return out


def stats_scalars(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The scalars of one step's manifold_stats.jsonl records, ``stats/<layer>/<field>``."""
    out: dict[str, float] = {}
    for rec in records:
        for key, value in rec.items():
            x = _number(value)
            if key not in ("step", "tokens", "layer") and x is not None:
                out[f"stats/{rec['layer']}/{key}"] = x
    return out


@dataclass(frozen=True)
class TrackInfo:
    """Who the run is, for the trackers."""

    run_dir: Path
    name: str
    config: dict[str, Any]
    start_step: int
    """0 for a fresh run, the checkpoint's step for a resumed one."""
    group: str | None = None
    """The sweep's name (W&B group)."""
    arm: str | None = None
    """The sweep point (W&B job_type)."""


class _Backend(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _warn(message: str) -> None:
    print(f"muonlab: warning: {message}; metrics.jsonl is complete, the run goes on", file=sys.stderr, flush=True)


class _TensorBoard:
    def __init__(self, info: TrackInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run hides what was logged past its checkpoint (it is logged again)
        purge = info.start_step + 1 if info.start_step else None
        self.writer = SummaryWriter(log_dir=os.fspath(info.run_dir / "tensorboard"), purge_step=purge)
        if not info.start_step:
            self.writer.add_text("config", "```json\n" + json.dumps(info.config, indent=1) + "\n```", 0)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def wandb_run_id(run_dir: Path) -> str:
    """A W&B run id fixed by the run dir's absolute path (a resumed run continues its W&B run)."""
    return hashlib.sha256(os.fspath(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class _WandB:
    def __init__(self, info: TrackInfo) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "muonlab",
            name=info.name,
            id=wandb_run_id(info.run_dir),
            resume="allow",
            group=info.group,
            job_type=info.arm,
            config=info.config,
            dir=os.fspath(info.run_dir),
            # offline unless the user asked for another mode (WANDB_MODE=online with a key uploads)
            mode=os.environ.get("WANDB_MODE") or "offline",  # type: ignore[arg-type]
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


_BACKENDS: dict[str, type[_TensorBoard] | type[_WandB]] = {"tensorboard": _TensorBoard, "wandb": _WandB}


class Trackers:
    """The run's trackers; each call is guarded, a failing tracker is warned about once and dropped."""

    def __init__(self, names: Iterable[str], info: TrackInfo) -> None:
        self.backends: dict[str, _Backend] = {}
        for name in dict.fromkeys(names):
            if name not in _BACKENDS:
                _warn(f"unknown tracker {name!r} (known: {', '.join(TRACKERS)}), not used")
                continue
            try:
                self.backends[name] = _BACKENDS[name](info)
            except Exception as exc:  # a tracker never stops a run
                _warn(f"tracker {name} could not start ({type(exc).__name__}: {exc}); {_hint(name, exc)}")

    def _each(self, what: str, call: Any) -> None:
        for name, backend in list(self.backends.items()):
            try:
                call(backend)
            except Exception as exc:
                _warn(f"tracker {name} failed to {what} ({type(exc).__name__}: {exc}) and is dropped")
                self.backends.pop(name)

    def log_metrics(self, rec: Mapping[str, Any]) -> None:
        scalars, step = metric_scalars(rec), int(rec["step"])
        self._each("log", lambda b: b.log(scalars, step))

    def log_stats(self, records: Sequence[Mapping[str, Any]]) -> None:
        if records:
            scalars, step = stats_scalars(records), int(records[0]["step"])
            self._each("log", lambda b: b.log(scalars, step))

    def close(self) -> None:
        self._each("close", lambda b: b.close())
        self.backends.clear()


def _hint(name: str, exc: Exception) -> str:
    if isinstance(exc, ImportError):
        return "install it with pip install 'muonlab[track]'"
    return "not used for this run"
