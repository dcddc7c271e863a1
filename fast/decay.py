"""Weight decay on torch tensors (docs/variants.md sections 4.3, 10, A8; mirrors `muonlab.reference.decay`).

``W <- W - eta_d lambda mask (.) W - eta_u O`` on the pre-update ``W``: `decay_lr` gives ``eta_d``
(``"base"`` ``eta``, ``"scaled"`` ``eta_u``, ``"lr2"`` ``eta eta_u``), `cautious_mask` the mask
(``O (.) W >= 0`` / ``> 0`` / ones); `coupled_decay` is the L2 form ``G + lambda W`` (stage 1).
`decoupled_decay` and `apply_update` (stages 6 and 7 in one pass) write the parameter in place.
"""

from __future__ import annotations

import torch

from muonlab.contract.spec import Cautious, MuonSpec

from .backend import Backend, kernel_module, use_triton

__all__ = ["Scalar", "apply_update", "cautious_mask", "coupled_decay", "decay_lr", "decoupled_decay"]

Scalar = float | torch.Tensor
"""A learning-rate-like scalar: a Python float or a 0-D tensor."""


def cautious_mask(update: torch.Tensor, weight: torch.Tensor, mode: Cautious) -> torch.Tensor:
    """``1[O (.) W >= 0]`` (``"ge"``), ``1[O (.) W > 0]`` (``"gt"``) or ones (``"off"``), in ``weight.dtype``."""
    if mode == "off":
        return torch.ones_like(weight)
    prod = update.to(weight.dtype) * weight
    return (prod >= 0 if mode == "ge" else prod > 0).to(weight.dtype)


def decay_lr(lr: Scalar, lr_update: Scalar, spec: MuonSpec) -> Scalar:
    """``eta_d``: ``lr`` (``"base"``), ``lr_update`` (``"scaled"``) or ``lr * lr_update`` (``"lr2"``)."""
    if spec.decay_lr == "base":
        return lr
    if spec.decay_lr == "scaled":
        return lr_update
    return lr * lr_update


def coupled_decay(grads: list[torch.Tensor], weights: list[torch.Tensor], weight_decay: float) -> list[torch.Tensor]:
    """``G + lambda W`` for each pair (new tensors; the gradients are not written)."""
    return list(
        torch._foreach_add(grads, [w.to(g.dtype) for g, w in zip(grads, weights, strict=True)], alpha=weight_decay)
    )


def decoupled_decay(weight: torch.Tensor, update: torch.Tensor, decay_factor: Scalar, mode: Cautious) -> torch.Tensor:
    """``W <- W - decay_factor mask (.) W`` in place (``decay_factor = eta_d lambda``); returns ``weight``."""
    if mode == "off":
        return weight.sub_(weight * decay_factor)
    return weight.sub_(weight * cautious_mask(update, weight, mode) * decay_factor)


def apply_update(
    param: torch.Tensor,
    update: torch.Tensor,
    *,
    lr_update: Scalar,
    decay_factor: Scalar | None,
    cautious: Cautious,
    backend: Backend = "auto",
) -> None:
    """Stages 6-7 in place: ``W <- W - decay_factor mask (.) W - lr_update O`` (mask on the pre-update ``W``).

    ``decay_factor`` ``None`` skips the decay. The arithmetic runs in float32 for low-precision parameters
    (then rounds once into ``param``); on the Triton path it is one fused kernel.
    """
    if use_triton(param, backend):
        kernel_module("elementwise").fused_apply(
            param,
            update.reshape(param.shape),
            lr_update=lr_update,
            decay_factor=0.0 if decay_factor is None else decay_factor,
            cautious=cautious if decay_factor is not None else "off",
        )
        return
    work = param if param.dtype in (torch.float32, torch.float64) else param.float()
    u = update.reshape(param.shape).to(work.dtype)
    if decay_factor is not None:
        decoupled_decay(work, u, decay_factor, cautious)
    work.sub_(u * lr_update)
    if work is not param:
        param.copy_(work)
