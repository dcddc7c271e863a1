"""Sweep endpoints: pure functions of a run's logged curves (docs/harness.md "Endpoints").

Curves are sequences of log points ``(x_i, y_i)`` with increasing ``x`` (tokens or seconds). Smoothing is a
bias-corrected EMA; crossings are linearly interpolated between consecutive log points.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import rundir as rd


def ema(values: Sequence[float], beta: float) -> list[float]:
    """Bias-corrected EMA: ``m_t = beta m_{t-1} + (1-beta) v_t``, ``s_t = m_t / (1 - beta^t)`` (Adam's
    correction, so ``s_1 = v_1``)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta: must lie in [0, 1), got {beta!r}")
    out: list[float] = []
    m = 0.0
    for t, v in enumerate(values, start=1):
        m = beta * m + (1.0 - beta) * float(v)
        out.append(m / (1.0 - beta**t))
    return out


def _check_curve(xs: Sequence[float], ys: Sequence[float]) -> None:
    if len(xs) != len(ys):
        raise ValueError(f"xs, ys: lengths differ ({len(xs)} vs {len(ys)})")
    for a, b in itertools.pairwise(xs):
        if b < a:
            raise ValueError("xs: must be non-decreasing")


def first_crossing(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """The first ``x`` at which the piecewise-linear curve through ``(xs, ys)`` reaches ``y <= target``;
    ``None`` if it never does. If the first point is already at or below target, that point's ``x``."""
    _check_curve(xs, ys)
    for i, y in enumerate(ys):
        if math.isfinite(y) and y <= target:
            if i == 0:
                return float(xs[0])
            y0, x0, x1 = float(ys[i - 1]), float(xs[i - 1]), float(xs[i])
            if not math.isfinite(y0) or y0 == y:
                return x1
            frac = (y0 - target) / (y0 - y)
            return x0 + frac * (x1 - x0)
    return None


def tokens_to_target_loss(tokens: Sequence[float], smoothed_loss: Sequence[float], target: float) -> float | None:
    """Tokens at which the smoothed train loss first reaches ``target`` (linear interpolation)."""
    return first_crossing(tokens, smoothed_loss, target)


def minutes_to_target_loss(elapsed_s: Sequence[float], smoothed_loss: Sequence[float], target: float) -> float | None:
    """Wall-clock minutes at which the smoothed train loss first reaches ``target`` (linear interpolation)."""
    t = first_crossing(elapsed_s, smoothed_loss, target)
    return None if t is None else t / 60.0


def auc_early_loss(
    tokens: Sequence[float], loss: Sequence[float], fraction: float, total_tokens: float
) -> float | None:
    """Mean train loss over the first ``fraction * total_tokens`` tokens: the trapezoid area under the
    loss-vs-tokens curve from ``tokens[0]`` to ``fraction * total_tokens`` (the last segment linearly
    interpolated), divided by that span. ``None`` if fewer than two points fall in the window."""
    _check_curve(tokens, loss)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: must lie in (0, 1], got {fraction!r}")
    end = fraction * total_tokens
    xs: list[float] = []
    ys: list[float] = []
    for x, y in zip(tokens, loss, strict=True):
        if x <= end:
            xs.append(float(x))
            ys.append(float(y))
        else:
            if xs and xs[-1] < end:
                x0, y0 = xs[-1], ys[-1]
                ys.append(y0 + (end - x0) / (float(x) - x0) * (float(y) - y0))
                xs.append(end)
            break
    if len(xs) < 2 or xs[-1] == xs[0]:
        return None
    area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2.0 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def val_loss_at_budget(steps: Sequence[int], val_loss: Sequence[float | None]) -> float | None:
    """The last logged validation loss (the one at the token budget when the run completed)."""
    for v in reversed(list(val_loss)):
        if v is not None:
            return float(v)
    return None


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Slope ``b`` of the least-squares line ``y = a + b x``: ``sum((x-xbar)(y-ybar)) / sum((x-xbar)^2)``."""
    if len(xs) != len(ys):
        raise ValueError(f"xs, ys: lengths differ ({len(xs)} vs {len(ys)})")
    n = len(xs)
    if n < 2:
        return None
    xbar = sum(xs) / n
    ybar = sum(ys) / n
    sxx = sum((x - xbar) ** 2 for x in xs)
    if sxx == 0.0:
        return None
    return sum((x - xbar) * (y - ybar) for x, y in zip(xs, ys, strict=True)) / sxx


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for one value) of the non-missing values,
    and their count."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return None, None, 0
    mean = sum(vals) / n
    if n == 1:
        return mean, 0.0, 1
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var), n


def compute_endpoints(
    records: Sequence[dict[str, float | None]],
    *,
    target: float | None,
    auc_fraction: float,
    total_tokens: float,
    weight_norms: Sequence[tuple[float, float]] = (),
) -> dict[str, float | None]:
    """Every endpoint of one run from its ``metrics.jsonl`` records (dicts with ``tokens``, ``elapsed_s``,
    ``train_loss``, ``smoothed_loss``, optional ``val_loss``) and ``(tokens, total weight norm)`` pairs."""
    train = [r for r in records if r.get("train_loss") is not None]
    tokens = [float(r["tokens"]) for r in train]  # type: ignore[arg-type]
    smooth = [float(r["smoothed_loss"]) for r in train]  # type: ignore[arg-type]
    raw = [float(r["train_loss"]) for r in train]  # type: ignore[arg-type]
    elapsed = [float(r["elapsed_s"]) for r in train]  # type: ignore[arg-type]
    out: dict[str, float | None] = {
        "final_train_loss": raw[-1] if raw else None,
        "final_smoothed_loss": smooth[-1] if smooth else None,
        "val_loss": val_loss_at_budget([], [r.get("val_loss") for r in records]),
        "target_loss": target,
        "tokens_to_target_loss": None,
        "minutes_to_target_loss": None,
        "auc_early_loss": auc_early_loss(tokens, raw, auc_fraction, total_tokens) if tokens else None,
        "weight_norm_slope": None,
    }
    if target is not None and tokens:
        out["tokens_to_target_loss"] = tokens_to_target_loss(tokens, smooth, target)
        out["minutes_to_target_loss"] = minutes_to_target_loss(elapsed, smooth, target)
    if weight_norms:
        xs = [t / 1e6 for t, _ in weight_norms]
        out["weight_norm_slope"] = least_squares_slope(xs, [w for _, w in weight_norms])
    return out


def total_weight_norms(stats: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """``(tokens, sqrt(sum of squared layer weight norms))`` per stats step."""
    by_step: dict[int, list[Any]] = {}
    for r in stats:
        entry = by_step.setdefault(int(r["step"]), [float(r["tokens"]), 0.0])
        entry[1] += float(r["weight_norm"]) ** 2
    return [(t, math.sqrt(s)) for _, (t, s) in sorted(by_step.items())]


def summarize(run_dir: Path, *, target: float | None, auc_fraction: float, total_tokens: float) -> dict[str, Any]:
    """Endpoints of a run from its metrics.jsonl and manifold_stats.jsonl."""
    records = rd.read_jsonl(Path(run_dir) / rd.METRICS)
    stats = rd.read_jsonl(Path(run_dir) / rd.STATS)
    return compute_endpoints(
        records,
        target=target,
        auc_fraction=auc_fraction,
        total_tokens=total_tokens,
        weight_norms=total_weight_norms(stats),
    )
