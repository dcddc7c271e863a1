"""`muonlab report SWEEP_DIR`: RESULTS.md that answers the sweep's question first, then tables, plots and a
reproducibility block (docs/harness.md "Reports").

* Arms and series: `harness/arms.py`. Unstable runs are listed but left out of every mean, spread and decision.
* Each arm: mean ± sample std (ddof 1) over its stable seeds, with n.
* A lead is called a win only when it is beyond the seed noise: Welch's t-test, two-sided p < 0.05
  (`harness.significance`); otherwise the report says the arms tie within noise. One seed per arm decides nothing.
* The answer block: Muon vs AdamW (val loss difference ± its standard error, Welch's p, tokens-to-target
  ratio), one sentence per dose series (arms that differ in one numeric config value only, e.g. Muon's
  ``optimizer.weight_decay``), and the overall winner or tie.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rundir as rd
from .arms import Arm, Series, build_arms, find_series, format_number
from .config import SweepSection
from .design import outcome
from .results import DESIGN_FILE, ENDPOINT_KEYS, HIGHER_IS_BETTER, config_columns, orientation, read_results
from .significance import RULE, TTest, paired, ratio_se, welch, wilson_interval

LOSS_UNIT = "nats/token"
LOSS_KEYS = frozenset({"val_loss", "final_smoothed_loss", "auc_early_loss"})
ENDPOINT_HEADS: dict[str, str] = {
    "val_loss": f"val loss ({LOSS_UNIT})",
    "final_smoothed_loss": f"final smoothed train loss ({LOSS_UNIT})",
    "tokens_to_target_loss": "tokens to target",
    "minutes_to_target_loss": "minutes to target (wall clock, machine-dependent)",
    "auc_early_loss": f"early mean train loss ({LOSS_UNIT})",
    "weight_norm_slope": "weight-norm slope (per M tokens)",
    "task_accuracy": "task accuracy (exact match)",
}


@dataclass
class Verdict:
    """The best arm and whether its lead over each other arm is decided (`harness.significance.RULE`)."""

    best: Arm
    tests: list[tuple[Arm, TTest | None]]

    @property
    def tied(self) -> list[Arm]:
        return [a for a, w in self.tests if w is None or not w.decided]

    @property
    def winner(self) -> Arm | None:
        return self.best if self.tests and not self.tied else None


# -- aggregation --------------------------------------------------------------------------------------------


def _best_word(metric: str) -> str:
    return "highest" if metric in HIGHER_IS_BETTER else "lowest"


def ranked(arms: list[Arm], metric: str) -> list[Arm]:
    """Arms with at least one stable value of ``metric``, best (lowest mean; highest for `HIGHER_IS_BETTER`)
    first."""
    scored = [(orientation(metric) * (a.stat(metric)[0] or 0.0), a.label, a) for a in arms if a.stat(metric)[2]]
    scored.sort(key=lambda t: (t[0], t[1]))
    return [a for _, _, a in scored]


def verdict(arms: list[Arm], metric: str) -> Verdict | None:
    """The best arm by mean ``metric`` tested against every other arm; None without two scored arms."""
    order = ranked(arms, metric)
    if len(order) < 2:
        return None
    best = order[0]
    return Verdict(best, [(a, welch(best.values(metric), a.values(metric))) for a in order[1:]])


# -- formatting ---------------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 4) -> str:
    """``v`` with ``digits`` significant digits (``-`` for missing)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 1e4:
        return f"{v:,.0f}"
    if a != 0 and a < 1e-3:
        return f"{v:.3g}"
    return f"{v:.{digits}g}"


def fmt_loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def mean_pm(arm: Arm, key: str, loss: bool = False) -> str:
    """``mean ± std (n=k)``; one seed: ``value (n=1, no spread)``."""
    mean, std, n = arm.stat(key)
    f = fmt_loss if loss else fmt
    if mean is None:
        return "-"
    if n == 1:
        return f"{f(mean)} (n=1, no spread)"
    return f"{f(mean)} ± {f(std) if loss else fmt(std, 2)} (n={n})"


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}"


def _p_eq(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def welch_words(w: TTest | None, unit: str = "nats") -> str:
    """``difference ± s.e. unit (Welch t, df, p)`` or the reason no test was possible."""
    if w is None:
        return "fewer than 2 stable seeds in an arm, so the spread is unknown"
    u = f" {unit}" if unit else ""
    return f"{w.diff:+.4f} ± {w.se:.4f}{u} (difference ± s.e.; Welch t = {w.t:.2f}, df = {w.df:.1f}, {_p_eq(w.p)})"


def paired_words(t: TTest | None) -> str:
    """`` (paired by seed: diff ± s.e., p, n; information only)`` or nothing without 2 shared seeds."""
    if t is None:
        return ""
    return f" (paired by seed, for information: {t.diff:+.4f} ± {t.se:.4f}, {_p_eq(t.p)}, n = {t.n_a})"


# -- the answer block ---------------------------------------------------------------------------------------


def muon_vs_adamw(arms: list[Arm]) -> list[str]:
    """The Muon-vs-AdamW sentences: the best Muon arm against the best AdamW arm (val loss, then tokens to
    target)."""
    muon = ranked([a for a in arms if a.optimizer == "muon"], "val_loss")
    adamw = ranked([a for a in arms if a.optimizer == "adamw"], "val_loss")
    if not muon or not adamw:
        return []
    m, a = muon[0], adamw[0]
    w = welch(m.values("val_loss"), a.values("val_loss"))
    (mm, _, _), (am, _, _) = m.stat("val_loss"), a.stat("val_loss")
    assert mm is not None and am is not None
    if w is None:
        call = "no winner is named (one seed per arm: the seed spread is unknown)"
    elif w.decided:
        call = f"**{'Muon' if mm < am else 'AdamW'} wins** beyond the seed noise"
    else:
        call = "**tie within noise**"
    best_note = f" (the best of {len(muon)} Muon arms)" if len(muon) > 1 else ""
    text = (
        f"**Muon vs AdamW.** `{m.label}`{best_note} reaches val loss {mean_pm(m, 'val_loss', True)} against "
        f"`{a.label}` {mean_pm(a, 'val_loss', True)} (mean ± std over seeds): "
        f"Muon - AdamW = {welch_words(w)}: {call}."
    )
    return [text, "", *_tokens_ratio(m, a)]


def _tokens_ratio(m: Arm, a: Arm) -> list[str]:
    key = "tokens_to_target_loss"
    (mm, ms, mn), (am, as_, an) = m.stat(key), a.stat(key)
    reached = f"reached by {mn}/{len(m.stable)} Muon and {an}/{len(a.stable)} AdamW seeds"
    if mm is None or am is None or mm == 0 or am == 0:
        return [f"Tokens to the target loss: no ratio ({reached})."]
    ratio = mm / am
    if mn >= 2 and an >= 2 and ms is not None and as_ is not None:
        se = ratio_se(mm, ms / math.sqrt(mn), am, as_ / math.sqrt(an))
        spread = f"{ratio:.3f} ± {se:.3f} (ratio of means ± delta-method s.e.)"
    else:
        spread = f"{ratio:.3f} (ratio of means; one seed, no spread)"
    return [f"Tokens to the target loss, Muon / AdamW: {spread}; {reached}.", ""]


def series_sentence(s: Series, metric: str) -> str:
    """One dose series in words: means at each value, the lowest, monotonicity, and the winner or tie."""
    key = s.key.split(".")[-1]
    means = [a.stat(metric)[0] for a in s.arms]
    vals = " / ".join(format_number(a.params[s.key]) for a in s.arms)
    cells = " / ".join(mean_pm(a, metric, metric in LOSS_KEYS) for a in s.arms)
    text = f"**{s.key} ({s.fixed}).** {metric} {cells} at {key} {vals}."
    if any(m is None for m in means):
        return text + " Some values have no stable seed."
    ms = [float(m) for m in means if m is not None]
    ups = [b > a for a, b in itertools.pairwise(ms)]
    if all(ups):
        trend = f"{metric} rises monotonically with {key}"
    elif not any(ups):
        trend = f"{metric} falls monotonically with {key}"
    else:
        trend = f"{metric} is not monotonic in {key}"
    steps = [welch(a.values(metric), b.values(metric)) for a, b in itertools.pairwise(s.arms)]
    tested = [w for w in steps if w is not None]
    if tested:
        trend += f" (adjacent steps beyond the seed noise: {sum(w.decided for w in tested)} of {len(steps)})"
    v = verdict(s.arms, metric)
    assert v is not None
    lo, hi = s.arms[0], s.arms[-1]
    ends = welch(hi.values(metric), lo.values(metric))
    text += f" {_best_word(metric).capitalize()} at {key} = {format_number(v.best.params[s.key])}; {trend}. "
    unit = "nats" if metric in LOSS_KEYS else ""
    text += (
        f"{key} {format_number(hi.params[s.key])} - {key} {format_number(lo.params[s.key])}: {welch_words(ends, unit)}"
    )
    text += f"{paired_words(paired(hi.by_seed(metric), lo.by_seed(metric)))}. "
    if v.winner is not None:
        return text + f"**Winner: {key} = {format_number(v.winner.params[s.key])}** (beats every other value, {RULE})."
    tie = ", ".join(format_number(a.params[s.key]) for a in [v.best, *v.tied])
    return text + f"**Tie within noise** among {key} = {tie}."


def overall_sentence(arms: list[Arm], metric: str) -> str:
    v = verdict(arms, metric)
    if v is None:
        return f"**Overall.** Fewer than two arms have a stable `{metric}`; nothing to compare."
    if v.winner is not None:
        return f"**Overall winner by `{metric}`: `{v.winner.label}`**, ahead of every other arm beyond the seed noise."
    names = ", ".join(f"`{a.label}`" for a in [v.best, *v.tied])
    return (
        f"**Overall: tie within noise** by `{metric}` among {names} ({_best_word(metric)} mean: `{v.best.label}`; its "
        "lead over "
        f"the others listed is not beyond the seed noise)."
    )


def answer_block(arms: list[Arm], metric: str) -> list[str]:
    lines = [*muon_vs_adamw(arms)]
    for s in find_series(arms):
        lines += [series_sentence(s, metric), ""]
    lines += [overall_sentence(arms, metric), ""]
    lines += [
        f"Decision rule: a lead counts only when it is beyond the seed noise by {RULE}; otherwise the arms "
        "tie within noise. Means ± sample std (ddof 1) over stable seeds; differences ± their standard error "
        "sqrt(s_a²/n_a + s_b²/n_b). No correction for multiple comparisons.",
        "",
    ]
    return lines


# -- tables ---------------------------------------------------------------------------------------------------


def shown_endpoints(arms: list[Arm]) -> list[str]:
    """Every endpoint, but task accuracy only in a sweep that scored one."""
    has_task = any(r.get("task_accuracy") is not None for a in arms for r in a.runs)
    return [k for k in ENDPOINT_KEYS if k != "task_accuracy" or has_task]


def task_table(arms: list[Arm], metric: str) -> list[str]:
    """Per arm: mean ± std of the seeds' accuracies, and the pooled exact-match count with its Wilson 95%
    interval (`significance.wilson_interval`; the seeds' test problems are the same set, so the pooled interval
    is about this arm on this test set)."""
    if "task_accuracy" not in shown_endpoints(arms):
        return []
    lines = [
        "## Task accuracy (exact match, greedy decoding)",
        "",
        "| arm | accuracy, mean ± std over seeds (n) | pooled correct / total | pooled accuracy [Wilson 95%] |",
        "|---|---|---|---|",
    ]
    for a in ranked(arms, "task_accuracy") + [a for a in arms if not a.stat("task_accuracy")[2]]:
        correct = sum(int(r.get("task_correct") or 0) for r in a.stable)
        total = sum(int(r.get("task_total") or 0) for r in a.stable)
        if total:
            lo, hi = wilson_interval(correct, total)
            pooled = f"{correct / total:.3f} [{lo:.3f}, {hi:.3f}]"
        else:
            pooled = "-"
        lines.append(f"| `{a.label}` | {mean_pm(a, 'task_accuracy')} | {correct} / {total} | {pooled} |")
    return [*lines, ""]


def arm_table(arms: list[Arm], metric: str) -> list[str]:
    cols = list(dict.fromkeys(k for a in arms for k in a.params))
    endpoints = shown_endpoints(arms)
    heads = ["arm", *cols, "seeds (stable/all)", *(ENDPOINT_HEADS[k] for k in endpoints)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for a in ranked(arms, metric) + [a for a in arms if not a.stat(metric)[2]]:
        cells = [f"`{a.label}`", *(format_number(a.params.get(k)) for k in cols), f"{len(a.stable)}/{len(a.runs)}"]
        cells += [mean_pm(a, k, k in LOSS_KEYS) for k in endpoints]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison_table(arms: list[Arm], metric: str) -> list[str]:
    v = verdict(arms, metric)
    if v is None:
        return []
    lines = [
        f"Each arm against the best by mean `{metric}` (`{v.best.label}`); difference = other - best. The verdict "
        "is Welch's; the paired column (differences within a seed, which shares the initialization and data "
        "order across arms) is for information.",
        "",
        f"| arm | difference ± s.e.{' (nats)' if metric in LOSS_KEYS else ''} | Welch t | df | p | verdict "
        "| paired by seed: difference ± s.e., p (n) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, w in v.tests:
        if w is None:
            d = (a.stat(metric)[0] or 0.0) - (v.best.stat(metric)[0] or 0.0)
            lines.append(f"| `{a.label}` | {d:+.4f} | - | - | - | no spread (n < 2): undecided | - |")
            continue
        call = "best is ahead beyond noise" if w.decided else "tie within noise"
        pt = paired(a.by_seed(metric), v.best.by_seed(metric))
        pcell = "-" if pt is None else f"{pt.diff:+.4f} ± {pt.se:.4f}, {_p(pt.p)} ({pt.n_a})"
        lines.append(
            f"| `{a.label}` | {-w.diff:+.4f} ± {w.se:.4f} | {-w.t:.2f} | {w.df:.1f} | {_p(w.p)} | {call} | {pcell} |"
        )
    return lines


def runs_table(rows: list[dict[str, Any]], arms: list[Arm]) -> list[str]:
    label = {r["run"]: a.label for a in arms for r in a.runs}
    heads = ["run", "arm", "seed", "status", "unstable", "val_loss", "final_smoothed_loss"]
    heads += ["tokens_to_target_loss", "minutes_to_target_loss", "elapsed_s"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [str(r["run"]), f"`{label[r['run']]}`", str(r["seed"]), str(r["status"])]
        cells.append(f"yes: {r.get('abort_reason')}" if r.get("unstable") else "no")
        cells += [fmt_loss(r.get("val_loss")), fmt_loss(r.get("final_smoothed_loss"))]
        cells += [fmt(r.get(k)) for k in heads[7:]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def init_from_lines(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """One line per distinct pretrained starting point (``train.init_from``, harness/pretrained.py) the runs'
    config.json recorded: what was loaded, its sha256 and how many runs started from it."""
    seen: dict[tuple[Any, ...], int] = {}
    for r in rows:
        try:
            init = rd.read_config(sweep_dir / "runs" / r["run"]).get("init_from")
        except rd.RunDirError:
            continue
        if isinstance(init, dict):
            key = (init.get("path"), init.get("kind"), init.get("file"), init.get("sha256"), init.get("optimizer"))
            seen[key] = seen.get(key, 0) + 1
    return [
        f"- init_from: {path} ({kind} `{Path(str(file)).name}`, sha256 `{sha}`; optimizer state {opt}; {n} runs)"
        for (path, kind, file, sha, opt), n in seen.items()
    ]


def reproducibility(sweep_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    first_cfg: dict[str, Any] = {}
    for r in rows:
        try:
            first_cfg = rd.read_config(sweep_dir / "runs" / r["run"])
            break
        except rd.RunDirError:
            continue
    git = meta.get("git") or first_cfg.get("git") or {}
    vers = meta.get("versions") or first_cfg.get("versions") or {}
    data = first_cfg.get("data", {})
    lines = ["## Reproducibility", "", "```bash"]
    lines += list(meta.get("commands") or [f"muonlab sweep <config> --out {sweep_dir}"])
    lines += [f"muonlab report {sweep_dir}", "```", ""]
    lines.append(f"- sweep config sha256: `{meta.get('sweep_sha256', 'n/a')}`")
    lines.append(f"- git commit: `{git.get('commit')}`" + (" (dirty working tree)" if git.get("dirty") else ""))
    lines.append(
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in vers.items() if k != "platform")
        + (f"; {vers.get('platform')}" if vers.get("platform") else "")
    )
    tok = data.get("tokenizer") or {}
    tok = tok if isinstance(tok, dict) else {"name": tok}  # a run of a task sweep before its meta carried the sha
    lines.append(f"- tokenizer: {tok.get('name')} sha256 `{tok.get('sha256')}`")
    for s in data.get("sources") or []:
        if not isinstance(s, dict):  # a generated task (harness/tasks.py), named by its section
            lines.append(f"- data source: {s}")
            continue
        lines.append(
            f"- data source: {Path(str(s.get('path'))).name} sha256 `{s.get('sha256')}`, "
            f"{s.get('bytes_read')} bytes read, {s.get('tokens')} tokens"
        )
    lines.append(f"- token cache key: `{data.get('key')}`; device: {first_cfg.get('device')}")
    lines += init_from_lines(sweep_dir, rows)
    lines += ["", "| run | config sha256 |", "|---|---|"]
    lines += [f"| {r['run']} | `{r['config_sha256']}` |" for r in rows]
    return [*lines, ""]


# -- the report ---------------------------------------------------------------------------------------------


def _target_note(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    target = next((r.get("target_loss") for r in rows if r.get("target_loss") is not None), None)
    if target is None:
        return "Target loss: none."
    path = sweep_dir / "target.json"
    source = json.loads(path.read_text()).get("source") if path.is_file() else None
    return f"Target loss (for tokens/minutes to target): {target:.4f} {LOSS_UNIT}" + (
        f" ({source})." if source else "."
    )


def design_block(sweep_dir: Path, rows: list[dict[str, Any]], sweep_sec: dict[str, Any]) -> list[str]:
    """The pre-registered verdict (`harness.design.outcome`) with the numbers behind each criterion, then what
    became of each phase (design.json: ran with its points, skipped with the condition that failed, or not
    reached); empty for a sweep with neither criteria nor conditional phases."""
    section = SweepSection.model_validate(sweep_sec)
    if section.criteria is None and not any(p.when for p in section.phases):
        return []
    names = [p.name for p in section.phases]
    lines: list[str] = []
    mark = {True: "holds", False: "**fails**", None: "not decided (runs missing)"}
    if section.criteria is not None:
        verdict, checks = outcome(section.criteria, rows, names)
        lines += [f"## Pre-registered verdict: **{verdict}**", ""]
        if section.criteria.question:
            lines += [f"Question: {section.criteria.question}", ""]
        n_primary = len(section.criteria.primary)
        for i, ch in enumerate(checks):
            kind = "primary" if i < n_primary else "secondary"
            lines.append(f"* {kind}, {ch.condition.test}: {mark[ch.holds]}. {ch.detail}.")
        lines += [
            "",
            'Rule: "success" only when every primary and secondary criterion holds; "not supported" when one '
            'fails; "not run" when one lacks the runs to decide (a phase it needs did not run).',
            "",
        ]
    decisions = {}
    path = sweep_dir / DESIGN_FILE
    if path.is_file():
        decisions = {d["phase"]: d for d in json.loads(path.read_text()).get("phases", [])}
    lines += ["### Phases", ""]
    for phase in section.phases:
        d = decisions.get(phase.name)
        if d is None:
            lines.append(f"* `{phase.name}`: not reached.")
            continue
        why = "; ".join(f"{mark[c['holds']]}: {c['detail']}" for c in d.get("checks", []))
        if d["status"] == "skipped":
            lines.append(f"* `{phase.name}`: **skipped**, its condition does not hold ({why}).")
        else:
            pts = ", ".join(f"`{p}`" for p in d.get("points", []))
            cond = f" (condition: {why})" if why else ""
            lines.append(f"* `{phase.name}`: ran {pts} with seeds {phase.seeds}{cond}.")
    return [*lines, ""]


def write_report(sweep_dir: str | Path) -> Path:
    """Write ``SWEEP_DIR/RESULTS.md`` and the PNGs from results.csv and the run dirs; returns the md path."""
    from .plots import make_plots

    sweep_dir = Path(sweep_dir)
    csv_path = sweep_dir / "results.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{sweep_dir}: no results.csv (run `muonlab sweep` first)")
    rows = read_results(csv_path)
    meta: dict[str, Any] = {}
    if (sweep_dir / "sweep.json").is_file():
        meta = json.loads((sweep_dir / "sweep.json").read_text())
    sweep_sec = meta.get("sweep", {}).get("sweep", {})
    metric = str(sweep_sec.get("winner_metric", "val_loss"))
    arms = build_arms(rows)
    unstable = sum(1 for r in rows if r.get("unstable"))
    plots = make_plots(sweep_dir, arms, find_series(arms), metric)

    lines = [f"# Results: {sweep_sec.get('name', sweep_dir.name)}", ""]
    lines += design_block(sweep_dir, rows, sweep_sec)
    lines += answer_block(arms, metric)
    lines += [
        f"{len(rows)} runs ({unstable} unstable, excluded), {len(arms)} arms; config columns: "
        + ", ".join(f"`{c}`" for c in config_columns(rows))
        + ". "
        + _target_note(sweep_dir, rows),
        "",
        "## Per arm (mean ± std over stable seeds, n)",
        "",
        *arm_table(arms, metric),
        "",
        "Losses in nats/token (natural log); tokens to target in training tokens; minutes to target in "
        "training wall-clock minutes, which depend on the machine and its load (compare them only within one "
        "sweep on one idle machine); early mean train loss = mean train loss over the first `auc_fraction` of "
        "the budget; weight-norm slope in norm units per million tokens.",
        "",
        *task_table(arms, metric),
        "## Comparisons",
        "",
        *comparison_table(arms, metric),
        "",
        "## Runs",
        "",
        *runs_table(rows, arms),
        "",
        "## Plots",
        "",
    ]
    for title, fname in plots:
        lines += [f"### {title}", "", f"![{title}]({fname})", ""]
    lines += reproducibility(sweep_dir, rows, meta)
    out = sweep_dir / "RESULTS.md"
    rd.atomic_write_text(out, "\n".join(lines))
    return out
