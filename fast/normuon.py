"""NorMuon neuron-wise normalization on torch tensors (docs/variants.md sections 3.2 and 4;
arXiv 2510.05491 Alg. 1; mirrors `muonlab.reference.normuon`).

On the matrix view ``O`` ``[..., m, n]`` with the second moment ``S`` (``[..., m, 1]`` or ``[..., 1, n]``):
``vbar = mean(O^2)`` along the reduced axis, ``S <- lerp(S, vbar, 1-beta2)`` (in place),
``O_hat = O / (sqrt(S) + eps)`` or ``O / sqrt(max(S, eps))``, then the ``"frobenius"`` rescale
``O_hat ||O||_F / (||O_hat||_F + eps)`` (or ``max(., eps)``) or the ``"rms"`` rescale
``O_hat rms_scale sqrt(mn) / ||O_hat||_F`` (``0/0 -> 0``), per matrix.
"""

from __future__ import annotations

import torch

from muonlab.contract import MuonSpec, normuon_reduce_axis

__all__ = ["normuon_normalize_"]


def _frobenius(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    return out


def _check(o: torch.Tensor, s: torch.Tensor, red: int) -> None:
    expected = (*o.shape[:-1], 1) if red == -1 else (*o.shape[:-2], 1, o.shape[-1])
    if tuple(s.shape) != tuple(expected):
        raise ValueError(
            f"second_moment: expected shape {tuple(expected)} for an update of shape {tuple(o.shape)}, "
            f"got {tuple(s.shape)}"
        )


def normuon_normalize_(
    o: torch.Tensor,
    s: torch.Tensor,
    spec: MuonSpec,
    *,
    beta2: float | None = None,
    reduce: int | None = None,
    weight: torch.Tensor | float | None = None,
    overwrite: bool = False,
) -> torch.Tensor:
    """Return ``O_hat`` for ``O`` (``[..., m, n]``, computed in ``s.dtype``) and update ``S`` in place.

    Reads ``beta2`` (or the override), ``normuon_axis``, ``normuon_eps``, ``normuon_eps_mode``,
    ``normuon_rescale`` and ``rms_scale`` from ``spec``. ``o`` is not written unless ``overwrite`` (then, when
    it already has ``s.dtype``, it is reused for the result to save memory).

    ``reduce`` (-1: per row, -2: per column) overrides the axis ``spec.normuon_axis`` gives for ``o``'s
    ``(m, n)``; ``weight`` (broadcastable to ``S``) replaces the lerp weight ``1-beta2`` per matrix: 0 leaves
    that ``S`` unchanged bit for bit.
    """
    m, n = o.shape[-2], o.shape[-1]
    red = normuon_reduce_axis(m, n, spec.normuon_axis) if reduce is None else reduce
    _check(o, s, red)
    b2 = spec.beta2 if beta2 is None else beta2
    o = o.to(s.dtype) if overwrite or o.dtype != s.dtype else o.clone()
    vbar = (o * o).mean(dim=red, keepdim=True)
    s.lerp_(vbar, 1.0 - b2 if weight is None else weight)
    del vbar
    eps = spec.normuon_eps
    add = spec.normuon_eps_mode == "add"
    o_norm = _frobenius(o) if spec.normuon_rescale == "frobenius" else None
    o.div_(s.sqrt().add_(eps) if add else s.clamp(min=eps).sqrt_())
    if spec.normuon_rescale == "none":  # NorMuonH: the hyperball step normalizes the update anyway
        return o
    hat_norm = _frobenius(o)
    if o_norm is not None:
        return o.mul_(o_norm.div_(hat_norm.add_(eps) if add else hat_norm.clamp_(min=eps)))
    target = spec.rms_scale * float(m * n) ** 0.5
    live = hat_norm > 0.0
    return o.mul_(torch.where(live, target / torch.where(live, hat_norm, 1.0), 0.0))
