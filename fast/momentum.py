"""Momentum forms on torch tensors (docs/variants.md section 0.1; `muonlab.reference.momentum`).

The buffer ``M`` is updated in place; the result ``N`` is the orthogonalizer input. The three forms and their
equations: docs/variants.md "Momentum (stage 2)". ``"ema"`` runs as ``lerp`` (KellerJordan/Muon, torch).

`momentum_` works on one stack (the optimizer step: per-matrix weights skip matrices on the device, step
counts are tensors); `apply_momentum_` on lists of tensors (``torch._foreach_*``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from muonlab.contract.spec import MomentumForm, MuonSpec

__all__ = ["apply_momentum_", "momentum_", "momentum_weight", "optax_corrections"]

Tensors = list[torch.Tensor]


def _check_form(form: object) -> None:
    if form not in ("ema", "sum", "optax"):
        raise ValueError(f"momentum_form: expected 'ema', 'sum' or 'optax', got {form!r}")


def optax_corrections(steps: torch.Tensor, beta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The Nesterov factors ``(beta / (1 - beta^{t+1}), (1-beta) / (1 - beta^t))`` for the 1-based step
    tensor ``steps``, computed in float64 and rounded once to ``dtype`` (the Python-float arithmetic of optax
    ``scale_by_muon``). Counts below 1 (a skipped parameter's first step) are read as 1: finite factors."""
    t = steps.to(torch.float64).clamp(min=1.0)
    first = beta / (1.0 - torch.pow(beta, t + 1.0))
    second = (1.0 - beta) / (1.0 - torch.pow(beta, t))
    return first.to(dtype), second.to(dtype)


def momentum_weight(keep: torch.Tensor, form: MomentumForm, beta: float, dtype: torch.dtype) -> torch.Tensor:
    """The per-matrix ``weight`` of `momentum_` for the bool mask ``keep``: ``1-beta`` / 0 (``"ema"``) or
    ``beta`` / 1 (``"sum"``, ``"optax"``) where ``keep`` is True / False, in ``dtype`` (each value exact)."""
    _check_form(form)
    if form == "ema":
        return keep.to(dtype).mul_(1.0 - beta)
    return torch.ones(keep.shape, dtype=dtype, device=keep.device).masked_fill_(keep, beta)


def momentum_(
    buf: torch.Tensor,
    grad: torch.Tensor,
    form: MomentumForm,
    beta: float,
    nesterov: bool,
    *,
    steps: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stage 2 on one stack: update ``buf`` in place and return ``N`` (``grad`` is consumed: it may be
    overwritten and may be returned; ``N`` may also be ``buf`` itself, so do not write it).

    ``steps`` (``"optax"`` only): the 1-based counts after incrementing, broadcastable to ``buf``.
    ``weight`` (broadcastable, ``buf.dtype``; `momentum_weight`) replaces the ``"ema"`` lerp weight ``1-beta``
    or the ``"sum"``/``"optax"`` decay factor ``beta`` per matrix: 0 (or 1) where a matrix is skipped, whose
    ``grad`` must then be zero, so its buffer stays unchanged bit for bit.
    """
    _check_form(form)
    if form == "ema":
        buf.lerp_(grad, 1.0 - beta if weight is None else weight)
        return grad.lerp_(buf, beta) if nesterov else buf
    decay: float | torch.Tensor = beta if weight is None else weight
    if form == "sum":
        buf.mul_(decay).add_(grad)
        return grad.add_(buf, alpha=beta) if nesterov else buf
    if steps is None:
        raise ValueError("steps: the optax momentum needs the 1-based step counts")
    buf.mul_(decay).add_(grad, alpha=1.0 - beta)
    if nesterov:
        first, second = optax_corrections(steps, beta, buf.dtype)
        return grad.mul_(second).add_(buf * first)
    t = steps.to(torch.float64).clamp(min=1.0)
    return buf / (1.0 - torch.pow(beta, t)).to(buf.dtype)


def apply_momentum_(
    bufs: Tensors,
    grads: Tensors,
    spec: MuonSpec,
    steps: Sequence[int | torch.Tensor],
    *,
    beta: float | None = None,
    form: MomentumForm | None = None,
) -> Tensors:
    """Stage 2 on lists: updates each buffer in place and returns new tensors ``N`` (the gradients are not
    written). ``beta`` defaults to ``spec.momentum`` (a param group's live ``"momentum"``), ``form`` to
    ``spec.momentum_form``; ``steps`` are the 1-based counts after incrementing (ints or 0-D tensors)."""
    kind = spec.momentum_form if form is None else form
    _check_form(kind)
    b = spec.momentum if beta is None else float(beta)
    if not bufs:
        return []
    if kind == "ema":
        torch._foreach_lerp_(bufs, grads, 1.0 - b)
        return list(torch._foreach_lerp(grads, bufs, b)) if spec.nesterov else [m.clone() for m in bufs]
    if kind == "sum":
        torch._foreach_mul_(bufs, b)
        torch._foreach_add_(bufs, grads)
        return list(torch._foreach_add(grads, bufs, alpha=b)) if spec.nesterov else [m.clone() for m in bufs]
    if any(isinstance(t, bool) or (isinstance(t, int) and t < 1) for t in steps):
        raise ValueError(f"steps: the optax momentum needs 1-based step counts t >= 1, got {list(steps)!r}")
    out = []
    for m, g, t in zip(bufs, grads, steps, strict=True):
        n = momentum_(m, g.clone(), "optax", b, spec.nesterov, steps=torch.as_tensor(t, device=m.device))
        out.append(n if n is not m else m.clone())
    return out
