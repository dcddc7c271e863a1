"""The stack plan of a param group: which matrices are stepped together, computed once from shapes.

Every Muon parameter is a batch of ``k`` matrices ``[k, m, n]`` (its matrix view, `muonlab.contract.
matrix_view_shape`). Matrices with the same device, state dtype and shape ``(m, n)`` form one *bucket*. (A tall
matrix is not merged into the bucket of its transpose: each matrix's arithmetic, reduction order included, is
then the same as `muonlab.fast.orthogonalize`'s, which the distributed modes use, so those stay bit-identical
to one process.) A bucket's matrices occupy consecutive *slots* of one ``[B, m', n']``
tensor (the momentum buffers live there, `muonlab.fast.optimizer`), and a bucket is cut into *chunks* of at
most ``max_stack_bytes`` of state (at least one matrix each), the unit the step computes at once. A parameter
may span chunks: a chunk lists its *pieces*, ranges of one parameter's matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from muonlab.contract import MuonSpec, normuon_reduce_axis

__all__ = ["Bucket", "Chunk", "Piece", "plan_buckets"]


@dataclass(frozen=True)
class Piece:
    """Matrices ``first : first + count`` of member ``member`` (an index into the planned list), at slots
    ``slot : slot + count`` of its bucket."""

    member: int
    first: int
    count: int
    slot: int


@dataclass(frozen=True)
class Chunk:
    """Slots ``start : stop`` of a bucket, stepped as one stack."""

    start: int
    stop: int
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class Bucket:
    """One stack shape ``[B, rows, cols]``; ``reduce`` is NorMuon's averaged dims
    (`muonlab.contract.normuon_reduce_axis`; None without NorMuon). ``members`` are indices into the planned list;
    ``slots[i]`` is member ``i``'s first slot and ``counts[i]`` its number of matrices."""

    device: torch.device
    dtype: torch.dtype
    rows: int
    cols: int
    reduce: tuple[int, ...] | None
    members: tuple[int, ...]
    slots: tuple[int, ...]
    counts: tuple[int, ...]
    chunks: tuple[Chunk, ...]

    @property
    def size(self) -> int:
        """The number of matrices (slots)."""
        return sum(self.counts)


def _chunks(counts: Sequence[int], members: Sequence[int], per_chunk: int) -> list[Chunk]:
    total = sum(counts)
    n_chunks = max(1, math.ceil(total / per_chunk))
    size = math.ceil(total / n_chunks)  # balanced: no small tail chunk
    out: list[Chunk] = []
    pieces: list[Piece] = []
    start = 0
    slot = 0
    for member, count in zip(members, counts, strict=True):
        first = 0
        while first < count:
            room = start + size - slot
            take = min(room, count - first)
            pieces.append(Piece(member, first, take, slot))
            first += take
            slot += take
            if slot == start + size:
                out.append(Chunk(start, slot, tuple(pieces)))
                pieces, start = [], slot
    if pieces:
        out.append(Chunk(start, slot, tuple(pieces)))
    return out


def plan_buckets(
    mats: Sequence[tuple[int, int, int]],
    devices: Sequence[torch.device],
    dtypes: Sequence[torch.dtype],
    spec: MuonSpec,
    max_stack_bytes: int | None = None,
) -> tuple[Bucket, ...]:
    """Buckets for matrices ``mats[i] = (k, m, n)`` on ``devices[i]`` with state dtype ``dtypes[i]``, in order
    of first appearance; members keep their list order, and entries with ``k = 0`` are in no bucket.
    ``max_stack_bytes`` (None: no cap) bounds each chunk's ``slots * rows * cols * itemsize``; a single matrix
    over the cap is a chunk of its own."""
    if max_stack_bytes is not None and (isinstance(max_stack_bytes, bool) or max_stack_bytes < 1):
        raise ValueError(f"max_stack_bytes: expected a positive integer or None, got {max_stack_bytes!r}")
    groups: dict[tuple[torch.device, torch.dtype, int, int, tuple[int, ...] | None], list[int]] = {}
    for i, (k, m, n) in enumerate(mats):
        if k == 0:  # no matrix (an empty shard of a batch of matrices): nothing to stack
            continue
        red = normuon_reduce_axis(m, n, spec.normuon_axis) if spec.normuon else None
        key = (devices[i], dtypes[i], m, n, red)
        groups.setdefault(key, []).append(i)
    out = []
    for (device, dtype, rows, cols, red), members in groups.items():
        counts = [mats[i][0] for i in members]
        slots = [sum(counts[:j]) for j in range(len(counts))]
        matrix_bytes = rows * cols * dtype.itemsize
        total = sum(counts)
        per_chunk = total if max_stack_bytes is None else max(1, max_stack_bytes // max(matrix_bytes, 1))
        out.append(
            Bucket(
                device=device,
                dtype=dtype,
                rows=rows,
                cols=cols,
                reduce=red,
                members=tuple(members),
                slots=tuple(slots),
                counts=tuple(counts),
                chunks=tuple(_chunks(counts, members, max(per_chunk, 1))),
            )
        )
    return tuple(out)
