"""Transforms around ``Orth`` on torch stacks (the math and sources: `muonlab.reference.transforms`): equilibration of
the orthogonalizer's input (`EQUILIBRATIONS`) and normalization of its output (`POST_ORTHS`), per matrix of a
``[B, m, n]`` stack, computed in the stack's dtype (the state's, or NorMuon's) with norms accumulated in float32 at
least. An equilibration returns a new tensor (its input may be the momentum buffer itself); a post-orth
normalization writes into ``O``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from muonlab.contract import MuonSpec
from muonlab.contract.spec import Equilibrate, PostOrth, lookup

from .orthogonalize import MAGNITUDES

__all__ = ["EQUILIBRATIONS", "POST_ORTHS", "AroundOrth"]

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
    return u.div_(_sq(u, -1).add_(_MUON_PLUS_EPS).sqrt_())


def _unit_cols(u: torch.Tensor) -> torch.Tensor:
    return u.div_(_sq(u, -2).add_(_MUON_PLUS_EPS).sqrt_())


def _snap(u: torch.Tensor) -> torch.Tensor:
    target = math.sqrt(min(u.shape[-2], u.shape[-1]))
    norm: torch.Tensor = torch.linalg.vector_norm(u, dim=(-2, -1), keepdim=True)
    return u.mul_(target / norm.clamp(min=_SNAP_EPS))


POST_ORTHS: dict[PostOrth, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "none": None,
    "frobenius_snap": _snap,
    "row": _unit_rows,
    "col": _unit_cols,
    "row_col": lambda u: _unit_cols(_unit_rows(u)),
    "col_row": lambda u: _unit_rows(_unit_cols(u)),
}
"""``spec.post_orth`` -> ``O -> O'`` (None: unchanged), in place: ``O`` is the orthogonalizer's own output."""


def _bound(
    rule: Callable[[torch.Tensor, float, float], torch.Tensor], e: float, eps: float, x: torch.Tensor
) -> torch.Tensor:
    return rule(x, e, eps)


@dataclass(frozen=True)
class AroundOrth:
    """The stages around ``Orth`` of one spec, looked up once in the tables: ``equilibrate`` (``N -> N'``),
    ``magnitude`` (``(N', O) -> O'``, `muonlab.fast.orthogonalize.MAGNITUDES`) and ``post_orth`` (``O -> O'``);
    None where the spec leaves that stage out. The one-process step and the distributed owners both go through
    `before` and `after`, so the order and the dtypes are the same wherever the whole matrix is."""

    equilibrate: Callable[[torch.Tensor], torch.Tensor] | None
    magnitude: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    post_orth: Callable[[torch.Tensor], torch.Tensor] | None

    @staticmethod
    def of(spec: MuonSpec) -> AroundOrth:
        rule = lookup(EQUILIBRATIONS, spec.equilibrate, "equilibrate")
        return AroundOrth(
            None if rule is None else partial(_bound, rule, spec.equilibrate_exponent, spec.equilibrate_eps),
            lookup(MAGNITUDES, spec.magnitude, "magnitude"),
            lookup(POST_ORTHS, spec.post_orth, "post_orth"),
        )

    def before(self, n: torch.Tensor) -> torch.Tensor:
        """``N'``: a new tensor when equilibrated (``n`` may be the momentum buffer), else ``n`` itself."""
        return n if self.equilibrate is None else self.equilibrate(n)

    def after(self, kept: torch.Tensor | None, o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``O'``: the magnitude rule (``kept``: ``N'``, read only by it), then the post-orth normalization in
        ``dtype`` (the state's: nanochat casts ``O`` back to the parameter's dtype first)."""
        if self.magnitude is not None:
            assert kept is not None, "the magnitude rule reads N'"
            o = self.magnitude(kept, o)
        return o if self.post_orth is None else self.post_orth(o.to(dtype))
