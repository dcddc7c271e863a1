"""Sweeps: a base run config x variants x grid x seeds, in phases (docs/harness.md "Sweeps").

* A *point* is one variant with one grid assignment; a *run* is a point with a seed, trained into
  ``SWEEP_DIR/runs/<point>_s<seed>``.
* Phase 1 runs every point with its seeds; a later phase with ``top_k`` runs only the best ``top_k`` points
  of the previous phase (mean of ``metric`` over its stable runs) with its own seeds. A run shared by two
  phases (same point and seed) is trained once.
* The target loss is frozen before any endpoint is computed: ``sweep.target_loss``, else the ``pilot``
  variant's final smoothed loss (first grid point, first seed) times ``target_factor``; it is stored in
  ``SWEEP_DIR/target.json`` and reused when the sweep is resumed.
* A phase's runs go to an executor (harness/workers.py): one at a time in this process, up to ``jobs`` at
  once in worker processes, or as Slurm jobs. Which runs, their order and their results do not depend on it.
* A finished run (metrics.json status complete/aborted) is skipped; an interrupted one is resumed from its
  last checkpoint, or restarted when it has none. results.csv is rewritten as runs finish.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import rundir as rd
from .config import (
    ConfigError,
    Phase,
    RunConfig,
    SweepConfig,
    apply_overrides,
    config_diff,
    format_config_diff,
    validate_run,
    without_keys,
)
from .endpoints import mean_std, summarize
from .progress import SweepProgress
from .report import write_report
from .results import CONFIG_KEYS, ENDPOINT_KEYS, write_results
from .runs import Point, RunSpec

if TYPE_CHECKING:
    from .workers import Executor


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
    variant = next(v for v in sweep.sweep.variants if v.name == point.variant)
    data = apply_overrides(without_keys(base, variant.unset), {**point.params, "seed": seed, "name": name})
    try:
        cfg = validate_run(data)
    except ConfigError as exc:
        raise ConfigError(f"sweep point {point.name}: {exc}") from None
    return RunSpec(name=name, point=point, seed=seed, config=cfg)


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


class SweepStopped(RuntimeError):
    """The sweep stopped before its last run (an interrupt or its time budget); running it again resumes."""

    def __init__(self, reason: str) -> None:
        if "on Slurm" in reason:
            message = f"sweep submitted: {reason}"
        else:
            message = f"sweep stopped: {reason}; the runs so far are checkpointed, run the same command again to resume"
        super().__init__(message)
        self.reason = reason
        self.exit_code = 130 if reason.startswith("interrupted") else 0
        """130 for Ctrl-C (as a shell reports SIGINT), 0 for a spent budget or runs left queued on Slurm."""


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
    log: Callable[[str], Any] = print,
    jobs: int | None = None,
    devices: list[int] | None = None,
    max_minutes: float | None = None,
    track: list[str] | None = None,
    executor: str | None = None,
    slurm: Any = None,
) -> Path:
    """Run (or resume) the sweep into ``sweep_dir`` with ``jobs`` runs at once (default ``sweep.jobs``);
    ``track`` names the trackers of every run (default ``sweep.track``, else the base's ``train.track``);
    ``executor`` "local" or "slurm" (default: "slurm" for a sweep dir submitted to Slurm before, with its
    stored `slurm.SlurmOptions` unless ``slurm`` gives new ones);
    writes results.csv and RESULTS.md; returns results.csv. `SweepStopped` when interrupted (Ctrl-C, SIGTERM)
    or out of ``max_minutes``, with every run checkpointed."""
    from .interrupt import stop_on_signals
    from .workers import make_executor

    sweep_dir = Path(sweep_dir)
    data = Path(data_dir) if data_dir is not None else None
    n_jobs = jobs if jobs is not None else sweep.sweep.jobs
    trackers = track if track is not None else sweep.sweep.track
    runner = make_executor(
        n_jobs,
        devices=devices,
        sweep_dir=sweep_dir,
        data_dir=data,
        progress=progress,
        max_minutes=max_minutes,
        track=list(trackers if trackers is not None else sweep.base.train.track),
        sweep_name=sweep.sweep.name,
        executor=executor,
        slurm=slurm,
    )
    _write_meta(sweep, sweep_dir, force=force, command=command)
    points = expand_points(sweep)
    phases = sweep.sweep.phases
    tracker = SweepProgress(len(planned_runs(points, phases)), log=log, bar=progress, workers=runner.jobs)
    try:
        with stop_on_signals():
            runner.describe(tracker)
            try:
                csv_path = _run_phases(sweep, sweep_dir, points, runner, tracker)
            finally:
                runner.close()
    finally:
        tracker.close()
    write_report(sweep_dir)
    return csv_path


def _write_meta(sweep: SweepConfig, sweep_dir: Path, *, force: bool, command: str | None) -> None:
    """Refuse a sweep dir holding another sweep (naming the keys that differ) or other files; with ``force``
    delete its contents first (keeping the lock), so no run of the old sweep is mistaken for one of this
    sweep. Then write sweep.json."""
    sha = sweep.sha256()
    meta_path = sweep_dir / "sweep.json"
    stale = ""
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("sweep_sha256") != sha:
            diff = format_config_diff(config_diff(old.get("sweep", {}), sweep.model_dump(mode="json")))
            stale = f"holds a different sweep ({diff or 'sha256 differs'})"
    elif rd.is_nonempty(sweep_dir):
        stale = "exists, is not empty and is not a sweep dir"
    if stale and not force:
        raise rd.RunDirError(
            f"{sweep_dir}: {stale}; use another --out, or --force to delete its contents and start over"
        )
    if stale:
        rd.prepare_run_dir(sweep_dir, resume=False, force=True)
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


def _known_target(sweep: SweepConfig, sweep_dir: Path) -> tuple[bool, float | None]:
    """(known, target): ``sweep.target_loss``, else the stored target.json, else no pilot (None); unknown
    while a pilot run has yet to set it."""
    target_path = sweep_dir / "target.json"
    if sweep.sweep.target_loss is not None:
        rd.atomic_write_json(target_path, {"target_loss": sweep.sweep.target_loss, "source": "sweep.target_loss"})
        return True, sweep.sweep.target_loss
    if target_path.is_file():
        return True, float(json.loads(target_path.read_text())["target_loss"])
    return sweep.sweep.pilot is None, None


def pilot_spec(sweep: SweepConfig, points: list[Point]) -> RunSpec:
    """The pilot variant's first grid point with the first seed of the first phase."""
    pilot_point = next(p for p in points if p.variant == sweep.sweep.pilot)
    return make_run(sweep, pilot_point, sweep.sweep.phases[0].seeds[0])


def _target_from_pilot(sweep: SweepConfig, sweep_dir: Path, spec: RunSpec, summary: dict[str, Any]) -> float:
    """Freeze the pilot's final smoothed loss x ``target_factor`` into target.json."""
    final = summary.get("final_smoothed_loss")
    if summary.get("unstable") or final is None:
        raise RuntimeError(f"pilot run {spec.name} is unstable ({summary.get('abort_reason')}); no target")
    target = float(final) * sweep.sweep.target_factor
    rd.atomic_write_json(
        sweep_dir / "target.json",
        {
            "target_loss": target,
            "source": f"pilot {spec.name}",
            "pilot_final_smoothed_loss": final,
            "factor": sweep.sweep.target_factor,
        },
    )
    return target


def _run_phases(
    sweep: SweepConfig, sweep_dir: Path, points: list[Point], executor: Executor, tracker: SweepProgress
) -> Path:
    """Every phase's runs in order, each phase's runs handed to ``executor`` at once (the pilot first); a run
    shared by two phases is trained once. The target is frozen before any endpoint is computed, so rows are
    made only once it is known; results.csv is rewritten as runs finish (rows in the phases' run order)."""
    phases = sweep.sweep.phases
    keys = config_keys(points)
    rows: dict[str, dict[str, Any]] = {}
    csv_path = sweep_dir / "results.csv"
    known, target = _known_target(sweep, sweep_dir)
    pilot = None if known else pilot_spec(sweep, points)
    if pilot is not None:
        tracker.log(f"pilot run {pilot.name} sets the target loss")
    else:
        tracker.log(f"target loss: {target}")
    done: dict[str, dict[str, Any]] = {}
    phase_specs: list[RunSpec] = []  # the phase under way: its runs in run order, and its name
    phase_name: list[str] = []

    def add_rows(specs: list[RunSpec]) -> None:
        for spec in specs:
            if spec.name in done and spec.name not in rows:
                rows[spec.name] = _row(spec, phase_name[0], keys, done[spec.name], sweep_dir, target)
        write_results(csv_path, list(rows.values()))

    def on_done(spec: RunSpec, summary: dict[str, Any]) -> None:
        nonlocal target, pilot
        done[spec.name] = summary
        if pilot is not None and spec.name == pilot.name:
            target, pilot = _target_from_pilot(sweep, sweep_dir, spec, summary), None
            tracker.log(f"target loss: {target}")
        if pilot is None:  # rows in run order: a run's row waits for every run before it in its phase
            ready = list(itertools.takewhile(lambda s: s.name in done, phase_specs))
            add_rows(ready)

    current = points
    chosen: dict[int, list[Point]] = {}
    for i, phase in enumerate(phases):
        if i > 0 and phase.top_k is not None:
            prev = [r for r in rows.values() if phases[i - 1].name in r["phases"].split("+")]
            current = chosen[i] = _rank_points(prev, current, phase.metric)[: phase.top_k]
            tracker.set_total(len(planned_runs(points, phases, chosen)))
            tracker.log(f"phase {phase.name}: top {phase.top_k} by {phase.metric}: {[p.name for p in current]}")
        specs: list[RunSpec] = []
        for point in current:
            for seed in phase.seeds:
                spec = make_run(sweep, point, seed)
                if spec.name in rows:
                    row = rows[spec.name]
                    if phase.name not in row["phases"].split("+"):
                        row["phases"] += "+" + phase.name
                elif all(s.name != spec.name for s in specs):
                    specs.append(spec)
        queue = [s for s in specs if s.name not in done]
        if pilot is not None:
            first = pilot.name
            queue.sort(key=lambda s: s.name != first)  # stable: the pilot first, the rest in order
        phase_specs[:] = specs
        phase_name[:] = [phase.name]
        executor.run(queue, tracker, on_done)
        if executor.stopped is not None:
            raise SweepStopped(executor.stopped)
        add_rows(phase_specs)
    write_results(csv_path, list(rows.values()))
    return csv_path


def _row(
    spec: RunSpec, phase: str, keys: list[str], summary: dict[str, Any], sweep_dir: Path, target: float | None
) -> dict[str, Any]:
    run_dir = sweep_dir / "runs" / spec.name
    total_tokens = summary["total_steps"] * rd.read_config(run_dir)["tokens_per_step"]
    ends = summarize(run_dir, target=target, auc_fraction=spec.config.endpoints.auc_fraction, total_tokens=total_tokens)
    return result_row(spec, phase, keys, summary, ends, target)


def result_row(
    spec: RunSpec,
    phase: str,
    keys: list[str],
    summary: dict[str, Any],
    ends: dict[str, Any],
    target: float | None,
) -> dict[str, Any]:
    """One results.csv row (harness/results.py): the config columns hold the run's resolved values."""
    return {
        "run": spec.name,
        "point": spec.point.name,
        "variant": spec.point.variant,
        "phases": phase,
        "seed": spec.seed,
        **{k: config_value(spec.config, k) for k in keys},
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


def planned_runs(points: list[Point], phases: list[Phase], chosen: dict[int, list[Point]] | None = None) -> list[str]:
    """The names of the runs the sweep will visit, in order, each once. A top-k phase not resolved yet (not in
    ``chosen``, phase index -> its points) stands in with the first k points of the previous phase, so the
    count is exact once every top-k phase is resolved."""
    chosen = chosen or {}
    names: dict[str, None] = {}
    current = points
    for i, phase in enumerate(phases):
        if i > 0 and phase.top_k is not None:
            current = chosen.get(i, current[: phase.top_k])
        for p in current:
            for seed in phase.seeds:
                names.setdefault(f"{p.name}_s{seed}", None)
    return list(names)


def all_param_keys(points: list[Point]) -> list[str]:
    """Every dotted key some point sets, in first-seen order."""
    keys: list[str] = []
    for p in points:
        for k in p.params:
            if k not in keys:
                keys.append(k)
    return keys


def config_keys(points: list[Point]) -> list[str]:
    """The config columns of results.csv: `results.CONFIG_KEYS`, then every other swept key."""
    return [*CONFIG_KEYS, *(k for k in all_param_keys(points) if k not in CONFIG_KEYS)]


def config_value(cfg: RunConfig, key: str) -> Any:
    """The run's resolved value of the dotted config ``key``: the config's own value, else the default the
    trainer uses (Muon's lr and weight decay from its preset, AdamW's decay 0, a model field from
    ``model.base``); None for a key the config does not have or leaves unset."""
    node: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if node is not None:
        return node
    opt = cfg.optimizer
    if key == "optimizer.lr" and opt.name == "muon":
        return float(opt.muon_spec().lr)
    if key == "optimizer.weight_decay":
        return float(opt.muon_spec().weight_decay) if opt.name == "muon" else 0.0
    if key.startswith("model."):
        from .model import MODEL_CONFIGS

        base = MODEL_CONFIGS.get(cfg.model.base)
        return getattr(base, key.split(".", 1)[1], None) if base is not None else None
    return None
