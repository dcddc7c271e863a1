"""results.csv: the names `sweep` writes and `report` reads (docs/harness.md "Sweeps", "Reports").

One row per run: ``run, point, variant, phases, seed``, the config columns (every swept dotted key plus
`CONFIG_KEYS`, each filled with the run's resolved value), ``status, unstable, abort_reason``, the
endpoints (`ENDPOINT_KEYS`), ``target_loss, steps, tokens, elapsed_s, config_sha256``. Shared by both so that
neither imports the other's internals.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from . import rundir as rd

ENDPOINT_KEYS: tuple[str, ...] = (
    "val_loss",
    "final_smoothed_loss",
    "tokens_to_target_loss",
    "minutes_to_target_loss",
    "auc_early_loss",
    "weight_norm_slope",
    "task_accuracy",
)
"""Per-run endpoints in results.csv (docs/harness.md "Endpoints"); ``task_accuracy`` only for fine-tuning runs."""

TASK_COUNTS: tuple[str, ...] = ("task_correct", "task_total")
"""A fine-tuning run's exact-match counts (results.csv columns of a task sweep), pooled by the report's
binomial interval."""

HIGHER_IS_BETTER: frozenset[str] = frozenset({"task_accuracy"})
"""Endpoints where a larger value is better (every other endpoint: lower is better)."""

CENSORED: frozenset[str] = frozenset({"tokens_to_target_loss", "minutes_to_target_loss"})
"""Endpoints a run lacks when it never reached the target within its budget: a decision counts a stable run
without one as +inf (it took longer than its budget), not as missing."""


def orientation(metric: str) -> float:
    """-1 for a `HIGHER_IS_BETTER` endpoint, +1 for every other: ``orientation(m) * value`` is lower for the
    better run, so every ranking sorts ascending."""
    return -1.0 if metric in HIGHER_IS_BETTER else 1.0


def decision_value(row: dict[str, Any], metric: str) -> float | None:
    """``metric`` of a stable results.csv row as a decision reads it: its finite value; +inf for a `CENSORED`
    endpoint the run never reached (it needed more than its budget); None otherwise (missing, or unstable)."""
    if row.get("unstable"):
        return None
    v = row.get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return math.inf if v is None and metric in CENSORED else None


DESIGN_FILE = "design.json"
"""In a sweep dir: each phase's decision (ran with its points, or skipped) and the checks behind it."""

FINISHED: tuple[str, ...] = ("complete", "aborted")
"""metrics.json statuses of a run a sweep does not train again."""

CONFIG_KEYS: tuple[str, ...] = ("optimizer.name", "optimizer.lr", "optimizer.weight_decay")
"""Config columns every results.csv carries, swept or not, so that each row names its optimizer arm."""

RUN_COLS: frozenset[str] = frozenset(
    {
        "run",
        "point",
        "variant",
        "phases",
        "seed",
        "status",
        "unstable",
        "abort_reason",
        "target_loss",
        "steps",
        "tokens",
        "elapsed_s",
        "config_sha256",
        *ENDPOINT_KEYS,
        *TASK_COUNTS,
    }
)
"""The columns that are not config values (every other column is a dotted config key)."""

_INT_COLS = ("seed", "steps", "tokens", *TASK_COUNTS)


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` atomically; columns in first-seen order, ``None`` as an empty cell."""
    if not rows:
        return
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    rd.atomic_write_text(Path(path), buf.getvalue())


def parse_cell(key: str, text: str) -> Any:
    """One results.csv cell: empty -> None, ``unstable`` -> bool, numbers -> float (int for seed/steps/tokens),
    anything else the string."""
    if text == "":
        return None
    if key == "unstable":
        return text == "True"
    try:
        num = float(text)
    except ValueError:
        return text
    if key in _INT_COLS and math.isfinite(num) and num.is_integer():
        return int(num)
    return num


def read_results(path: Path) -> list[dict[str, Any]]:
    """results.csv rows with every cell parsed by `parse_cell`."""
    with Path(path).open(newline="") as f:
        return [{k: parse_cell(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def config_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The config (dotted-key) columns of ``rows``, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in RUN_COLS and k not in cols:
                cols.append(k)
    return cols
