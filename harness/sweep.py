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
from .design import check_selectors, evaluate, matches, rows_of
from .endpoints import summarize
from .progress import SweepProgress
from .report import write_report
from .results import (
    CONFIG_KEYS,
    DESIGN_FILE,
    ENDPOINT_KEYS,
    TASK_COUNTS,
    decision_value,
    orientation,
    write_results,
)
from .runs import Point, RunSpec

if TYPE_CHECKING:
    from .workers import Executor


def _fmt(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return re.sub(r"[^A-Za-z0-9.+-]+", "", s) or "x"


def expand_points(sweep: SweepConfig, grid: dict[str, list[Any]] | None = None) -> list[Point]:
    """Every variant x every assignment of ``grid`` (default: the sweep's grid), named
    ``<variant>_<key>=<value>...``."""
    grid = sweep.sweep.grid if grid is None else grid
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys))) if keys else [()]
    points = []
    for variant in sweep.sweep.variants:
        for combo in combos:
            assignment = dict(zip(keys, combo, strict=True))
            suffix = "".join(f"_{k.split('.')[-1]}={_fmt(v)}" for k, v in assignment.items())
            points.append(
                Point(
                    name=f"{variant.name}{suffix}",
                    variant=variant.name,
                    params={**variant.set, **assignment},
                    grid=assignment,
                )
            )
    return points


def all_points(sweep: SweepConfig) -> list[Point]:
    """Every point some phase can run, each once: the sweep grid's (unless the first phase has its own grid),
    then those of each phase's own grid."""
    out: dict[str, Point] = {}
    phases = sweep.sweep.phases
    for grid in [*([None] if phases[0].grid is None else []), *(p.grid for p in phases if p.grid is not None)]:
        for point in expand_points(sweep, grid):
            out.setdefault(point.name, point)
    return list(out.values())


def with_horizon(point: Point, phase: Phase) -> Point:
    """``point`` under ``phase``'s horizon: its params set ``train.steps`` / ``train.token_budget`` and its name
    ends ``_steps=N`` / ``_tokens=N``, so runs (and report arms) of different horizons never mix. Unchanged for
    a phase without its own horizon."""
    horizon = phase.horizon()
    if not horizon:
        return point
    key, value = next((k, v) for k, v in horizon.items() if v is not None)
    name = f"{point.name}_{'steps' if key == 'train.steps' else 'tokens'}={value}"
    return Point(name=name, variant=point.variant, params={**point.params, **horizon}, grid=point.grid)


def make_run(sweep: SweepConfig, point: Point, seed: int) -> RunSpec:
    """The run of ``point`` with ``seed``, named ``<point>_s<seed>``."""
    base = sweep.base.model_dump(mode="json")
    name = f"{point.name}_s{seed}"
    variant = next(v for v in sweep.sweep.variants if v.name == point.variant)
    data = apply_overrides(without_keys(base, variant.unset), {**point.params, "seed": seed, "name": name})
    try:
        cfg = validate_run(data)
    except ConfigError as exc:
        raise ConfigError(f"sweep point {point.name}: {exc}") from None
    return RunSpec(name=name, point=point, seed=seed, config=cfg)


def point_values(sweep: SweepConfig, points: list[Point], keys: list[str]) -> list[dict[str, Any]]:
    """Each point as a design selector sees it: ``variant``, ``point`` and its resolved config columns."""
    out = []
    for p in points:
        cfg = make_run(sweep, p, 0).config
        out.append({"variant": p.variant, "point": p.name, **{k: config_value(cfg, k) for k in keys}})
    return out


def _rank_points(rows: list[dict[str, Any]], points: list[Point], metric: str) -> list[Point]:
    """``points`` with a stable value of ``metric`` in ``rows``, best mean first (ties by name); a stable run
    that never reached the target counts as +inf for a `CENSORED` endpoint."""
    by_point: dict[str, list[float]] = {}
    for r in rows:
        v = decision_value(r, metric)
        if v is not None:
            by_point.setdefault(r["point"], []).append(v)
    scored = [(orientation(metric) * sum(vs) / len(vs), p.name, p) for p in points if (vs := by_point.get(p.name))]
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
    selection = _Selection(sweep)
    selection.check()  # before anything is written
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
    tracker = SweepProgress(len(planned_runs(sweep, selection=selection)), log=log, bar=progress, workers=runner.jobs)
    try:
        with stop_on_signals():
            runner.describe(tracker)
            try:
                csv_path = _run_phases(sweep, sweep_dir, points, runner, tracker, selection)
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
    """The pilot variant's first point of the first phase (``points``: the sweep grid's) with its first seed."""
    first = sweep.sweep.phases[0]
    if first.grid is not None:
        points = expand_points(sweep, first.grid)
    pilot_point = next(p for p in points if p.variant == sweep.sweep.pilot)
    return make_run(sweep, with_horizon(pilot_point, first), first.seeds[0])


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


class _Selection:
    """Which points each phase runs (docs/harness.md "Pre-registered designs"): its own grid, else the best
    ``top_k`` of its ``rank`` phases, else the last phase's points; plus its ``always`` points."""

    def __init__(self, sweep: SweepConfig) -> None:
        self.sweep = sweep
        self.universe = all_points(sweep)
        horizons = [
            k for k in ("train.steps", "train.token_budget") if any(p.horizon().get(k) for p in sweep.sweep.phases)
        ]
        self.keys = [*config_keys(self.universe), *horizons]
        self.values = {v["point"]: v for v in point_values(sweep, self.universe, self.keys)}
        self.base_of: dict[str, str] = {p.name: p.name for p in self.universe}
        """A run's point name (with its phase's horizon) -> the sweep point's."""

    def at(self, phase: Phase, points: list[Point]) -> list[Point]:
        """``points`` under ``phase``'s horizon (`with_horizon`)."""
        out = [with_horizon(p, phase) for p in points]
        self.base_of.update({q.name: p.name for p, q in zip(points, out, strict=True)})
        return out

    def always(self, phase: Phase) -> list[Point]:
        return [p for p in self.universe if any(matches(sel, self.values[p.name]) for sel in phase.always)]

    def points(
        self, phase: Phase, ran: dict[str, list[Point]], last_ran: str, rows: list[dict[str, Any]] | None
    ) -> list[Point]:
        """The phase's points, given the points of the phases that ran (``ran``, in order; ``last_ran`` the last
        of them, or "" before the first). ``rows`` None: a stand-in for a phase not decided yet, its ``top_k``
        filled with the ``rank`` phases' first points."""
        always = self.always(phase)
        fixed = {p.name for p in always}
        if phase.grid is not None:
            chosen = expand_points(self.sweep, phase.grid)
        elif phase.top_k is not None and rows is None:
            pool = {p.name: p for name in phase.rank or [last_ran] for p in ran.get(name, [])}
            chosen = [p for p in pool.values() if p.name not in fixed][: phase.top_k]
        elif phase.top_k is not None:
            assert rows is not None
            ranked_rows = [{**r, "point": self.base_of[r["point"]]} for r in rows_of(rows, phase.rank or [last_ran])]
            seen = {r["point"] for r in ranked_rows}
            candidates = [p for p in self.universe if p.name in seen and p.name not in fixed]
            chosen = _rank_points(ranked_rows, candidates, phase.metric)[: phase.top_k]
        else:  # the last phase's points (the sweep grid's before the first)
            chosen = list(ran[last_ran]) if last_ran else expand_points(self.sweep)
        names = {p.name for p in chosen}
        return chosen + [p for p in always if p.name not in names]

    def check(self) -> None:
        """`ConfigError` for a design selector that names no column or no point (before anything runs)."""
        check_selectors(self.sweep.sweep, list(self.values.values()))


def planned_runs(
    sweep: SweepConfig, decided: dict[int, list[Point] | None] | None = None, selection: _Selection | None = None
) -> list[str]:
    """The names of the runs the sweep will visit, in order, each once. ``decided``: phase index -> its points,
    or None for a phase skipped by its ``when``; a phase not decided yet stands in as if it ran, with the first
    ``top_k`` points of the phase before it, so the count is exact once every phase is decided. ``selection``:
    the sweep's own (built here when not given)."""
    decided = decided or {}
    selection = selection if selection is not None else _Selection(sweep)
    names: dict[str, None] = {}
    ran: dict[str, list[Point]] = {}
    last_ran = ""
    for i, phase in enumerate(sweep.sweep.phases):
        chosen = decided[i] if i in decided else selection.points(phase, ran, last_ran, None)
        if chosen is None:
            continue
        ran[phase.name], last_ran = chosen, phase.name
        for p in selection.at(phase, chosen):
            for seed in phase.seeds:
                names.setdefault(f"{p.name}_s{seed}", None)
    return list(names)


def _run_phases(
    sweep: SweepConfig,
    sweep_dir: Path,
    points: list[Point],
    executor: Executor,
    tracker: SweepProgress,
    selection: _Selection,
) -> Path:
    """Every phase's runs in order, each phase's runs handed to ``executor`` at once (the pilot first); a run
    shared by two phases is trained once. A phase whose ``when`` fails on the runs before it is skipped.
    The target is frozen before any endpoint is computed, so rows are made only once it is known; results.csv
    is rewritten as runs finish (rows in the phases' run order); design.json records each phase's decision."""
    phases = sweep.sweep.phases
    keys = selection.keys
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

    ran: dict[str, list[Point]] = {}
    last_ran = ""
    decided: dict[int, list[Point] | None] = {}
    record: list[dict[str, Any]] = []
    for i, phase in enumerate(phases):
        checks = [evaluate(c, list(rows.values()), [ph.name for ph in phases[:i]]) for c in phase.when]
        entry: dict[str, Any] = {
            "phase": phase.name,
            "checks": [{"holds": c.holds, "detail": c.detail} for c in checks],
        }
        if not all(c.holds for c in checks):
            decided[i] = None
            record.append({**entry, "status": "skipped"})
            rd.atomic_write_json(sweep_dir / DESIGN_FILE, {"phases": record})
            tracker.set_total(len(planned_runs(sweep, decided, selection)))
            failed = next(c for c in checks if not c.holds)
            tracker.log(f"phase {phase.name}: skipped, its condition does not hold: {failed.detail}")
            continue
        current = selection.points(phase, ran, last_ran, list(rows.values()))
        decided[i] = current
        tracker.set_total(len(planned_runs(sweep, decided, selection)))
        if phase.top_k is not None:
            tracker.log(f"phase {phase.name}: top {phase.top_k} by {phase.metric}: {[p.name for p in current]}")
        record.append({**entry, "status": "ran", "points": [p.name for p in current]})
        rd.atomic_write_json(sweep_dir / DESIGN_FILE, {"phases": record})
        specs: list[RunSpec] = []
        for point in selection.at(phase, current):
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
        ran[phase.name], last_ran = current, phase.name
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
        **{k: ends.get(k, summary.get(k)) for k in ENDPOINT_KEYS},  # task accuracy: scored by the run itself
        **{k: summary[k] for k in TASK_COUNTS if k in summary},
        "target_loss": target,
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "elapsed_s": summary["elapsed_s"],
        "config_sha256": summary["config_sha256"],
    }


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
