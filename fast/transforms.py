"""Transforms around ``Orth`` on torch stacks (the math and sources: `muonlab.reference.transforms`): equilibration of
the orthogonalizer's input (`EQUILIBRATIONS`) and normalization of its output (`POST_ORTHS`), per matrix of a
``[B, m, n]`` stack, computed in the stack's dtype (the state's, or NorMuon's) with norms accumulated in float32 at
least. Each returns a new tensor: the input may be the momentum buffer itself."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from muonlab.contract.spec import Equilibrate, PostOrth

__all__ = ["EQUILIBRATIONS", "POST_ORTHS"]

_MUON_PLUS_EPS = 1e-7  # inside the root, as apply_post_polar_norm hard-codes it
_SNAP_EPS = 1e-6  # nanochat: max(||O||_F, 1e-6)


def _sq(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.square().sum(dim=dim, keepdim=True)


def _row_mean(x: torch.Tensor, e: float, eps: float) -> torch.Tensor:
    tau: torch.Tensor = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) / math.sqrt(x.shape[-2])
    rows: torch.Tensor = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * (tau / rows.clamp(min=eps))


EQUILIBRATIONS: dict[Equilibrate, Callable[[torch.Tensor, float, float], torch.Tensor] | None] = {
    "none": None,
    "row": lambda x, e, eps: x * _sq(x, -1).add_(eps).pow_(e),
    "col": lambda x, e, eps: x * _sq(x, -2).add_(eps).pow_(e),
    "rowcol": lambda x, e, eps: x * _sq(x, -1).add_(eps).pow_(e) * _sq(x, -2).add_(eps).pow_(e),
    "row_mean": _row_mean,
    "sign": lambda x, e, eps: torch.sign(x),  # AdaMuon; a non-finite gradient never gets here (Muon.step checks)
}
"""``spec.equilibrate`` -> ``(N, exponent, eps) -> N'`` (None: unchanged)."""


def _unit_rows(u: torch.Tensor) -> torch.Tensor:
    return u / _sq(u, -1).add_(_MUON_PLUS_EPS).sqrt_()


def _unit_cols(u: torch.Tensor) -> torch.Tensor:
    return u / _sq(u, -2).add_(_MUON_PLUS_EPS).sqrt_()


def _snap(u: torch.Tensor) -> torch.Tensor:
    target = math.sqrt(min(u.shape[-2], u.shape[-1]))
    norm: torch.Tensor = torch.linalg.vector_norm(u, dim=(-2, -1), keepdim=True)
    return u * (target / norm.clamp(min=_SNAP_EPS))


POST_ORTHS: dict[PostOrth, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "none": None,
    "frobenius_snap": _snap,
    "row": _unit_rows,
    "col": _unit_cols,
    "row_col": lambda u: _unit_cols(_unit_rows(u)),
    "col_row": lambda u: _unit_rows(_unit_cols(u)),
}
"""``spec.post_orth`` -> ``O -> O'`` (None: unchanged)."""
