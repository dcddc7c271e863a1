"""Row splits: one parameter matrix orthogonalized as several matrices (docs/fast.md, "Row splits and Megatron's
split QKV").

A `RowSplit` ``(sizes, groups)`` reads the rows of an ``[m, n]`` matrix as ``[groups, sum(sizes), n]`` and makes
block ``j`` the rows ``sizes[j]`` of every group, stacked group-major into one ``[groups * sizes[j], n]`` matrix,
which the step treats as a parameter of its own (orthogonalized, NorMuon-normalized and shape-scaled on its own
shape):

* ``groups = 1``: contiguous blocks of uneven size (dion ``split_sizes``; a fused QKV stored ``[Q; K; V]``, as
  GPT-2's ``c_attn`` and Phi-3's ``qkv_proj``);
* ``groups = G``: Megatron-core's split QKV (``TensorParallelMuon.orthogonalize``, emerging_optimizers.py @000a717):
  ``linear_qkv`` keeps each query group's rows ``[q, k, v]`` together, ``sizes = (heads / G * d_head, d_head,
  d_head)``, so all query heads form one matrix, all keys one and all values one; GPT-NeoX's per-head
  ``query_key_value`` is ``groups = H``, ``sizes = (d_head,) * 3``.

Every stage of the step commutes with a permutation of a matrix's rows, so the order of rows inside a block (group
major) does not change the result. Pure Python on shapes, shared by both implementations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["RowSplit", "block_shapes", "check_row_split"]


@dataclass(frozen=True)
class RowSplit:
    """Rows read as ``[groups, sum(sizes), n]``; block ``j`` = rows ``sizes[j]`` of every group, one matrix."""

    sizes: tuple[int, ...]
    groups: int = 1

    @property
    def rows(self) -> int:
        """The rows of the matrix it splits."""
        return self.groups * sum(self.sizes)

    def offsets(self) -> list[int]:
        """Where each block starts within a group's ``sum(sizes)`` rows."""
        return [sum(self.sizes[:j]) for j in range(len(self.sizes))]


def check_row_split(value: object, shape: Sequence[int], name: str) -> RowSplit | None:
    """``value`` (None, a `RowSplit`, a sequence of row sizes, or ``{"sizes": [...], "groups": G}``) as a
    `RowSplit` of the ``shape = (m, n)`` matrix view, or None (no split, also for a single block of one group);
    `ValueError` / `TypeError` naming ``name`` for anything else."""
    if value is None:
        return None
    sizes: object
    groups: object
    if isinstance(value, RowSplit):
        sizes, groups = value.sizes, value.groups
    elif isinstance(value, Mapping):
        unknown = set(value) - {"sizes", "groups"}
        if unknown or "sizes" not in value:
            raise ValueError(f"{name}: expected keys 'sizes' and optionally 'groups', got {sorted(map(str, value))}")
        sizes, groups = value["sizes"], value.get("groups", 1)
    else:
        sizes, groups = value, 1
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
        raise TypeError(f"{name}: expected a non-empty sequence of row sizes, got {sizes!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"{name}: row sizes must be positive ints, got {list(sizes)!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
    if len(shape) != 2:
        raise ValueError(f"{name}: a row split cuts a single matrix; the matrix view {tuple(shape)} is a batch")
    split = RowSplit(tuple(sizes), groups)
    if split.rows != shape[0]:
        raise ValueError(
            f"{name}: {groups} group(s) of sizes {list(split.sizes)} cover {split.rows} rows, the matrix "
            f"{tuple(shape)} has {shape[0]}"
        )
    return None if len(split.sizes) == 1 else split


def block_shapes(split: RowSplit, cols: int) -> list[tuple[int, int]]:
    """The ``(rows, cols)`` of each block's matrix."""
    return [(split.groups * s, cols) for s in split.sizes]
