"""Pre-registered designs: the tests that gate a sweep's phases (``when``) and its success criteria, evaluated on
results.csv rows (docs/harness.md "Pre-registered designs").

Pure functions of the rows, shared by the sweep (which phases run, harness/sweep.py) and the report (the verdict
it states first, harness/report.py). A row belongs to the phases named in its ``phases`` column; a test sees the
stable runs of its phases only, so a decision taken during a sweep is taken again, identically, on resume and by
the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .arms import Arm, build_arms, format_number
from .config import Condition, ConfigError, Criteria, Selector, SweepSection
from .results import decision_value, orientation
from .significance import paired, welch

__all__ = ["Check", "Outcome", "check_selectors", "evaluate", "matches", "outcome", "rows_of", "seed_values"]

Outcome = Literal["success", "not supported", "not run"]


@dataclass(frozen=True)
class Check:
    """One condition evaluated: ``holds`` is None when the runs to decide it are missing; ``detail`` gives the
    numbers behind it, in words."""

    condition: Condition
    holds: bool | None
    detail: str


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return bool(a == b)
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)  # CSV round trip of a TOML float


def matches(selector: Selector, row: dict[str, Any]) -> bool:
    """Every value of ``selector`` (but its ``best`` flag) equals the row's (a results.csv row, or a point's
    values)."""
    return all(_same(row.get(k), v) for k, v in selector.items() if k != "best")


def describe(selector: Selector | str) -> str:
    if isinstance(selector, str):
        return selector
    return ", ".join(
        f"{k.split('.')[-1]}={format_number(v) if isinstance(v, float) else v}" for k, v in selector.items()
    )


def check_selectors(section: SweepSection, points: Sequence[dict[str, Any]]) -> None:
    """`ConfigError` unless every selector of the design names a config column of the sweep and matches at least
    one of its ``points`` (dicts of ``variant``, ``point`` and the config columns), and every arm compared by a
    test matches exactly one."""
    columns = set().union(*(p.keys() for p in points)) if points else set()
    tests = [(f"phases[{ph.name}].when", c) for ph in section.phases for c in ph.when]
    if section.criteria is not None:
        tests += [("criteria.primary", c) for c in section.criteria.primary]
        tests += [("criteria.secondary", c) for c in section.criteria.secondary]
    named: list[tuple[str, Selector, bool]] = [
        (f"phases[{ph.name}].always", s, False) for ph in section.phases for s in ph.always
    ]
    for where, c in tests:
        for sel in (c.arm, c.baseline):
            if isinstance(sel, dict):
                named.append((where, sel, c.test == "improves" and not sel.get("best")))
    for where, sel, single in named:
        unknown = [k for k in sel if k not in columns and k != "best"]
        if unknown:
            raise ConfigError(
                f"sweep.{where}: {', '.join(unknown)} is not a config column of this sweep "
                f"(its swept keys, variant, point, {', '.join(sorted(c for c in columns if '.' in c)[:6])}, ...)"
            )
        hits = [p["point"] for p in points if matches(sel, p)]
        if not hits:
            raise ConfigError(f"sweep.{where}: arm {{{describe(sel)}}} matches no point of the sweep")
        if single and len(hits) > 1:
            raise ConfigError(f"sweep.{where}: arm {{{describe(sel)}}} matches {len(hits)} points ({', '.join(hits)})")


def rows_of(rows: Sequence[dict[str, Any]], phases: Sequence[str]) -> list[dict[str, Any]]:
    """The rows that belong to one of ``phases``."""
    wanted = set(phases)
    return [r for r in rows if wanted & set(str(r.get("phases", "")).split("+"))]


def seed_values(arm: Arm, metric: str) -> dict[int, float]:
    """``seed -> value`` of ``metric`` over the arm's stable runs; a stable run that never reached the target
    counts as +inf for a `CENSORED` endpoint (it needed more than its budget) and is left out otherwise."""
    values = ((int(r["seed"]), decision_value(r, metric)) for r in arm.stable)
    return {seed: v for seed, v in values if v is not None}


def _mean(values: dict[int, float]) -> float | None:
    return sum(values.values()) / len(values) if values else None


def _improvement(metric: str, arm: float, base: float) -> float:
    if arm == base:  # both inf: neither reached the target, no improvement
        return 0.0
    return orientation(metric) * (base - arm)


def _pick(arms: list[Arm], sel: Selector | Literal["best"], metric: str, baseline: Arm | None) -> Arm | None:
    """The one arm ``sel`` matches, or for ``"best"`` / ``best = true`` the best on ``metric`` of those it
    matches (``baseline`` excluded); None when there is none (or, without ``best``, more than one)."""
    best = sel == "best" or bool(isinstance(sel, dict) and sel.get("best"))
    hits = [a for a in arms if a is not baseline and (sel == "best" or (a.runs and matches(sel, a.runs[0])))]
    if not best:
        return hits[0] if len(hits) == 1 else None
    sign = orientation(metric)
    scored = [(sign * m, a.point, a) for a in hits if (m := _mean(seed_values(a, metric))) is not None]
    return min(scored, key=lambda t: (t[0], t[1]))[2] if scored else None


def _threshold(c: Condition) -> tuple[float, str, bool]:
    """(value, words, relative) of the improvement a test needs; ``> 0`` unless a threshold is given."""
    if c.min_improvement_pct is not None:
        return c.min_improvement_pct, f">= {c.min_improvement_pct:g}%", True
    if c.min_improvement is not None:
        return c.min_improvement, f">= {c.min_improvement:g}", False
    return 0.0, "> 0", False


def _meets(c: Condition, gain: float, base: float) -> bool:
    value, _, relative = _threshold(c)
    if relative and gain:  # relative to a baseline of 0 or +inf (never reached): any gain is unbounded
        gain = 100.0 * gain / abs(base) if base and math.isfinite(base) else math.copysign(math.inf, gain)
    if c.min_improvement is None and c.min_improvement_pct is None:
        return gain > 0.0
    return gain >= value


def evaluate(c: Condition, rows: Sequence[dict[str, Any]], default_phases: Sequence[str]) -> Check:
    """Evaluate ``c`` on the rows of its phases (``default_phases`` when it names none)."""
    phases = list(c.phases) if c.phases is not None else list(default_phases)
    where = "+".join(phases) or "no phase"
    arms = build_arms(rows_of(rows, phases))
    base = _pick(arms, c.baseline, c.best_by or c.metric, None) if c.baseline is not None else None
    arm = _pick(arms, c.arm, c.best_by or c.metric, base) if c.arm is not None else None
    if c.test == "stable":
        if c.arm is not None and (arm is None or (c.baseline is not None and base is None)):
            return Check(c, None, f"no runs of the arms in {where}")
        scope = [a for a in (arm, base) if a is not None] or arms
        runs = [r for a in scope for r in a.runs]
        if not runs:
            return Check(c, None, f"no runs in {where}")
        flagged = [str(r["run"]) for r in runs if r.get("unstable")]
        label = f"{len(runs)} runs of {', '.join(a.point for a in scope)}" if c.arm is not None else f"{len(runs)} runs"
        if flagged:
            return Check(c, False, f"{where}: {len(flagged)} of {label} unstable ({', '.join(flagged)})")
        return Check(c, True, f"{where}: none of {label} unstable")
    assert c.arm is not None and c.baseline is not None
    if base is None or arm is None:
        missing = describe(c.baseline) if base is None else describe(c.arm)
        return Check(c, None, f"{where}: no stable runs of {{{missing}}} to compare")
    sa, sb = seed_values(arm, c.metric), seed_values(base, c.metric)
    ma, mb, na, nb = _mean(sa), _mean(sb), len(sa), len(sb)
    if ma is None or mb is None:
        return Check(c, None, f"{where}: no stable {c.metric} of {arm.point if ma is None else base.point}")
    _, need, relative = _threshold(c)
    gain = _improvement(c.metric, ma, mb)
    pct = 100.0 * gain / abs(mb) if mb and math.isfinite(mb) else math.nan
    head = (
        f"{arm.point} vs {base.point}, {c.metric} over {where}: {format_number(ma)} (n {na}) vs "
        f"{format_number(mb)} (n {nb}), improvement {format_number(gain)} ({pct:+.2f}%)"
    )
    parts = [head]
    if c.seeds_at_least is not None:
        seeds = sorted(set(sa) & set(sb))
        good = [s for s in seeds if _meets(c, _improvement(c.metric, sa[s], sb[s]), sb[s])]
        ok = len(good) >= c.seeds_at_least
        parts.append(f"{len(good)} of {len(seeds)} paired seeds {need} (needs {c.seeds_at_least})")
        if len(seeds) < c.seeds_at_least:
            return Check(c, None, "; ".join(parts) + ": too few paired seeds to decide")
    else:
        ok = _meets(c, gain, mb)
        parts.append(f"needs {need}" + (" of the baseline" if relative else ""))
    if c.p_below is not None:
        if not all(math.isfinite(v) for v in [*sa.values(), *sb.values()]):
            return Check(c, None, "; ".join(parts) + "; no t-test: a run never reached the target")
        t = paired(sa, sb)
        kind = "paired"
        if t is None:
            t, kind = welch(list(sa.values()), list(sb.values())), "Welch"
        if t is None:
            return Check(c, None, "; ".join(parts) + f"; a p < {c.p_below:g} test needs 2 runs per arm")
        lo, hi = t.interval()
        parts.append(
            f"{kind} t-test of {arm.point} - {base.point}: {t.diff:+.4g} ± {t.se:.2g} (se), 95% CI "
            f"[{lo:+.4g}, {hi:+.4g}], p = {t.p:.3g} (needs < {c.p_below:g})"
        )
        ok = ok and t.p < c.p_below and gain > 0.0
    return Check(c, ok, "; ".join(parts))


def outcome(criteria: Criteria, rows: Sequence[dict[str, Any]], phases: Sequence[str]) -> tuple[Outcome, list[Check]]:
    """The verdict on ``criteria``: "not supported" when a test fails (primary first), else "not run" when one
    lacks the runs to decide, else "success"; and every check, primary then secondary."""
    primary = [evaluate(c, rows, phases) for c in criteria.primary]
    secondary = [evaluate(c, rows, phases) for c in criteria.secondary]
    for group in (primary, secondary):
        if any(ch.holds is False for ch in group):
            return "not supported", primary + secondary
        if any(ch.holds is None for ch in group):
            return "not run", primary + secondary
    return "success", primary + secondary
