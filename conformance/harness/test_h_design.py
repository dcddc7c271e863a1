"""Pre-registered designs (harness/design.py, harness/sweep.py): conditions on synthetic rows, config validation,
and micro sweeps driven through every branch (a phase run, skipped by a failing or an undecidable condition;
top-k over several phases plus `always`; per-phase horizons; success / not supported / not run), resume and
the frozen design."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from muonlab.harness.config import (
    Condition,
    ConfigError,
    Criteria,
    load_sweep_config,
    shipped_configs_dir,
    validate_sweep,
)
from muonlab.harness.design import evaluate, outcome
from muonlab.harness.results import read_results
from muonlab.harness.sweep import planned_runs, run_sweep

WD = "optimizer.weight_decay"


def _row(
    wd: float, seed: int, value: float | None, *, metric: str = "val_loss", unstable: bool = False, phases: str = "p1"
) -> dict[str, Any]:
    point = f"muon_weight_decay={wd}"
    return {
        "run": f"{point}_s{seed}",
        "point": point,
        "variant": "muon",
        "phases": phases,
        "seed": seed,
        WD: wd,
        "unstable": unstable,
        metric: value,
    }


def _cond(**kw: Any) -> Condition:
    return Condition.model_validate({"arm": {WD: 0.1}, "baseline": {WD: 0.0}, **kw})


def _rows(base: list[float], arm: list[float], metric: str = "val_loss") -> list[dict[str, Any]]:
    return [_row(0.0, s, v, metric=metric) for s, v in enumerate(base)] + [
        _row(0.1, s, v, metric=metric) for s, v in enumerate(arm)
    ]


# -- conditions on rows -------------------------------------------------------------------------------------


def test_improves_on_the_means_by_default_and_by_a_threshold() -> None:
    rows = _rows([3.0, 3.2], [2.9, 3.0])  # means 3.1 vs 2.95: 0.15 better, 4.8%
    assert evaluate(_cond(), rows, ["p1"]).holds is True
    assert evaluate(_cond(min_improvement=0.14), rows, ["p1"]).holds is True
    assert evaluate(_cond(min_improvement=0.16), rows, ["p1"]).holds is False
    assert evaluate(_cond(min_improvement_pct=4.83), rows, ["p1"]).holds is True
    assert evaluate(_cond(min_improvement_pct=5.0), rows, ["p1"]).holds is False
    swapped = evaluate(_cond(arm={WD: 0.0}, baseline={WD: 0.1}), rows, ["p1"])
    assert swapped.holds is False and "improvement -0.15" in swapped.detail


def test_per_seed_counts_pair_by_seed() -> None:
    # tokens to target: seed 0 and 2 improve by 10%, seed 1 gets worse; the mean improves by 3.3%
    rows = _rows([100.0, 100.0, 100.0], [90.0, 110.0, 90.0], metric="tokens_to_target_loss")
    c = _cond(metric="tokens_to_target_loss", min_improvement_pct=5.0)
    assert evaluate(c, rows, ["p1"]).holds is False  # on the mean
    two = evaluate(c.model_copy(update={"seeds_at_least": 2}), rows, ["p1"])
    assert two.holds is True and "2 of 3 paired seeds" in two.detail
    assert evaluate(c.model_copy(update={"seeds_at_least": 3}), rows, ["p1"]).holds is False
    # fewer paired seeds than asked for cannot decide
    assert evaluate(c.model_copy(update={"seeds_at_least": 4}), rows, ["p1"]).holds is None


def test_a_run_that_never_reaches_the_target_counts_as_beyond_its_budget() -> None:
    c = _cond(metric="tokens_to_target_loss", min_improvement_pct=5.0, seeds_at_least=2)
    reached = _rows([None, None, 100.0], [90.0, 90.0, 120.0], metric="tokens_to_target_loss")  # type: ignore[list-item]
    assert evaluate(c, reached, ["p1"]).holds is True  # the arm reaches it where the baseline never does
    never = _rows([100.0, 100.0, 100.0], [None, None, 90.0], metric="tokens_to_target_loss")  # type: ignore[list-item]
    assert evaluate(c, never, ["p1"]).holds is False
    both = _rows([None, None], [None, None], metric="tokens_to_target_loss")  # type: ignore[list-item]
    assert evaluate(c.model_copy(update={"seeds_at_least": 1}), both, ["p1"]).holds is False
    # val loss has no such reading: a missing value is missing
    assert evaluate(_cond(), _rows([3.0], [None]), ["p1"]).holds is None  # type: ignore[list-item]


def test_p_below_uses_the_paired_test_and_the_right_direction() -> None:
    base = [3.60, 3.65, 3.58, 3.62, 3.61]
    better = [v - 0.02 + 0.001 * (i % 2) for i, v in enumerate(base)]  # 0.02 better in every seed
    check = evaluate(_cond(p_below=0.05), _rows(base, better), ["p1"])
    assert check.holds is True and "paired t-test" in check.detail and "95% CI" in check.detail
    # the same gap in the other direction is significant but not an improvement
    assert evaluate(_cond(p_below=0.05), _rows(better, base), ["p1"]).holds is False
    # noise as large as the gap: no decision at p < 0.05
    noisy = [v + d for v, d in zip(base, (-0.1, 0.08, -0.07, 0.09, -0.02), strict=True)]
    assert evaluate(_cond(p_below=0.05), _rows(base, noisy), ["p1"]).holds is False
    # without shared seeds the test is Welch's
    unpaired = [_row(0.0, s, v) for s, v in enumerate(base)] + [_row(0.1, 10 + s, v) for s, v in enumerate(better)]
    assert "Welch t-test" in evaluate(_cond(p_below=0.05), unpaired, ["p1"]).detail


def test_higher_is_better_metrics_flip_the_direction() -> None:
    rows = _rows([0.10, 0.12], [0.20, 0.22], metric="task_accuracy")
    assert evaluate(_cond(metric="task_accuracy", min_improvement=0.1), rows, ["p1"]).holds is True
    assert evaluate(_cond(metric="task_accuracy", arm={WD: 0.0}, baseline={WD: 0.1}), rows, ["p1"]).holds is False


def test_best_arm_excludes_the_baseline_and_follows_the_metric() -> None:
    rows = [*_rows([3.0], [3.1]), _row(0.05, 0, 3.05), _row(0.2, 0, 2.5, unstable=True)]
    check = evaluate(_cond(arm="best"), rows, ["p1"])
    # decay 0 is the best arm, but it is the baseline; decay 0.2 is unstable: the best other arm is 0.05
    assert check.holds is False and check.detail.startswith("muon_weight_decay=0.05 vs muon_weight_decay=0.0")


def test_stable_tests_and_phase_filters() -> None:
    rows = [*_rows([3.0, 3.1], [2.9, 3.0]), _row(0.2, 0, 9.0, unstable=True, phases="p2")]
    stable = Condition(test="stable")
    assert evaluate(stable, rows, ["p1"]).holds is True
    failed = evaluate(stable, rows, ["p1", "p2"])
    assert failed.holds is False and "muon_weight_decay=0.2_s0" in failed.detail
    assert evaluate(stable, rows, ["p3"]).holds is None
    # a run shared by two phases belongs to both
    shared = [{**r, "phases": "p1+p2"} for r in _rows([3.0], [2.9])]
    assert evaluate(_cond(phases=["p2"]), shared, ["p1"]).holds is True
    assert evaluate(_cond(phases=["p3"]), shared, ["p1"]).holds is None


def test_outcome_rules() -> None:
    rows = _rows([3.0, 3.1], [2.9, 3.0])
    holds, fails, undecided = _cond(), _cond(min_improvement=1.0), _cond(phases=["never_ran"])
    assert outcome(Criteria(primary=[holds], secondary=[holds]), rows, ["p1"])[0] == "success"
    assert outcome(Criteria(primary=[holds], secondary=[fails]), rows, ["p1"])[0] == "not supported"
    assert outcome(Criteria(primary=[undecided, fails]), rows, ["p1"])[0] == "not supported"  # a failure decides
    assert outcome(Criteria(primary=[holds, undecided]), rows, ["p1"])[0] == "not run"
    verdict, checks = outcome(Criteria(primary=[holds], secondary=[undecided]), rows, ["p1"])
    assert verdict == "not run" and [c.holds for c in checks] == [True, None]


# -- config validation ----------------------------------------------------------------------------------------


def _design(micro: Any, text_file: Path, cache: Path, phases: list[dict[str, Any]], **sweep: Any) -> dict[str, Any]:
    base = micro(
        text_file, cache, train={"steps": 6, "log_every": 1, "eval_every": 3, "stats_every": 3, "checkpoint_every": 3}
    )
    base["sweep"] = {
        "name": "design",
        "variants": [{"name": "muon"}],
        "grid": {WD: [0.0, 0.1, 0.2]},
        "phases": phases,
        **sweep,
    }
    return base


@pytest.mark.parametrize(
    ("phases", "criteria", "message"),
    [
        ([{"name": "a"}, {"name": "a"}], None, "phase names must be unique"),
        ([{"name": "a", "top_k": 1}], None, "the first phase has nothing before it"),
        ([{"name": "a"}, {"name": "b", "top_k": 1, "rank": ["c"]}], None, "'c' is not an earlier phase"),
        (
            [{"name": "a"}, {"name": "b", "when": [{"test": "stable", "phases": ["b"]}]}],
            None,
            "'b' is not an earlier phase",
        ),
        ([{"name": "a", "steps": 3, "token_budget": 64}], None, "give one horizon"),
        ([{"name": "a"}, {"name": "b", "grid": {WD: [0.3]}, "top_k": 1}], None, "cannot also select by top_k"),
        ([{"name": "a", "always": [{"optimizer.nope": 1}]}], None, "unknown config key 'optimizer.nope'"),
        ([{"name": "a"}], {"primary": [{"arm": {WD: 0.1}}]}, "needs both arm and baseline"),
        (
            [{"name": "a"}],
            {"primary": [{"arm": {WD: 0.1}, "baseline": {WD: 0.0}, "metric": "loss"}]},
            "is not an endpoint",
        ),
        ([{"name": "a"}], {"primary": [{"test": "stable", "p_below": 0.05}]}, "a 'stable' test takes no p_below"),
        ([{"name": "a"}], {"primary": [{"test": "stable", "phases": ["z"]}]}, "criteria: 'z' is not a phase"),
        ([{"name": "a"}], {"primary": []}, "criteria.primary"),
    ],
)
def test_bad_designs_are_refused_naming_the_key(
    tmp_path: Path, text_file: Path, micro: Any, phases: list[dict[str, Any]], criteria: Any, message: str
) -> None:
    extra = {"criteria": criteria} if criteria is not None else {}
    with pytest.raises(ConfigError, match=message):
        validate_sweep(_design(micro, text_file, tmp_path, phases, **extra))


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"optimizer.lr": 0.5}, r"matches no point"),
        ({"model.d_model": 32}, r"model.d_model is not a config column"),
        ({"variant": "muon"}, r"matches 3 points"),
    ],
)
def test_selectors_must_name_one_point(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any, selector: Any, message: str
) -> None:
    criteria = {"primary": [{"arm": selector, "baseline": {WD: 0.0}}]}
    sweep = validate_sweep(_design(micro, text_file, tmp_path, [{"name": "a"}], criteria=criteria))
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=message):
        run_sweep(sweep, out, data_dir=data_dir, progress=False, log=lambda _: None)
    assert not (out / "runs").exists()  # refused before anything is written


def test_a_sweep_without_a_design_keeps_its_dump() -> None:
    """The design fields are left out of the dump (and sha256) while unused, so older sweeps resume."""
    sweep = validate_sweep({"train": {"steps": 1}, "sweep": {"grid": {WD: [0.0, 0.1]}}})
    dumped = sweep.model_dump(mode="json")["sweep"]
    assert "criteria" not in dumped and set(dumped["phases"][0]) == {"name", "seeds", "top_k", "metric"}


# -- micro sweeps through every branch ----------------------------------------------------------------------------

NEVER = 1e9  # an improvement threshold no run meets
ALWAYS = -1e9  # one every pair of runs meets


def test_a_design_runs_its_phases_by_their_conditions(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    """screen (3 points, 6 steps) -> extra (its own grid, runs: its condition holds) -> skipped (its condition
    fails) -> undecided (its condition names a phase that did not run: skipped too) -> confirm (the top 1 of
    screen + extra, plus always decay 0, at 8 steps, 2 seeds) -> criteria."""
    holds = {"arm": {WD: 0.1}, "baseline": {WD: 0.0}, "phases": ["screen"], "min_improvement": ALWAYS}
    fails = {**holds, "min_improvement": NEVER}
    phases = [
        {"name": "screen", "seeds": [0]},
        {"name": "extra", "seeds": [0], "grid": {WD: [0.3]}, "when": [holds]},
        {"name": "skipped", "seeds": [0], "grid": {WD: [0.4]}, "when": [holds, fails]},
        {"name": "undecided", "seeds": [0], "grid": {WD: [0.5]}, "when": [{**holds, "phases": ["skipped"]}]},
        {
            "name": "confirm",
            "seeds": [0, 1],
            "steps": 8,
            "top_k": 1,
            "rank": ["screen", "extra"],
            "always": [{WD: 0.0}],
        },
    ]
    criteria = {
        "question": "q?",
        "primary": [{**holds, "arm": "best", "phases": ["confirm"]}, {"test": "stable", "phases": ["confirm"]}],
        "secondary": [
            {
                "arm": "best",
                "baseline": {WD: 0.0},
                "phases": ["confirm"],
                "metric": "weight_norm_slope",
                "min_improvement": ALWAYS,
            }
        ],
    }
    sweep = validate_sweep(_design(micro, text_file, tmp_path / "cache", phases, criteria=criteria))
    out = tmp_path / "sweep"
    logs: list[str] = []
    run_sweep(sweep, out, data_dir=data_dir, progress=False, log=logs.append)
    rows = read_results(out / "results.csv")
    by_phase = {r["run"]: r["phases"] for r in rows}
    screen = [n for n, p in by_phase.items() if "screen" in p.split("+")]
    assert len(screen) == 3 and all(n.endswith("_s0") for n in screen)
    assert [n for n, p in by_phase.items() if p == "extra"] == ["muon_weight_decay=0.3_s0"]
    assert not any("0.4" in n or "0.5" in n for n in by_phase)  # skipped and undecided phases ran nothing
    # confirm ranks screen + extra by val loss and keeps decay 0 besides, at its own horizon
    first = [r for r in rows if r["phases"] in ("screen", "extra")]
    best = min((r for r in first if r[WD] != 0.0 and not r["unstable"]), key=lambda r: (r["val_loss"], r["point"]))
    confirm = sorted(n for n, p in by_phase.items() if p == "confirm")
    assert confirm == sorted(f"{pt}_steps=8_s{s}" for pt in (best["point"], "muon_weight_decay=0.0") for s in (0, 1))
    for name in confirm:
        cfg = json.loads((out / "runs" / name / "config.json").read_text())
        assert cfg["config"]["train"]["steps"] == 8 if "config" in cfg else cfg["train"]["steps"] == 8
    design = json.loads((out / "design.json").read_text())["phases"]
    assert [(d["phase"], d["status"]) for d in design] == [
        ("screen", "ran"),
        ("extra", "ran"),
        ("skipped", "skipped"),
        ("undecided", "skipped"),
        ("confirm", "ran"),
    ]
    assert [c["holds"] for c in design[2]["checks"]] == [True, False]
    assert design[3]["checks"][0]["holds"] is None
    assert any("phase skipped: skipped, its condition does not hold" in m for m in logs)
    report = (out / "RESULTS.md").read_text()
    assert "## Pre-registered verdict: **success**" in report.splitlines()[2]
    assert "`skipped`: **skipped**" in report and "`undecided`: **skipped**" in report
    # resuming decides the same way and trains nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")}
    run_sweep(sweep, out, data_dir=data_dir, progress=False, log=lambda _: None)
    assert json.loads((out / "design.json").read_text())["phases"] == design
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")} == mtimes
    # the design is frozen with the sweep: a changed threshold refuses to resume, naming the key
    changed = copy.deepcopy(_design(micro, text_file, tmp_path / "cache", phases, criteria=criteria))
    changed["sweep"]["phases"][1]["when"][0]["min_improvement"] = 0.0
    from muonlab.harness.rundir import RunDirError

    with pytest.raises(RunDirError, match=r"sweep\.phases\.1\.when\.0\.min_improvement"):
        run_sweep(validate_sweep(changed), out, data_dir=data_dir, progress=False, log=lambda _: None)


@pytest.mark.parametrize(("threshold", "verdict"), [(NEVER, "not supported"), (None, "not run")])
def test_verdicts_not_supported_and_not_run(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any, threshold: float | None, verdict: str
) -> None:
    """A failing primary criterion is "not supported"; one on a phase that was skipped is "not run"."""
    test = {"arm": {WD: 0.1}, "baseline": {WD: 0.0}, "phases": ["screen"], "min_improvement": threshold}
    phases: list[dict[str, Any]] = [{"name": "screen", "seeds": [0]}]
    if threshold is None:
        test = {**test, "phases": ["later"], "min_improvement": None}
        phases.append(
            {"name": "later", "seeds": [0], "when": [{**test, "phases": ["screen"], "min_improvement": NEVER}]}
        )
    data = _design(micro, text_file, tmp_path / "cache", phases, criteria={"primary": [test]})
    data["sweep"]["grid"] = {WD: [0.0, 0.1]}
    out = tmp_path / "sweep"
    run_sweep(validate_sweep(data), out, data_dir=data_dir, progress=False, log=lambda _: None)
    assert f"## Pre-registered verdict: **{verdict}**" in (out / "RESULTS.md").read_text()


# -- the shipped plan ------------------------------------------------------------------------------------------------


def test_wd_dose_response_encodes_the_decay_plan() -> None:
    sweep = load_sweep_config(shipped_configs_dir() / "wd_dose_response.toml")
    s = sweep.sweep
    assert [(p.name, p.seeds, p.token_budget) for p in s.phases] == [
        ("screen", [0], 16_384_000),
        ("tie_break", [0], 16_384_000),
        ("confirm", [0, 1, 2], 32_768_000),
        ("stage_c", [0], 1_700_000_000),
    ]
    assert s.grid == {WD: [0.0, 0.05, 0.1, 0.2]} and s.phases[1].grid == {WD: [0.075]}
    confirm, stage_c = s.phases[2], s.phases[3]
    assert (confirm.top_k, confirm.rank, confirm.always) == (2, ["screen", "tie_break"], [{WD: 0.0}])
    assert (stage_c.top_k, stage_c.always) == (1, [{WD: 0.0}])
    assert s.criteria is not None and [c.model_dump() for c in s.criteria.primary] == [
        c.model_dump() for c in stage_c.when
    ]

    def rows(
        tokens: dict[float, list[float | None]], phases: str, unstable: float | None = None
    ) -> list[dict[str, Any]]:
        return [
            _row(wd, seed, v, metric="tokens_to_target_loss", phases=phases, unstable=wd == unstable)
            for wd, vs in tokens.items()
            for seed, v in enumerate(vs)
        ]

    tie_break = s.phases[1].when
    beat = rows({0.0: [100.0], 0.05: [95.0], 0.1: [97.0], 0.2: [120.0]}, "screen")
    assert all(evaluate(c, beat, ["screen"]).holds for c in tie_break)
    one_loses = rows({0.0: [100.0], 0.05: [95.0], 0.1: [101.0], 0.2: [None]}, "screen")
    assert not all(evaluate(c, one_loses, ["screen"]).holds for c in tie_break)
    # stage C: >= 5% in 2 of 3 seeds for the best non-zero decay, and no instability flag
    good = rows({0.0: [100.0, 100.0, 100.0], 0.05: [94.0, 96.0, 101.0], 0.075: [93.0, 95.0, 99.0]}, "confirm")
    assert all(evaluate(c, good, ["screen", "confirm"]).holds for c in stage_c.when)
    assert outcome(s.criteria, good, [p.name for p in s.phases])[0] in ("not run", "success")  # minutes/weights absent
    one_seed = rows({0.0: [100.0, 100.0, 100.0], 0.05: [94.0, 99.0, 101.0], 0.075: [96.0, 97.0, 98.0]}, "confirm")
    assert not all(evaluate(c, one_seed, ["confirm"]).holds for c in stage_c.when)
    flagged = rows({0.0: [100.0, 100.0, 100.0], 0.05: [94.0, 96.0, 101.0], 0.075: [93.0, 95.0, 99.0]}, "confirm", 0.05)
    assert not all(evaluate(c, flagged, ["confirm"]).holds for c in stage_c.when)
    # the run count: 4 + 1 + 3 x 3 + 2 when every phase runs
    assert len(planned_runs(sweep)) == 16
    assert math.isclose(s.criteria.secondary[0].min_improvement_pct or 0.0, -5.0)


def test_the_shipped_decay_plan_runs_end_to_end_on_the_micro_model(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    """wd_dose_response's own design (its sweep section, unchanged but for the horizons) on the micro model:
    every decision the sweep recorded is the one its conditions give on the final rows, and the report states
    the verdict with the plan's criteria."""
    from muonlab.harness.config import read_file

    shipped = read_file(shipped_configs_dir() / "wd_dose_response.toml")
    data = micro(text_file, tmp_path / "cache", train={"steps": 6, "log_every": 1, "eval_every": 3, "stats_every": 3})
    data["sweep"] = shipped["sweep"]
    for phase, steps in zip(data["sweep"]["phases"], (6, 6, 8, 10), strict=True):
        del phase["token_budget"]
        phase["steps"] = steps
    sweep = validate_sweep(data)
    out = tmp_path / "sweep"
    run_sweep(sweep, out, data_dir=data_dir, progress=False, log=lambda _: None)
    rows = read_results(out / "results.csv")
    design = {d["phase"]: d for d in json.loads((out / "design.json").read_text())["phases"]}
    names = [p.name for p in sweep.sweep.phases]
    for i, phase in enumerate(sweep.sweep.phases):
        checks = [evaluate(c, rows, names[:i]) for c in phase.when]
        assert [c["holds"] for c in design[phase.name]["checks"]] == [c.holds for c in checks]
        ran = all(c.holds for c in checks)
        assert design[phase.name]["status"] == ("ran" if ran else "skipped")
        assert any(phase.name in r["phases"].split("+") for r in rows) == ran
    confirm = [r for r in rows if "confirm" in r["phases"].split("+")]
    assert len(confirm) == 9 and {r["train.steps"] for r in confirm} == {8}  # top 2 + decay 0, three seeds
    assert sweep.sweep.criteria is not None
    verdict, _ = outcome(sweep.sweep.criteria, rows, names)
    assert f"## Pre-registered verdict: **{verdict}**" in (out / "RESULTS.md").read_text()


def test_best_by_picks_the_arm_for_another_metric() -> None:
    rows = [
        {**_row(wd, s, None), "tokens_to_target_loss": tokens, "weight_norm_slope": slope}
        for wd, tokens, slope in ((0.0, 100.0, 5.0), (0.05, 90.0, 6.0), (0.1, 95.0, 1.0))
        for s in (0, 1)
    ]
    slope = {"arm": "best", "baseline": {WD: 0.0}, "metric": "weight_norm_slope", "min_improvement": 0.0}
    assert evaluate(Condition.model_validate(slope), rows, ["p1"]).detail.startswith("muon_weight_decay=0.1 ")
    chosen = evaluate(Condition.model_validate({**slope, "best_by": "tokens_to_target_loss"}), rows, ["p1"])
    assert chosen.detail.startswith("muon_weight_decay=0.05 ") and chosen.holds is False
    with pytest.raises(ValueError, match="best_by: only used with a 'best' arm or baseline"):
        Condition.model_validate({**slope, "arm": {WD: 0.1}, "best_by": "val_loss"})


def test_best_within_a_selector_compares_each_family_at_its_best_lr() -> None:
    """``{variant = ..., best = true}``: the best point of that variant (e.g. over an lr grid), on either side."""

    def row(variant: str, scale: float, seed: int, acc: float) -> dict[str, Any]:
        point = f"{variant}_lr_scale={scale}"
        return {
            "run": f"{point}_s{seed}",
            "point": point,
            "variant": variant,
            "phases": "p1",
            "seed": seed,
            "optimizer.lr_scale": scale,
            "unstable": False,
            "task_accuracy": acc,
        }

    rows = [row("adamw", 1.0, s, 0.10) for s in (0, 1)] + [row("adamw", 3.0, s, 0.20) for s in (0, 1)]
    rows += [row("muon", 1.0, s, 0.15) for s in (0, 1)] + [row("muon", 3.0, s, 0.05) for s in (0, 1)]
    c = Condition.model_validate(
        {
            "arm": {"variant": "adamw", "best": True},
            "baseline": {"variant": "muon", "best": True},
            "metric": "task_accuracy",
            "min_improvement": 0.04,
        }
    )
    check = evaluate(c, rows, ["p1"])
    assert check.holds is True and check.detail.startswith("adamw_lr_scale=3.0 vs muon_lr_scale=1.0")
    assert evaluate(c.model_copy(update={"min_improvement": 0.06}), rows, ["p1"]).holds is False
    with pytest.raises(ValueError, match="best: expected true or false"):
        Condition.model_validate({"arm": {"variant": "adamw", "best": "yes"}, "baseline": {"variant": "muon"}})
