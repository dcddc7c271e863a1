"""`muonlab report SWEEP_DIR`: RESULTS.md with tables, PNG plots and a reproducibility block.

Tables: one row per point (variant + grid assignment): mean +- sample std over its stable seeds of every
endpoint; unstable runs are listed but excluded from the means and from winner selection; the winner
(lowest mean of ``sweep.winner_metric``) is marked. Plots (matplotlib, Agg): smoothed train loss vs
tokens per run, dose-response (endpoint vs each swept numeric value, seed std as error bars),
tokens/minutes-to-target bars, total weight norm vs tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import rundir as rd
from .endpoints import mean_std
from .sweep import ENDPOINT_KEYS, read_results
from .train import total_weight_norms

_RUN_COLS = {
    "run",
    "point",
    "variant",
    "phases",
    "seed",
    "status",
    "unstable",
    "abort_reason",
    "target_loss",
    "steps",
    "tokens",
    "elapsed_s",
    "config_sha256",
    *ENDPOINT_KEYS,
}


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{v:.3g}"
    return f"{v:.{digits}g}"


def _pm(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return _fmt(mean) if n <= 1 else f"{_fmt(mean)} ± {_fmt(std, 2)}"


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per point: seeds, stable count, mean/std/n of every endpoint over the stable runs."""
    points: dict[str, dict[str, Any]] = {}
    for r in rows:
        p = points.setdefault(
            r["point"],
            {
                "point": r["point"],
                "variant": r["variant"],
                "runs": [],
                "params": {k: v for k, v in r.items() if k not in _RUN_COLS},
            },
        )
        p["runs"].append(r)
    for p in points.values():
        stable = [r for r in p["runs"] if not r["unstable"]]
        p["n_runs"] = len(p["runs"])
        p["n_stable"] = len(stable)
        for k in ENDPOINT_KEYS:
            p[k] = mean_std([r.get(k) for r in stable])
    return list(points.values())


def pick_winner(agg: list[dict[str, Any]], metric: str) -> str | None:
    best = None
    for p in agg:
        mean, _, n = p.get(metric, (None, None, 0))
        if n and mean is not None and (best is None or mean < best[0]):
            best = (mean, p["point"])
    return None if best is None else best[1]


def _plots(
    sweep_dir: Path, rows: list[dict[str, Any]], agg: list[dict[str, Any]], metric: str
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    colors = {p["point"]: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(agg)}

    # loss vs tokens
    fig, ax = plt.subplots(figsize=(8, 5))
    any_val = False
    for r in rows:
        recs = rd.read_jsonl(sweep_dir / "runs" / r["run"] / rd.METRICS)
        pts = [(x["tokens"], x["smoothed_loss"]) for x in recs if x.get("smoothed_loss") is not None]
        if pts:
            style = ":" if r["unstable"] else "-"
            ax.plot(
                [t for t, _ in pts],
                [v for _, v in pts],
                style,
                color=colors[r["point"]],
                lw=1.3,
                label=f"{r['run']}{' (unstable)' if r['unstable'] else ''}",
            )
        vals = [(x["tokens"], x["val_loss"]) for x in recs if x.get("val_loss") is not None]
        if vals:
            any_val = True
            ax.plot([t for t, _ in vals], [v for _, v in vals], "o", color=colors[r["point"]], ms=4)
    target = next((r.get("target_loss") for r in rows if r.get("target_loss") is not None), None)
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=0.8, label=f"target {target:.3f}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("smoothed train loss" + (" (dots: val loss)" if any_val else ""))
    ax.set_title("Loss vs tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    lo = [v for r in rows for v in [r.get("final_smoothed_loss")] if v is not None]
    if lo:
        ax.set_ylim(min(lo) - 0.3, min(lo) + 3.0)
    fig.tight_layout()
    fig.savefig(sweep_dir / "loss_vs_tokens.png", dpi=110)
    plt.close(fig)
    out.append(("Loss vs tokens", "loss_vs_tokens.png"))

    # dose-response: every numeric parameter that varies across points
    param_keys = sorted({k for p in agg for k in p["params"]})
    for key in param_keys:
        values = {p["params"].get(key) for p in agg}
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(values) < 2 or len(nums) < 2:
            continue
        groups: dict[str, list[tuple[float, float, float]]] = {}
        for p in agg:
            x = p["params"].get(key)
            mean, std, _n = p[metric]
            if not isinstance(x, (int, float)) or mean is None:
                continue
            # one line per assignment of the other swept keys
            label = (
                ", ".join(
                    f"{k.split('.')[-1]}={v}" for k, v in sorted(p["params"].items()) if k != key and v is not None
                )
                or "base"
            )
            groups.setdefault(label, []).append((float(x), mean, std or 0.0))
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in sorted(groups.items()):
            pts.sort()
            ax.errorbar(
                [x for x, _, _ in pts],
                [m for _, m, _ in pts],
                yerr=[s for _, _, s in pts],
                marker="o",
                capsize=4,
                label=label,
            )
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
        ax.set_title(f"Dose-response: {metric} vs {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fname = f"dose_response_{key.replace('.', '_')}.png"
        fig.savefig(sweep_dir / fname, dpi=110)
        plt.close(fig)
        out.append((f"Dose-response: {key}", fname))

    # endpoint bars
    fig, axes = plt.subplots(1, 3, figsize=(13, 5.5))
    names = [p["point"] for p in agg]
    for ax, key, label in zip(
        axes,
        ("val_loss", "tokens_to_target_loss", "minutes_to_target_loss"),
        ("val loss at budget", "tokens to target", "minutes to target"),
        strict=True,
    ):
        means = [p[key][0] if p[key][0] is not None else 0.0 for p in agg]
        errs = [p[key][1] or 0.0 for p in agg]
        ax.bar(range(len(names)), means, yerr=errs, capsize=4, color=[colors[n] for n in names])
        for i, p in enumerate(agg):
            if p[key][0] is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
        if key == "val_loss" and any(m > 0 for m in means):
            lo = min(m for m in means if m > 0)
            ax.set_ylim(lo * 0.95, max(means) * 1.02)
    fig.subplots_adjust(bottom=0.3, wspace=0.3)
    fig.savefig(sweep_dir / "endpoints.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    out.append(("Endpoints (val loss, tokens and minutes to target)", "endpoints.png"))

    # weight-norm trends
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        wn = total_weight_norms(rd.read_jsonl(sweep_dir / "runs" / r["run"] / rd.STATS))
        if wn:
            ax.plot([t for t, _ in wn], [w for _, w in wn], "-o", ms=3, color=colors[r["point"]], label=r["run"])
    ax.set_xlabel("tokens")
    ax.set_ylabel("total matrix weight norm")
    ax.set_title("Weight-norm trends")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sweep_dir / "weight_norms.png", dpi=110)
    plt.close(fig)
    out.append(("Weight-norm trends", "weight_norms.png"))
    return out


def write_report(sweep_dir: str | Path) -> Path:
    """Write ``SWEEP_DIR/RESULTS.md`` and the PNGs from results.csv and the run dirs; returns the md path."""
    sweep_dir = Path(sweep_dir)
    csv_path = sweep_dir / "results.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{sweep_dir}: no results.csv (run `muonlab sweep` first)")
    rows = read_results(csv_path)
    meta: dict[str, Any] = {}
    if (sweep_dir / "sweep.json").is_file():
        meta = json.loads((sweep_dir / "sweep.json").read_text())
    sweep_sec = meta.get("sweep", {}).get("sweep", {})
    metric = sweep_sec.get("winner_metric", "val_loss")
    agg = aggregate(rows)
    winner = pick_winner(agg, metric)
    plots = _plots(sweep_dir, rows, agg, metric)
    target = next((r.get("target_loss") for r in rows if r.get("target_loss") is not None), None)

    lines = [f"# Results: {sweep_sec.get('name', sweep_dir.name)}", ""]
    lines.append(
        f"{len(rows)} runs, {len(agg)} configurations. Winner by lowest mean `{metric}` over stable "
        f"seeds: **{winner or 'none (no stable run)'}**. Target loss: "
        f"{_fmt(target) if target is not None else 'none'}"
        + (
            f" ({json.loads((sweep_dir / 'target.json').read_text()).get('source')})"
            if (sweep_dir / "target.json").is_file()
            else ""
        )
        + "."
    )
    lines += ["", "## Per configuration (mean ± std over stable seeds)", ""]
    heads = ["config", "seeds (stable/all)", *ENDPOINT_KEYS]
    lines.append("| " + " | ".join(heads) + " |")
    lines.append("|" + "---|" * len(heads))
    for p in sorted(agg, key=lambda p: (p[metric][0] is None, p[metric][0] or 0.0)):
        name = f"**{p['point']}** (winner)" if p["point"] == winner else p["point"]
        cells = [name, f"{p['n_stable']}/{p['n_runs']}", *(_pm(*p[k]) for k in ENDPOINT_KEYS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Units: losses in nats/token; tokens_to_target_loss in tokens; minutes_to_target_loss in "
        "training wall-clock minutes; auc_early_loss = mean train loss over the early token window; "
        "weight_norm_slope in norm units per million tokens.",
        "",
    ]
    lines += ["## Runs", ""]
    rheads = [
        "run",
        "seed",
        "status",
        "unstable",
        "val_loss",
        "final_smoothed_loss",
        "tokens_to_target_loss",
        "minutes_to_target_loss",
        "elapsed_s",
    ]
    lines.append("| " + " | ".join(rheads) + " |")
    lines.append("|" + "---|" * len(rheads))
    for r in rows:
        cells = [
            str(r["run"]),
            str(r["seed"]),
            str(r["status"]),
            f"yes: {r['abort_reason']}" if r["unstable"] else "no",
            *(_fmt(r.get(k)) for k in rheads[4:]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""]
    for title, fname in plots:
        lines += [f"### {title}", "", f"![{title}]({fname})", ""]

    # reproducibility
    lines += ["## Reproducibility", ""]
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
    lines.append("```")
    for c in meta.get("commands", []) or [f"muonlab sweep <config> --out {sweep_dir}"]:
        lines.append(c)
    lines.append(f"muonlab report {sweep_dir}")
    lines.append("```")
    lines.append("")
    lines.append(f"- sweep config sha256: `{meta.get('sweep_sha256', 'n/a')}`")
    lines.append(f"- git commit: `{git.get('commit')}`" + (" (dirty working tree)" if git.get("dirty") else ""))
    lines.append(
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in vers.items() if k != "platform")
        + (f"; {vers.get('platform')}" if vers.get("platform") else "")
    )
    tok = data.get("tokenizer") or {}
    lines.append(f"- tokenizer: {tok.get('name')} sha256 `{tok.get('sha256')}`")
    for s in data.get("sources") or []:
        lines.append(
            f"- data source: {Path(str(s.get('path'))).name} sha256 `{s.get('sha256')}`, "
            f"{s.get('bytes_read')} bytes read, {s.get('tokens')} tokens"
        )
    lines.append(f"- token cache key: `{data.get('key')}`; device: {first_cfg.get('device')}")
    lines += ["", "| run | config sha256 |", "|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | `{r['config_sha256']}` |")
    lines.append("")
    out = sweep_dir / "RESULTS.md"
    rd.atomic_write_text(out, "\n".join(lines))
    return out
