"""Optimizer and learning-rate schedule of a run, built from its config's ``optimizer`` / ``schedule``.

* ``name = "muon"``: `muonlab.fast.Muon` over `muonlab.fast.partition_params(model)` (matrices -> Muon,
  embeddings / lm_head / norms / scalars -> AdamW), preset + overrides resolved by `OptimizerSection`;
  on a CPU Newton-Schulz computes in float32 unless the config says otherwise (`muon_compute_dtype`).
  For nGPT models with a sphere-constrained spec, every sphere weight gets a Muon group whose spec has the
  model's ``sphere_axis`` for it (rows vs columns, `GPT.ngpt_sphere_axes`).
* ``name = "adamw"``: `torch.optim.AdamW` (``adam_betas`` / ``adam_eps`` become its ``betas`` / ``eps``); decay on
  >= 2-D parameters only.

Schedule (`lr_lambda`): linear warmup from 0 over ``warmup_frac`` of the steps (or ``warmup_steps``), constant,
then a cooldown to ``final_lr_frac`` over the last ``cooldown_frac`` (`COOLDOWNS`: linear, cosine, nanochat's);
applied by ``LambdaLR`` (it scales every group's initial lr, so Muon and its AdamW groups follow the same shape).
`apply_muon_schedules` sets the Muon groups' momentum and weight decay per step (nanochat's schedules).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .config import OptimizerSection, ScheduleSection

if TYPE_CHECKING:
    from muonlab.fast.backend import Backend
    from muonlab.fast.distributed import DistributedMode


def _warmup(schedule: ScheduleSection, total_steps: int) -> int:
    return schedule.warmup_steps if schedule.warmup_steps is not None else round(schedule.warmup_frac * total_steps)


def _cooldown_start(schedule: ScheduleSection, total_steps: int) -> int:
    return total_steps - round(schedule.cooldown_frac * total_steps)


COOLDOWNS: dict[str, Callable[[int, int, int, float], float]] = {
    # (t, cooldown start, cooldown length, final fraction) -> multiplier, for t >= the start
    "linear": lambda t, start, n, final: 1.0 - min(1.0, (t - start + 1) / n) * (1.0 - final),
    "cosine": lambda t, start, n, final: (
        final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (t - start + 1) / n)))
    ),
    # nanochat base_train get_lr_multiplier: 1.0 while it <= T - W, then progress = (T - it) / W
    "nanochat": lambda t, start, n, final: (
        (start + n - t) / n + (1.0 - (start + n - t) / n) * final if t > start else 1.0
    ),
}


def lr_lambda(schedule: ScheduleSection, total_steps: int) -> Callable[[int], float]:
    """The multiplier of the base lr at optimizer step ``t`` (0-based) of ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps: must be positive, got {total_steps}")
    warmup = _warmup(schedule, total_steps)
    cool_start = _cooldown_start(schedule, total_steps)
    cooldown = total_steps - cool_start
    rule = COOLDOWNS[schedule.cooldown]
    final = schedule.final_lr_frac

    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if cooldown > 0 and t >= cool_start:
            return rule(t, cool_start, cooldown, final)
        return 1.0

    return f


def _nanochat_momentum(base: float, t: int, start: int, total: int) -> float:
    """nanochat base_train ``get_muon_momentum`` (its constants; the group's momentum is not read)."""
    if t < 400:
        return (1 - t / 400) * 0.85 + t / 400 * 0.97
    if t >= start and total > start:
        progress = (t - start) / (total - start)
        return 0.97 * (1 - progress) + 0.90 * progress
    return 0.97


MOMENTUM_SCHEDULES: dict[str, Callable[[float, int, int, int], float]] = {
    # (group's momentum, step t, cooldown start, total steps) -> the step's momentum
    "constant": lambda base, t, start, total: base,
    "nanochat": _nanochat_momentum,
}

DECAY_SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    # (group's weight decay, step t, total steps) -> the step's weight decay
    "constant": lambda base, t, total: base,
    "cosine": lambda base, t, total: base * 0.5 * (1.0 + math.cos(math.pi * t / total)),  # nanochat
}


def apply_muon_schedules(optimizer: torch.optim.Optimizer, schedule: ScheduleSection, t: int, total_steps: int) -> None:
    """Set each Muon group's ``momentum`` and ``weight_decay`` for optimizer step ``t`` (0-based) from the values
    the group was built with (kept as ``initial_momentum`` / ``initial_weight_decay``, as ``LambdaLR`` keeps
    ``initial_lr``): pure functions of ``t``, so a resumed run steps exactly as an uninterrupted one."""
    if schedule.momentum == "constant" and schedule.weight_decay == "constant":
        return
    start = _cooldown_start(schedule, total_steps)
    for group in optimizer.param_groups:
        if group.get("algorithm") != "muon":
            continue
        base_m = group.setdefault("initial_momentum", group["momentum"])
        base_wd = group.setdefault("initial_weight_decay", group["weight_decay"])
        group["momentum"] = MOMENTUM_SCHEDULES[schedule.momentum](base_m, t, start, total_steps)
        group["weight_decay"] = DECAY_SCHEDULES[schedule.weight_decay](base_wd, t, total_steps)


def _adamw(model: nn.Module, cfg: OptimizerSection) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    wd = 0.0 if cfg.weight_decay is None else cfg.weight_decay
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    assert cfg.lr is not None
    betas, eps = cfg.adamw_hyperparameters()
    return torch.optim.AdamW(groups, lr=cfg.lr * cfg.lr_scale, betas=betas, eps=eps)


CPU_COMPUTE_DTYPE = "float32"
"""Newton-Schulz's compute dtype for Muon runs on a CPU whose config does not set one: bf16 matmuls are 8x or more
slower than fp32 on CPUs without native bf16 (AVX2), and fp32 gives every CPU the same numerics."""


def muon_compute_dtype(cfg: OptimizerSection, device: torch.device) -> dict[str, str] | None:
    """The Newton-Schulz compute dtype of a Muon run on ``device`` and where it comes from (config.json records
    both): ``optimizer.overrides.compute_dtype`` when the config sets it, `CPU_COMPUTE_DTYPE` on a CPU, else the
    preset's. None for an AdamW run."""
    if cfg.name != "muon":
        return None
    if "compute_dtype" in cfg.overrides:
        return {"compute_dtype": str(cfg.overrides["compute_dtype"]), "source": "config"}
    preset = str(cfg.muon_spec().compute_dtype)
    if device.type == "cpu" and preset != CPU_COMPUTE_DTYPE and preset != "float64":
        return {"compute_dtype": CPU_COMPUTE_DTYPE, "source": f"CPU default (the preset's is {preset})"}
    return {"compute_dtype": preset, "source": "preset"}


def _muon(model: nn.Module, cfg: OptimizerSection, distributed: str = "none") -> torch.optim.Optimizer:
    from muonlab.contract import resolve_spec
    from muonlab.fast import Muon, partition_params

    device = next(model.parameters()).device
    choice = muon_compute_dtype(cfg, device)
    assert choice is not None
    overrides = {**cfg.spec_overrides(), "compute_dtype": choice["compute_dtype"]}
    spec = resolve_spec(cfg.preset, **overrides)
    plan = partition_params(model)
    groups: list[dict[str, Any]] = plan.param_groups()
    axes: dict[str, str] = {}
    sphere_axes = getattr(model, "ngpt_sphere_axes", None)
    if spec.sphere != "none" and callable(sphere_axes):
        axes = dict(sphere_axes())
    if axes:
        # regroup the Muon parameters by sphere axis; each group carries its own spec
        by_axis: dict[str, list[Any]] = {}
        for name, p in plan.muon:
            by_axis.setdefault(axes.get(name, spec.sphere_axis), []).append(p)
        rest = [g for g in groups if g.get("algorithm") == "adamw"]
        groups = [
            {"params": ps, "algorithm": "muon", "spec": spec.replace(sphere_axis=axis)}
            for axis, ps in sorted(by_axis.items())
        ] + rest
    return Muon(
        groups,
        preset=cfg.preset,
        lr=cfg.muon_lr(),
        backend=cast("Backend", cfg.backend),  # validated by Muon
        distributed=cast("DistributedMode", distributed),
        **overrides,
    )


def build_optimizer(model: nn.Module, cfg: OptimizerSection, *, distributed: str = "none") -> torch.optim.Optimizer:
    """``model`` is the bare module (not a DDP wrapper). ``distributed`` is Muon's mode (docs/distributed.md):
    ``"replicated"`` for a DDP run; AdamW ignores it (DDP's gradient all-reduce is all it needs)."""
    if cfg.name == "adamw":
        return _adamw(model, cfg)
    return _muon(model, cfg, distributed)


def needs_manual_normalize(model: nn.Module) -> bool:
    """nGPT models are renormalized by the trainer every ``ngpt_normalize_every`` steps: always for AdamW,
    and also under a sphere-constrained Muon, whose AdamW-routed embeddings / lm_head are not kept on the
    sphere by the optimizer (for the Muon weights the projection is then a no-op up to rounding)."""
    mcfg = getattr(model, "cfg", None)
    return bool(mcfg is not None and getattr(mcfg, "ngpt", False))


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps))
