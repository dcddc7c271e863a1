"""Dion2's submatrix selection (docs/variants.md "Dion2"; microsoft/dion 0a059a4 ``dion/dion2.py``
``dion2_pre_orthogonalize`` / ``dion2_post_orthogonalize``), on float64 ``[B, m, n]`` stacks.

Per matrix: ``M <- M + G``; along the shorter dim (``select_dim`` -2, rows, when ``m <= n``, else -1, columns)
the ``k = max(1, ceil(fraction s))`` slices of largest L1 norm form ``U`` (``s`` slices in all); the buffer's
selected slices are multiplied by ``beta`` (error feedback; the others keep their whole accumulation); ``Orth``
runs on ``U``; the update is ``Orth(U)`` at the selected slices and 0 elsewhere. With ``fraction = 1`` and
``beta = mu`` the input obeys ``U_t = mu U_{t-1} + G_t``: dion's Muon without Nesterov.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from muonlab.contract.shapes import dion2_select_dim

from .array import Array

__all__ = ["dion2_scatter", "dion2_select"]


Index = npt.NDArray[np.intp]


def _dim(m: int, n: int, rows: bool) -> int:
    return -2 if rows else dion2_select_dim(m, n)  # NorDion2 selects rows whatever the shape


def dion2_select(
    buf: Array, grad: Array, beta: float, fraction: float, rows: bool = False
) -> tuple[Array, Array, Index]:
    """``(M_new, U, index)`` for the ``[B, m, n]`` buffer and gradient: ``U`` is ``[B, k, n]`` (rows) or
    ``[B, m, k]`` (columns) and ``index`` ``[B, k]`` the selected slices, largest L1 norm first (ties: lower
    index first). ``rows``: select rows whatever the shape (NorDion2)."""
    acc = np.asarray(buf, dtype=np.float64) + np.asarray(grad, dtype=np.float64)
    m, n = acc.shape[-2:]
    dim = _dim(m, n, rows)
    k = max(1, math.ceil(fraction * acc.shape[dim]))
    scores = np.sum(np.abs(acc), axis=-1 if dim == -2 else -2)  # [B, s]: L1 norm of each slice
    index: Index = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    sl = np.swapaxes(acc, -2, -1) if dim == -1 else acc  # slices as rows
    picked = np.take_along_axis(sl, index[:, :, None], axis=-2)
    decayed = sl.copy()
    np.put_along_axis(decayed, index[:, :, None], beta * picked, axis=-2)
    new = np.swapaxes(decayed, -2, -1) if dim == -1 else decayed
    u = np.swapaxes(picked, -2, -1) if dim == -1 else picked
    return new, u, index


def dion2_scatter(o: Array, index: Index, shape: tuple[int, ...], rows: bool = False) -> Array:
    """The ``[B, m, n]`` update with ``o`` (``Orth(U)``) at the selected slices and 0 elsewhere."""
    dim = _dim(shape[-2], shape[-1], rows)
    out: Array = np.zeros(shape if dim == -2 else (shape[0], shape[2], shape[1]))
    src = np.swapaxes(o, -2, -1) if dim == -1 else o
    np.put_along_axis(out, index[:, :, None], src, axis=-2)
    return np.swapaxes(out, -2, -1) if dim == -1 else out
