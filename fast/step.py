"""One optimizer step over a param group, in the order of `muonlab.contract.spec` (stages 1-8).

`muon_update` (stages 1-4) and `muon_step` (1-8) work on lists of parameters that share a spec:

1. coupled decay ``G <- G + lambda W`` (new tensors; ``p.grad`` is never written);
2. momentum for the whole list with ``torch._foreach_*`` ops (or the fused Triton kernel);
3. the matrices of every parameter whose matrix view has the same ``(m, n)`` (and device) are stacked
   into one ``[B, m, n]`` batch and orthogonalized by one batched Newton-Schulz call in
   ``spec.compute_dtype``;
4. NorMuon on the same stack (``S`` stacked, updated, written back);
5. ``eta_u = eta * update_scale(param.shape)``;
6-7. ``W <- W - eta_d lambda mask (.) W - eta_u O`` (one pass; the fused Triton kernel on CUDA);
8. or the hypersphere step.

`adamw_step` is AdamW for the non-matrix group. States are ``Optimizer.state`` dicts (`muonlab.fast.state`);
the step count is incremented here. Non-finite gradients are filtered by the caller (`muonlab.fast.Muon`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from muonlab.contract import MuonSpec, normuon_state_shape, update_scale

from .adamw import adam_direction, adam_moments, adamw_apply
from .backend import Backend, kernel_module, use_triton
from .decay import Scalar, apply_update, coupled_decay, decay_lr, decoupled_decay
from .distributed import DistributedMode, Group, muon_directions
from .momentum import apply_momentum
from .normuon import normuon_normalize
from .orthogonalize import as_matrices, orthogonalize_stack
from .sphere import sphere_step
from .state import init_adam_state, init_muon_state, state_dtype

__all__ = ["adamw_step", "muon_step", "muon_update"]

State = dict[str, Any]


def _advance(states: Sequence[State]) -> list[int]:
    steps = []
    for st in states:
        st["step"] += 1
        steps.append(int(st["step"].item()))
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


def _momentum(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    spec: MuonSpec,
    steps: list[int],
    beta: float,
    backend: Backend,
) -> list[torch.Tensor]:
    """Stage 2 with the Triton kernel where it applies (``"ema"``/``"sum"`` on CUDA), else ``_foreach``."""
    if spec.momentum_form != "optax" and params and use_triton(params[0], backend):
        fused_momentum = kernel_module("elementwise").fused_momentum
        form = "ema" if spec.momentum_form == "ema" else "sum"
        return [
            fused_momentum(b, g, beta=beta, form=form, nesterov=spec.nesterov) for b, g in zip(bufs, grads, strict=True)
        ]
    return apply_momentum(bufs, grads, spec, steps, beta=beta)


def muon_update(
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
    steps = _advance(states)
    bufs = [st["momentum_buffer"] for st in states]
    gl = [g.to(b.dtype) for g, b in zip(grads, bufs, strict=True)]
    if spec.decay_placement in ("update", "both") and lam != 0.0:
        gl = coupled_decay(gl, plist, lam)
    ns = _momentum(plist, gl, bufs, spec, steps, beta, backend)

    if distributed != "none":
        # Stage 3-4 on owner ranks, whole matrices only (docs/distributed.md).
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

    # Stage 3-4: one stack per (device, m, n).
    buckets: dict[tuple[torch.device, int, int], list[int]] = {}
    views: list[torch.Tensor] = []
    for i, n in enumerate(ns):
        mats, _ = as_matrices(n, spec, f"params[{i}]")
        views.append(mats)
        buckets.setdefault((n.device, mats.shape[-2], mats.shape[-1]), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(ns)
    for members in buckets.values():
        sizes = [views[i].shape[0] for i in members]
        stack = views[members[0]] if len(members) == 1 else torch.cat([views[i] for i in members])
        o = orthogonalize_stack(stack, spec, backend)
        if spec.normuon:
            s_list = [states[i]["second_moment"] for i in members]
            s_stack = torch.cat([s.reshape(b, *s.shape[-2:]) for s, b in zip(s_list, sizes, strict=True)])
            o = normuon_normalize(o, s_stack, spec)
            for s, part in zip(s_list, torch.split(s_stack, sizes), strict=True):
                s.copy_(part.reshape(s.shape))
        for i, part in zip(members, torch.split(o, sizes), strict=True):
            out[i] = part.reshape(plist[i].shape)
    return out


def muon_step(
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

    ``distributed``, ``process_group`` and ``full_shapes`` as in `muon_update`; with shards the shape scale
    (stage 5) uses the full shape, and stages 6-8 run on the local rows (a ``"row"`` sphere only)."""
    plist = list(params)
    lam = spec.weight_decay if weight_decay is None else weight_decay
    shapes = _full_shapes(plist, distributed, full_shapes)
    updates = muon_update(
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
    decoupled = spec.decay_placement in ("param", "both") and lam != 0.0
    for p, o, full in zip(plist, updates, shapes, strict=True):
        lr_update = lr * update_scale(full, spec)
        factor = decay_lr(lr, lr_update, spec) * lam if decoupled else None
        if spec.sphere == "none":
            apply_update(p, o, lr_update=lr_update, decay_factor=factor, cautious=spec.cautious, backend=backend)
            continue
        work = p.detach().to(torch.float64 if p.dtype == torch.float64 else torch.float32, copy=True)
        u = o.to(work.dtype)
        if factor is not None:
            decoupled_decay(work, u, factor, spec.cautious)
        p.copy_(sphere_step(work, -(u * lr_update), spec, lr_update))


def adamw_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[State],
    *,
    lr: Scalar,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    eps_mode: Any,
) -> None:
    """One AdamW step in place (`muonlab.fast.adamw`); ``states`` updated (initialized when empty)."""
    plist = list(params)
    if not plist:
        return
    for p, st in zip(plist, states, strict=True):
        if not st:
            st.update(init_adam_state(p))
    steps = _advance(states)
    m = [st["exp_avg"] for st in states]
    v = [st["exp_avg_sq"] for st in states]
    gl = [g.to(b.dtype) for g, b in zip(grads, m, strict=True)]
    adam_moments(m, v, gl, betas)
    adamw_apply(plist, adam_direction(m, v, steps, betas, eps, eps_mode), lr, weight_decay)
