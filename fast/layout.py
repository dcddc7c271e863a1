"""Which stored dims of a parameter are the matrix Muon orthogonalizes (param-group key ``"matrix_dims"``).

Muon's shape rules (`muonlab.contract.update_scale`: keller's ``max(1, rows/cols)^0.5``, Moonlight's
``0.2 sqrt(max(rows, cols))``) read a parameter as ``[..., rows, cols]`` = ``[..., fan_out, fan_in]``, the
``nn.Linear`` layout; every leading dim is a batch dim (an MoE bank ``[E, out, in]`` is E matrices).
Storage that differs (transformers GPT-2 ``Conv1D`` keeps ``[in, out]``; a conv kernel ``[out, in, kh, kw]``
whose matrix is ``(0, 1)``) names its matrix dims explicitly, in the spirit of optax's
``muon_weight_dimension_numbers``:

* ``None``: the last two dims (the default);
* ``(row_dim, col_dim)``: the stored dims that are the rows (fan_out) and the columns (fan_in); negative
  indices count from the end; every other dim is a batch dim, in stored order.

The optimizer works on `matrix_view` ``= t.movedim((row_dim, col_dim), (-2, -1))``, a view (no copy), so an
in-place update of the view lands in the parameter.

Per-head orthogonalization (param-group key ``"heads"``: dion ``num_heads``, DeepSpeed per-head Muon, GLM-5's
"Muon Split"): ``H`` splits the rows of that matrix into ``H`` equal blocks, ``[..., H, rows/H, cols]`` (still a
view), each a matrix of its own: orthogonalized, NorMuon-normalized and shape-scaled on its own shape.

Row splits (param-group key ``"split"``, `muonlab.contract.RowSplit`: dion ``split_sizes``, a fused ``[Q; K; V]``,
Megatron's split QKV per query group) cut the rows into blocks of uneven size, each a matrix of its own
(`row_blocks`); blocks of a Megatron split are strided views (`row_blocks`), which the step reads and writes in
place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from muonlab.contract.split import RowSplit, check_row_split

__all__ = [
    "MatrixDims",
    "check_group_heads",
    "check_group_matrix_dims",
    "check_group_split",
    "check_matrix_dims",
    "matrix_shape",
    "matrix_view",
    "row_blocks",
]

MatrixDims = tuple[int, int] | None


def check_matrix_dims(shape: Sequence[int], dims: object, name: str) -> MatrixDims:
    """Validate ``dims`` for a parameter of ``shape``; return it normalized: ``None`` for the default layout
    (the last two dims, also when given explicitly), else ``(row_dim, col_dim)`` with non-negative indices.

    Raises `ValueError` / `TypeError` naming ``name`` when ``shape`` has fewer than two dims, ``dims`` is not
    ``None`` or a pair of ints, an index is out of range, or both name the same dim.
    """
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"{name}: shape {tuple(shape)} has {ndim} dim(s); a matrix parameter needs ndim >= 2")
    if dims is None:
        return None
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise TypeError(f"{name}: matrix_dims must be None or a pair (row_dim, col_dim) of ints, got {dims!r}")
    if len(dims) != 2:
        raise ValueError(
            f"{name}: matrix_dims must be a pair (row_dim, col_dim), got {len(dims)} entries {tuple(dims)!r}"
        )
    out: list[int] = []
    for label, d in zip(("row_dim", "col_dim"), dims, strict=True):
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"{name}: matrix_dims {label} must be an int, got {d!r}")
        if not -ndim <= d < ndim:
            raise ValueError(f"{name}: matrix_dims {label}={d} is out of range for shape {tuple(shape)} ({ndim} dims)")
        out.append(d % ndim)
    row, col = out
    if row == col:
        raise ValueError(f"{name}: matrix_dims {tuple(dims)!r} name the same dim {row} twice for shape {tuple(shape)}")
    if (row, col) == (ndim - 2, ndim - 1):
        return None
    return (row, col)


def check_group_matrix_dims(value: object, shapes: Sequence[Sequence[int]], name: str) -> list[MatrixDims]:
    """A param group's ``"matrix_dims"``: a list parallel to its ``"params"`` (``shapes``), each entry
    `check_matrix_dims`-valid; returns the normalized list. ``name`` names the group key in errors, e.g.
    ``"param_groups[0]['matrix_dims']"``."""
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name}: expected a list parallel to 'params' (None or (row_dim, col_dim) each), got {value!r}"
        )
    entries: list[Any] = list(value)
    if len(entries) != len(shapes):
        raise ValueError(f"{name}: has {len(entries)} entries for {len(shapes)} params (must be parallel to 'params')")
    return [check_matrix_dims(s, d, f"{name}[{i}]") for i, (s, d) in enumerate(zip(shapes, entries, strict=True))]


def check_group_heads(value: object, shapes: Sequence[Sequence[int]], name: str) -> list[int | None]:
    """A param group's ``"heads"``: a list parallel to its ``"params"`` whose ``shapes`` are the matrix views'
    (`matrix_shape` without heads), each None or a positive int dividing the rows."""
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a list parallel to 'params' (None or a head count each), got {value!r}")
    entries: list[Any] = list(value)
    if len(entries) != len(shapes):
        raise ValueError(f"{name}: has {len(entries)} entries for {len(shapes)} params (must be parallel to 'params')")
    out: list[int | None] = []
    for i, (shape, h) in enumerate(zip(shapes, entries, strict=True)):
        if h is None or h == 1:
            out.append(None)
            continue
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ValueError(f"{name}[{i}]: expected None or a head count >= 1, got {h!r}")
        if len(shape) != 2:
            raise ValueError(f"{name}[{i}]: heads split a single matrix; the matrix view {tuple(shape)} is a batch")
        if shape[-2] % h:
            raise ValueError(f"{name}[{i}]: {h} heads do not divide the {shape[-2]} rows of the matrix {tuple(shape)}")
        out.append(h)
    return out


def matrix_shape(shape: Sequence[int], dims: MatrixDims, heads: int | None = None) -> tuple[int, ...]:
    """The shape `matrix_view` gives a tensor of ``shape``: batch dims in stored order, then rows, cols (the rows
    split into ``heads`` blocks when given)."""
    s = tuple(int(d) for d in shape)
    if dims is not None:
        row, col = dims
        batch = [d for i, d in enumerate(s) if i not in (row, col)]
        s = (*batch, s[row], s[col])
    return s if heads is None else (*s[:-2], heads, s[-2] // heads, s[-1])


def matrix_view(t: torch.Tensor, dims: MatrixDims, heads: int | None = None) -> torch.Tensor:
    """``t.movedim((row_dim, col_dim), (-2, -1))`` (a view sharing ``t``'s storage; ``t`` itself for ``None``), its
    rows split into ``heads`` blocks when given (splitting one dim is always a view). ``dims`` and ``heads`` must
    come from `check_matrix_dims` and `check_group_heads`."""
    v = t if dims is None else t.movedim(dims, (-2, -1))
    return v if heads is None else v.view(*v.shape[:-2], heads, v.shape[-2] // heads, v.shape[-1])


def check_group_split(value: object, shapes: Sequence[Sequence[int]], name: str) -> list[RowSplit | None]:
    """A param group's ``"split"``: a list parallel to its ``"params"`` whose ``shapes`` are the matrix views', each
    entry `muonlab.contract.check_row_split`-valid (None, row sizes, a `RowSplit`, or ``{"sizes", "groups"}``)."""
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a list parallel to 'params' (None or row sizes each), got {value!r}")
    entries: list[Any] = list(value)
    if len(entries) != len(shapes):
        raise ValueError(f"{name}: has {len(entries)} entries for {len(shapes)} params (must be parallel to 'params')")
    return [check_row_split(v, s, f"{name}[{i}]") for i, (s, v) in enumerate(zip(shapes, entries, strict=True))]


def row_blocks(v: torch.Tensor, split: RowSplit) -> list[torch.Tensor]:
    """The blocks of the ``[m, n]`` matrix view ``v`` as views (`muonlab.reference.row_blocks` states the map): a
    row range ``[s, n]`` for one group, a strided ``[groups, s, n]`` view (the block's matrix read group by group)
    for several."""
    if split.groups == 1:
        return [v[o : o + s] for o, s in zip(split.offsets(), split.sizes, strict=True)]
    grouped = v.view(split.groups, sum(split.sizes), v.shape[-1])
    return [grouped[:, o : o + s, :] for o, s in zip(split.offsets(), split.sizes, strict=True)]
