"""AdamW for the non-matrix parameters (docs/variants.md "AdamW for the other parameters"; [S §1.3, §2.2,
§3.4, A11]).

``m = lerp(m, g, 1-beta1)``, ``v = lerp(v, g^2, 1-beta2)``, ``t <- t + 1``, then

* ``adam_eps_mode="corrected"`` (KellerJordan/Muon ``adam_update``, torch.optim.AdamW):
  ``u = (m / (1-beta1^t)) / (sqrt(v / (1-beta2^t)) + eps)``;
* ``"uncorrected"`` (Moonlight ``toy_train.py``, modded-nanogpt ``NorMuonAndAdam``):
  ``u = m / (sqrt(v) + eps) * sqrt(1-beta2^t) / (1-beta1^t)`` (``eps`` effectively ``eps / sqrt(1-beta2^t)``);

and decoupled decay ``W <- W (1 - eta lambda) - eta u``. ``eta = spec.adam_lr`` (the Muon ``lr`` when
``None``, Moonlight and optax), ``lambda = spec.adam_weight_decay`` (``spec.weight_decay`` when ``None``).
optax's NAdamW fallback and modded's cautious, odd-step-only Adam are not reproduced.
"""

from __future__ import annotations

import math

import numpy as np

from muonlab.contract.spec import MuonSpec

from .array import Array

__all__ = ["adam_direction", "adam_moments"]


def adam_moments(exp_avg: Array, exp_avg_sq: Array, grad: Array, spec: MuonSpec) -> tuple[Array, Array]:
    """``(lerp(m, g, 1-beta1), lerp(v, g^2, 1-beta2))`` with ``spec.adam_betas``."""
    b1, b2 = spec.adam_betas
    m = exp_avg + (1.0 - b1) * (grad - exp_avg)
    v = exp_avg_sq + (1.0 - b2) * (grad * grad - exp_avg_sq)
    return m, v


def adam_direction(exp_avg: Array, exp_avg_sq: Array, t: int, spec: MuonSpec) -> Array:
    """The AdamW direction ``u`` at step ``t >= 1`` per ``spec.adam_eps_mode`` (module doc)."""
    b1, b2 = spec.adam_betas
    bc1 = 1.0 - b1**t
    bc2 = 1.0 - b2**t
    eps = spec.adam_eps
    if spec.adam_eps_mode == "corrected":
        out: Array = (exp_avg / bc1) / (np.sqrt(exp_avg_sq / bc2) + eps)
    else:
        out = exp_avg / (np.sqrt(exp_avg_sq) + eps) * (math.sqrt(bc2) / bc1)
    return out
