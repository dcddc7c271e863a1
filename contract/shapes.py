"""Shape rules both implementations share: the matrix view of a parameter and NorMuon's state shape.

Pure Python on shapes (no array library): `muonlab.reference` and `muonlab.fast` call these, so the two
sides cannot disagree on which ``(m, n)`` a parameter is orthogonalized as (docs/variants.md "Orthogonalization").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .spec import MuonSpec, NorMuonAxis, lookup

__all__ = [
    "NORMUON_AXES",
    "check_ndim",
    "dion2_select_dim",
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


NORMUON_AXES: dict[NorMuonAxis, Callable[[int, int], tuple[int, ...]]] = {
    "row": lambda m, n: (-1,),
    "col": lambda m, n: (-2,),
    "longer": lambda m, n: (-1,) if m >= n else (-2,),  # modded: per element of the longer dim
    "element": lambda m, n: (),  # AdaMuon: no average, S has O's shape
    "matrix": lambda m, n: (-2, -1),  # NAMO: one statistic per matrix
}


def normuon_reduce_axis(m: int, n: int, axis: NorMuonAxis) -> tuple[int, ...]:
    """The dims averaged over: ``(-1,)`` (statistic per row), ``(-2,)`` (per column), ``()`` (per element) or
    ``(-2, -1)`` (per matrix)."""
    return lookup(NORMUON_AXES, axis, "normuon_axis")(m, n)


def second_moment_shape(view_shape: Sequence[int], axis: NorMuonAxis) -> tuple[int, ...]:
    """Shape of ``S`` for an update whose matrix view has shape ``view_shape`` (``[..., m, n]``): the averaged
    dims set to 1."""
    shape = [int(d) for d in view_shape]
    for d in normuon_reduce_axis(shape[-2], shape[-1], axis):
        shape[d] = 1
    return tuple(shape)


def normuon_state_shape(param_shape: Sequence[int], spec: MuonSpec) -> tuple[int, ...]:
    """Shape of NorMuon's ``S`` for a parameter: the matrix view (``nd_mode``) with the averaged axis set to 1.

    ``[m, n]`` -> ``[m, 1]`` (per row) or ``[1, n]`` (per column); ``[B, m, n]`` -> ``[B, m, 1]`` / ``[B, 1, n]``;
    a flattened conv ``[out, in, kh, kw]`` -> ``[out, 1]`` / ``[1, in*kh*kw]``.
    """
    return second_moment_shape(matrix_view_shape(param_shape, spec, "param"), spec.normuon_axis)


def dion2_select_dim(m: int, n: int) -> int:
    """The dim Dion2 selects slices along: -2 (rows) when ``m <= n``, else -1 (columns), the shorter dim
    (dion ``dion2_update_megabatch_async``, unsharded)."""
    return -2 if m <= n else -1
