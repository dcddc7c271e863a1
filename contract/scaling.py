"""Shape scaling of the update: ``eta_u = eta * shape_scale(m, n)`` (docs/variants.md "Shape scale",
decision A3).

* ``"keller"``: ``sqrt(max(1, m/n))`` (KellerJordan/Muon ``muon_update``, torch ``"original"``, optax
  default ``scale_by_shape``, modded-nanogpt);
* ``"moonlight"``: ``rms_scale * sqrt(max(m, n))`` (Moonlight arXiv 2502.16982 Eq. 4, torch
  ``"match_rms_adamw"``, dion ``"rms_norm"``, optax ``consistent_rms``);
* ``"dion"``: ``sqrt(m/n)`` with no ``max`` (dion ``"spectral_norm"``, ``fan_out/fan_in``);
* ``"none"``: 1.

``(m, n)`` are rows and columns in PyTorch ``[out, in]`` layout; `scale_dims` picks them per
``spec.scale_shape``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final

from .shapes import matrix_view_shape
from .spec import MuonSpec, ShapeScale, lookup

__all__ = ["SHAPE_SCALES", "scale_dims", "shape_scale", "update_scale"]


SHAPE_SCALES: Final[dict[ShapeScale, Callable[[int, int, float], float]]] = {
    "keller": lambda m, n, rms_scale: math.sqrt(max(1.0, m / n)),
    "moonlight": lambda m, n, rms_scale: rms_scale * math.sqrt(max(m, n)),
    "dion": lambda m, n, rms_scale: math.sqrt(m / n),  # no max: a wide matrix is scaled down
    "none": lambda m, n, rms_scale: 1.0,
}
"""``shape_scale`` -> the factor of ``eta`` for an ``m x n`` update (the rules of the module docstring)."""


def shape_scale(m: int, n: int, rule: ShapeScale, rms_scale: float = 0.2) -> float:
    """The factor multiplying ``eta`` for an ``m x n`` update under ``rule`` (`SHAPE_SCALES`)."""
    if m < 1 or n < 1:
        raise ValueError(f"m, n: need positive matrix dims, got ({m}, {n})")
    return lookup(SHAPE_SCALES, rule, "shape_scale")(m, n, rms_scale)


def scale_dims(param_shape: Sequence[int], spec: MuonSpec) -> tuple[int, int]:
    """``(m, n)`` read by the shape scale: the orthogonalized matrix (``scale_shape="matrix"``, after the
    ``nd_mode`` view) or the parameter's own last two dims (``"last2"``, Keller's conv quirk: a flattened
    ``[out, in, kh, kw]`` filter scales by ``kh/kw``)."""
    shape = tuple(int(d) for d in param_shape)
    if spec.scale_shape == "last2":
        if len(shape) < 2:
            raise ValueError(f"param must have at least 2 dims, got shape {shape}")
        return shape[-2], shape[-1]
    view = matrix_view_shape(shape, spec, "param")
    return view[-2], view[-1]


def update_scale(param_shape: Sequence[int], spec: MuonSpec) -> float:
    """``spec.scale_factor * shape_scale(*scale_dims(param_shape, spec), spec.shape_scale, spec.rms_scale)``."""
    m, n = scale_dims(param_shape, spec)
    return spec.scale_factor * shape_scale(m, n, spec.shape_scale, spec.rms_scale)
