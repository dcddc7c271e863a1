"""Figures and numbers of the QK-Clip sweep (harness/configs/qk_clip.toml): ``python plot.py SWEEP_DIR``.

Writes ``max_logit.png`` (per-layer max logit against step, both arms, seed 0) and ``loss.png`` (smoothed
train loss, seed 0) next to this file and prints the per-run table used in README.md (head-clips: the
``qk_clipped`` counts of the logged steps, every second step).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
ARMS = {"no_clip_s0": "no clip", "clip_s0": "QK-Clip"}


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(sweep: Path) -> None:
    runs = {arm: read(sweep / "runs" / arm / "metrics.jsonl") for arm in ARMS}
    tau = json.loads((sweep / "runs" / "clip_s0" / "config.json").read_text())["config"]["train"]["qk_clip_tau"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (arm, label) in zip(axes, ARMS.items(), strict=True):
        recs = runs[arm]
        steps = [r["step"] for r in recs]
        for layer in range(len(recs[0]["max_logit"])):
            ax.plot(steps, [r["max_logit"][layer] for r in recs], label=f"layer {layer}")
        ax.axhline(tau, color="k", ls="--", lw=0.8, label=f"tau = {tau:g}")
        ax.set_yscale("log")
        ax.set_title(f"{label}: max pre-softmax logit per layer")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("max logit (over heads and the step's batch)")
    fig.tight_layout()
    fig.savefig(HERE / "max_logit.png", dpi=110)
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, label in ARMS.items():
        recs = runs[arm]
        ax.plot([r["step"] for r in recs], [r["smoothed_loss"] for r in recs], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("smoothed train loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "loss.png", dpi=110)
    print(
        "| run | max logit at step 20 / 40 / 80 / last (max over layers) | head-clips "
        "| final smoothed train loss | val loss |"
    )
    print("|---|---|---|---|---|")
    for run_dir in sorted((sweep / "runs").iterdir(), key=lambda p: (not p.name.startswith("no_clip"), p.name)):
        recs = read(run_dir / "metrics.jsonl")
        by_step = {r["step"]: r for r in recs}
        at = " / ".join(f"{max(by_step[s]['max_logit']):.1f}" for s in (20, 40, 80, recs[-1]["step"]))
        summary = json.loads((run_dir / "metrics.json").read_text())
        clipped = sum(r.get("qk_clipped", 0) for r in recs)
        print(f"| {run_dir.name} | {at} | {clipped} | {recs[-1]['smoothed_loss']:.4f} | {summary['val_loss']:.4f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
