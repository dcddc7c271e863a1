"""The arm / series model of a sweep's results, read by the report and the plots.

* An *arm* is one sweep point (variant + grid assignment); its seeds are its runs (results.csv rows). Unstable
  runs are kept but left out of every mean, spread and decision (`Arm.stable`).
* A *series* is >= 2 arms that differ in one numeric config value only (e.g. Muon's ``optimizer.weight_decay``),
  sorted by it: a dose-response.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .endpoints import mean_std
from .results import RUN_COLS

__all__ = ["Arm", "Series", "build_arms", "find_series", "format_number", "is_number"]


@dataclass
class Arm:
    """One sweep point and its runs (results.csv rows)."""

    point: str
    variant: str
    params: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stable(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if not r.get("unstable")]

    def values(self, key: str) -> list[float]:
        """The stable runs' finite values of ``key``."""
        out = []
        for r in self.stable:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append(float(v))
        return out

    def by_seed(self, key: str) -> dict[int, float]:
        """``seed -> value`` of ``key`` over the stable runs with a finite value."""
        out = {}
        for r in self.stable:
            v = r.get(key)
            if (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and r.get("seed") is not None
            ):
                out[int(r["seed"])] = float(v)
        return out

    def stat(self, key: str) -> tuple[float | None, float | None, int]:
        """Mean, sample std (ddof 1; 0 for one value) and count of ``key`` over the stable runs."""
        return mean_std(self.values(key))

    @property
    def optimizer(self) -> str:
        return str(self.params.get("optimizer.name") or "")

    @property
    def label(self) -> str:
        """The arm's name in tables and legends: the point, with the default variant ``base`` replaced by the
        optimizer's name."""
        if self.variant == "base" and self.point.startswith("base"):
            return (self.optimizer or "run") + self.point[len("base") :]
        return self.point


@dataclass
class Series:
    """Arms that differ only in the numeric config value ``key`` (sorted by it); ``fixed`` names the rest."""

    key: str
    fixed: str
    arms: list[Arm]

    def x(self, arm: Arm) -> float:
        return float(arm.params[self.key])


def build_arms(rows: list[dict[str, Any]]) -> list[Arm]:
    """Group results.csv rows by point, in first-seen order."""
    arms: dict[str, Arm] = {}
    for r in rows:
        arm = arms.get(r["point"])
        if arm is None:
            params = {k: v for k, v in r.items() if k not in RUN_COLS}
            arm = arms[r["point"]] = Arm(point=r["point"], variant=str(r.get("variant") or r["point"]), params=params)
        arm.runs.append(r)
    return list(arms.values())


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def find_series(arms: list[Arm]) -> list[Series]:
    """Every group of >= 2 arms that agree on all config values but one numeric key."""
    cols = sorted({k for a in arms for k in a.params})
    varying = [k for k in cols if len({json.dumps(a.params.get(k)) for a in arms}) > 1]
    out = []
    for key in varying:
        groups: dict[str, list[Arm]] = {}
        for a in arms:
            if not is_number(a.params.get(key)):
                continue
            rest = {k: a.params.get(k) for k in cols if k != key}
            groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(a)
        for members in groups.values():
            xs = [float(a.params[key]) for a in members]
            if len(set(xs)) >= 2 and len(set(xs)) == len(xs):
                members.sort(key=lambda a: float(a.params[key]))
                out.append(Series(key, _fixed_label(members[0], key, varying), members))
    return out


def _fixed_label(arm: Arm, key: str, varying: list[str]) -> str:
    parts = [arm.optimizer] if arm.optimizer else []
    for k in varying:
        if k not in (key, "optimizer.name") and arm.params.get(k) is not None:
            parts.append(f"{k.split('.')[-1]}={format_number(arm.params[k])}")
    return ", ".join(parts) or "all arms"


def format_number(v: Any) -> str:
    if is_number(v):
        f = float(v)
        return str(int(f)) if f.is_integer() and abs(f) < 1e6 else f"{f:g}"
    return str(v)
