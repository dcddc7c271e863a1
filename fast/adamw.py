"""AdamW for the non-matrix parameters (docs/variants.md A11; mirrors `muonlab.reference.adamw`), with
``torch._foreach_*`` ops over a whole group.

``m = lerp(m, g, 1-beta1)``, ``v = lerp(v, g^2, 1-beta2)``; ``"corrected"``:
``u = (m / bc1) / (sqrt(v / bc2) + eps)``; ``"uncorrected"``: ``u = m / (sqrt(v) + eps) * sqrt(bc2) / bc1``;
``W <- W (1 - eta lambda) - eta u``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from muonlab.contract.spec import AdamEpsMode

from .decay import Scalar

__all__ = ["adam_direction", "adam_moments", "adamw_apply"]

Tensors = list[torch.Tensor]


def adam_moments(exp_avgs: Tensors, exp_avg_sqs: Tensors, grads: Tensors, betas: tuple[float, float]) -> None:
    """``m = lerp(m, g, 1-beta1)``, ``v = lerp(v, g^2, 1-beta2)``, in place."""
    b1, b2 = betas
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - b1)
    torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1.0 - b2)


def adam_direction(
    exp_avgs: Tensors,
    exp_avg_sqs: Tensors,
    steps: Sequence[int],
    betas: tuple[float, float],
    eps: float,
    mode: AdamEpsMode,
) -> Tensors:
    """The AdamW direction ``u`` per tensor at its 1-based step ``t`` (new tensors)."""
    b1, b2 = betas
    bc1 = [1.0 - b1**t for t in steps]
    bc2 = [1.0 - b2**t for t in steps]
    if mode == "corrected":
        denom = torch._foreach_div(exp_avg_sqs, bc2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        num = torch._foreach_div(exp_avgs, bc1)
        return list(torch._foreach_div(num, denom))
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    out = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(out, [math.sqrt(c2) / c1 for c1, c2 in zip(bc1, bc2, strict=True)])
    return list(out)


def adamw_apply(params: Tensors, directions: Tensors, lr: Scalar, weight_decay: float) -> None:
    """``W <- W (1 - eta lambda) - eta u`` in place (float32 arithmetic for low-precision params)."""
    for p, u in zip(params, directions, strict=True):
        work = p if p.dtype in (torch.float32, torch.float64) else p.float()
        if weight_decay != 0.0:
            work.mul_(1.0 - lr * weight_decay)
        work.sub_(u.to(work.dtype) * lr)
        if work is not p:
            p.copy_(work)
