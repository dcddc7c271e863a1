"""Stages 1-4 of one step (docs/variants.md, the step's stages) on one stack ``[C, m, n]`` of same-shape
matrices: gathering the gradients (with coupled decay), momentum, orthogonalization, NorMuon. The caller
applies the result (stages 5-7, `muonlab.fast.decay.apply_stack_`).

Which implementation runs is decided here, once per stack, by `muonlab.fast.backend.route`: the fused
momentum kernel (``"ema"`` / ``"sum"`` forms, no skip mask) and the symmetric Newton-Schulz kernels, or
torch ops. Skipped matrices are masked on the device (docs/fast.md, "Host syncs").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from muonlab.contract import MuonSpec

from .backend import Backend, route
from .momentum import momentum_, momentum_weight
from .normuon import normuon_normalize_
from .orthogonalize import orthogonalize_stack

__all__ = ["Skip", "gather", "stack_directions"]


@dataclass(frozen=True)
class Skip:
    """Which matrices of a stack step (``keep``, bool ``[C, 1, 1]``) and the per-matrix factors derived from
    it once per step (`Skip.of`): ``skip = ~keep``, the `momentum_weight` and NorMuon's ``S`` lerp weight."""

    keep: torch.Tensor
    skip: torch.Tensor
    momentum: torch.Tensor
    second: torch.Tensor | None

    @staticmethod
    def of(keep: torch.Tensor, spec: MuonSpec, beta: float, dtype: torch.dtype) -> Skip:
        flags = keep.to(dtype)  # 1 / 0, exact: one cast shared by both weights
        second = flags * (1.0 - spec.beta2) if spec.normuon else None
        if spec.momentum_form == "ema":  # the `momentum_weight` of "ema", from the shared cast
            momentum = flags.mul_(1.0 - beta)
        else:
            momentum = momentum_weight(keep, spec.momentum_form, beta, dtype)
        return Skip(keep, ~keep, momentum, second)

    def rows(self, a: int, b: int) -> Skip:
        """The mask of slots ``a:b`` (views)."""
        return Skip(
            self.keep[a:b], self.skip[a:b], self.momentum[a:b], None if self.second is None else self.second[a:b]
        )


def gather(views: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """A new ``[C, m, n]`` tensor of ``dtype`` holding ``views`` (``[k_i, m, n]`` each, any strides and dtype)
    one after another: one copy, one rounding."""
    first = views[0]
    shape = (sum(v.shape[0] for v in views), first.shape[-2], first.shape[-1])
    return torch.cat(list(views), out=torch.empty(shape, dtype=dtype, device=first.device))


def stack_directions(
    grads: Sequence[torch.Tensor],
    buf: torch.Tensor,
    second: torch.Tensor | None,
    spec: MuonSpec,
    *,
    beta: float,
    weights: Sequence[torch.Tensor] | None = None,
    weight_decay: float = 0.0,
    reduce: int | None = None,
    steps: torch.Tensor | None = None,
    skip: Skip | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Stages 1-4 on a stack: gather ``grads`` (``[k_i, m, n]`` views) into ``G`` in ``buf.dtype``, add
    ``weight_decay * weights`` (coupled decay, when ``weights`` are given), update ``buf`` (momentum,
    ``[C, m, n]``) and ``second`` (NorMuon ``S``, or None) in place, and return the directions ``O`` (a new
    tensor in ``spec.compute_dtype``, or ``S``'s dtype after NorMuon).

    ``beta`` is the live momentum; ``reduce`` NorMuon's averaged axis for this stack; ``steps`` the 1-based
    step of each matrix (``[C, 1, 1]``, ``"optax"`` only); ``skip`` (None: every matrix steps) marks the
    matrices that step (``skip.keep``): elsewhere ``G`` is zeroed and ``buf`` and ``second`` stay unchanged bit
    for bit (the caller then scales their update by 0). Temporaries are released as soon as they are used,
    so the peak is a few stack-sized tensors (docs/fast.md "Memory").
    """
    g = gather(grads, buf.dtype)
    if weights is not None:
        torch._foreach_add_(list(torch.split(g, [w.shape[0] for w in weights])), list(weights), alpha=weight_decay)
    if skip is not None:
        g.masked_fill_(skip.skip, 0.0)
    fused = skip is None and spec.momentum_form != "optax" and route(backend, buf.device, buf.dtype)
    if fused:
        from .kernels import elementwise

        n = elementwise.fused_momentum(buf, g, beta=beta, form=spec.momentum_form, nesterov=spec.nesterov)
    else:
        weight = None if skip is None else skip.momentum
        n = momentum_(buf, g, spec.momentum_form, beta, spec.nesterov, steps=steps, weight=weight)
    del g
    owned = n is not buf  # N is the step's own tensor unless it is the momentum buffer itself
    box = [n]
    del n  # handed over whole: the orthogonalizer frees it once it has its own normalized copy
    o = orthogonalize_stack(box, spec, backend, overwrite=owned)
    if second is None:
        return o
    o = o.to(second.dtype)
    return normuon_normalize_(
        o, second, spec, reduce=reduce, weight=None if skip is None else skip.second, overwrite=True
    )
