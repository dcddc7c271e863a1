"""Momentum forms (docs/variants.md "Momentum"; [S §0.1, §7.3]): EMA/lerp, SGD-sum, optax bias-corrected.

Each function takes the previous buffer ``M`` and the gradient ``G`` and returns ``(M_new, N)``, where ``N``
is the orthogonalizer input. Inputs are never mutated.

* ``"ema"`` (KellerJordan/Muon ``muon_update`` since eb22579, torch.optim.Muon, modded-nanogpt, NorMuon):
  ``M = beta M + (1-beta) G``; Nesterov ``N = (1-beta) G + beta M``, else ``N = M``.
* ``"sum"`` (Moonlight Eq. 1 and footnote 1, dion, Keller before 2025-02):
  ``M = mu M + G``; Nesterov ``N = G + mu M``, else ``N = M``.
* ``"optax"`` (optax ``scale_by_muon``): EMA plus bias correction with the 1-based step ``t``;
  Nesterov ``N = beta M / (1 - beta^{t+1}) + (1-beta) G / (1 - beta^t)``, else ``N = M / (1 - beta^t)``.

With zero initial buffers the EMA form is exactly ``(1-beta)`` times the sum form, for ``M`` and ``N``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from muonlab.contract.spec import MomentumForm, MuonSpec, lookup

from .array import Array

__all__ = ["MOMENTUM_FORMS", "apply_momentum", "ema_momentum", "optax_momentum", "sum_momentum"]


def ema_momentum(buf: Array, grad: Array, beta: float, nesterov: bool, t: int = 1) -> tuple[Array, Array]:
    """``M = beta M + (1-beta) G``; ``N = (1-beta) G + beta M`` (Nesterov) or ``M``; ``t`` is unused.

    Written as in torch ``lerp``: ``M + (1-beta)(G - M)`` and ``G + beta (M - G)``.
    """
    new = buf + (1.0 - beta) * (grad - buf)
    n = grad + beta * (new - grad) if nesterov else new.copy()
    return new, n


def sum_momentum(buf: Array, grad: Array, mu: float, nesterov: bool, t: int = 1) -> tuple[Array, Array]:
    """``M = mu M + G``; ``N = G + mu M`` (Nesterov) or ``M`` (Moonlight ``toy_train.py``, dion); ``t`` is unused."""
    new = mu * buf + grad
    n = grad + mu * new if nesterov else new.copy()
    return new, n


def optax_momentum(buf: Array, grad: Array, beta: float, nesterov: bool, t: int) -> tuple[Array, Array]:
    """optax ``scale_by_muon`` (the module's ``"optax"`` line), bias-corrected with the step ``t >= 1``;
    ``beta = 0`` gives ``N = G``."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t: the optax momentum needs the 1-based step count t >= 1, got {t!r}")
    new = beta * buf + (1.0 - beta) * grad
    if nesterov:
        n = beta * new / (1.0 - beta ** (t + 1)) + (1.0 - beta) * grad / (1.0 - beta**t)
    else:
        n = new / (1.0 - beta**t)
    return new, n


MOMENTUM_FORMS: dict[MomentumForm, Callable[[Array, Array, float, bool, int], tuple[Array, Array]]] = {
    "ema": ema_momentum,
    "sum": sum_momentum,
    "optax": optax_momentum,
}
"""``spec.momentum_form`` -> ``(M, G, beta, nesterov, t) -> (M_new, N)`` (the fast side's table is
`muonlab.fast.momentum.MOMENTUM_FORMS`)."""


def apply_momentum(
    buf: Array, grad: Array, spec: MuonSpec, t: int, form: MomentumForm | None = None
) -> tuple[Array, Array]:
    """`MOMENTUM_FORMS` of ``spec.momentum_form`` (or ``form``) with ``spec.momentum`` and ``spec.nesterov``.

    ``t`` is the 1-based step count after incrementing (only ``"optax"`` reads it).
    """
    step = lookup(MOMENTUM_FORMS, spec.momentum_form if form is None else form, "momentum_form")
    return step(np.asarray(buf, dtype=np.float64), np.asarray(grad, dtype=np.float64), spec.momentum, spec.nesterov, t)
