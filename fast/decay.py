"""Weight decay and the update on torch tensors (docs/variants.md, stages 5-7; the math of `muonlab.reference.decay`).

``W <- W - eta_d lambda mask (.) W - eta_u O`` on the pre-update ``W``: `decay_lr` gives ``eta_d``,
`CAUTIOUS_TESTS` the mask. `apply_stack_` applies one stack of updates to many parameters with a handful of
multi-tensor ops; `coefficients` forms its per-matrix scalars so that every caller rounds alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from muonlab.contract.decay import decay_lr
from muonlab.contract.spec import Cautious, lookup

from .orthogonalize import contiguous_as

__all__ = ["CAUTIOUS_TESTS", "Coefficients", "Scalar", "apply_stack_", "cautious_mask", "coefficients", "decay_lr"]

Scalar = float | torch.Tensor
"""A learning-rate-like scalar: a Python float or a tensor (0-D, or one value per matrix of a stack)."""


CAUTIOUS_TESTS: dict[Cautious, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "off": None,  # every coordinate decays
    "ge": lambda prod: prod.ge_(0.0),  # in place: the product is the step's own temporary
    "gt": lambda prod: prod.gt_(0.0),
}
"""``spec.cautious`` -> the in-place test on ``O (.) W`` that selects the decayed coordinates (the reference's
table is `muonlab.reference.decay.CAUTIOUS_TESTS`)."""


def cautious_mask(update: torch.Tensor, weight: torch.Tensor, mode: Cautious) -> torch.Tensor:
    """The `CAUTIOUS_TESTS` mask of ``mode`` (ones for ``"off"``), in ``weight.dtype``."""
    test = lookup(CAUTIOUS_TESTS, mode, "cautious")
    if test is None:
        return torch.ones_like(weight)
    return test(update.to(weight.dtype) * weight).to(weight.dtype)


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
    test = lookup(CAUTIOUS_TESTS, cautious, "cautious")
    tl = list(targets)

    def parts(t: torch.Tensor) -> list[torch.Tensor]:  # ``t``'s pieces in the targets' shapes (views)
        return [d.view(x.shape) for d, x in zip(torch.split(t, list(counts)), tl, strict=True)]

    if coefs.decay is None or (test is None and all(t.dtype == dtype for t in tl)):
        if coefs.retain is not None:
            torch._foreach_mul_(tl, _parts(coefs.retain, counts))
        # one contiguous copy in ``dtype`` (a fast cast, unlike a mixed-dtype multiply) unless ``update`` is
        # already one; then in place
        delta = contiguous_as(update, dtype).mul_(coefs.lr_update)
        torch._foreach_sub_(tl, parts(delta))
        return
    # W, in ``dtype`` (a strided target, as a Megatron split block, is read by a reshape copy)
    term = torch.cat(
        [t.reshape(c, *update.shape[1:]) for t, c in zip(tl, counts, strict=True)],
        out=torch.empty(update.shape, dtype=dtype, device=update.device),
    )
    if test is not None:
        # mask (.) W without a third stack-sized tensor: the product's sign in place, then W from the params
        term = test(term.mul_(update))
        torch._foreach_mul_(parts(term), tl)
    term.mul_(coefs.decay)
    term.addcmul_(update, coefs.lr_update)
    torch._foreach_sub_(tl, parts(term))
