"""Shape rules both implementations share: the matrix view of a parameter and NorMuon's state shape.

Pure Python on shapes (no array library): `muonlab.reference` and `muonlab.fast` call these, so the two
sides cannot disagree on which ``(m, n)`` a parameter is orthogonalized as (docs/variants.md "Orthogonalization").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .spec import MuonSpec, NorMuonAxis

__all__ = [
    "check_ndim",
    "matrix_view_shape",
    "normuon_reduce_axis",
    "normuon_state_shape",
    "second_moment_shape",
]


def check_ndim(shape: Sequence[int], name: str) -> None:
    """`ValueError` naming ``name`` unless ``shape`` has at least 2 dims."""
    if len(shape) < 2:
        raise ValueError(
            f"{name} must have at least 2 dims (a matrix or a batch of matrices), got shape {tuple(shape)}"
        )


def matrix_view_shape(shape: Sequence[int], spec: MuonSpec, name: str = "x") -> tuple[int, ...]:
    """The shape of the matrix view of a tensor of ``shape``, keeping its leading batch dims.

    * ``ndim`` 2 or 3: unchanged (a 3-D tensor is a batch of matrices over its last two dims);
    * ``ndim >= 4``, ``nd_mode="flatten"``: ``(shape[0], prod(shape[1:]))`` (Keller ``muon_update``);
    * ``ndim >= 4``, ``nd_mode="batch"``: unchanged, a batch over the last two dims (dion ``flatten=False``).

    The last two entries are the ``(m, n)`` the orthogonalizer, NorMuon and the ``"matrix"`` shape scale see.
    """
    shape = tuple(int(d) for d in shape)
    check_ndim(shape, name)
    if len(shape) >= 4 and spec.nd_mode == "flatten":
        return (shape[0], math.prod(shape[1:]))
    return shape


def normuon_reduce_axis(m: int, n: int, axis: NorMuonAxis) -> int:
    """The axis averaged over: ``-1`` (statistic per row) or ``-2`` (per column)."""
    if axis == "row":
        return -1
    if axis == "col":
        return -2
    return -1 if m >= n else -2


def second_moment_shape(view_shape: Sequence[int], axis: NorMuonAxis) -> tuple[int, ...]:
    """Shape of ``S`` for an update whose matrix view has shape ``view_shape`` (``[..., m, n]``)."""
    shape = tuple(int(d) for d in view_shape)
    m, n = shape[-2], shape[-1]
    if normuon_reduce_axis(m, n, axis) == -1:
        return (*shape[:-1], 1)
    return (*shape[:-2], 1, n)


def normuon_state_shape(param_shape: Sequence[int], spec: MuonSpec) -> tuple[int, ...]:
    """Shape of NorMuon's ``S`` for a parameter: the matrix view (``nd_mode``) with the averaged axis set to 1.

    ``[m, n]`` -> ``[m, 1]`` (per row) or ``[1, n]`` (per column); ``[B, m, n]`` -> ``[B, m, 1]`` / ``[B, 1, n]``;
    a flattened conv ``[out, in, kh, kw]`` -> ``[out, 1]`` / ``[1, in*kh*kw]``.
    """
    return second_moment_shape(matrix_view_shape(param_shape, spec, "param"), spec.normuon_axis)
