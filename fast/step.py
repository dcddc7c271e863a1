"""One optimizer step over lists of parameters that share a spec (docs/variants.md, the step's stages), as
functions on explicit per-parameter states: `muon_update_` (stages 1-4: the directions ``O``), `muon_step_`
(1-8, in place) and `adamw_step_` (AdamW for the non-matrix group).

Single-process matrices of one shape are stacked and stepped by `muonlab.fast.stack` (the same code as
`muonlab.fast.Muon`, which keeps its state stacked instead of gathering it here); the distributed modes
route stages 3-4 through `muonlab.fast.distributed.muon_directions`. States are ``Optimizer.state`` dicts
(`muonlab.fast.state`; an empty dict is initialized); step counts are tensors and are never read on the host.
Non-finite gradients are the caller's business (`muonlab.fast.Muon` filters or masks them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from muonlab.contract import MuonSpec, decay_stages, normuon_state_shape, update_scale

from .adamw import adam_direction, adam_moments_, adamw_apply
from .backend import Backend
from .decay import Scalar, apply_update_, coupled_decay, decay_lr, decoupled_decay_
from .distributed import DistributedMode, Group, muon_directions
from .momentum import apply_momentum_
from .orthogonalize import as_matrices
from .plan import plan_buckets
from .sphere import sphere_step
from .stack import gather, stack_directions
from .state import init_adam_state, init_muon_state, state_dtype, wide_dtype

__all__ = ["adamw_step_", "muon_step_", "muon_update_"]

State = dict[str, Any]


def _advance(states: Sequence[State]) -> list[torch.Tensor]:
    """Increment every ``"step"`` (one multi-tensor op) and return them (1-based, tensors)."""
    steps = [st["step"] for st in states]
    torch._foreach_add_(steps, 1.0)
    return steps


def _full_shapes(
    params: Sequence[torch.Tensor], distributed: DistributedMode, full_shapes: Sequence[Sequence[int]] | None
) -> list[tuple[int, ...]]:
    """The global shape of each parameter: its own shape unless shards come with ``full_shapes``."""
    if distributed not in ("none", "replicated", "sharded", "gathered"):
        raise ValueError(
            f"distributed: expected one of 'none', 'replicated', 'sharded', 'gathered', got {distributed!r}"
        )
    if full_shapes is None:
        if distributed in ("sharded", "gathered"):
            raise ValueError(f"full_shapes: required with distributed={distributed!r} (the global shapes)")
        return [tuple(p.shape) for p in params]
    if distributed in ("none", "replicated"):
        raise ValueError(f"full_shapes: only for distributed='sharded' or 'gathered', got {distributed!r}")
    out = [tuple(int(d) for d in s) for s in full_shapes]
    if len(out) != len(params):
        raise ValueError(f"full_shapes: expected {len(params)} shapes, got {len(out)}")
    for i, (p, s) in enumerate(zip(params, out, strict=True)):
        if tuple(p.shape[1:]) != s[1:] or p.shape[0] > s[0]:
            raise ValueError(f"full_shapes[{i}]: {s} cannot hold a dim-0 shard of shape {tuple(p.shape)}")
    return out


def _local_directions(
    plist: list[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[State],
    spec: MuonSpec,
    beta: float,
    lam: float,
    backend: Backend,
) -> list[torch.Tensor]:
    """Stages 1-4 on one process: each bucket of `plan_buckets` gathered into one stack, its state gathered
    and written back."""
    mats = [as_matrices(p, spec, f"params[{i}]")[0] for i, p in enumerate(plist)]
    gmats = [as_matrices(g, spec, f"grads[{i}]")[0] for i, g in enumerate(grads)]
    shapes = [(int(m.shape[0]), int(m.shape[1]), int(m.shape[2])) for m in mats]
    buckets = plan_buckets(shapes, [p.device for p in plist], [state_dtype(p) for p in plist], spec)
    steps = _advance(states)
    coupled, _ = decay_stages(spec, lam)
    out: list[torch.Tensor] = [torch.empty(0)] * len(plist)

    for b in buckets:
        bufs = [as_matrices(states[i]["momentum_buffer"], spec)[0] for i in b.members]
        mom = gather(bufs, b.dtype)
        second = None
        s_views: list[torch.Tensor] = []
        if spec.normuon:
            for i in b.members:
                st = states[i]["second_moment"]
                s_views.append(st.reshape(shapes[i][0], *st.shape[-2:]))
            second = gather(s_views, b.dtype)
        slot_steps = None
        if spec.momentum_form == "optax":
            slot_steps = torch.cat([steps[i].expand(k) for i, k in zip(b.members, b.counts, strict=True)])
            slot_steps = slot_steps.view(-1, 1, 1)
        o = stack_directions(
            [gmats[i] for i in b.members],
            mom,
            second,
            spec,
            beta=beta,
            weights=[mats[i] for i in b.members] if coupled else None,
            weight_decay=lam,
            reduce=b.reduce,
            steps=slot_steps,
            backend=backend,
        )
        torch._foreach_copy_(bufs, list(torch.split(mom, list(b.counts))))
        if second is not None:
            torch._foreach_copy_(s_views, list(torch.split(second, list(b.counts))))
        for i, part in zip(b.members, torch.split(o, list(b.counts)), strict=True):
            out[i] = part.reshape(plist[i].shape)
    return out


def muon_update_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[State],
    spec: MuonSpec,
    *,
    momentum: float | None = None,
    weight_decay: float | None = None,
    backend: Backend = "auto",
    distributed: DistributedMode = "none",
    process_group: Group = None,
    full_shapes: Sequence[Sequence[int]] | None = None,
) -> list[torch.Tensor]:
    """Stages 1-4 for parameters that share ``spec``: the update directions ``O`` (after NorMuon, before the
    shape scale), each of its parameter's shape. ``states`` are updated in place (an empty dict is
    initialized); ``momentum`` / ``weight_decay`` default to the spec's (a param group's live values).

    ``distributed`` (`muonlab.fast.distributed.DistributedMode`) routes stages 3-4 through
    `muonlab.fast.distributed.muon_directions` over ``process_group``: ``"replicated"`` takes full tensors
    identical on every rank (DDP); ``"sharded"`` / ``"gathered"`` take this rank's dim-0 shards (plain local
    tensors, e.g. ``DTensor.to_local()``) with ``full_shapes`` the global shapes. NorMuon ``S`` always has the
    *full* shape (`normuon_state_shape` of ``full_shapes[i]``) and is replicated on every rank. ``"none"`` is
    the single-process path below, unchanged. Every rank must call with the same list of shapes.
    """
    plist = list(params)
    if not plist:
        return []
    beta = spec.momentum if momentum is None else momentum
    lam = spec.weight_decay if weight_decay is None else weight_decay
    shapes = _full_shapes(plist, distributed, full_shapes)
    for p, st, full in zip(plist, states, shapes, strict=True):
        if not st:
            st.update(init_muon_state(p, spec))
            if spec.normuon and tuple(full) != tuple(p.shape):  # S of the whole matrix, not of the shard
                st["second_moment"] = torch.zeros(
                    normuon_state_shape(full, spec), dtype=state_dtype(p), device=p.device
                )
    if distributed == "none":
        return _local_directions(plist, grads, states, spec, beta, lam, backend)
    steps = _advance(states)
    bufs = [st["momentum_buffer"] for st in states]
    gl = [g.to(b.dtype) for g, b in zip(grads, bufs, strict=True)]
    if decay_stages(spec, lam)[0]:
        gl = coupled_decay(gl, plist, lam)
    ns = apply_momentum_(bufs, gl, spec, steps, beta=beta)
    # Stages 3-4 on owner ranks, whole matrices only (docs/distributed.md).
    moments = [st["second_moment"] for st in states] if spec.normuon else None
    return muon_directions(
        ns,
        spec,
        mode=distributed,
        second_moments=moments,
        full_shapes=None if distributed == "replicated" else shapes,
        group=process_group,
        backend=backend,
    )


def muon_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[State],
    spec: MuonSpec,
    *,
    lr: Scalar,
    momentum: float | None = None,
    weight_decay: float | None = None,
    backend: Backend = "auto",
    distributed: DistributedMode = "none",
    process_group: Group = None,
    full_shapes: Sequence[Sequence[int]] | None = None,
) -> None:
    """One Muon step (stages 1-8) in place on ``params`` (``ndim >= 2``, finite ``grads``).

    ``distributed``, ``process_group`` and ``full_shapes`` as in `muon_update_`; with shards the shape scale
    (stage 5) uses the full shape, and stages 6-8 run on the local rows (a ``"row"`` sphere only)."""
    plist = list(params)
    lam = spec.weight_decay if weight_decay is None else weight_decay
    shapes = _full_shapes(plist, distributed, full_shapes)
    updates = muon_update_(
        plist,
        grads,
        states,
        spec,
        momentum=momentum,
        weight_decay=lam,
        backend=backend,
        distributed=distributed,
        process_group=process_group,
        full_shapes=full_shapes,
    )
    _, decoupled = decay_stages(spec, lam)
    for p, o, full in zip(plist, updates, shapes, strict=True):
        # float64 scalars, as `muonlab.fast.Muon` forms them, so both round alike
        lr64 = torch.as_tensor(lr, dtype=torch.float64, device=p.device)
        lr_update = lr64 * update_scale(full, spec)
        factor = decay_lr(lr64, lr_update, spec) * lam if decoupled else None
        if spec.sphere == "none":
            apply_update_(p, o, lr_update=lr_update, decay_factor=factor, cautious=spec.cautious)
            continue
        work = p.detach().to(wide_dtype(p.dtype), copy=True)
        u = o.to(work.dtype)
        if factor is not None:
            decoupled_decay_(work, u, factor, spec.cautious)
        p.copy_(sphere_step(work, -(u * lr_update), spec, lr_update))


def adamw_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[State],
    *,
    lr: Scalar,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    eps_mode: Any,
    keep: Sequence[torch.Tensor] | None = None,
) -> None:
    """One AdamW step in place (`muonlab.fast.adamw`); ``states`` updated (initialized when empty).
    ``keep`` (0-D bools on the device, one per parameter): where False the gradient is ignored and the
    parameter and its state stay unchanged bit for bit (the step count too)."""
    plist = list(params)
    if not plist:
        return
    for p, st in zip(plist, states, strict=True):
        if not st:
            st.update(init_adam_state(p))
    m = [st["exp_avg"] for st in states]
    v = [st["exp_avg_sq"] for st in states]
    gl = [g.to(b.dtype) for g, b in zip(grads, m, strict=True)]
    if keep is None:
        steps = _advance(states)
    else:
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, [k.to(s.dtype) for k, s in zip(keep, steps, strict=True)])
        gl = [torch.where(k, g, 0.0) for k, g in zip(keep, gl, strict=True)]
    adam_moments_(m, v, gl, betas, keep)
    adamw_apply(plist, adam_direction(m, v, steps, betas, eps, eps_mode), lr, weight_decay, keep)
