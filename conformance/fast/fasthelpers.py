"""Helpers for the fast suite: the reference as an oracle, error measures, the plain-torch bf16 yardstick."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from hypothesis import HealthCheck, settings

from muonlab import reference as R
from muonlab.fast.pipeline import GroupStacks
from muonlab.reference import MuonSpec

Array = npt.NDArray[np.float64]

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# 1xN, Nx1, tall, wide, square, 3-D (batch of matrices), 4-D (conv filter).
SHAPES: list[tuple[int, ...]] = [(1, 7), (7, 1), (9, 4), (4, 9), (6, 6), (3, 4, 6), (4, 2, 3, 3)]

# Tolerances: DESIGN.md "Tolerances", docs/variants.md section 12.
FP32_REL = 1e-3
BF16_REL = 8e-2
BF16_COS = 0.998
BF16_MASK = 0.02


def rel(a: Array, b: Array) -> float:
    """``||a - b||_F / ||b||_F`` (0 when both are 0)."""
    nb = float(np.linalg.norm(b))
    d = float(np.linalg.norm(a - b))
    return d if nb == 0.0 else d / nb


def cos(a: Array, b: Array) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    return float(np.sum(a * b) / (na * nb))


def np64(t: torch.Tensor) -> Array:
    out: Array = t.detach().to(torch.float64).cpu().numpy()
    return out


def plain_bf16_ns(g: torch.Tensor, spec: MuonSpec) -> torch.Tensor:
    """The yardstick: KellerJordan/Muon ``zeropower_via_newtonschulz5`` written out in plain torch bf16 ops
    (one matrix at a time), with the spec's coefficients, norm scale and eps rule."""
    x = g.to(torch.bfloat16)
    t = x.size(-2) > x.size(-1)
    if t:
        x = x.mT
    norm = x.norm(dim=(-2, -1), keepdim=True) * spec.norm_scale
    x = x / (norm + spec.eps if spec.eps_mode == "add" else norm.clamp(min=spec.eps))
    for a, b, c in R.schedule(spec.ns_coefficients, spec.ns_steps):
        A = x @ x.mT
        B = b * A + c * A @ A
        x = a * x + B @ x
    if t:
        x = x.mT
    return x


class _Directions(GroupStacks):
    """The optimizer's pipeline with stages 5-8 replaced by recording ``O``: stages 1-4 exactly as `Muon` runs
    them, on a parameter that never changes."""

    def __init__(self, w: torch.Tensor, spec: MuonSpec) -> None:
        super().__init__([w], spec, None)
        self.seen: list[torch.Tensor] = []

    def _apply(self, w: Any, views: Any, o: torch.Tensor) -> None:
        self.seen.append(o.clone())


def fast_direction(
    w: torch.Tensor, grads: list[torch.Tensor], spec: MuonSpec, state: dict[str, Any] | None = None
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Stages 1-4 of the fast path for ``len(grads)`` steps from ``state`` (default zero state): (``O`` of each
    step, with ``w``'s shape; the state)."""
    state = {} if state is None else state
    pipe = _Directions(w, spec)
    outs = []
    for g in grads:
        pipe.seen.clear()
        pipe.step([w], [g], [state], lr=0.0, momentum=spec.momentum, weight_decay=spec.weight_decay, backend="torch")
        outs.append(torch.cat(pipe.seen).reshape(w.shape))
    return outs, state


def ref_direction(w: Array, grads: list[Array], spec: MuonSpec) -> tuple[list[Array], R.MuonState]:
    st = R.init_muon_state(w, spec)
    outs = []
    for g in grads:
        o, st = R.muon_update(w, g, st, spec)
        outs.append(o)
    return outs, st


def clone_state(state: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(state)
