"""Weight decay and the update on torch tensors (docs/variants.md sections 4.3, 10, A8; the math of
`muonlab.reference.decay`, with in-place functions named torch-style with a trailing underscore).

``W <- W - eta_d lambda mask (.) W - eta_u O`` on the pre-update ``W`` (stages 6-7): `decay_lr` gives
``eta_d`` (``"base"`` ``eta``, ``"scaled"`` ``eta_u``, ``"lr2"`` ``eta eta_u``), `cautious_mask` the mask
(``O (.) W >= 0`` / ``> 0`` / ones); `coupled_decay` is the L2 form ``G + lambda W`` (stage 1).
`decoupled_decay_` and `apply_update_` write one parameter in place; `apply_stack_` applies one stack of
updates to many parameters with a handful of multi-tensor ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from muonlab.contract.decay import decay_lr
from muonlab.contract.spec import Cautious

from .orthogonalize import contiguous_as
from .state import wide_dtype

__all__ = [
    "Coefficients",
    "Scalar",
    "apply_stack_",
    "apply_update_",
    "cautious_mask",
    "coefficients",
    "coupled_decay",
    "decay_lr",
    "decoupled_decay_",
]

Scalar = float | torch.Tensor
"""A learning-rate-like scalar: a Python float or a tensor (0-D, or one value per matrix of a stack)."""


def _check_cautious(mode: object) -> None:
    if mode not in ("off", "ge", "gt"):
        raise ValueError(f"cautious: expected 'off', 'ge' or 'gt', got {mode!r}")


def cautious_mask(update: torch.Tensor, weight: torch.Tensor, mode: Cautious) -> torch.Tensor:
    """``1[O (.) W >= 0]`` (``"ge"``), ``1[O (.) W > 0]`` (``"gt"``) or ones (``"off"``), in ``weight.dtype``."""
    _check_cautious(mode)
    if mode == "off":
        return torch.ones_like(weight)
    prod = update.to(weight.dtype) * weight
    return (prod >= 0 if mode == "ge" else prod > 0).to(weight.dtype)


def coupled_decay(grads: list[torch.Tensor], weights: list[torch.Tensor], weight_decay: float) -> list[torch.Tensor]:
    """``G + lambda W`` for each pair (new tensors; the gradients are not written)."""
    return list(
        torch._foreach_add(grads, [w.to(g.dtype) for g, w in zip(grads, weights, strict=True)], alpha=weight_decay)
    )


def decoupled_decay_(weight: torch.Tensor, update: torch.Tensor, decay_factor: Scalar, mode: Cautious) -> torch.Tensor:
    """``W <- W - decay_factor mask (.) W`` in place (``decay_factor = eta_d lambda``); returns ``weight``."""
    _check_cautious(mode)
    if mode == "off":
        return weight.sub_(weight * decay_factor)
    return weight.sub_(weight * cautious_mask(update, weight, mode) * decay_factor)


@dataclass(frozen=True)
class Coefficients:
    """Stages 5-7 scalars in the arithmetic dtype, each one value or one per matrix (``[C, 1, 1]``):
    ``lr_update`` (``eta_u``), ``decay`` (``eta_d lambda``) and ``retain`` (``1 - eta_d lambda``), the last
    two None without decoupled decay. Made by `coefficients`, so both apply functions round alike."""

    lr_update: torch.Tensor
    decay: torch.Tensor | None
    retain: torch.Tensor | None


def coefficients(lr_update: torch.Tensor, decay: torch.Tensor | None, dtype: torch.dtype) -> Coefficients:
    """`Coefficients` from float64 ``eta_u`` and ``eta_d lambda`` (``1 - eta_d lambda`` is formed in float64),
    each rounded once to ``dtype``."""
    if decay is None:
        return Coefficients(lr_update.to(dtype), None, None)
    return Coefficients(lr_update.to(dtype), decay.to(dtype), torch.rsub(decay, 1.0).to(dtype))


def _parts(t: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor] | torch.Tensor:
    return t if t.ndim == 0 else list(torch.split(t, list(counts)))


def apply_stack_(
    targets: Sequence[torch.Tensor],
    update: torch.Tensor,
    counts: Sequence[int],
    coefs: Coefficients,
    cautious: Cautious,
    dtype: torch.dtype,
) -> None:
    """Stages 6-7 for a stack, in place: ``targets[i]`` (views of the parameters, ``[k_i, ...]``, any strides
    and dtype) take the next ``counts[i]`` entries of ``update`` along dim 0 (consumed: it may be overwritten).

    ``coefs`` (`coefficients`) hold one value, or one per matrix, in ``dtype`` (the arithmetic dtype: float32,
    float64 for float64 parameters). Float32/float64 parameters without a cautious mask take
    ``W <- W (1 - eta_d lambda)`` then ``W <- W - eta_u O``; otherwise each parameter is written once from
    ``W - (eta_d lambda mask (.) W + eta_u O)`` computed in ``dtype`` (one rounding of a bf16 parameter), the
    mask ``O (.) W >= 0`` (or ``> 0``) from the product in ``dtype``.
    """
    _check_cautious(cautious)
    tl = list(targets)
    if coefs.decay is None or (cautious == "off" and all(t.dtype == dtype for t in tl)):
        if coefs.retain is not None:
            torch._foreach_mul_(tl, _parts(coefs.retain, counts))
        # one contiguous copy in ``dtype`` (a fast cast, unlike a mixed-dtype multiply) unless ``update`` is
        # already one; then in place
        delta = contiguous_as(update, dtype).mul_(coefs.lr_update)
        torch._foreach_sub_(tl, list(torch.split(delta, list(counts))))
        return
    term = torch.cat(tl, out=torch.empty(update.shape, dtype=dtype, device=update.device))  # W, in ``dtype``
    if cautious != "off":
        # mask (.) W without a third stack-sized tensor: the product's sign in place, then W from the params
        term.mul_(update)
        term = term.ge_(0.0) if cautious == "ge" else term.gt_(0.0)
        torch._foreach_mul_(list(torch.split(term, list(counts))), tl)
    term.mul_(coefs.decay)
    term.addcmul_(update, coefs.lr_update)
    torch._foreach_sub_(tl, list(torch.split(term, list(counts))))


def apply_update_(
    param: torch.Tensor,
    update: torch.Tensor,
    *,
    lr_update: Scalar,
    decay_factor: Scalar | None,
    cautious: Cautious,
) -> None:
    """Stages 6-7 on one parameter, in place: ``W <- W - decay_factor mask (.) W - lr_update O`` (mask on the
    pre-update ``W``; ``decay_factor`` None skips the decay), with the arithmetic of `apply_stack_` (Python
    floats are taken as float64)."""
    dtype = wide_dtype(param.dtype)
    lr64 = torch.as_tensor(lr_update, dtype=torch.float64, device=param.device)
    d64 = None if decay_factor is None else torch.as_tensor(decay_factor, dtype=torch.float64, device=param.device)
    n = param.shape[0] if param.ndim else 1
    apply_stack_([param], update.reshape(param.shape), [n], coefficients(lr64, d64, dtype), cautious, dtype)
