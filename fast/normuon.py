"""NorMuon neuron-wise normalization on torch tensors (docs/variants.md sections 3.2 and 4;
arXiv 2510.05491 Alg. 1; mirrors `muonlab.reference.normuon`).

On the matrix view ``O`` ``[..., m, n]`` with the second moment ``S`` (``[..., m, 1]`` or ``[..., 1, n]``):
``vbar = mean(O^2)`` along the reduced axis, ``S <- lerp(S, vbar, 1-beta2)`` (in place),
``O_hat = O / (sqrt(S) + eps)`` or ``O / sqrt(max(S, eps))``, then the ``"frobenius"`` rescale
``O_hat ||O||_F / (||O_hat||_F + eps)`` (or ``max(., eps)``) or the ``"rms"`` rescale
``O_hat rms_scale sqrt(mn) / ||O_hat||_F`` (``0/0 -> 0``), per matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from muonlab.contract import MuonSpec, normuon_reduce_axis, second_moment_shape

__all__ = ["normuon_normalize"]


def _frobenius(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    return out


def normuon_normalize(o: torch.Tensor, s: torch.Tensor, spec: MuonSpec, *, beta2: float | None = None) -> torch.Tensor:
    """Return ``O_hat`` for ``O`` (``[..., m, n]``, computed in ``s.dtype``) and update ``S`` in place.

    Reads ``beta2`` (or the override), ``normuon_axis``, ``normuon_eps``, ``normuon_eps_mode``,
    ``normuon_rescale`` and ``rms_scale`` from ``spec``.
    """
    m, n = o.shape[-2], o.shape[-1]
    red = normuon_reduce_axis(m, n, spec.normuon_axis)
    expected: Sequence[int] = second_moment_shape(o.shape, spec.normuon_axis)
    if tuple(s.shape) != tuple(expected):
        raise ValueError(
            f"second_moment: expected shape {tuple(expected)} for an update of shape {tuple(o.shape)}, "
            f"got {tuple(s.shape)}"
        )
    b2 = spec.beta2 if beta2 is None else beta2
    o = o.to(s.dtype)
    vbar = (o * o).mean(dim=red, keepdim=True)
    s.lerp_(vbar, 1.0 - b2)
    eps = spec.normuon_eps
    o_hat = o / (s.sqrt() + eps) if spec.normuon_eps_mode == "add" else o / s.clamp(min=eps).sqrt()
    hat_norm = _frobenius(o_hat)
    if spec.normuon_rescale == "frobenius":
        denom = hat_norm + eps if spec.normuon_eps_mode == "add" else hat_norm.clamp(min=eps)
        return o_hat * (_frobenius(o) / denom)
    target = spec.rms_scale * float(m * n) ** 0.5
    live = hat_norm > 0.0
    factor = torch.where(live, target / torch.where(live, hat_norm, torch.ones_like(hat_norm)), 0.0)
    return o_hat * factor
