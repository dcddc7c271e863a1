"""Train a sweep's runs into SWEEP_DIR/runs from this process, taking each next run that no other process holds.

Usage: python train_runs.py CONFIG SWEEP_DIR   (start it twice for two workers; each run uses the config's
`train.threads`). `muonlab sweep CONFIG --out SWEEP_DIR` afterwards finds every run finished and writes
results.csv and RESULTS.md. The runs are the ones a sequential `muonlab sweep` trains (same configs via
`sweep.make_run`, same seeds and data order; a CPU run with one thread is deterministic), only two at a time.
Sweeps with top-k phases are refused (their later runs depend on earlier results).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from muonlab.harness.config import load_sweep_config
from muonlab.harness.lock import LockError, read_holder
from muonlab.harness.progress import SweepProgress
from muonlab.harness.sweep import RunSpec, expand_points, is_finished, make_run, planned_runs, run_one


def _held(run_dir: Path) -> bool:
    holder = read_holder(run_dir / ".lock") if (run_dir / ".lock").is_file() else None
    if not holder or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    return True


def main(config: str, sweep_dir: str) -> int:
    sweep = load_sweep_config(config)
    if any(p.top_k is not None for p in sweep.sweep.phases):
        raise SystemExit("sweep.phases: top_k phases cannot be trained ahead of their ranking")
    points = expand_points(sweep)
    specs: dict[str, RunSpec] = {}
    for phase in sweep.sweep.phases:
        for point in points:
            for seed in phase.seeds:
                spec = make_run(sweep, point, seed)
                specs.setdefault(spec.name, spec)
    names = planned_runs(points, sweep.sweep.phases)
    tracker = SweepProgress(len(names))
    for name in names:
        run_dir = Path(sweep_dir) / "runs" / name
        if is_finished(run_dir):
            tracker.skip(name, "finished, skipped")
        elif _held(run_dir):
            tracker.skip(name, "held by another process, skipped")
        else:
            try:
                run_one(specs[name], run_dir, data_dir=None, progress=False, tracker=tracker)
            except LockError as exc:
                tracker.skip(name, f"taken by another process ({exc}), skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
