"""Momentum forms on lists of tensors (docs/variants.md section 0.1; `muonlab.reference.momentum`).

Each function updates the buffers ``M`` in place (``torch._foreach_*``) and returns new tensors ``N``, the
orthogonalizer input; the gradients are never written.

* ``"ema"``: ``M = lerp(M, G, 1-beta)``; Nesterov ``N = lerp(G, M, beta)``, else ``N = M`` (a copy).
* ``"sum"``: ``M = mu M + G``; Nesterov ``N = G + mu M``, else ``N = M`` (a copy).
* ``"optax"``: ``M = beta M + (1-beta) G`` with the 1-based step ``t`` per tensor; Nesterov
  ``N = beta M / (1 - beta^{t+1}) + (1-beta) G / (1 - beta^t)``, else ``N = M / (1 - beta^t)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from muonlab.contract.spec import MomentumForm, MuonSpec

__all__ = ["apply_momentum", "ema_momentum", "optax_momentum", "sum_momentum"]

Tensors = list[torch.Tensor]


def ema_momentum(bufs: Tensors, grads: Tensors, beta: float, nesterov: bool) -> Tensors:
    """``M.lerp_(G, 1-beta)``; returns ``G.lerp(M, beta)`` (Nesterov) or a copy of ``M``."""
    torch._foreach_lerp_(bufs, grads, 1.0 - beta)
    if nesterov:
        return list(torch._foreach_lerp(grads, bufs, beta))
    return [b.clone() for b in bufs]


def sum_momentum(bufs: Tensors, grads: Tensors, mu: float, nesterov: bool) -> Tensors:
    """``M = mu M + G``; returns ``G + mu M`` (Nesterov) or a copy of ``M``."""
    torch._foreach_mul_(bufs, mu)
    torch._foreach_add_(bufs, grads)
    if nesterov:
        return list(torch._foreach_add(grads, bufs, alpha=mu))
    return [b.clone() for b in bufs]


def optax_momentum(bufs: Tensors, grads: Tensors, beta: float, nesterov: bool, steps: Sequence[int]) -> Tensors:
    """optax ``scale_by_muon`` with per-tensor 1-based steps ``steps`` (``t >= 1``)."""
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in steps):
        raise ValueError(f"steps: the optax momentum needs 1-based step counts t >= 1, got {list(steps)!r}")
    torch._foreach_mul_(bufs, beta)
    torch._foreach_add_(bufs, grads, alpha=1.0 - beta)
    if nesterov:
        out = list(torch._foreach_mul(bufs, [beta / (1.0 - beta ** (t + 1)) for t in steps]))
        torch._foreach_add_(out, torch._foreach_mul(grads, [(1.0 - beta) / (1.0 - beta**t) for t in steps]))
        return out
    return list(torch._foreach_div(bufs, [1.0 - beta**t for t in steps]))


def apply_momentum(
    bufs: Tensors,
    grads: Tensors,
    spec: MuonSpec,
    steps: Sequence[int],
    *,
    beta: float | None = None,
    form: MomentumForm | None = None,
) -> Tensors:
    """Dispatch on ``spec.momentum_form`` (or ``form``) with ``beta`` (default ``spec.momentum``; a param
    group's live ``"momentum"``) and ``spec.nesterov``. ``steps`` are the 1-based counts after incrementing."""
    kind = spec.momentum_form if form is None else form
    b = spec.momentum if beta is None else float(beta)
    if not bufs:
        return []
    if kind == "ema":
        return ema_momentum(bufs, grads, b, spec.nesterov)
    if kind == "sum":
        return sum_momentum(bufs, grads, b, spec.nesterov)
    return optax_momentum(bufs, grads, b, spec.nesterov, steps)
