"""Transforms around ``Orth`` (docs/variants.md, "Equilibration and post-orthogonalization"): equilibration of
its input ``N`` (`EQUILIBRATIONS`, ``spec.equilibrate``) and normalization of its output ``O`` (`POST_ORTHS`,
``spec.post_orth``), on float64 ``[B, m, n]`` stacks, per matrix.

Sources: MuonEq (arXiv 2603.28254; MaeChd/muon-eq 99b6c8b ``llm-baselines/src/optim/muoneq.py``), Muon+
(arXiv 2602.21545; K1seki221/MuonPlus 8a9ace1 ``utils/optim/muon_plus.py`` ``apply_post_polar_norm``), nanochat
(karpathy/nanochat 92d63d4 ``nanochat/optim.py`` ``muon_step_fused``, its "MuonEq-R" and "Muon+" lines).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from muonlab.contract.spec import Equilibrate, MuonSpec, PostOrth, lookup

from .array import Array

__all__ = ["EQUILIBRATIONS", "POST_ORTHS", "equilibrate", "post_orth"]

_MUON_PLUS_EPS = 1e-7  # hard-coded inside the root in apply_post_polar_norm (its norm_eps argument is unused)
_SNAP_EPS = 1e-6  # nanochat: max(||O||_F, 1e-6)


def _row_scale(x: Array, e: float, eps: float) -> Array:
    out: Array = (np.sum(x * x, axis=-1, keepdims=True) + eps) ** e  # (||row||^2 + delta)^e: unit rows at e = -1/2
    return out


def _col_scale(x: Array, e: float, eps: float) -> Array:
    out: Array = (np.sum(x * x, axis=-2, keepdims=True) + eps) ** e
    return out


def _row_mean(x: Array, e: float, eps: float) -> Array:
    """nanochat: rows to ``tau = ||X||_F / sqrt(m)`` with ``||row||`` clamped at ``eps``."""
    tau = np.linalg.norm(x, axis=(-2, -1), keepdims=True) / math.sqrt(x.shape[-2])
    out: Array = x * (tau / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps))
    return out


EQUILIBRATIONS: dict[Equilibrate, Callable[[Array, float, float], Array] | None] = {
    "none": None,
    "row": lambda x, e, eps: _row_scale(x, e, eps) * x,
    "col": lambda x, e, eps: x * _col_scale(x, e, eps),
    "rowcol": lambda x, e, eps: _row_scale(x, e, eps) * x * _col_scale(x, e, eps),  # both from the same N
    "row_mean": _row_mean,
    "sign": lambda x, e, eps: np.sign(x),  # AdaMuon (NaN stays NaN; non-finite gradients are refused before)
}
"""``spec.equilibrate`` -> ``(N, exponent, eps) -> N'`` (None: unchanged); the fast side's table is
`muonlab.fast.transforms.EQUILIBRATIONS`."""


def _unit_rows(u: Array) -> Array:
    out: Array = u / np.sqrt(np.sum(u * u, axis=-1, keepdims=True) + _MUON_PLUS_EPS)
    return out


def _unit_cols(u: Array) -> Array:
    out: Array = u / np.sqrt(np.sum(u * u, axis=-2, keepdims=True) + _MUON_PLUS_EPS)
    return out


def _snap(u: Array) -> Array:
    target = math.sqrt(min(u.shape[-2], u.shape[-1]))
    out: Array = u * (target / np.maximum(np.linalg.norm(u, axis=(-2, -1), keepdims=True), _SNAP_EPS))
    return out


POST_ORTHS: dict[PostOrth, Callable[[Array], Array] | None] = {
    "none": None,
    "frobenius_snap": _snap,
    "row": _unit_rows,
    "col": _unit_cols,
    "row_col": lambda u: _unit_cols(_unit_rows(u)),  # sequential: rows, then columns
    "col_row": lambda u: _unit_rows(_unit_cols(u)),
}
"""``spec.post_orth`` -> ``O -> O'`` (None: unchanged); the fast side's table is
`muonlab.fast.transforms.POST_ORTHS`."""


def equilibrate(n: Array, spec: MuonSpec) -> Array:
    """``N`` (a ``[B, m, n]`` stack) equilibrated by ``spec.equilibrate``."""
    rule = lookup(EQUILIBRATIONS, spec.equilibrate, "equilibrate")
    return n if rule is None else rule(n, spec.equilibrate_exponent, spec.equilibrate_eps)


def post_orth(o: Array, spec: MuonSpec) -> Array:
    """``O`` (a ``[B, m, n]`` stack) normalized by ``spec.post_orth``."""
    rule = lookup(POST_ORTHS, spec.post_orth, "post_orth")
    return o if rule is None else rule(o)
