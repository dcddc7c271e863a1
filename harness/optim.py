"""Optimizer and learning-rate schedule of a run, built from its config's ``optimizer`` / ``schedule``.

* ``name = "muon"``: `muonlab.fast.Muon` over `muonlab.fast.partition_params(model)` (matrices -> Muon,
  embeddings / lm_head / norms / scalars -> AdamW), preset + overrides resolved by `OptimizerSection`;
  on a CPU Newton-Schulz computes in float32 unless the config says otherwise (`muon_compute_dtype`).
  For nGPT models with a sphere-constrained spec, every sphere weight gets a Muon group whose spec has the
  model's ``sphere_axis`` for it (rows vs columns, `GPT.ngpt_sphere_axes`).
* ``name = "adamw"``: `torch.optim.AdamW` (``adam_betas`` / ``adam_eps`` become its ``betas`` / ``eps``); decay on
  >= 2-D parameters only.

Schedule (`lr_lambda`): linear warmup from 0 over ``warmup_frac`` of the steps, constant, then a linear or
cosine cooldown to ``final_lr_frac`` over the last ``cooldown_frac``; applied by ``LambdaLR`` (it scales
every group's initial lr, so Muon and its AdamW groups follow the same shape).
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


def lr_lambda(schedule: ScheduleSection, total_steps: int) -> Callable[[int], float]:
    """The multiplier of the base lr at optimizer step ``t`` (0-based) of ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps: must be positive, got {total_steps}")
    warmup = round(schedule.warmup_frac * total_steps)
    cooldown = round(schedule.cooldown_frac * total_steps)
    final = schedule.final_lr_frac
    cool_start = total_steps - cooldown

    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if cooldown > 0 and t >= cool_start:
            p = min(1.0, (t - cool_start + 1) / cooldown)
            if schedule.cooldown == "linear":
                return 1.0 - p * (1.0 - final)
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0

    return f


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
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=eps)


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
