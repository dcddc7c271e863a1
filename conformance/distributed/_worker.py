"""One rank of the distributed conformance run: `python _worker.py RANK WORLD PORT OUT_JSON`.

Process start-up and ``init_process_group`` are slow, so one launch runs every check and writes
``{check: [ok, detail]}`` to ``OUT_JSON``; `test_distributed.py` asserts each check on every rank. All ranks
build the same full tensors from one seed, so each rank can evaluate the single-process oracle itself.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import muonlab.fast.distributed as D
from muonlab import reference as ref
from muonlab.contract import MuonSpec, from_upstream, get_preset
from muonlab.fast.orthogonalize import as_matrices, orthogonalize

# Fewer rows than ranks ((1, 5), (2, 3) on 3 ranks), a batch of 2 matrices (3-D: on 3 ranks the third holds none,
# a member without a stack slot), a conv filter (4-D), a tall and a wide matrix, and 13 tensors: not divisible by
# 2 or 3.
SHAPES: list[tuple[int, ...]] = [
    (4, 6),
    (4, 6),
    (4, 6),
    (6, 4),
    (1, 5),
    (2, 3),
    (5, 5),
    (2, 3, 4),
    (4, 2, 2, 2),
    (7, 3),
    (16, 8),
    (16, 8),
    (9, 12),
]

Results = dict[str, list[Any]]


def full_tensors(seed: int, dtypes: list[torch.dtype] | None = None) -> list[torch.Tensor]:
    """The same tensors on every rank."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(s, generator=g) for s in SHAPES]
    if dtypes is not None:
        out = [t.to(d) for t, d in zip(out, dtypes, strict=True)]
    return out


def n_matrices(shape: tuple[int, ...], spec: MuonSpec) -> int:
    return math.prod(as_matrices(torch.empty(shape), spec)[0].shape[:-2])


class Counter:
    """Counts the matrices `muonlab.fast.distributed` hands to `orthogonalize` (redundant-work check)."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = D.orthogonalize

    def __enter__(self) -> Counter:
        def counting(x: torch.Tensor, spec: Any, **kw: Any) -> torch.Tensor:
            self.count += x.shape[0]
            return self._orig(x, spec, **kw)

        D.orthogonalize = counting  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        D.orthogonalize = self._orig  # type: ignore[assignment]


def total(count: int) -> int:
    t = torch.tensor([count], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item())


def same_on_all_ranks(x: torch.Tensor) -> bool:
    """Bitwise equal on every rank (gathered as float64 bytes)."""
    world = dist.get_world_size()
    flat = x.detach().reshape(-1).to(torch.float64)
    got = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(got, flat)
    return all(torch.equal(got[0], g) for g in got)


def shard(t: torch.Tensor) -> torch.Tensor:
    return D.local_shard(t, dist.get_world_size(), dist.get_rank()).clone()


def bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[bool, str]:
    bad = [
        i
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y)
    ]
    return not bad, f"mismatch at tensors {bad}"


def rel(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / den if den > 0 else float(np.linalg.norm(a))


# -- checks -------------------------------------------------------------------------------------------


def check_owners(world: int) -> tuple[bool, str]:
    owners = D.assign_owners(SHAPES, world)
    for shape in set(SHAPES):
        per = [sum(1 for s, o in zip(SHAPES, owners, strict=True) if s == shape and o == r) for r in range(world)]
        if max(per) - min(per) > 1:
            return False, f"shape {shape}: per-rank counts {per}"
    loads = [sum(1 for o in owners if o == r) for r in range(world)]
    return max(loads) - min(loads) <= 1, f"tensors per rank {loads}"


def check_shard_rule(world: int) -> tuple[bool, str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    bad = []
    for rows in range(0, 8):
        full = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2)
        local = distribute_tensor(full, mesh, [Shard(0)]).to_local()
        ours = D.local_shard(full, world, dist.get_rank())
        if local.shape[0] != D.shard_sizes(rows, world)[dist.get_rank()] or not torch.equal(local, ours):
            bad.append(rows)
    return not bad, f"rows with a different split: {bad}"


def check_replicated(spec: MuonSpec, world: int) -> tuple[bool, str]:
    xs = full_tensors(1)
    with Counter() as c:
        got = D.orthogonalize_replicated(xs, spec)
    ok, msg = bitwise(got, [orthogonalize(x, spec) for x in xs])
    want_total = sum(n_matrices(s, spec) for s in SHAPES)
    done = total(c.count)
    return ok and done == want_total, f"{msg}; matrices orthogonalized {done} (want {want_total} once each)"


def check_sharded(spec: MuonSpec, world: int, dtypes: list[torch.dtype] | None = None) -> tuple[bool, str]:
    xs = full_tensors(2, dtypes)
    with Counter() as c:
        got = D.orthogonalize_sharded([shard(x) for x in xs], SHAPES, spec)
    ok, msg = bitwise(got, [shard(orthogonalize(x, spec)) for x in xs])
    want_total = sum(n_matrices(s, spec) for s in SHAPES)
    done = total(c.count)
    return ok and done == want_total, f"{msg}; matrices orthogonalized {done} (want {want_total} once each)"


def check_gathered(spec: MuonSpec, world: int) -> tuple[bool, str]:
    xs = full_tensors(3)
    with Counter() as c:
        got = D.orthogonalize_gathered([shard(x) for x in xs], SHAPES, spec)
    ok, msg = bitwise(got, [shard(orthogonalize(x, spec)) for x in xs])
    sharded = D.orthogonalize_sharded([shard(x) for x in xs], SHAPES, spec)
    ok2, msg2 = bitwise(got, sharded)
    want = world * sum(n_matrices(s, spec) for s in SHAPES)
    done = total(c.count)
    return ok and ok2 and done == want, f"oracle: {msg}; vs sharded: {msg2}; matrices {done} (want {want})"


def check_vs_reference(mode: str, world: int) -> tuple[bool, str]:
    errs = {}
    for dt, tol in (("float64", 1e-10), ("float32", 1e-3)):
        spec = get_preset("keller").replace(compute_dtype=dt)
        xs = full_tensors(4, [torch.float64] * len(SHAPES))
        if mode == "replicated":
            got = D.orthogonalize_replicated(xs, spec)
        else:
            parts = D.orthogonalize_sharded([shard(x) for x in xs], SHAPES, spec)
            got = D.gather_full(parts, SHAPES)
        worst = max(rel(g.numpy(), ref.orthogonalize(x.numpy(), spec)) for g, x in zip(got, xs, strict=True))
        errs[dt] = (worst, tol)
    return all(e <= t for e, t in errs.values()), f"max relative Frobenius error vs reference: {errs}"


def check_dtensor(spec: MuonSpec, world: int) -> tuple[bool, str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    xs = full_tensors(5)
    dts = [distribute_tensor(x, mesh, [Shard(0)]) for x in xs]
    got = D.orthogonalize_sharded(dts, None, spec)
    if not all(isinstance(g, DTensor) and tuple(g.placements) == (Shard(0),) for g in got):
        return False, "outputs are not Shard(0) DTensors"
    fulls = [g.full_tensor() for g in got]  # type: ignore[attr-defined]
    return bitwise(fulls, [orthogonalize(x, spec) for x in xs])


def check_bad_shard(spec: MuonSpec, world: int) -> tuple[bool, str]:
    xs = full_tensors(6)
    locs = [shard(x) for x in xs]
    locs[0] = xs[0]  # the full tensor where a shard belongs
    try:
        D.orthogonalize_sharded(locs, SHAPES, spec)
    except ValueError as e:
        return "shards[0]" in str(e), str(e)
    return False, "no ValueError"


# -- whole optimizer steps -----------------------------------------------------------------------------


def check_steps(spec: MuonSpec, mode: D.DistributedMode, world: int, steps: int = 3) -> tuple[bool, str]:
    """``Muon(distributed=mode)`` steps on the rank-averaged gradient (full parameters for ``"replicated"``,
    ``Shard(0)`` DTensors otherwise) vs (a) one-process `Muon` bitwise and (b) the float64 reference within the
    DESIGN tolerance; NorMuon ``S`` identical on every rank and to one process."""
    from torch.distributed.tensor import Shard, distribute_tensor

    from muonlab.fast import Muon

    rank = dist.get_rank()
    w0 = full_tensors(7)
    lr = 0.02
    params = [torch.nn.Parameter(w.clone()) for w in w0] if mode == "replicated" else _dtensor_params(7)
    single = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = Muon(params, spec, lr=lr, distributed=mode)
    opt_single = Muon(single, spec, lr=lr)
    ref_p = [w.double().numpy() for w in w0]
    ref_s = [ref.init_muon_state(p, spec) for p in ref_p]
    for t in range(steps):
        g = torch.Generator().manual_seed(100 + t)
        per_rank = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(world)]
        avg = [m.clone() for m in per_rank[rank]]
        for a in avg:
            dist.all_reduce(a)
            a.div_(world)
        for p, q, a in zip(params, single, avg, strict=True):
            p.grad = a.clone() if mode == "replicated" else distribute_tensor(a, p.device_mesh, [Shard(0)])  # type: ignore[attr-defined]
            q.grad = a.clone()
        opt.step()
        opt_single.step()
        avg_full = [sum(pr[i] for pr in per_rank) / world for i in range(len(SHAPES))]
        for i, a in enumerate(avg_full):
            ref_p[i], ref_s[i] = ref.muon_step(ref_p[i], a.double().numpy(), ref_s[i], spec, lr)
    fulls = [p.detach() if mode == "replicated" else p.detach().full_tensor() for p in params]  # type: ignore[attr-defined]
    ok_bits, msg = bitwise(fulls, [q.detach() for q in single])
    errs = [
        rel(f.double().numpy() - w.double().numpy(), r - w.double().numpy())
        for f, r, w in zip(fulls, ref_p, w0, strict=True)
    ]
    ok_ref = max(errs) <= 1e-3 * steps
    ok_s = True
    if spec.normuon:
        d_states = [opt.state[p] for p in params]
        s_states = [opt_single.state[q] for q in single]
        ok_s = all(same_on_all_ranks(st["second_moment"]) for st in d_states)
        ok_s = ok_s and all(
            torch.equal(d["second_moment"], s["second_moment"]) for d, s in zip(d_states, s_states, strict=True)
        )
    return ok_bits and ok_ref and ok_s, (
        f"vs one-process fast: {msg}; max relative error of W_T - W_0 vs reference {max(errs):.2e}; "
        f"S identical on all ranks and to one process: {ok_s}"
    )


def check_ddp_accumulation(spec: MuonSpec, world: int) -> tuple[bool, str]:
    """DDP with gradient accumulation (two half micro-batches under ``no_sync``) gives the same replicated
    step as one full batch, and both match the reference on the averaged gradient."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from muonlab.fast import Muon

    rank = dist.get_rank()
    results = []
    for micro in (1, 2):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False), torch.nn.Linear(4, 3, bias=False))
        w0 = [p.detach().clone() for p in model.parameters()]
        ddp = DDP(model)
        g = torch.Generator().manual_seed(11 + rank)
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
        for k, (xb, yb) in enumerate(zip(x.chunk(micro), y.chunk(micro), strict=True)):
            loss = torch.nn.functional.mse_loss(ddp(xb), yb, reduction="sum") / x.shape[0]
            if k < micro - 1:
                with ddp.no_sync():
                    loss.backward()
            else:
                loss.backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]
        Muon(model.parameters(), spec, lr=0.02, distributed="replicated").step()
        results.append(([p.detach().clone() for p in model.parameters()], grads, w0))
    (p1, g1, w0), (p2, _g2, _) = results
    diff = max(rel(a.double().numpy(), b.double().numpy()) for a, b in zip(p1, p2, strict=True))
    ref_new = [
        ref.muon_step(
            w.double().numpy(), gg.double().numpy(), ref.init_muon_state(w.double().numpy(), spec), spec, 0.02
        )[0]
        for w, gg in zip(w0, g1, strict=True)
    ]
    err = max(
        rel(p.double().numpy() - w.double().numpy(), r - w.double().numpy())
        for p, r, w in zip(p1, ref_new, w0, strict=True)
    )
    same = all(same_on_all_ranks(p) for p in p2)
    return diff <= 1e-5 and err <= 1e-3 and same, (
        f"accumulated vs one batch: rel diff {diff:.2e}; vs reference {err:.2e}; identical on ranks: {same}"
    )


# -- the optimizer: Muon(distributed=...) ----------------------------------------------------------------


def _small_model() -> torch.nn.Module:
    """Matrices of several shapes (one with fewer rows than ranks), a conv filter and biases (AdamW)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 2),  # 4-D filter (3, 2, 2, 2) + bias
        torch.nn.Flatten(),
        torch.nn.Linear(12, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 8, bias=False),
        torch.nn.Linear(8, 1, bias=False),  # (1, 8): fewer rows than ranks
    )


def _muon_for(model: torch.nn.Module, spec: MuonSpec, **kw: Any) -> Any:
    from muonlab.fast import Muon

    mats = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups: list[dict[str, Any]] = [{"params": mats}]
    if rest:
        groups.append({"params": rest, "algorithm": "adamw"})
    return Muon(groups, spec, lr=0.02, **kw)


def _keys(sd: dict[str, Any]) -> list[str]:
    out = []
    for pid, st in sorted(sd["state"].items()):
        out += [f"{pid}.{k}:{tuple(v.shape) if isinstance(v, torch.Tensor) else ''}" for k, v in sorted(st.items())]
    return out


def keys_same_on_all_ranks(sd: dict[str, Any], *, shapes: bool = True) -> bool:
    keys = _keys(sd) if shapes else [k.split(":")[0] for k in _keys(sd)]
    got: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(got, keys)
    return bool(keys) and all(g == got[0] for g in got)


def check_optimizer_ddp(spec: MuonSpec, world: int, steps: int = 3) -> tuple[bool, str]:
    """A DDP-wrapped model stepped by ``Muon(distributed="replicated")`` vs one-process `Muon` stepping a copy
    of the model on the same (rank-averaged, by DDP) gradients: bitwise, with identical state on all ranks."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = dist.get_rank()
    model = _small_model()
    single = _small_model()
    ddp = DDP(model)
    opt = _muon_for(model, spec, distributed="replicated")
    opt_single = _muon_for(single, spec)
    grads_same = True
    for t in range(steps):
        g = torch.Generator().manual_seed(1000 * t + rank)
        x, y = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 1, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        for p, q in zip(model.parameters(), single.parameters(), strict=True):
            assert p.grad is not None
            grads_same = grads_same and same_on_all_ranks(p.grad)
            q.grad = p.grad.clone()
        opt.step()
        opt_single.step()
    ok_bits, msg = bitwise([p.detach() for p in model.parameters()], [q.detach() for q in single.parameters()])
    sd = opt.state_dict()
    state_same = all(
        same_on_all_ranks(v) for st in sd["state"].values() for v in st.values() if isinstance(v, torch.Tensor)
    )
    state_vs_single = all(
        torch.equal(v, opt_single.state_dict()["state"][pid][k])
        for pid, st in sd["state"].items()
        for k, v in st.items()
    )
    keys = keys_same_on_all_ranks(sd)
    ok = ok_bits and grads_same and state_same and state_vs_single and keys
    return ok, (
        f"params vs one process: {msg}; DDP grads identical on ranks: {grads_same}; state identical on ranks: "
        f"{state_same}, equal to one process: {state_vs_single}; state_dict keys identical: {keys}"
    )


def _dtensor_params(seed: int) -> list[torch.nn.Parameter]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return [torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in full_tensors(seed)]


def _avg_grads(t: int) -> list[torch.Tensor]:
    """Full gradients, different on each rank, averaged over the ranks (identical everywhere)."""
    g = torch.Generator().manual_seed(500 + 31 * t + dist.get_rank())
    out = [torch.randn(s, generator=g) for s in SHAPES]
    for a in out:
        dist.all_reduce(a)
        a.div_(dist.get_world_size())
    return out


def _step_dtensor(
    opt: Any, params: list[torch.nn.Parameter], t: int, single: Any = None, single_params: Any = None
) -> None:
    """One step of ``opt`` on Shard(0) gradients of the averaged gradient (and of ``single`` on the full one)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    for i, (p, a) in enumerate(zip(params, _avg_grads(t), strict=True)):
        p.grad = distribute_tensor(a, p.device_mesh, [Shard(0)])  # type: ignore[attr-defined]
        if single_params is not None:
            single_params[i].grad = a.clone()
    opt.step()
    if single is not None:
        single.step()


def check_optimizer_dtensor(spec: MuonSpec, mode: D.DistributedMode, world: int, steps: int = 3) -> tuple[bool, str]:
    """``Muon(distributed=mode)`` on ``Shard(0)`` DTensor parameters (the layout FSDP2 ``fully_shard``
    produces) vs one-process `Muon` on the full parameters and the rank-averaged gradients: bitwise."""
    from torch.distributed.tensor import DTensor

    from muonlab.fast import Muon

    params = _dtensor_params(8)
    single = [torch.nn.Parameter(w) for w in full_tensors(8)]
    opt = Muon(params, spec, lr=0.02, distributed=mode)
    opt_single = Muon(single, spec, lr=0.02)
    with Counter() as c:
        for t in range(steps):
            _step_dtensor(opt, params, t, opt_single, single)
    done = total(c.count)
    want = steps * (world if mode == "gathered" else 1) * sum(n_matrices(s, spec) for s in SHAPES)
    fulls = [p.detach().full_tensor() for p in params]  # type: ignore[attr-defined]
    ok_bits, msg = bitwise(fulls, [q.detach() for q in single])
    moved = all(not torch.equal(f, w) for f, w in zip(fulls, full_tensors(8), strict=True))
    ok_bits = ok_bits and moved and done == want
    msg += f"; every parameter moved: {moved}; matrices orthogonalized {done} (want {want})"
    sd, sd1 = opt.state_dict(), opt_single.state_dict()
    # the state dict holds each rank's momentum as a DTensor of the parameter's placement (for DCP)
    mom = all(
        isinstance(sd["state"][i]["momentum_buffer"], DTensor)
        and torch.equal(sd["state"][i]["momentum_buffer"].to_local(), shard(sd1["state"][i]["momentum_buffer"]))
        for i in range(len(SHAPES))
    )
    s_ok = True
    if spec.normuon:
        s_ok = all(
            torch.equal(sd["state"][i]["second_moment"], sd1["state"][i]["second_moment"]) for i in range(len(SHAPES))
        )
        s_ok = s_ok and all(same_on_all_ranks(sd["state"][i]["second_moment"]) for i in range(len(SHAPES)))
    keys = keys_same_on_all_ranks(sd, shapes=False)
    return ok_bits and mom and s_ok and keys, (
        f"params vs one process: {msg}; momentum = shard of one process's: {mom}; S full, identical on ranks "
        f"and to one process: {s_ok}; state_dict keys identical on ranks: {keys}"
    )


def check_optimizer_fully_shard(spec: MuonSpec, world: int, steps: int = 3) -> tuple[bool, str]:
    """FSDP2: ``fully_shard(model)`` stepped by ``Muon(distributed="sharded")`` vs one-process `Muon` on a copy
    of the model fed the FSDP-reduced (rank-averaged) gradients: bitwise."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from muonlab.fast import Muon

    def mk() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(6, 5, bias=False),
            torch.nn.Tanh(),
            torch.nn.Linear(5, 1, bias=False),  # 5 and 1 rows
        )

    model, single = mk(), mk()
    w0 = [p.detach().clone() for p in single.parameters()]
    fully_shard(model)
    opt = Muon(model.parameters(), spec, lr=0.02, distributed="sharded")
    opt_single = Muon(single.parameters(), spec, lr=0.02)
    for t in range(steps):
        g = torch.Generator().manual_seed(70 + 10 * t + dist.get_rank())
        x, y = torch.randn(4, 6, generator=g), torch.randn(4, 1, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        for p, q in zip(model.parameters(), single.parameters(), strict=True):
            q.grad = p.grad.full_tensor()  # type: ignore[union-attr]
        opt.step()
        opt.zero_grad()
        opt_single.step()
        opt_single.zero_grad()
    params = list(model.parameters())
    is_dt = all(isinstance(p, DTensor) for p in params)
    fulls = [p.detach().full_tensor() for p in params]  # type: ignore[attr-defined]
    ok, msg = bitwise(fulls, [q.detach() for q in single.parameters()])
    moved = all(not torch.equal(f, w) for f, w in zip(fulls, w0, strict=True))
    keys = keys_same_on_all_ranks(opt.state_dict(), shapes=False)
    return ok and is_dt and moved and keys, (
        f"params vs one process: {msg}; DTensor params: {is_dt}; moved: {moved}; state_dict keys identical: {keys}"
    )


def check_nonfinite_agreed(spec: MuonSpec, world: int) -> tuple[bool, str]:
    """A NaN in rank 0's shard only: with ``nonfinite="raise"`` every rank raises and nothing changes; with
    ``"skip"`` every rank skips that parameter and steps the others (no rank is left in a collective)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    from muonlab.fast import Muon

    def grads(params: list[torch.nn.Parameter]) -> None:
        for p, a in zip(params, _avg_grads(0), strict=True):
            local = distribute_tensor(a, p.device_mesh, [Shard(0)])  # type: ignore[attr-defined]
            if p is params[0] and dist.get_rank() == 0:
                local.to_local()[0, 0] = float("nan")
            p.grad = local

    params = _dtensor_params(11)
    before = [p.detach().full_tensor() for p in params]  # type: ignore[attr-defined]
    opt = Muon(params, spec.replace(nonfinite="raise"), lr=0.02, distributed="sharded")
    grads(params)
    try:
        opt.step()
        raised = False
    except ValueError:
        raised = True
    unchanged = all(torch.equal(p.detach().full_tensor(), b) for p, b in zip(params, before, strict=True))  # type: ignore[attr-defined]
    opt = Muon(params, spec.replace(nonfinite="skip"), lr=0.02, distributed="sharded")
    grads(params)  # the first step skipped: a sphere's W not yet on it stays where it is
    opt.step()
    first = torch.equal(params[0].detach().full_tensor(), before[0])  # type: ignore[attr-defined]
    for p, a in zip(params, _avg_grads(1), strict=True):  # a clean step, so the state is not zero
        p.grad = distribute_tensor(a, p.device_mesh, [Shard(0)])  # type: ignore[attr-defined]
    opt.step()
    before = [p.detach().full_tensor() for p in params]  # type: ignore[attr-defined]
    state0 = {k: _local(v).clone() for k, v in opt.state[params[0]].items()}
    grads(params)
    opt.step()
    after = [p.detach().full_tensor() for p in params]  # type: ignore[attr-defined]
    skipped = torch.equal(after[0], before[0]) and all(
        not torch.equal(a, b) for a, b in zip(after[1:], before[1:], strict=True)
    )
    kept = all(torch.equal(_local(opt.state[params[0]][k]), v) for k, v in state0.items())
    return raised and unchanged and first and skipped and kept, (
        f"raised on this rank: {raised}; unchanged: {unchanged}; first step skipped: {first}; skip: {skipped}; "
        f"skipped state unchanged: {kept}"
    )


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def check_resume(spec: MuonSpec, mode: D.DistributedMode, world: int, k: int = 2) -> tuple[bool, str]:
    """k steps, a per-rank ``torch.save`` of the local parameters and ``optimizer.state_dict()``, a fresh
    optimizer that loads them, k more steps == 2k uninterrupted steps, bit for bit."""
    import io

    from muonlab.fast import Muon

    def fresh() -> tuple[list[torch.nn.Parameter], Any]:
        ps = [torch.nn.Parameter(w) for w in full_tensors(9)] if mode == "replicated" else _dtensor_params(9)
        return ps, Muon(ps, spec, lr=0.02, distributed=mode)

    def step(opt: Any, ps: list[torch.nn.Parameter], t: int) -> None:
        if mode == "replicated":
            for p, a in zip(ps, _avg_grads(t), strict=True):
                p.grad = a
            opt.step()
        else:
            _step_dtensor(opt, ps, t)

    def local(ps: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        return [p.detach().to_local() if mode != "replicated" else p.detach() for p in ps]  # type: ignore[attr-defined]

    ps, opt = fresh()
    for t in range(2 * k):
        step(opt, ps, t)
    straight = [x.clone() for x in local(ps)]

    ps, opt = fresh()
    for t in range(k):
        step(opt, ps, t)
    buf = io.BytesIO()
    torch.save({"params": [x.clone() for x in local(ps)], "optim": opt.state_dict()}, buf)
    del ps, opt
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    ps, opt = fresh()
    with torch.no_grad():
        for x, saved in zip(local(ps), ckpt["params"], strict=True):
            x.copy_(saved)
    opt.load_state_dict(ckpt["optim"])
    for t in range(k, 2 * k):
        step(opt, ps, t)
    return bitwise(local(ps), straight)


CHECKPOINT_DIR: list[str] = []  # set by main(): a directory every rank sees (beside the results)


def check_dcp_fully_shard(spec: MuonSpec, world: int, k: int = 2) -> tuple[bool, str]:
    """FSDP2 through torch's own checkpoint API: ``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` with
    ``dcp.save`` / ``dcp.load``. (a) sharded state dict: a fresh model and optimizer resume bit for bit (k + k
    steps == 2k straight); (b) ``full_state_dict=True``: the gathered state loads into a one-process `Muon` on an
    unsharded copy (world size N -> 1), which then steps bit for bit like the sharded run (same gradients)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    from muonlab.fast import Muon, partition_params

    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5, bias=False), torch.nn.Linear(5, 1)
        )

    def fresh(shard: bool = True) -> tuple[torch.nn.Module, Muon]:
        model = net()
        if shard:
            fully_shard(model)
        groups = partition_params(model).param_groups()
        return model, Muon(groups, spec, lr=0.02, distributed="sharded" if shard else "none")

    def step(model: torch.nn.Module, opt: Muon, t: int, twin: tuple[torch.nn.Module, Muon] | None = None) -> None:
        g = torch.Generator().manual_seed(90 + 10 * t + dist.get_rank())
        x, y = torch.randn(4, 6, generator=g), torch.randn(4, 1, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        if twin is not None:
            for p, q in zip(model.parameters(), twin[0].parameters(), strict=True):
                q.grad = p.grad.full_tensor()  # type: ignore[union-attr]
            twin[1].step()
            twin[1].zero_grad()
        opt.step()
        opt.zero_grad()

    def fulls(model: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().full_tensor() for p in model.parameters()]  # type: ignore[attr-defined]

    model, opt = fresh()
    for t in range(2 * k):
        step(model, opt, t)
    straight = fulls(model)

    model, opt = fresh()
    for t in range(k):
        step(model, opt, t)
    where = os.path.join(CHECKPOINT_DIR[0], f"dcp-world{world}")
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=where)
    full = StateDictOptions(full_state_dict=True)
    full_model, full_optim = (
        get_model_state_dict(model, options=full),
        get_optimizer_state_dict(model, opt, options=full),
    )
    del model, opt

    model, opt = fresh()
    sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(sd, checkpoint_id=where)
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, opt, sd["optim"])
    single = fresh(shard=False)
    set_model_state_dict(single[0], full_model, options=full)
    set_optimizer_state_dict(single[0], single[1], full_optim, options=full)
    for t in range(k, 2 * k):
        step(model, opt, t, twin=single)
    resumed, msg = bitwise(fulls(model), straight)
    one, msg1 = bitwise([q.detach() for q in single[0].parameters()], straight)
    return resumed and one, f"sharded resume vs straight: {resumed} ({msg}); full -> one process: {one} ({msg1})"


def check_optimizer_validation(world: int) -> tuple[bool, str]:
    from muonlab.fast import Muon

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("distributed", lambda: Muon([torch.nn.Parameter(torch.randn(3, 3))], distributed="fsdp")),  # type: ignore[arg-type]
        ("DTensor", lambda: Muon([torch.nn.Parameter(torch.randn(3, 3))], distributed="sharded")),
        ("DTensor", lambda: Muon(_dtensor_params(10), distributed="replicated")),
    ]
    bad = []
    for needle, make in cases:
        try:
            make()
            bad.append(f"{needle}: no error")
        except (ValueError, TypeError) as e:
            if needle not in str(e):
                bad.append(f"{needle}: {e}")
    return not bad, f"problems: {bad}"


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    CHECKPOINT_DIR.append(os.path.dirname(os.path.abspath(out)))
    fp32 = get_preset("keller").replace(compute_dtype="float32")
    bf16 = get_preset("keller")
    normuon = get_preset("modded_normuon").replace(compute_dtype="float32")
    dion = get_preset("dion").replace(compute_dtype="float32", normuon=True, cautious="ge", weight_decay=0.1)
    dion2 = get_preset("dion2").replace(compute_dtype="float32", dion2_fraction=0.5)
    nordion2 = get_preset("nordion2").replace(compute_dtype="float32", dion2_fraction=0.5)
    namo = from_upstream(
        "emerging_optimizers_adaptive", moment2_method="namo", lr=0.02, momentum=0.9, weight_decay=0.1
    ).replace(compute_dtype="float32")
    adamuon_v1 = get_preset("adamuon_v1").replace(compute_dtype="float32")
    # the transforms around Orth, in float32 so the reference tolerance holds
    nanochat = get_preset("nanochat").replace(compute_dtype="float32")
    adamuon = get_preset("adamuon").replace(compute_dtype="float32")
    muoneq = get_preset("muoneq").replace(compute_dtype="float32", equilibrate="rowcol")
    muon_plus = get_preset("muon_plus").replace(compute_dtype="float32")
    adaptive = from_upstream("optax", adaptive=True).replace(compute_dtype="float32")
    # spheres whose vectors span the rows a shard splits: stage 8 on the owner
    muonh = get_preset("muonh").replace(compute_dtype="float32")
    normuonh = get_preset("normuonh").replace(compute_dtype="float32", weight_decay=0.1, hyperball_radius=2.0)
    ngpt_col = get_preset("ngpt").replace(compute_dtype="float32", sphere_axis="col")
    geodesic_matrix = get_preset("ngpt").replace(compute_dtype="float32", sphere="geodesic", sphere_axis="matrix")
    checks: dict[str, Callable[[], tuple[bool, str]]] = {
        "owners_balanced": lambda: check_owners(world),
        "shard_rule_matches_dtensor": lambda: check_shard_rule(world),
        "replicated_bitwise_fp32": lambda: check_replicated(fp32, world),
        "replicated_bitwise_bf16": lambda: check_replicated(bf16, world),
        "replicated_vs_reference": lambda: check_vs_reference("replicated", world),
        "sharded_bitwise_fp32": lambda: check_sharded(fp32, world),
        "sharded_bitwise_bf16": lambda: check_sharded(bf16, world),
        "sharded_mixed_dtypes": lambda: check_sharded(
            fp32, world, [torch.float64, torch.float32, torch.bfloat16] * 4 + [torch.float32]
        ),
        "sharded_vs_reference": lambda: check_vs_reference("sharded", world),
        "gathered_bitwise_and_equals_sharded": lambda: check_gathered(fp32, world),
        "sharded_dtensor_in_out": lambda: check_dtensor(fp32, world),
        "sharded_bad_shard_raises": lambda: check_bad_shard(fp32, world),
        "step_replicated_keller": lambda: check_steps(fp32, "replicated", world),
        "step_replicated_normuon": lambda: check_steps(normuon, "replicated", world),
        "step_sharded_normuon": lambda: check_steps(normuon, "sharded", world),
        "step_sharded_dion_cautious": lambda: check_steps(dion, "sharded", world),
        "step_gathered_normuon": lambda: check_steps(normuon, "gathered", world),
        "step_replicated_dion2": lambda: check_steps(dion2, "replicated", world),
        "step_replicated_nordion2": lambda: check_steps(nordion2, "replicated", world),
        "step_replicated_namo": lambda: check_steps(namo, "replicated", world),
        "step_replicated_adamuon_v1": lambda: check_steps(adamuon_v1, "replicated", world),
        "step_sharded_dion2": lambda: check_steps(dion2, "sharded", world),
        "step_sharded_nordion2": lambda: check_steps(nordion2, "sharded", world),
        "step_gathered_nordion2": lambda: check_steps(nordion2, "gathered", world),
        "step_sharded_namo": lambda: check_steps(namo, "sharded", world),
        "step_gathered_namo": lambda: check_steps(namo, "gathered", world),
        "step_sharded_adamuon_v1": lambda: check_steps(adamuon_v1, "sharded", world),
        "step_replicated_nanochat": lambda: check_steps(nanochat, "replicated", world),
        "step_sharded_nanochat": lambda: check_steps(nanochat, "sharded", world),
        "step_gathered_nanochat": lambda: check_steps(nanochat, "gathered", world),
        "step_replicated_adamuon": lambda: check_steps(adamuon, "replicated", world),
        "step_sharded_adamuon": lambda: check_steps(adamuon, "sharded", world),
        "step_sharded_muoneq_rowcol": lambda: check_steps(muoneq, "sharded", world),
        "step_sharded_muon_plus": lambda: check_steps(muon_plus, "sharded", world),
        "step_replicated_dual_norm": lambda: check_steps(adaptive, "replicated", world),
        "step_sharded_dual_norm": lambda: check_steps(adaptive, "sharded", world),
        "step_sharded_muonh": lambda: check_steps(muonh, "sharded", world),
        "step_sharded_normuonh_fixed_radius_decay": lambda: check_steps(normuonh, "sharded", world),
        "step_gathered_muonh": lambda: check_steps(muonh, "gathered", world),
        "step_sharded_ngpt_col": lambda: check_steps(ngpt_col, "sharded", world),
        "step_sharded_geodesic_matrix": lambda: check_steps(geodesic_matrix, "sharded", world),
        "ddp_accumulation_invariance": lambda: check_ddp_accumulation(fp32, world),
        "optimizer_ddp_replicated_keller": lambda: check_optimizer_ddp(fp32, world),
        "optimizer_ddp_replicated_normuon": lambda: check_optimizer_ddp(normuon, world),
        "optimizer_dtensor_sharded_normuon": lambda: check_optimizer_dtensor(normuon, "sharded", world),
        "optimizer_dtensor_sharded_dion_cautious": lambda: check_optimizer_dtensor(dion, "sharded", world),
        "optimizer_dtensor_gathered_keller": lambda: check_optimizer_dtensor(fp32, "gathered", world),
        "optimizer_fully_shard_normuon": lambda: check_optimizer_fully_shard(normuon, world),
        "optimizer_nonfinite_agreed_sharded": lambda: check_nonfinite_agreed(fp32, world),
        "optimizer_nonfinite_agreed_sharded_nordion2": lambda: check_nonfinite_agreed(nordion2, world),
        "optimizer_nonfinite_agreed_sharded_namo": lambda: check_nonfinite_agreed(namo, world),
        "optimizer_nonfinite_agreed_sharded_normuonh": lambda: check_nonfinite_agreed(normuonh, world),
        "optimizer_fully_shard_muonh": lambda: check_optimizer_fully_shard(muonh, world),
        "optimizer_fully_shard_nanochat": lambda: check_optimizer_fully_shard(nanochat, world),
        "optimizer_fully_shard_dion2": lambda: check_optimizer_fully_shard(dion2, world),
        "optimizer_resume_sharded_nordion2": lambda: check_resume(nordion2, "sharded", world),
        "optimizer_resume_replicated_normuon": lambda: check_resume(normuon, "replicated", world),
        "optimizer_resume_sharded_normuon": lambda: check_resume(normuon, "sharded", world),
        "optimizer_validation": lambda: check_optimizer_validation(world),
        "dcp_fully_shard_normuon": lambda: check_dcp_fully_shard(normuon, world),
    }
    results: Results = {}
    for name, fn in checks.items():
        try:
            ok, detail = fn()
        except Exception:  # recorded, so one failure does not hide the others
            ok, detail = False, traceback.format_exc()
        results[name] = [bool(ok), detail]
    dist.barrier()
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
    # Results are on disk: skip interpreter teardown, where gloo's background threads can abort the process
    # ("terminate called without an active exception", exit -6) after a complete, correct run.
    sys.stdout.flush()
    os._exit(0)
