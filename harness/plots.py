"""The report's figures (matplotlib, Agg), one function per PNG (docs/harness.md "Reports").

Every figure: axis labels with units, a legend naming each arm (`arms.Arm.label`), error bars of ±1 sample
std over the stable seeds with each seed drawn as a dot, so a spread is visible even when it is small; one
seed gets no bar and says so. Wall-clock panels say that they depend on the machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import rundir as rd
from .arms import Arm, Series
from .endpoints import mean_std, total_weight_norms

LOSS_AXIS = "loss (nats/token)"
WALL_NOTE = "wall clock: depends on the machine and its load"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(arms: list[Arm]) -> dict[str, Any]:
    cmap = _pyplot().get_cmap("tab10")
    return {a.point: cmap(i % 10) for i, a in enumerate(arms)}


def _n_note(arms: list[Arm]) -> str:
    ns = sorted({len(a.stable) for a in arms})
    n = "/".join(str(k) for k in ns)
    return f"n = {n} seeds per arm" + ("; one seed: no error bar" if 1 in ns else "; error bars ±1 std")


def _mean_curve(curves: list[dict[float, float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over runs at the x values every run logged."""
    if not curves:
        return [], [], []
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    means, stds = [], []
    for x in xs:
        m, s, _ = mean_std([c[x] for c in curves])
        means.append(float(m or 0.0))
        stds.append(float(s or 0.0))
    return xs, means, stds


def _mean_band(
    ax: Any, xs: list[float], mean: list[float], std: list[float], color: Any, label: str, fmt: str, **kw: Any
) -> None:
    """The seed-mean curve with a shaded +-1 std band around it."""
    ax.plot(xs, mean, fmt, color=color, label=label, **kw)
    lower = [u - v for u, v in zip(mean, std, strict=True)]
    upper = [u + v for u, v in zip(mean, std, strict=True)]
    ax.fill_between(xs, lower, upper, color=color, alpha=0.2, lw=0)


def _run_records(sweep_dir: Path, run: str, name: str) -> list[dict[str, Any]]:
    return rd.read_jsonl(sweep_dir / "runs" / run / name)


def plot_loss_curves(sweep_dir: Path, arms: list[Arm], target: float | None, path: Path) -> None:
    """Smoothed train loss vs tokens (mean over seeds, ±1 std band) and val loss (mean ± std bars) per arm."""
    plt = _pyplot()
    colors = _colors(arms)
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    finals: list[float] = []
    for a in arms:
        train_c, val_c = [], []
        for r in a.runs:
            recs = _run_records(sweep_dir, r["run"], rd.METRICS)
            tr = {float(x["tokens"]): float(x["smoothed_loss"]) for x in recs if x.get("smoothed_loss") is not None}
            va = {float(x["tokens"]): float(x["val_loss"]) for x in recs if x.get("val_loss") is not None}
            if r.get("unstable"):
                if tr:
                    ax.plot(list(tr), list(tr.values()), ":", color=colors[a.point], lw=1.0)
                continue
            train_c.append(tr)
            val_c.append(va)
        xs, m, s = _mean_curve([c for c in train_c if c])
        if xs:
            _mean_band(ax, xs, m, s, colors[a.point], f"{a.label}: smoothed train (n={len(train_c)})", "-", lw=1.4)
            finals.append(m[-1])
        vx, vm, vs = _mean_curve([c for c in val_c if c])
        if vx:
            ax.errorbar(vx, vm, yerr=vs, fmt="o", ms=4, capsize=3, color=colors[a.point], label=f"{a.label}: val")
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=0.8, label=f"target loss {target:.3f}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel(LOSS_AXIS)
    ax.set_title(f"Loss vs tokens: mean over seeds, band/bars ±1 std ({_n_note(arms)})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if finals:
        ax.set_ylim(min(finals) - 0.3, min(finals) + 2.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _seed_dots(ax: Any, x: float, values: list[float], width: float) -> None:
    k = len(values)
    offs = [width * (i - (k - 1) / 2) / max(k, 1) for i in range(k)]
    ax.plot([x + o for o in offs], values, ".", color="black", ms=5, alpha=0.7, zorder=3)


def plot_dose_response(series: list[Series], arms: list[Arm], metric: str, key: str, path: Path) -> None:
    """``metric`` vs the numeric config value ``key``: one line per series (mean ± std, seed dots); arms
    outside every series (e.g. the AdamW reference) as horizontal lines with a ±1 std band."""
    plt = _pyplot()
    colors = _colors(arms)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    in_series = set()
    xs_all: list[float] = []
    for s in series:
        xs = [s.x(a) for a in s.arms]
        xs_all += xs
        stats = [a.stat(metric) for a in s.arms]
        ax.errorbar(
            xs,
            [float(m or math.nan) for m, _, _ in stats],
            yerr=[float(sd or 0.0) for _, sd, _ in stats],
            marker="o",
            capsize=5,
            lw=1.5,
            elinewidth=1.5,
            color=colors[s.arms[0].point],
            label=f"{s.fixed} (mean ± std)",
        )
        span = (max(xs) - min(xs)) or 1.0
        for a in s.arms:
            _seed_dots(ax, s.x(a), a.values(metric), 0.04 * span)
        in_series |= {a.point for a in s.arms}
    for a in arms:
        mean, std, n = a.stat(metric)
        if a.point in in_series or mean is None:
            continue
        ax.axhline(mean, color=colors[a.point], ls="--", lw=1.2, label=f"{a.label} (reference, n={n}, band ±1 std)")
        if std:
            ax.axhspan(mean - std, mean + std, color=colors[a.point], alpha=0.15, lw=0)
    ax.set_xlabel(f"{key} (dimensionless)" if key.endswith(("weight_decay", "lr_scale", "frac")) else key)
    ax.set_ylabel(f"{metric} ({'nats/token' if metric.endswith('loss') else 'endpoint units'})")
    ax.set_title(f"Dose-response: {metric} vs {key}; dots = seeds ({_n_note(arms)})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_PANELS = (
    ("val_loss", "val loss at budget", "val loss (nats/token)"),
    ("tokens_to_target_loss", "tokens to target loss", "training tokens"),
    ("minutes_to_target_loss", f"minutes to target loss\n({WALL_NOTE})", "wall-clock minutes"),
)


def plot_endpoints(arms: list[Arm], path: Path) -> None:
    """Per arm: mean ± std (error bar) with each seed as a dot, for val loss, tokens and minutes to target."""
    plt = _pyplot()
    colors = _colors(arms)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 5.2))
    for ax, (key, title, ylabel) in zip(axes, _PANELS, strict=True):
        for i, a in enumerate(arms):
            mean, std, n = a.stat(key)
            if mean is None:
                ax.text(i, 0.5, "not reached", ha="center", va="center", fontsize=8, transform=ax.get_xaxis_transform())
                continue
            ax.errorbar(
                [i],
                [mean],
                yerr=[std or 0.0],
                fmt="s",
                ms=7,
                capsize=6,
                lw=2,
                color=colors[a.point],
                label=f"{a.label} (n={n})",
            )
            _seed_dots(ax, i, a.values(key), 0.3)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([a.label for a in arms], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_xlabel("arm")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Endpoints: mean ± std over seeds, dots = seeds ({_n_note(arms)})", fontsize=10)
    fig.subplots_adjust(bottom=0.28, wspace=0.35)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_weight_norms(sweep_dir: Path, arms: list[Arm], path: Path) -> None:
    """Total matrix weight norm ``sqrt(sum_layers ||W||_F^2)`` vs tokens, mean over seeds with a ±1 std band."""
    plt = _pyplot()
    colors = _colors(arms)
    fig, ax = plt.subplots(figsize=(8, 5))
    for a in arms:
        curves = []
        for r in a.stable:
            wn = total_weight_norms(_run_records(sweep_dir, r["run"], rd.STATS))
            if wn:
                curves.append(dict(wn))
        xs, m, s = _mean_curve(curves)
        if not xs:
            continue
        _mean_band(ax, xs, m, s, colors[a.point], f"{a.label} (n={len(curves)})", "-o", ms=3)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("total matrix weight norm sqrt(Σ ||W||_F²) (weight units)")
    ax.set_title(f"Weight-norm trends: mean over seeds, band ±1 std ({_n_note(arms)})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(sweep_dir: Path, arms: list[Arm], series: list[Series], metric: str) -> list[tuple[str, str]]:
    """Write every PNG into ``sweep_dir``; returns ``(title, file name)`` pairs in report order."""
    target = next((r.get("target_loss") for a in arms for r in a.runs if r.get("target_loss") is not None), None)
    out = []
    plot_loss_curves(sweep_dir, arms, target, sweep_dir / "loss_vs_tokens.png")
    out.append(("Loss vs tokens", "loss_vs_tokens.png"))
    for key in dict.fromkeys(s.key for s in series):
        fname = f"dose_response_{key.replace('.', '_')}.png"
        plot_dose_response([s for s in series if s.key == key], arms, metric, key, sweep_dir / fname)
        out.append((f"Dose-response: {metric} vs {key}", fname))
    plot_endpoints(arms, sweep_dir / "endpoints.png")
    out.append(("Endpoints (val loss, tokens and minutes to target; minutes depend on the machine)", "endpoints.png"))
    plot_weight_norms(sweep_dir, arms, sweep_dir / "weight_norms.png")
    out.append(("Weight-norm trends", "weight_norms.png"))
    return out
