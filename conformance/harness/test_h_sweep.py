"""A micro end-to-end sweep: 2 runs x 20 steps -> results.csv, RESULTS.md and PNG plots; resume skips runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from muonlab.harness.arms import build_arms
from muonlab.harness.cli import main
from muonlab.harness.config import validate_sweep
from muonlab.harness.report import ranked
from muonlab.harness.results import read_results
from muonlab.harness.sweep import expand_points, run_sweep


def _sweep_dict(micro: Any, text_file: Path, cache: Path) -> dict[str, Any]:
    base = micro(
        text_file,
        cache,
        train={"steps": 20, "log_every": 2, "eval_every": 10, "stats_every": 5, "checkpoint_every": 10},
    )
    base["sweep"] = {
        "name": "micro",
        "pilot": "adamw",
        "target_factor": 1.05,
        "variants": [
            {
                "name": "adamw",
                "unset": ["optimizer.adam_lr"],  # the base's Muon-only key
                "set": {"optimizer.name": "adamw", "optimizer.lr": 0.003, "optimizer.weight_decay": 0.1},
            },
            {"name": "muon"},
        ],
        "phases": [{"name": "main", "seeds": [0]}],
    }
    return base


def test_micro_sweep_end_to_end(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    sweep = validate_sweep(_sweep_dict(micro, text_file, tmp_path / "cache"))
    out = tmp_path / "sweep"
    logs: list[str] = []
    csv_path = run_sweep(
        sweep, out, data_dir=data_dir, progress=False, command="muonlab sweep micro.toml", log=logs.append
    )
    rows = list(csv.DictReader(csv_path.open()))
    assert sorted(r["run"] for r in rows) == ["adamw_s0", "muon_s0"]
    target = json.loads((out / "target.json").read_text())
    pilot_final = json.loads((out / "runs" / "adamw_s0" / "metrics.json").read_text())["final_smoothed_loss"]
    assert target["target_loss"] == pytest.approx(1.05 * pilot_final)
    for r in rows:
        assert float(r["target_loss"]) == pytest.approx(target["target_loss"])
        assert r["unstable"] == "False" and r["status"] == "complete"
        assert float(r["val_loss"]) > 0
    adamw = next(r for r in rows if r["run"] == "adamw_s0")
    assert adamw["tokens_to_target_loss"] != ""  # the pilot reaches 1.05x its own final loss
    # every config column is filled, Muon rows included (resolved lr and decay of the Keller preset)
    muon = next(r for r in rows if r["run"] == "muon_s0")
    assert (muon["optimizer.name"], float(muon["optimizer.lr"]), float(muon["optimizer.weight_decay"])) == (
        "muon",
        0.02,
        0.0,
    )
    assert (adamw["optimizer.name"], float(adamw["optimizer.lr"])) == ("adamw", 0.003)
    md = (out / "RESULTS.md").read_text()
    for name in ("adamw_s0", "muon_s0", "Reproducibility", "muonlab sweep micro.toml", sweep.sha256()):
        assert name in md
    # one seed per arm: the answer block names no winner and says why
    head = md.split("## Per arm")[0]
    assert "**Muon vs AdamW.**" in head and "no winner is named (one seed per arm" in head
    assert "**Overall: tie within noise**" in head and "Welch's t-test" in head
    assert "(n=1, no spread)" in md and "(winner)" not in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"loss_vs_tokens.png", "endpoints.png", "weight_norms.png"} <= set(pngs)
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    arms = build_arms(read_results(csv_path))
    assert ranked(arms, "val_loss")[0].label == min(rows, key=lambda r: float(r["val_loss"]))["point"]
    # progress: the sweep as a whole, the pilot logged once
    assert any(line.startswith("[sweep] run 1/2 adamw_s0: training") for line in logs)
    assert any(line.startswith("[sweep] run 2/2 muon_s0: complete") and "ETA 0s" in line for line in logs)
    assert not any("skipped" in line for line in logs)

    # resuming the finished sweep trains nothing; report can be re-run from the CLI
    logs.clear()
    run_sweep(sweep, out, data_dir=data_dir, progress=False, log=logs.append)
    assert sum("skipped" in line for line in logs) == 2 and not any("training" in line for line in logs)
    (out / "RESULTS.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "RESULTS.md").is_file()


def test_unstable_runs_are_excluded_from_means() -> None:
    rows = [
        {"run": "a_s0", "point": "a", "variant": "a", "seed": 0, "unstable": True, "val_loss": 1.0},
        {"run": "b_s0", "point": "b", "variant": "b", "seed": 0, "unstable": False, "val_loss": 3.0},
        {"run": "b_s1", "point": "b", "variant": "b", "seed": 1, "unstable": False, "val_loss": 4.0},
    ]
    arms = build_arms(rows)
    assert [a.point for a in ranked(arms, "val_loss")] == ["b"]
    b = next(a for a in arms if a.point == "b")
    assert b.stat("val_loss")[0] == pytest.approx(3.5) and b.stat("val_loss")[2] == 2


def test_phases_pick_top_k(tmp_path: Path) -> None:
    sweep = validate_sweep(
        {
            "train": {"steps": 1},
            "sweep": {
                "grid": {"optimizer.weight_decay": [0.0, 0.1, 0.2]},
                "phases": [{"name": "p1"}, {"name": "p2", "seeds": [0, 1], "top_k": 2}],
            },
        }
    )
    points = expand_points(sweep)
    assert [p.name for p in points] == ["base_weight_decay=0.0", "base_weight_decay=0.1", "base_weight_decay=0.2"]
    from muonlab.harness.sweep import _rank_points

    rows = [
        {"point": p.name, "unstable": u, "val_loss": v}
        for p, u, v in zip(points, (False, True, False), (3.0, 1.0, 2.0), strict=True)
    ]
    assert [p.name for p in _rank_points(rows, points, "val_loss")] == [
        "base_weight_decay=0.2",
        "base_weight_decay=0.0",
    ]
    # the run count of the progress line: 3 points x seed 0, then the top 2 with seeds 0 (shared) and 1
    from muonlab.harness.sweep import planned_runs

    assert len(planned_runs(sweep)) == 5
    chosen = {0: points, 1: [points[2], points[0]]}
    assert planned_runs(sweep, chosen)[3:] == [
        "base_weight_decay=0.2_s1",
        "base_weight_decay=0.0_s1",
    ]


def test_sweep_dir_of_another_sweep_is_refused(tmp_path: Path, text_file: Path, micro: Any) -> None:
    from muonlab.harness.rundir import RunDirError

    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"sweep_sha256": "0" * 64}))
    sweep = validate_sweep(_sweep_dict(micro, text_file, tmp_path / "cache"))
    with pytest.raises(RunDirError, match="different sweep"):
        run_sweep(sweep, out, progress=False)


def test_force_on_another_sweeps_dir_deletes_its_runs(tmp_path: Path, text_file: Path, micro: Any) -> None:
    """--force must not let a finished run of the old sweep stand in for a run of the new one."""
    from muonlab.harness.rundir import RunDirError
    from muonlab.harness.sweep import _write_meta

    out = tmp_path / "sweep"
    stale_run = out / "runs" / "base_weight_decay=0.0_s0"
    stale_run.mkdir(parents=True)
    (stale_run / "metrics.json").write_text(json.dumps({"status": "finished"}))
    (out / "sweep.json").write_text(json.dumps({"sweep_sha256": "0" * 64, "sweep": {"seed": 123}}))
    sweep = validate_sweep(_sweep_dict(micro, text_file, tmp_path / "cache"))
    with pytest.raises(RunDirError, match=r"different sweep \(.*seed: 123 -> "):
        _write_meta(sweep, out, force=False, command=None)
    assert stale_run.is_dir()  # refused: nothing touched
    _write_meta(sweep, out, force=True, command=None)
    assert not stale_run.exists()
    assert json.loads((out / "sweep.json").read_text())["sweep_sha256"] == sweep.sha256()
