"""Momentum forms on torch tensors (docs/variants.md "Momentum (stage 2)"; `muonlab.reference.momentum`), on one
stack: the buffer ``M`` is updated in place and the result ``N`` is the orthogonalizer input. ``"ema"`` runs as
``lerp`` (KellerJordan/Muon, torch). Per-matrix weights skip matrices on the device and step counts are tensors.
`MOMENTUM_FORMS` holds each form's step and the weights that skip a matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from muonlab.contract.spec import MomentumForm, lookup

__all__ = ["MOMENTUM_FORMS", "Form", "momentum_", "momentum_weight", "optax_corrections"]

Weight = float | torch.Tensor


def optax_corrections(steps: torch.Tensor, beta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The Nesterov factors ``(beta / (1 - beta^{t+1}), (1-beta) / (1 - beta^t))`` for the 1-based step
    tensor ``steps``, computed in float64 and rounded once to ``dtype`` (the Python-float arithmetic of optax
    ``scale_by_muon``). Counts below 1 (a skipped parameter's first step) are read as 1: finite factors."""
    t = steps.to(torch.float64).clamp(min=1.0)
    first = beta / (1.0 - torch.pow(beta, t + 1.0))
    second = (1.0 - beta) / (1.0 - torch.pow(beta, t))
    return first.to(dtype), second.to(dtype)


def _ema_(
    buf: torch.Tensor, grad: torch.Tensor, beta: float, nesterov: bool, steps: object, weight: Weight
) -> torch.Tensor:
    buf.lerp_(grad, weight)
    return grad.lerp_(buf, beta) if nesterov else buf


def _sum_(
    buf: torch.Tensor, grad: torch.Tensor, beta: float, nesterov: bool, steps: object, weight: Weight
) -> torch.Tensor:
    buf.mul_(weight).add_(grad)
    return grad.add_(buf, alpha=beta) if nesterov else buf


def _optax_(
    buf: torch.Tensor, grad: torch.Tensor, beta: float, nesterov: bool, steps: object, weight: Weight
) -> torch.Tensor:
    if not isinstance(steps, torch.Tensor):
        raise ValueError("steps: the optax momentum needs the 1-based step counts")
    buf.mul_(weight).add_(grad, alpha=1.0 - beta)
    if nesterov:
        first, second = optax_corrections(steps, beta, buf.dtype)
        return grad.mul_(second).add_(buf * first)
    t = steps.to(torch.float64).clamp(min=1.0)
    return buf / (1.0 - torch.pow(beta, t)).to(buf.dtype)


@dataclass(frozen=True)
class Form:
    """A momentum form on a stack: ``step(M, G, beta, nesterov, steps, weight) -> N``, where ``weight`` is the
    per-matrix factor `weights` gives (``on`` for a matrix that steps, ``off`` for one skipped: it leaves
    ``M`` unchanged bit for bit when its ``G`` is zero)."""

    step: Callable[[torch.Tensor, torch.Tensor, float, bool, object, Weight], torch.Tensor]
    weights: Callable[[float], tuple[float, float]]


MOMENTUM_FORMS: dict[MomentumForm, Form] = {
    "ema": Form(_ema_, lambda beta: (1.0 - beta, 0.0)),  # the lerp weight
    "sum": Form(_sum_, lambda beta: (beta, 1.0)),  # the decay of M
    "optax": Form(_optax_, lambda beta: (beta, 1.0)),
}
"""``spec.momentum_form`` -> its `Form` (the reference's table is `muonlab.reference.momentum.MOMENTUM_FORMS`)."""


def momentum_weight(keep: torch.Tensor, form: MomentumForm, beta: float, dtype: torch.dtype) -> torch.Tensor:
    """The per-matrix ``weight`` of `momentum_` for the bool mask ``keep``: the form's ``on`` / ``off`` weight
    where ``keep`` is True / False, in ``dtype`` (each value exact)."""
    on, off = lookup(MOMENTUM_FORMS, form, "momentum_form").weights(beta)
    if off == 0.0:  # one op: 1 * on and 0 * on are exact
        return keep.to(dtype).mul_(on)
    return torch.full(keep.shape, off, dtype=dtype, device=keep.device).masked_fill_(keep, on)


def momentum_(
    buf: torch.Tensor,
    grad: torch.Tensor,
    form: MomentumForm,
    beta: float,
    nesterov: bool,
    *,
    steps: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stage 2 on one stack: update ``buf`` in place and return ``N`` (``grad`` is consumed: it may be
    overwritten and may be returned; ``N`` may also be ``buf`` itself, so do not write it).

    ``steps`` (``"optax"`` only): the 1-based counts after incrementing, broadcastable to ``buf``.
    ``weight`` (broadcastable, ``buf.dtype``; `momentum_weight`) replaces the form's weight per matrix (None:
    every matrix steps)."""
    kind = lookup(MOMENTUM_FORMS, form, "momentum_form")
    return kind.step(buf, grad, beta, nesterov, steps, kind.weights(beta)[0] if weight is None else weight)
