"""The AdamW hyperparameters of a spec's non-matrix parameters (docs/variants.md A11)."""

from __future__ import annotations

from .spec import MuonSpec

__all__ = ["adam_hyperparameters"]


def adam_hyperparameters(spec: MuonSpec, lr: float) -> tuple[float, float]:
    """``(eta, lambda)`` of the AdamW parameters: ``spec.adam_lr`` or ``lr``; ``spec.adam_weight_decay`` or
    ``spec.weight_decay``."""
    eta = lr if spec.adam_lr is None else float(spec.adam_lr)
    lam = spec.weight_decay if spec.adam_weight_decay is None else float(spec.adam_weight_decay)
    return eta, lam
