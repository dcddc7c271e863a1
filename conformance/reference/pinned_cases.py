"""Pinned 3-step trajectories of every preset (regression values in data/pinned.json).

Inputs are closed-form (sines and cosines), so they never depend on a random number generator's stream.
Regenerate after an intended change to a preset or to the math, and review the diff:

    /tmp/venv/bin/python conformance/reference/pinned_cases.py   # (any Python with muonlab installed)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from muonlab.reference import PRESETS, get_preset, init_muon_state, muon_step

DATA = Path(__file__).resolve().parent / "data" / "pinned.json"
SHAPES: tuple[tuple[int, int], ...] = ((6, 4), (4, 6))
STEPS = 3


def inputs(shape: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:  # type: ignore[type-arg]
    size = math.prod(shape)
    k = np.arange(size, dtype=np.float64)
    w = np.sin(1.0 + 0.7 * k).reshape(shape)
    grads = [np.cos(0.3 + (0.9 + 0.11 * t) * k + t).reshape(shape) for t in range(STEPS)]
    return w, grads


def trajectory(name: str, shape: tuple[int, int]) -> dict[str, float]:
    spec = get_preset(name)
    w, grads = inputs(shape)
    if spec.sphere != "none":
        w = w / np.linalg.norm(w, axis=-1, keepdims=True)
    st = init_muon_state(w, spec)
    for g in grads:
        w, st = muon_step(w, g, st, spec)
    out = {
        "w_sum": float(w.sum()),
        "w_abs_sum": float(np.abs(w).sum()),
        "w_first": float(w.flat[0]),
        "w_last": float(w.flat[-1]),
        "momentum_sum": float(st.momentum.sum()),
    }
    if st.second_moment is not None:
        out["second_moment_sum"] = float(st.second_moment.sum())
    return out


def compute_all() -> dict[str, dict[str, dict[str, float]]]:
    return {name: {f"{m}x{n}": trajectory(name, (m, n)) for m, n in SHAPES} for name in PRESETS}


if __name__ == "__main__":
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(compute_all(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {DATA}")
