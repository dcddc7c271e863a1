"""AdamW for the non-matrix parameters (docs/variants.md A11; the math of `muonlab.reference.adamw`), with
``torch._foreach_*`` ops over a whole group and step counts kept as tensors (never read on the host).

``m = lerp(m, g, 1-beta1)``, ``v = lerp(v, g^2, 1-beta2)``; ``"corrected"``:
``u = (m / bc1) / (sqrt(v / bc2) + eps)``; ``"uncorrected"``: ``u = m / (sqrt(v) + eps) * sqrt(bc2) / bc1``
with ``bc_i = 1 - beta_i^t`` (computed in float64 and rounded once); ``W <- W (1 - eta lambda) - eta u``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from muonlab.contract.spec import AdamEpsMode

from .decay import Scalar
from .state import init_adam_state

__all__ = ["adam_direction", "adam_moments_", "adamw_apply", "adamw_step_"]

Tensors = list[torch.Tensor]


def adam_moments_(
    exp_avgs: Tensors,
    exp_avg_sqs: Tensors,
    grads: Tensors,
    betas: tuple[float, float],
    keep: Sequence[torch.Tensor] | None = None,
) -> None:
    """``m = lerp(m, g, 1-beta1)``, ``v = lerp(v, g^2, 1-beta2)``, in place. ``keep`` (0-D bools, one per
    tensor): where False the moments stay unchanged bit for bit (``g`` must be zero there)."""
    b1, b2 = betas
    sq = torch._foreach_mul(grads, grads)
    if keep is None:
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - b1)
        torch._foreach_lerp_(exp_avg_sqs, sq, 1.0 - b2)
        return
    for m, v, g, s, k in zip(exp_avgs, exp_avg_sqs, grads, sq, keep, strict=True):
        m.lerp_(g, torch.where(k, 1.0 - b1, 0.0).to(m.dtype))
        v.lerp_(s, torch.where(k, 1.0 - b2, 0.0).to(v.dtype))


def adam_direction(
    exp_avgs: Tensors,
    exp_avg_sqs: Tensors,
    steps: Sequence[torch.Tensor],
    betas: tuple[float, float],
    eps: float,
    mode: AdamEpsMode,
) -> Tensors:
    """The AdamW direction ``u`` per tensor at its 1-based step (0-D tensors ``steps``; new tensors)."""
    if mode not in ("corrected", "uncorrected"):
        raise ValueError(f"adam_eps_mode: expected 'corrected' or 'uncorrected', got {mode!r}")
    b1, b2 = betas
    t = [s.to(torch.float64).clamp(min=1.0) for s in steps]
    bc1 = [1.0 - torch.pow(b1, x) for x in t]
    bc2 = [1.0 - torch.pow(b2, x) for x in t]
    dt = exp_avgs[0].dtype if exp_avgs else torch.float32
    if mode == "corrected":
        denom = torch._foreach_div(exp_avg_sqs, [c.to(dt) for c in bc2])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        num = torch._foreach_div(exp_avgs, [c.to(dt) for c in bc1])
        return list(torch._foreach_div(num, denom))
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    out = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(out, [(c2.sqrt() / c1).to(dt) for c1, c2 in zip(bc1, bc2, strict=True)])
    return list(out)


def adamw_apply(
    params: Tensors,
    directions: Tensors,
    lr: Scalar,
    weight_decay: float,
    keep: Sequence[torch.Tensor] | None = None,
) -> None:
    """``W <- W (1 - eta lambda) - eta u`` in place (float32 arithmetic for low-precision params); where
    ``keep`` (0-D bools) is False the parameter is unchanged bit for bit."""
    for i, (p, u) in enumerate(zip(params, directions, strict=True)):
        work = p if p.dtype in (torch.float32, torch.float64) else p.float()
        eta: Scalar = lr if keep is None else keep[i].to(torch.float64) * lr
        if weight_decay != 0.0:
            work.mul_(1.0 - eta * weight_decay)
        work.sub_(u.to(work.dtype) * eta)
        if work is not p:
            p.copy_(work)


def adamw_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[dict[str, Any]],
    *,
    lr: Scalar,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    eps_mode: AdamEpsMode,
    keep: Sequence[torch.Tensor] | None = None,
) -> None:
    """One AdamW step in place; ``states`` updated (initialized when empty). ``keep`` (0-D bools on the device,
    one per parameter): where False the gradient is ignored and the parameter and its state stay unchanged bit
    for bit (the step count too)."""
    plist = list(params)
    if not plist:
        return
    for p, st in zip(plist, states, strict=True):
        if not st:
            st.update(init_adam_state(p))
    m = [st["exp_avg"] for st in states]
    v = [st["exp_avg_sq"] for st in states]
    steps = [st["step"] for st in states]
    gl = [g.to(b.dtype) for g, b in zip(grads, m, strict=True)]
    if keep is None:
        torch._foreach_add_(steps, 1.0)
    else:
        torch._foreach_add_(steps, [k.to(s.dtype) for k, s in zip(keep, steps, strict=True)])
        gl = [torch.where(k, g, 0.0) for k, g in zip(keep, gl, strict=True)]
    adam_moments_(m, v, gl, betas, keep)
    adamw_apply(plist, adam_direction(m, v, steps, betas, eps, eps_mode), lr, weight_decay, keep)
