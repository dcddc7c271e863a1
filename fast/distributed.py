"""Distributed orthogonalization with ``torch.distributed``: whole matrices only, no redundant work.

Newton-Schulz, Polar Express and the SVD polar factor are functions of the *whole* matrix (the Frobenius
normalization and every ``X X^T`` couple all rows), so a shard is never orthogonalized. Three modes
(docs/distributed.md; variants.md sections 1.2 and 8.4):

* `orthogonalize_replicated` (DDP, every rank holds identical full tensors after the gradient all-reduce):
  each tensor has one owner rank (`assign_owners`: Keller's round-robin over tensors sorted by size); an
  owner orthogonalizes its tensors in one batched call per matrix shape, then one ``all_gather`` per dtype
  gives every rank every result.
* `orthogonalize_sharded` (FSDP2, ``fully_shard`` / DTensor ``Shard(0)``): every rank holds a dim-0 shard of
  every tensor, split by torch's chunk rule (`shard_sizes`; uneven and empty shards included). One
  ``all_to_all`` sends each owner the shards of its tensors, the owner assembles them *exactly* (padding
  rows are cut off before any math), orthogonalizes whole matrices, optionally runs ``finish`` (NorMuon) on
  the whole update, and a second ``all_to_all`` returns every rank its rows (dion
  ``megabatch_orthogonalize_async``, without ever orthogonalizing a padded matrix).
* `orthogonalize_gathered`: every rank all-gathers every full tensor and orthogonalizes all of them. W times
  the compute of the other modes; it is the fallback and the oracle of the tests.

Exactness. On one process `muonlab.fast.orthogonalize` of a ``[B, m, n]`` stack applies the same operations
to every matrix of the stack, so a matrix's result does not depend on which other matrices share its batch
(checked bit-for-bit on CPU by conformance/distributed; cuBLAS may pick a different kernel per batch size,
so on CUDA agreement is to rounding). The oracle of every mode is therefore *per-tensor single-process*
``orthogonalize(x, spec)``. Tensors travel in their own dtype both ways: the orthogonalizer normalizes
before it rounds to ``spec.compute_dtype``, so sending bf16 instead of fp32 (as dion does) would change
results; exactness is worth the bytes here.

All functions are collectives: every rank of ``group`` must call them with the same shapes, dtypes and
spec, in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

from muonlab.contract import MuonSpec, matrix_view_shape, normuon_reduce_axis, resolve_spec

from .backend import Backend, check_backend
from .orthogonalize import as_matrices, orthogonalize

__all__ = [
    "DistributedMode",
    "Finish",
    "Prepare",
    "assign_owners",
    "gather_full",
    "local_shard",
    "muon_directions",
    "on_owners",
    "orthogonalize_gathered",
    "orthogonalize_local",
    "orthogonalize_replicated",
    "orthogonalize_sharded",
    "shard_sizes",
    "sync_from_owners",
    "world_of",
]

DistributedMode = Literal["none", "replicated", "sharded", "gathered"]
"""How `muonlab.fast.Muon` distributes stage 3-4 work (docs/distributed.md)."""

Prepare = Callable[[int, torch.Tensor], torch.Tensor]
"""``prepare(i, N_i) -> X_i``: runs on the rank that holds the whole input tensor ``i`` (its owner) and returns
what is orthogonalized (equilibrated, or Dion2's selected slices; any shape of at least 2 dims, a 3-D one a batch
of matrices; without a ``finish`` that restores the input's shape, the input's shape). ``i`` indexes the input
list."""

Finish = Callable[[int, torch.Tensor], torch.Tensor]
"""``finish(i, O_i) -> U_i``: runs on the owner of the whole orthogonalized tensor ``i`` and returns the final
whole update, of the input's shape (NorMuon, say). ``i`` indexes the input list."""

Group = dist.ProcessGroup | None


# -- layout -------------------------------------------------------------------------------------------


def world_of(group: Group) -> tuple[int, int]:
    """``(world size, rank)`` in ``group``; raises when ``torch.distributed`` is not initialized."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call init_process_group first")
    return dist.get_world_size(group), dist.get_rank(group)


def shard_sizes(rows: int, world_size: int) -> list[int]:
    """Rows held by each rank when ``rows`` are split on dim 0 over ``world_size`` ranks, by the rule of
    ``torch.distributed.tensor.Shard`` (= ``torch.chunk``): ``ceil(rows/W)`` rows per rank until they run
    out, so trailing ranks may hold fewer or none (5 rows on 3 ranks: ``[2, 2, 1]``; 1 row on 2: ``[1, 0]``).
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"rows: expected an integer >= 0, got {rows!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an integer >= 1, got {world_size!r}")
    return [int(Shard.local_shard_size_and_offset(rows, world_size, r)[0]) for r in range(world_size)]


def _chunk(rows: int, world_size: int) -> int:
    """The padded shard height ``ceil(rows/W)`` (at least 0)."""
    return -(-rows // world_size)


def local_shard(full: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s dim-0 shard of ``full`` (a view; `shard_sizes` rule)."""
    size, offset = Shard.local_shard_size_and_offset(full.shape[0], world_size, rank)
    return full.narrow(0, int(offset), int(size))


def assign_owners(shapes: Sequence[Sequence[int]], world_size: int) -> list[int]:
    """The owner rank of each tensor: tensors sorted by ``numel`` (descending), then shape, then index, are
    dealt round-robin ``0, 1, ..., W-1, 0, ...`` (KellerJordan/Muon ``Muon.step``, variants.md section 1.2).

    Equal shapes are adjacent in that order, so each shape's tensors spread evenly over the ranks and each
    owner's share of a shape is one batched call. Deterministic: every rank computes the same list.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an integer >= 1, got {world_size!r}")
    keyed = [(-math.prod(s), tuple(int(d) for d in s), i) for i, s in enumerate(shapes)]
    owners = [0] * len(keyed)
    for k, (_, _, i) in enumerate(sorted(keyed)):
        owners[i] = k % world_size
    return owners


# -- local batched compute ----------------------------------------------------------------------------


def orthogonalize_local(
    tensors: Sequence[torch.Tensor], spec: MuonSpec | str, *, backend: Backend = "auto"
) -> list[torch.Tensor]:
    """``[orthogonalize(x, spec) for x in tensors]`` computed as one batched call per matrix shape, dtype and
    device (the matrix views of `muonlab.fast.orthogonalize.as_matrices` are concatenated). Each result has
    its input's shape and dtype and equals the per-tensor call (see the module docstring)."""
    s = resolve_spec(spec)
    views: list[torch.Tensor] = []
    buckets: dict[tuple[int, int, torch.dtype, torch.device], list[int]] = {}
    for i, x in enumerate(tensors):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"tensors[{i}]: expected a torch.Tensor, got {type(x).__name__}")
        mats, _ = as_matrices(x, s, f"tensors[{i}]")
        views.append(mats)
        buckets.setdefault((mats.shape[-2], mats.shape[-1], x.dtype, x.device), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(views)
    for members in buckets.values():
        sizes = [views[i].shape[0] for i in members]
        stack = views[members[0]] if len(members) == 1 else torch.cat([views[i] for i in members])
        o = orthogonalize(stack, s, backend=backend)
        for i, part in zip(members, torch.split(o, sizes), strict=True):
            out[i] = part.reshape(tensors[i].shape)
    return out


def _compute(
    owned: Sequence[int],
    tensors: Sequence[torch.Tensor],
    spec: MuonSpec,
    backend: Backend,
    prepare: Prepare | None,
    finish: Finish | None,
) -> dict[int, torch.Tensor]:
    """The owner's part of every mode: ``prepare``, `orthogonalize_local` (one batched call per matrix shape),
    ``finish``, for the whole tensors ``tensors`` (indices ``owned`` of the input list)."""
    xs = list(tensors) if prepare is None else [prepare(i, x) for i, x in zip(owned, tensors, strict=True)]
    if finish is None:  # the results travel in the inputs' shapes
        for i, x, y in zip(owned, tensors, xs, strict=True):
            if y.shape != x.shape:
                raise ValueError(
                    f"prepare: changed tensor {i}'s shape {tuple(x.shape)} to {tuple(y.shape)}; pass a finish"
                )
    done = orthogonalize_local(xs, spec, backend=backend)
    del xs
    return {i: o if finish is None else finish(i, o) for i, o in zip(owned, done, strict=True)}


# -- replicated ---------------------------------------------------------------------------------------


def _check_list(tensors: Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    out = list(tensors)
    for i, x in enumerate(out):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}[{i}]: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name}[{i}]: expected a floating-point tensor, got dtype {x.dtype}")
        if x.ndim < 2:
            raise ValueError(f"{name}[{i}]: expected at least 2 dims, got shape {tuple(x.shape)}")
    return out


def _gather_owned(
    values: list[torch.Tensor | None],
    owners: Sequence[int],
    shapes: Sequence[Sequence[int]],
    dtypes: Sequence[torch.dtype],
    wire: Sequence[torch.dtype],
    group: Group,
    device: torch.device,
) -> list[torch.Tensor]:
    """Every rank gets ``values[i]`` from ``owners[i]`` (which holds it; others hold ``None``): one
    ``all_gather`` per wire dtype of flat, zero-padded per-rank buffers."""
    world, rank = world_of(group)
    out: list[torch.Tensor] = [torch.empty(0)] * len(values)
    for wdt in sorted(set(wire), key=str):
        idx = [i for i in range(len(values)) if wire[i] == wdt]
        per_rank = [[i for i in idx if owners[i] == r] for r in range(world)]
        lengths = [sum(math.prod(shapes[i]) for i in mine) for mine in per_rank]
        width = max(lengths)
        if width == 0:
            for i in idx:
                out[i] = torch.empty(tuple(shapes[i]), dtype=dtypes[i], device=device)
            continue
        send = torch.zeros(width, dtype=wdt, device=device)
        pos = 0
        for i in per_rank[rank]:
            v = values[i]
            assert v is not None
            n = v.numel()
            send[pos : pos + n] = v.reshape(-1).to(wdt)
            pos += n
        recv = [torch.empty(width, dtype=wdt, device=device) for _ in range(world)]
        dist.all_gather(recv, send, group=group)
        for r in range(world):
            pos = 0
            for i in per_rank[r]:
                n = math.prod(shapes[i])
                out[i] = recv[r][pos : pos + n].reshape(tuple(shapes[i])).to(dtypes[i])
                pos += n
    return out


def sync_from_owners(tensors: Sequence[torch.Tensor], owners: Sequence[int], *, group: Group = None) -> None:
    """Copy each ``tensors[i]`` from rank ``owners[i]`` into the same tensor on every rank, in place (one
    ``all_gather`` per dtype). Used for state that only the owner updates (NorMuon ``S``)."""
    ts = list(tensors)
    if len(owners) != len(ts):
        raise ValueError(f"owners: expected {len(ts)} entries, got {len(owners)}")
    if not ts:
        return
    _, rank = world_of(group)
    vals: list[torch.Tensor | None] = [t if owners[i] == rank else None for i, t in enumerate(ts)]
    got = _gather_owned(
        vals, owners, [t.shape for t in ts], [t.dtype for t in ts], [t.dtype for t in ts], group, ts[0].device
    )
    for t, g in zip(ts, got, strict=True):
        if g.data_ptr() != t.data_ptr():
            t.copy_(g)


def orthogonalize_replicated(
    tensors: Sequence[torch.Tensor],
    spec: MuonSpec | str,
    *,
    group: Group = None,
    backend: Backend = "auto",
    prepare: Prepare | None = None,
    finish: Finish | None = None,
    finish_dtype: torch.dtype | Sequence[torch.dtype] | None = None,
) -> list[torch.Tensor]:
    """``[orthogonalize(x, spec) for x in tensors]`` (``prepare`` before, ``finish`` after) with the work split
    over the ranks.

    ``tensors`` must be identical on every rank (DDP after the gradient all-reduce). Tensor ``i`` is
    orthogonalized only by ``assign_owners(...)[i]``, in one batched call per matrix shape, and one
    ``all_gather`` per wire dtype shares the results (Keller's ``Muon``; dion's DDP path). Bytes sent and
    received per rank: ``(W-1) * max_r B_r`` where ``B_r`` is the size of rank ``r``'s results on the wire.
    Returns new tensors with the inputs' shapes and dtypes (``finish``'s dtype when given: pass it as
    ``finish_dtype``, one dtype or one per tensor, to save the small ``all_reduce`` that otherwise tells every
    rank what it is).
    """
    s = resolve_spec(spec)
    check_backend(backend)
    ts = _check_list(tensors, "tensors")
    world, rank = world_of(group)
    if not ts:
        return []
    shapes = [tuple(t.shape) for t in ts]
    owners = assign_owners(shapes, world)
    mine = [i for i in range(len(ts)) if owners[i] == rank]
    results = _compute(mine, [ts[i] for i in mine], s, backend, prepare, finish)
    values: list[torch.Tensor | None] = [results.get(i) for i in range(len(ts))]
    del results
    if finish is None:
        dtypes = [t.dtype for t in ts]
        wire = list(dtypes)
    else:
        # finish may change the dtype (NorMuon computes in its state's dtype); every rank must know it.
        probe = [v.dtype if v is not None else None for v in values]
        dtypes = _finish_dtypes(finish_dtype, len(ts)) or _agree_dtypes(probe, owners, group)
        wire = dtypes
    return _gather_owned(values, owners, shapes, dtypes, wire, group, ts[0].device)


def _finish_dtypes(given: torch.dtype | Sequence[torch.dtype] | None, count: int) -> list[torch.dtype]:
    """``finish_dtype`` as one dtype per tensor (empty when not given)."""
    if given is None:
        return []
    out = [given] * count if isinstance(given, torch.dtype) else list(given)
    if len(out) != count:
        raise ValueError(f"finish_dtype: expected one dtype or {count}, got {len(out)}")
    return out


_DTYPE_CODES: tuple[torch.dtype, ...] = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _agree_dtypes(local: Sequence[torch.dtype | None], owners: Sequence[int], group: Group) -> list[torch.dtype]:
    """The dtype of each owner's value, known on every rank (one small ``all_reduce``)."""
    codes = torch.zeros(len(local), dtype=torch.int64)
    for i, d in enumerate(local):
        if d is not None:
            if d not in _DTYPE_CODES:
                raise ValueError(f"finish: returned unsupported dtype {d} for tensor {i}")
            codes[i] = _DTYPE_CODES.index(d) + 1
    backend = dist.get_backend(group)
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    codes = codes.to(dev)
    dist.all_reduce(codes, group=group)
    return [_DTYPE_CODES[int(c) - 1] for c in codes.tolist()]


# -- sharded ------------------------------------------------------------------------------------------


def _unwrap(
    shards: Sequence[torch.Tensor], full_shapes: Sequence[Sequence[int]] | None, group: Group
) -> tuple[list[torch.Tensor], list[tuple[int, ...]], Group, list[DTensor | None]]:
    """Local tensors, global shapes and the group; DTensors must be ``Shard(0)`` on a 1-D mesh."""
    locs: list[torch.Tensor] = []
    shapes: list[tuple[int, ...]] = []
    wrappers: list[DTensor | None] = []
    for i, x in enumerate(shards):
        if isinstance(x, DTensor):
            if x.device_mesh.ndim != 1 or tuple(x.placements) != (Shard(0),):
                raise ValueError(
                    f"shards[{i}]: only DTensors sharded on dim 0 over a 1-D mesh are supported, got "
                    f"placements {tuple(x.placements)} on a {x.device_mesh.ndim}-D mesh"
                )
            if group is None:
                group = x.device_mesh.get_group()
            locs.append(x.to_local())
            shapes.append(tuple(int(d) for d in x.shape))
            wrappers.append(x)
        else:
            locs.append(x)
            wrappers.append(None)
            if full_shapes is None:
                raise ValueError(f"full_shapes: required for plain tensors (shards[{i}] is not a DTensor)")
            if len(full_shapes) != len(shards):
                raise ValueError(f"full_shapes: expected {len(shards)} shapes, got {len(full_shapes)}")
            shapes.append(tuple(int(d) for d in full_shapes[i]))
    if full_shapes is not None and len(full_shapes) != len(shards):
        raise ValueError(f"full_shapes: expected {len(shards)} shapes, got {len(full_shapes)}")
    return _check_list(locs, "shards"), shapes, group, wrappers


def _check_shards(locs: Sequence[torch.Tensor], shapes: Sequence[tuple[int, ...]], world: int, rank: int) -> None:
    for i, (x, full) in enumerate(zip(locs, shapes, strict=True)):
        if len(full) < 2:
            raise ValueError(f"full_shapes[{i}]: expected at least 2 dims, got {full}")
        want = (shard_sizes(full[0], world)[rank], *full[1:])
        if tuple(x.shape) != want:
            raise ValueError(
                f"shards[{i}]: rank {rank} of {world} must hold the dim-0 shard of shape {want} of a tensor of "
                f"shape {full} (torch.chunk rule), got {tuple(x.shape)}"
            )


def _rewrap(results: list[torch.Tensor], wrappers: Sequence[DTensor | None]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for r, w in zip(results, wrappers, strict=True):
        if w is None:
            out.append(r)
        else:
            out.append(DTensor.from_local(r, w.device_mesh, w.placements, shape=w.shape, stride=w.stride()))
    return out


def _padded(x: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """``x`` cast to ``dtype`` and zero-padded on dim 0 to ``rows``, flattened."""
    flat = torch.zeros((rows, *x.shape[1:]), dtype=dtype, device=x.device)
    flat[: x.shape[0]] = x
    return flat.reshape(-1)


def _to_owners(
    locs: Sequence[torch.Tensor], shapes: Sequence[tuple[int, ...]], owners: Sequence[int], group: Group
) -> dict[int, torch.Tensor]:
    """The first ``all_to_all`` of the sharded mode (one per dtype): the owner of tensor ``i`` gets it whole, exactly
    (every shard padded to ``c_i = ceil(rows_i/W)`` rows on the wire, the padding cut off), in its dtype; returns
    ``{i: whole tensor}`` for the tensors this rank owns."""
    world, rank = world_of(group)
    device = locs[0].device
    chunks = [_chunk(sh[0], world) for sh in shapes]
    rowlen = [math.prod(sh[1:]) for sh in shapes]
    owned = [i for i in range(len(locs)) if owners[i] == rank]
    pieces_of: dict[int, list[torch.Tensor]] = {i: [] for i in owned}
    for wdt in sorted({x.dtype for x in locs}, key=str):
        idx = [i for i in range(len(locs)) if locs[i].dtype == wdt]
        to = [[i for i in idx if owners[i] == d] for d in range(world)]
        in_split = [sum(chunks[i] * rowlen[i] for i in to[d]) for d in range(world)]
        mine = to[rank]
        per_src = sum(chunks[i] * rowlen[i] for i in mine)
        pieces = [_padded(locs[i], chunks[i], wdt) for d in range(world) for i in to[d]]
        send = torch.cat(pieces) if pieces else torch.empty(0, dtype=wdt, device=device)
        recv = torch.empty(per_src * world, dtype=wdt, device=device)
        dist.all_to_all_single(recv, send, [per_src] * world, in_split, group=group)
        for src in range(world):
            pos = src * per_src
            for i in mine:
                n = chunks[i] * rowlen[i]
                rows = shard_sizes(shapes[i][0], world)[src]
                pieces_of[i].append(recv[pos : pos + n].reshape(chunks[i], *shapes[i][1:])[:rows])
                pos += n
    return {i: torch.cat(pieces_of[i], dim=0) for i in owned}


def _to_shards(
    results: Mapping[int, torch.Tensor],
    shapes: Sequence[tuple[int, ...]],
    owners: Sequence[int],
    dtypes: Sequence[torch.dtype],
    group: Group,
    device: torch.device,
) -> list[torch.Tensor]:
    """The second ``all_to_all`` of the sharded mode (one per dtype): every rank gets its dim-0 shard of each
    owner's whole result (``results``: this rank's, ``{i: tensor of shapes[i]}``), as ``dtypes[i]``."""
    world, rank = world_of(group)
    chunks = [_chunk(sh[0], world) for sh in shapes]
    rowlen = [math.prod(sh[1:]) for sh in shapes]
    my_rows = [shard_sizes(sh[0], world)[rank] for sh in shapes]
    out: list[torch.Tensor] = [torch.empty(0)] * len(shapes)
    for wdt in sorted(set(dtypes), key=str):
        idx = [i for i in range(len(shapes)) if dtypes[i] == wdt]
        frm = [[i for i in idx if owners[i] == d] for d in range(world)]
        mine = frm[rank]
        per_dst = sum(chunks[i] * rowlen[i] for i in mine)
        blocks = [_padded(results[i], chunks[i] * world, wdt).reshape(world, -1) for i in mine]
        send = torch.cat(blocks, dim=1).reshape(-1) if blocks else torch.empty(0, dtype=wdt, device=device)
        out_split = [sum(chunks[i] * rowlen[i] for i in frm[d]) for d in range(world)]
        recv = torch.empty(sum(out_split), dtype=wdt, device=device)
        dist.all_to_all_single(recv, send, out_split, [per_dst] * world, group=group)
        pos = 0
        for d in range(world):
            for i in frm[d]:
                n = chunks[i] * rowlen[i]
                block = recv[pos : pos + n].reshape(chunks[i], *shapes[i][1:])[: my_rows[i]]
                out[i] = block.to(dtypes[i]).clone()
                pos += n
    return out


def orthogonalize_sharded(
    shards: Sequence[torch.Tensor],
    full_shapes: Sequence[Sequence[int]] | None,
    spec: MuonSpec | str,
    *,
    group: Group = None,
    backend: Backend = "auto",
    prepare: Prepare | None = None,
    finish: Finish | None = None,
    finish_dtype: torch.dtype | Sequence[torch.dtype] | None = None,
) -> list[torch.Tensor]:
    """This rank's dim-0 shards of ``orthogonalize(full_i, spec)`` (``prepare`` before, ``finish`` after), where
    ``full_i`` is the tensor of shape ``full_shapes[i]`` whose shards the ranks hold (FSDP2 ``fully_shard``).

    ``shards[i]`` is this rank's dim-0 shard by the `shard_sizes` rule (possibly empty), or a DTensor with
    placement ``Shard(0)`` on a 1-D mesh (then ``full_shapes`` may be ``None`` and ``group`` defaults to the
    mesh's; DTensors come back as DTensors). ``finish_dtype`` as in `orthogonalize_replicated`. Steps, per
    wire dtype:

    1. pad every shard to ``c_i = ceil(rows_i/W)`` rows; one ``all_to_all`` sends tensor ``i``'s shards to its
       owner (`assign_owners` on the full shapes);
    2. the owner cuts the padding off and concatenates the shards into the exact full tensor, orthogonalizes
       its tensors (one batched call per matrix shape) and applies ``finish``;
    3. a second ``all_to_all`` returns each rank its ``c_i`` rows, narrowed to its shard size.

    Bytes sent per rank per step: ``sum_i c_i * k_i * b_in`` out and, on the way back, the same sizes in the
    result dtype (``k_i = prod(full_i[1:])``); about ``(W-1)/W`` of each crosses the network.
    """
    s = resolve_spec(spec)
    check_backend(backend)
    locs, shapes, group, wrappers = _unwrap(shards, full_shapes, group)
    world, rank = world_of(group)
    _check_shards(locs, shapes, world, rank)
    if not locs:
        return []
    owners = assign_owners(shapes, world)
    whole = _to_owners(locs, shapes, owners, group)
    owned = sorted(whole)
    results = _compute(owned, [whole.pop(i) for i in owned], s, backend, prepare, finish)
    dtypes = [x.dtype for x in locs]
    if finish is not None:
        probe = [results[i].dtype if i in results else None for i in range(len(locs))]
        dtypes = _finish_dtypes(finish_dtype, len(locs)) or _agree_dtypes(probe, owners, group)
    return _rewrap(_to_shards(results, shapes, owners, dtypes, group, locs[0].device), wrappers)


def on_owners(
    inputs: Sequence[Sequence[torch.Tensor]],
    full_shapes: Sequence[Sequence[int]],
    fn: Callable[[int, list[torch.Tensor]], torch.Tensor],
    *,
    dtypes: Sequence[torch.dtype],
    mode: Literal["sharded", "gathered"],
    group: Group = None,
) -> list[torch.Tensor]:
    """``fn(i, [whole input i of each list])`` where the whole tensors are, and this rank's dim-0 shard of each
    result (of shape ``full_shapes[i]``, cast to ``dtypes[i]``). ``inputs``: lists of dim-0 shards (plain local
    tensors) of tensors of ``full_shapes``. ``"sharded"``: one ``all_to_all`` per list and dtype to the owners, ``fn``
    on the owner, one back (`_to_owners`, `_to_shards`); ``"gathered"``: every rank gathers everything and runs
    ``fn`` for every tensor. For steps that need a whole matrix besides Orth (a sphere whose vectors span rows)."""
    world, rank = world_of(group)
    shapes = [tuple(int(d) for d in sh) for sh in full_shapes]
    lists = [list(xs) for xs in inputs]
    for xs in lists:
        _check_shards(xs, shapes, world, rank)
    if not shapes:
        return []
    if mode == "gathered":
        fulls = [gather_full(xs, shapes, group=group) for xs in lists]
        return [
            local_shard(fn(i, [f[i] for f in fulls]), world, rank).to(dtypes[i]).clone() for i in range(len(shapes))
        ]
    owners = assign_owners(shapes, world)
    wholes = [_to_owners(xs, shapes, owners, group) for xs in lists]
    results = {i: fn(i, [w.pop(i) for w in wholes]) for i in sorted(wholes[0])}
    return _to_shards(results, shapes, owners, dtypes, group, lists[0][0].device)


# -- gathered (fallback and oracle) -------------------------------------------------------------------


def gather_full(
    shards: Sequence[torch.Tensor], full_shapes: Sequence[Sequence[int]] | None, *, group: Group = None
) -> list[torch.Tensor]:
    """Every full tensor on every rank, from dim-0 shards (the `orthogonalize_sharded` input contract): one
    ``all_gather`` per dtype of zero-padded ``[c_i, ...]`` blocks. Bytes per rank: ``(W-1) sum_i c_i k_i b``."""
    locs, shapes, group, _ = _unwrap(shards, full_shapes, group)
    world, rank = world_of(group)
    _check_shards(locs, shapes, world, rank)
    if not locs:
        return []
    chunks = [_chunk(sh[0], world) for sh in shapes]
    out: list[torch.Tensor] = [torch.empty(0)] * len(locs)
    for dt in sorted({x.dtype for x in locs}, key=str):
        idx = [i for i, x in enumerate(locs) if x.dtype == dt]
        send = torch.cat([_padded(locs[i], chunks[i], dt) for i in idx])
        recv = [torch.empty_like(send) for _ in range(world)]
        dist.all_gather(recv, send, group=group)
        pos = 0
        for i in idx:
            n = chunks[i] * math.prod(shapes[i][1:])
            parts = [
                recv[r][pos : pos + n].reshape(chunks[i], *shapes[i][1:])[: shard_sizes(shapes[i][0], world)[r]]
                for r in range(world)
            ]
            out[i] = torch.cat(parts, dim=0)
            pos += n
    return out


def orthogonalize_gathered(
    shards: Sequence[torch.Tensor],
    full_shapes: Sequence[Sequence[int]] | None,
    spec: MuonSpec | str,
    *,
    group: Group = None,
    backend: Backend = "auto",
    prepare: Prepare | None = None,
    finish: Finish | None = None,
    finish_dtype: torch.dtype | Sequence[torch.dtype] | None = None,
) -> list[torch.Tensor]:
    """Same result and contract as `orthogonalize_sharded`, computed by gathering every full tensor on every
    rank (`gather_full`) and orthogonalizing all of them locally (`orthogonalize_local`); ``prepare`` and
    ``finish`` run on every rank for every tensor (``finish_dtype`` is accepted for a uniform signature and
    unused). W times the compute; the fallback and the test oracle."""
    del finish_dtype
    s = resolve_spec(spec)
    check_backend(backend)
    locs, shapes, group, wrappers = _unwrap(shards, full_shapes, group)
    world, rank = world_of(group)
    fulls = gather_full(locs, shapes, group=group)
    done = _compute(range(len(fulls)), fulls, s, backend, prepare, finish)
    return _rewrap([local_shard(done[i], world, rank).clone() for i in range(len(fulls))], wrappers)


# -- stages 3-4 of one optimizer step -----------------------------------------------------------------


def muon_directions(
    ns: Sequence[torch.Tensor],
    spec: MuonSpec | str,
    *,
    mode: DistributedMode,
    second_moments: Sequence[torch.Tensor] | None = None,
    second_weights: Sequence[torch.Tensor | float | None] | None = None,
    full_shapes: Sequence[Sequence[int]] | None = None,
    beta2: float | None = None,
    group: Group = None,
    backend: Backend = "auto",
    normuon_inputs: Mapping[str, Sequence[torch.Tensor]] | None = None,
    gradients: Sequence[torch.Tensor] | None = None,
    selections: dict[int, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Stages 3-4 (docs/variants.md "The step, stage by stage") for orthogonalizer inputs ``ns`` (after
    momentum): the update directions (after the transforms around Orth and NorMuon, before the shape scale), each
    of its input's (local) shape.

    * ``"none"``: `orthogonalize_local` (one process, or every rank doing all the work on full tensors);
    * ``"replicated"``: ``ns`` are full and identical on every rank (`orthogonalize_replicated`);
    * ``"sharded"``: ``ns`` are dim-0 shards or ``Shard(0)`` DTensors (`orthogonalize_sharded`);
    * ``"gathered"``: same input as ``"sharded"`` (`orthogonalize_gathered`).

    Everything here reads whole rows, columns or matrices, so it runs where the whole matrix is, on its owner:
    `muonlab.fast.transforms.AroundOrth` (equilibration before Orth; the magnitude rule and the post-orth
    normalization after) and NorMuon. ``second_moments`` are the full ``S`` tensors
    (`muonlab.fast.state.normuon_state_shape` of the *full* parameter), replicated on every rank: the owner
    updates its ``S`` and one small ``all_gather`` (`sync_from_owners`) copies every ``S`` to every rank, so all
    ranks hold identical state and identical ``state_dict`` keys. In ``"gathered"`` every rank updates every ``S``
    itself. ``second_weights`` (optional, one per tensor, the same on every rank) replaces ``S``'s lerp weight
    ``1 - beta2``: 0 leaves that ``S`` unchanged (a skipped parameter, `normuon_normalize_`). NorMuon's other
    per-matrix inputs: ``normuon_inputs["steps"]`` (the bias correction's step count, one tensor per tensor that
    broadcasts over its matrices, the same on every rank); ``gradients`` (NAMO, ``normuon_input="gradient"``:
    the raw gradients in the layout of ``ns``; the owner takes the statistic of the whole gradient, which the
    sharded mode sends it with one more ``all_to_all``); ``||N||_F`` (NAMO's rescale) the owner takes itself.

    ``selections`` (Dion2, ``spec.dion2_fraction``): ``ns`` are the accumulations ``M + G``; the owner selects
    the slices of the whole matrix (`muonlab.fast.dion2.dion2_pick`), orthogonalizes them, applies NorMuon to the
    selected rows' ``S`` (NorDion2) and returns the whole update, 0 off the selection; ``selections`` is filled
    with every tensor's ``[C, k]`` index on every rank (one small ``all_gather``), for the error feedback each rank
    applies to its own buffer. Without it, Dion2's ``ns`` are already the selected slices (``"replicated"``:
    every rank holds the full ``N`` and selects itself).
    """
    from .dion2 import dion2_index_shape, dion2_pick, dion2_scatter
    from .normuon import gradient_statistic, normuon_normalize_
    from .transforms import AroundOrth

    s = resolve_spec(spec)
    if mode not in ("none", "replicated", "sharded", "gathered"):
        raise ValueError(f"mode: expected one of 'none', 'replicated', 'sharded', 'gathered', got {mode!r}")
    tensors = list(ns)
    if not tensors:
        return []
    unknown = set(normuon_inputs or {}) - {"steps"}
    if unknown:
        raise ValueError(
            f"normuon_inputs: unknown keys {sorted(unknown)}; expected 'steps' (NAMO's statistic comes from "
            f"gradients, and ||N||_F is taken on the owner)"
        )
    steps = (normuon_inputs or {}).get("steps")
    namo = s.normuon and s.normuon_input == "gradient"
    if namo and (gradients is None or len(gradients) != len(tensors)):
        got = None if gradients is None else len(gradients)
        raise ValueError(f"gradients: normuon_input='gradient' (NAMO) needs one per tensor ({len(tensors)}), got {got}")
    if selections is not None and s.dion2_fraction is None:
        raise ValueError("selections: only Dion2 (spec.dion2_fraction) selects slices")
    moments: list[torch.Tensor] = []
    finish_dtype: torch.dtype | None = None
    if s.normuon:
        if second_moments is None or len(second_moments) != len(tensors):
            got = None if second_moments is None else len(second_moments)
            raise ValueError(f"second_moments: spec.normuon needs one S per tensor ({len(tensors)}), got {got}")
        moments = list(second_moments)
        dts = {m.dtype for m in moments}
        if len(dts) > 1:
            raise ValueError(f"second_moments: expected one dtype, got {sorted(map(str, dts))}")
        finish_dtype = moments[0].dtype if moments else None
    shapes: list[tuple[int, ...]] = [tuple(t.shape) for t in tensors]
    if mode in ("sharded", "gathered"):
        _, shapes, group, _ = _unwrap(tensors, full_shapes, group)
    whole_grads: dict[int, torch.Tensor] = {}
    if namo:
        assert gradients is not None
        if mode == "sharded":
            owners = assign_owners(shapes, world_of(group)[0])
            whole_grads = _to_owners(_unwrap(list(gradients), shapes, group)[0], shapes, owners, group)
        elif mode == "gathered":
            whole_grads = dict(enumerate(gather_full(list(gradients), shapes, group=group)))
        else:
            whole_grads = dict(enumerate(gradients))

    around = AroundOrth.of(s)
    rows = s.normuon  # NorDion2 selects rows whatever the shape
    reads_norm = s.normuon and s.normuon_rescale == "input_norm"
    held: dict[int, dict[str, Any]] = {}  # per tensor, from prepare to finish on its owner
    picked: dict[int, torch.Tensor] = {}

    def prepare(i: int, x: torch.Tensor) -> torch.Tensor:
        mats, restore = as_matrices(x, s, f"ns[{i}]")
        h: dict[str, Any] = {"restore": restore, "dtype": x.dtype, "full": mats.shape}
        if selections is not None:
            assert s.dion2_fraction is not None
            mats, picked[i] = dion2_pick(mats, s.dion2_fraction, rows)
        mats = around.before(mats)
        if reads_norm:
            h["input_norm"] = torch.linalg.vector_norm(mats, dim=(-2, -1), keepdim=True)  # of N', before Orth
        if around.magnitude is not None:
            h["kept"] = mats
        held[i] = h
        return mats  # [C, ., .]: a batch of matrices to `orthogonalize_local`

    def finish(i: int, o: torch.Tensor) -> torch.Tensor:
        h = held.pop(i)
        o = around.after(h.pop("kept", None), o, h["dtype"])
        if moments:
            st = moments[i]
            sv = st.reshape(o.shape[0], *st.shape[-2:])
            weight = None if second_weights is None else second_weights[i]
            t = None if steps is None else steps[i]
            if i in picked:  # NorDion2: the statistic of the selected rows alone is updated and applied
                at = picked[i].unsqueeze(-1)
                s_sel = torch.gather(sv, -2, at)
                o = normuon_normalize_(o, s_sel, s, beta2=beta2, reduce=(-1,), weight=weight, steps=t)
                sv.scatter_(-2, at, s_sel)
            else:
                stat = None
                if namo:
                    g, _ = as_matrices(whole_grads.pop(i), s, f"gradients[{i}]")
                    stat = gradient_statistic(g, normuon_reduce_axis(g.shape[-2], g.shape[-1], s.normuon_axis))
                    del g
                o = normuon_normalize_(
                    o, sv, s, beta2=beta2, weight=weight, steps=t, statistic=stat, input_norm=h.get("input_norm")
                )
            if sv.data_ptr() != st.data_ptr():
                st.copy_(sv.reshape(st.shape))
        if i in picked:
            o = dion2_scatter(o, picked[i], h["full"], rows=rows)
        out: torch.Tensor = h["restore"](o)
        return out

    hooks: dict[str, Any] = {}
    if moments or selections is not None or around != AroundOrth(None, None, None):
        # finish returns S's dtype (NorMuon) or its input's: known on every rank, so no dtype all_reduce
        dtypes = [finish_dtype or t.dtype for t in tensors]
        hooks = {"prepare": prepare, "finish": finish, "finish_dtype": dtypes}
    if mode == "none":
        done = _compute(range(len(tensors)), tensors, s, backend, hooks.get("prepare"), hooks.get("finish"))
        out = [done[i] for i in range(len(tensors))]
    elif mode == "replicated":
        out = orthogonalize_replicated(tensors, s, group=group, backend=backend, **hooks)
    elif mode == "sharded":
        out = orthogonalize_sharded(tensors, full_shapes, s, group=group, backend=backend, **hooks)
    else:
        out = orthogonalize_gathered(tensors, full_shapes, s, group=group, backend=backend, **hooks)
    if moments and mode in ("replicated", "sharded"):
        sync_from_owners(moments, assign_owners(shapes, world_of(group)[0]), group=group)
    if selections is not None:
        if mode in ("replicated", "sharded"):  # the owners' indices to every rank
            assert s.dion2_fraction is not None
            owners = assign_owners(shapes, world_of(group)[0])
            index_shapes = [dion2_index_shape(matrix_view_shape(sh, s), s.dion2_fraction, rows) for sh in shapes]
            values: list[torch.Tensor | None] = [picked.get(i) for i in range(len(tensors))]
            longs = [torch.int64] * len(tensors)
            dev = _local(tensors[0]).device
            picked = dict(enumerate(_gather_owned(values, owners, index_shapes, longs, longs, group, dev)))
        selections.update(picked)
    return out


def _local(x: torch.Tensor) -> torch.Tensor:
    return x.to_local() if isinstance(x, DTensor) else x
