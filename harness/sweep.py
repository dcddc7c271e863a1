"""Sweeps: a base run config x variants x grid x seeds, in phases, run sequentially (docs/harness.md "Sweeps").

* A *point* is one variant with one grid assignment; a *run* is a point with a seed, trained into
  ``SWEEP_DIR/runs/<point>_s<seed>``.
* Phase 1 runs every point with its seeds; a later phase with ``top_k`` runs only the best ``top_k`` points
  of the previous phase (mean of ``metric`` over its stable runs) with its own seeds. A run shared by two
  phases (same point and seed) is trained once.
* The target loss is frozen before any endpoint is computed: ``sweep.target_loss``, else the ``pilot``
  variant's final smoothed loss (first grid point, first seed) times ``target_factor``; it is stored in
  ``SWEEP_DIR/target.json`` and reused when the sweep is resumed.
* A finished run (metrics.json status complete/aborted) is skipped; an interrupted one is resumed from its
  last checkpoint, or restarted when it has none. results.csv is rewritten after every run.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rundir as rd
from .config import ConfigError, RunConfig, SweepConfig, apply_overrides, validate_run
from .endpoints import mean_std

ENDPOINT_KEYS = (
    "val_loss",
    "final_smoothed_loss",
    "tokens_to_target_loss",
    "minutes_to_target_loss",
    "auc_early_loss",
    "weight_norm_slope",
)
FINISHED = ("complete", "aborted")


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


def _fmt(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return re.sub(r"[^A-Za-z0-9.+-]+", "", s) or "x"


def expand_points(sweep: SweepConfig) -> list[Point]:
    keys = list(sweep.sweep.grid)
    combos = list(itertools.product(*(sweep.sweep.grid[k] for k in keys))) if keys else [()]
    points = []
    for variant in sweep.sweep.variants:
        for combo in combos:
            grid = dict(zip(keys, combo, strict=True))
            suffix = "".join(f"_{k.split('.')[-1]}={_fmt(v)}" for k, v in grid.items())
            points.append(
                Point(name=f"{variant.name}{suffix}", variant=variant.name, params={**variant.set, **grid}, grid=grid)
            )
    return points


def make_run(sweep: SweepConfig, point: Point, seed: int) -> RunSpec:
    base = sweep.base.model_dump(mode="json")
    name = f"{point.name}_s{seed}"
    data = apply_overrides(base, {**point.params, "seed": seed, "name": name})
    try:
        cfg = validate_run(data)
    except ConfigError as exc:
        raise ConfigError(f"sweep point {point.name}: {exc}") from None
    return RunSpec(name=name, point=point, seed=seed, config=cfg)


def is_finished(run_dir: Path) -> bool:
    s = rd.read_summary(run_dir)
    return s is not None and s.get("status") in FINISHED


def run_one(spec: RunSpec, run_dir: Path, *, data_dir: Path | None, progress: bool, log: Any = print) -> dict[str, Any]:
    from .train import train

    if is_finished(run_dir):
        log(f"[sweep] {spec.name}: finished, skipped")
        summary = rd.read_summary(run_dir)
        assert summary is not None
        return summary
    resume = rd.latest_checkpoint(run_dir) is not None
    force = rd.is_nonempty(run_dir) and not resume
    log(f"[sweep] {spec.name}: {'resuming' if resume else 'training'}")
    t0 = time.perf_counter()
    summary = train(spec.config, run_dir, data_dir=data_dir, resume=resume, force=force, progress=progress)
    log(
        f"[sweep] {spec.name}: {summary['status']} in {time.perf_counter() - t0:.1f}s, "
        f"val_loss {summary.get('val_loss')}, smoothed {summary.get('final_smoothed_loss')}"
    )
    return summary


def _rank_points(rows: list[dict[str, Any]], points: list[Point], metric: str) -> list[Point]:
    by_point: dict[str, list[Any]] = {}
    for r in rows:
        if not r["unstable"]:
            by_point.setdefault(r["point"], []).append(r.get(metric))
    scored = []
    for p in points:
        mean, _, n = mean_std(by_point.get(p.name, []))
        if n:
            scored.append((mean, p.name, p))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in scored]


def run_sweep(sweep: SweepConfig, sweep_dir: str | Path, **kwargs: Any) -> Path:
    """`_run_sweep_locked` while holding the sweep dir's lock (harness/lock.py): a second process on the same
    sweep dir is refused at once (`lock.LockError` naming the holder) before anything is written."""
    from .lock import DirLock

    with DirLock(Path(sweep_dir), what="sweep dir"):
        return _run_sweep_locked(sweep, sweep_dir, **kwargs)


def _run_sweep_locked(
    sweep: SweepConfig,
    sweep_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    command: str | None = None,
    log: Any = print,
) -> Path:
    """Run (or resume) the sweep into ``sweep_dir``; writes results.csv and RESULTS.md; returns results.csv."""
    from .report import write_report
    from .train import summarize

    sweep_dir = Path(sweep_dir)
    data_dir = Path(data_dir) if data_dir is not None else None
    sha = sweep.sha256()
    meta_path = sweep_dir / "sweep.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("sweep_sha256") != sha and not force:
            raise rd.RunDirError(
                f"{sweep_dir}: holds a different sweep (sha256 {old.get('sweep_sha256')}); use another --out or --force"
            )
    elif rd.is_nonempty(sweep_dir) and not force:
        raise rd.RunDirError(f"{sweep_dir}: exists, is not empty and is not a sweep dir; use another --out or --force")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "runs").mkdir(exist_ok=True)
    commands = []
    if meta_path.is_file():
        commands = json.loads(meta_path.read_text()).get("commands", [])
    if command:
        commands.append(command)
    rd.atomic_write_json(
        meta_path,
        {
            "sweep": sweep.model_dump(mode="json"),
            "sweep_sha256": sha,
            "commands": commands,
            "git": rd.git_info(),
            "versions": rd.versions(),
        },
    )

    points = expand_points(sweep)
    phases = sweep.sweep.phases

    # -- frozen target ---------------------------------------------------------------------------------
    target_path = sweep_dir / "target.json"
    target: float | None
    if sweep.sweep.target_loss is not None:
        target = sweep.sweep.target_loss
        rd.atomic_write_json(target_path, {"target_loss": target, "source": "sweep.target_loss"})
    elif target_path.is_file():
        target = json.loads(target_path.read_text())["target_loss"]
    elif sweep.sweep.pilot is not None:
        pilot_point = next(p for p in points if p.variant == sweep.sweep.pilot)
        spec = make_run(sweep, pilot_point, phases[0].seeds[0])
        log(f"[sweep] pilot run {spec.name} sets the target loss")
        summary = run_one(spec, sweep_dir / "runs" / spec.name, data_dir=data_dir, progress=progress, log=log)
        final = summary.get("final_smoothed_loss")
        if summary.get("unstable") or final is None:
            raise RuntimeError(f"pilot run {spec.name} is unstable ({summary.get('abort_reason')}); no target")
        target = float(final) * sweep.sweep.target_factor
        rd.atomic_write_json(
            target_path,
            {
                "target_loss": target,
                "source": f"pilot {spec.name}",
                "pilot_final_smoothed_loss": final,
                "factor": sweep.sweep.target_factor,
            },
        )
    else:
        target = None
    log(f"[sweep] target loss: {target}")

    rows: dict[str, dict[str, Any]] = {}
    csv_path = sweep_dir / "results.csv"
    current = points
    for i, phase in enumerate(phases):
        if i > 0 and phase.top_k is not None:
            prev = [r for r in rows.values() if phases[i - 1].name in r["phases"].split("+")]
            current = _rank_points(prev, current, phase.metric)[: phase.top_k]
            log(f"[sweep] phase {phase.name}: top {phase.top_k} by {phase.metric}: {[p.name for p in current]}")
        for point in current:
            for seed in phase.seeds:
                spec = make_run(sweep, point, seed)
                run_dir = sweep_dir / "runs" / spec.name
                summary = run_one(spec, run_dir, data_dir=data_dir, progress=progress, log=log)
                cfg = spec.config
                total_tokens = summary["total_steps"] * rd.read_config(run_dir)["tokens_per_step"]
                ends = summarize(
                    run_dir, target=target, auc_fraction=cfg.endpoints.auc_fraction, total_tokens=total_tokens
                )
                if spec.name in rows:
                    row = rows[spec.name]
                    if phase.name not in row["phases"].split("+"):
                        row["phases"] += "+" + phase.name
                    continue
                row = {
                    "run": spec.name,
                    "point": point.name,
                    "variant": point.variant,
                    "phases": phase.name,
                    "seed": seed,
                    **{k: point.params.get(k) for k in all_param_keys(points)},
                    "status": summary["status"],
                    "unstable": bool(summary["unstable"]),
                    "abort_reason": summary.get("abort_reason") or "",
                    **{k: ends.get(k) for k in ENDPOINT_KEYS},
                    "target_loss": target,
                    "steps": summary["steps"],
                    "tokens": summary["tokens"],
                    "elapsed_s": summary["elapsed_s"],
                    "config_sha256": summary["config_sha256"],
                }
                rows[spec.name] = row
                write_results(csv_path, list(rows.values()))
    write_results(csv_path, list(rows.values()))
    write_report(sweep_dir)
    return csv_path


def all_param_keys(points: list[Point]) -> list[str]:
    keys: list[str] = []
    for p in points:
        for k in p.params:
            if k not in keys:
                keys.append(k)
    return keys


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    rd.atomic_write_text(path, buf.getvalue())


def read_results(path: Path) -> list[dict[str, Any]]:
    """results.csv rows with numbers parsed (empty cells -> None, unstable -> bool)."""
    out = []
    with Path(path).open() as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                elif k == "unstable":
                    row[k] = v == "True"
                else:
                    try:
                        num = float(v)
                        row[k] = int(num) if num.is_integer() and k in ("seed", "steps", "tokens") else num
                        if not math.isfinite(num):
                            row[k] = num
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out
