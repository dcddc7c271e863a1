"""Row splits of a matrix parameter (`muonlab.contract.RowSplit`; docs/fast.md, "Row splits and Megatron's split
QKV"), on NumPy arrays. `muonlab.fast.layout` has the same functions on views."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from muonlab.contract.split import RowSplit

from .array import Array

__all__ = ["from_row_blocks", "row_blocks"]


def row_blocks(x: npt.ArrayLike, split: RowSplit) -> list[Array]:
    """The blocks of the ``[m, n]`` matrix ``x``: block ``j`` is ``x`` read as ``[groups, sum(sizes), n]``, rows
    ``offsets[j] : offsets[j] + sizes[j]`` of every group, as one ``[groups * sizes[j], n]`` matrix (copies)."""
    arr = np.asarray(x, dtype=np.float64)
    grouped = arr.reshape(split.groups, sum(split.sizes), arr.shape[-1])
    return [
        grouped[:, o : o + s, :].reshape(split.groups * s, arr.shape[-1]).copy()
        for o, s in zip(split.offsets(), split.sizes, strict=True)
    ]


def from_row_blocks(blocks: Sequence[npt.ArrayLike], split: RowSplit) -> Array:
    """The inverse of `row_blocks`: the ``[m, n]`` matrix whose blocks are ``blocks``."""
    parts = [np.asarray(b, dtype=np.float64) for b in blocks]
    cols = parts[0].shape[-1]
    grouped = [b.reshape(split.groups, s, cols) for b, s in zip(parts, split.sizes, strict=True)]
    out: Array = np.concatenate(grouped, axis=1).reshape(split.rows, cols)
    return out
