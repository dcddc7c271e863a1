"""NorMuon neuron-wise normalization on torch tensors (docs/variants.md sections 3.2 and 4;
arXiv 2510.05491 Alg. 1; mirrors `muonlab.reference.normuon`).

On the matrix view ``O`` ``[..., m, n]`` with the second moment ``S`` (``[..., m, 1]``, ``[..., 1, n]``, or ``O``'s
shape per element): ``vbar = mean(O^2)`` along the reduced axis, ``S <- lerp(S, vbar, 1-beta2)`` (in place),
``O_hat = O / (sqrt(S_hat) + eps)`` or ``O / sqrt(max(S_hat, eps))`` (``S_hat = S / (1 - beta2^t)`` with the bias
correction, else ``S``), then the rescale of `RESCALES` per matrix (the math: `muonlab.reference.normuon`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from muonlab.contract import MuonSpec, normuon_reduce_axis, second_moment_shape
from muonlab.contract.spec import NorMuonInput, NorMuonRescale, lookup

__all__ = ["RESCALES", "STATISTICS", "gradient_statistic", "normuon_normalize_"]


def _frobenius(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    return out


def _guard_(x: torch.Tensor, spec: MuonSpec) -> torch.Tensor:
    eps = spec.normuon_eps
    return x.add_(eps) if spec.normuon_eps_mode == "add" else x.clamp_(min=eps)


def _target(o: torch.Tensor, spec: MuonSpec) -> float:
    return float(spec.rms_scale * math.sqrt(o.shape[-2] * o.shape[-1]))


def _rms(o_hat: torch.Tensor, norm: torch.Tensor | None, spec: MuonSpec) -> torch.Tensor:
    hat_norm = _frobenius(o_hat)
    live = hat_norm > 0.0
    return o_hat.mul_(torch.where(live, _target(o_hat, spec) / torch.where(live, hat_norm, 1.0), 0.0))


def _need(t: torch.Tensor | None, name: str) -> torch.Tensor:
    if t is None:
        raise ValueError(f"{name}: needed by this spec's NorMuon stage (normuon_input / normuon_rescale)")
    return t


RESCALES: dict[NorMuonRescale, Callable[[torch.Tensor, torch.Tensor | None, MuonSpec], torch.Tensor]] = {
    "frobenius": lambda o_hat, norm, spec: o_hat.mul_(_need(norm, "norm").div_(_guard_(_frobenius(o_hat), spec))),
    "frobenius_clamp": lambda o_hat, norm, spec: o_hat.mul_(
        _need(norm, "norm").div_(_frobenius(o_hat).clamp_(min=spec.normuon_eps))
    ),
    "rms": _rms,
    "rms_eps": lambda o_hat, norm, spec: o_hat.mul_(
        _guard_(_frobenius(o_hat), spec).reciprocal_().mul_(_target(o_hat, spec))
    ),
    "input_norm": lambda o_hat, norm, spec: o_hat.mul_(_need(norm, "input_norm")),  # NAMO: times ||N||_F
    "none": lambda o_hat, norm, spec: o_hat,  # NorMuonH: the hyperball step normalizes the update anyway
}
"""``spec.normuon_rescale`` -> ``(O_hat, norm, spec) -> O_hat'`` in place; ``norm`` is ``||O||_F`` taken before the
division for the Frobenius rescales, ``||N||_F`` (the orthogonalizer's input) for ``"input_norm"``, else None;
`muonlab.reference.normuon.RESCALES` states the math."""

STATISTICS: dict[NorMuonInput, Callable[[torch.Tensor, tuple[int, ...], torch.Tensor | None], torch.Tensor]] = {
    "update": lambda o, red, given: (o * o).mean(dim=red, keepdim=True) if red else o * o,
    # NAMO: the raw gradient's sum of squares, taken in stage 1 before momentum consumes G (`gradient_statistic`)
    "gradient": lambda o, red, given: _need(given, "statistic"),
}
"""``spec.normuon_input`` -> ``(O, averaged dims, given statistic) -> vbar``; the reference's table is
`muonlab.reference.normuon.STATISTICS`."""


def gradient_statistic(g: torch.Tensor, red: tuple[int, ...]) -> torch.Tensor:
    """``sum(G^2)`` over the averaged dims of the raw gradient stack ``g`` (``normuon_input="gradient"``)."""
    return (g * g).sum(dim=red, keepdim=True) if red else g * g


def normuon_normalize_(
    o: torch.Tensor,
    s: torch.Tensor,
    spec: MuonSpec,
    *,
    beta2: float | None = None,
    reduce: tuple[int, ...] | None = None,
    weight: torch.Tensor | float | None = None,
    steps: torch.Tensor | None = None,
    statistic: torch.Tensor | None = None,
    input_norm: torch.Tensor | None = None,
    overwrite: bool = False,
) -> torch.Tensor:
    """Return ``O_hat`` for ``O`` (``[..., m, n]``, computed in ``s.dtype``) and update ``S`` in place.

    Reads ``beta2`` (or the override), ``normuon_axis``, ``normuon_input``, ``normuon_eps``, ``normuon_eps_mode``,
    ``normuon_rescale``, ``normuon_bias_correction`` and ``rms_scale`` from ``spec``. ``o`` is not written
    unless ``overwrite`` (then, when it already has ``s.dtype``, it is reused for the result to save memory).

    ``reduce`` (`muonlab.contract.normuon_reduce_axis`: ``(-1,)`` per row, ``(-2,)`` per column, ``()`` per
    element, ``(-2, -1)`` per matrix) overrides the dims ``spec.normuon_axis`` gives for ``o``'s ``(m, n)``;
    ``weight`` (broadcastable to ``S``) replaces the lerp weight ``1-beta2`` per matrix: 0 leaves that ``S``
    unchanged bit for bit. ``steps`` (``t`` per matrix) is read by the bias correction only; ``statistic``
    (`gradient_statistic`) by ``normuon_input="gradient"`` only; ``input_norm`` (``||N||_F`` per matrix) by
    ``normuon_rescale="input_norm"`` only.
    """
    m, n = o.shape[-2], o.shape[-1]
    red = normuon_reduce_axis(m, n, spec.normuon_axis) if reduce is None else reduce
    expected = second_moment_shape(o.shape, spec.normuon_axis) if reduce is None else _reduced(o.shape, red)
    if tuple(s.shape) != expected:
        raise ValueError(
            f"second_moment: expected shape {expected} for an update of shape {tuple(o.shape)}, got {tuple(s.shape)}"
        )
    b2 = spec.beta2 if beta2 is None else beta2
    o = o.to(s.dtype) if overwrite or o.dtype != s.dtype else o.clone()
    vbar = lookup(STATISTICS, spec.normuon_input, "normuon_input")(o, red, statistic)
    s.lerp_(vbar.to(s.dtype), 1.0 - b2 if weight is None else weight)
    del vbar
    s_hat = s
    if spec.normuon_bias_correction:
        if steps is None:
            raise ValueError("steps: the bias correction (normuon_bias_correction=True) needs the step count t")
        s_hat = s / (1.0 - torch.pow(b2, steps.to(s.dtype)))
    eps = spec.normuon_eps
    norm = None
    if spec.normuon_rescale in ("frobenius", "frobenius_clamp"):
        norm = _frobenius(o)  # before the division
    elif spec.normuon_rescale == "input_norm":
        norm = _need(input_norm, "input_norm").to(s.dtype)
    # the denominator in S_hat's storage when the bias correction made it (S itself is state)
    if spec.normuon_eps_mode == "add":
        den = (s_hat.sqrt() if s_hat is s else s_hat.sqrt_()).add_(eps)
    else:
        den = (s_hat.clamp(min=eps) if s_hat is s else s_hat.clamp_(min=eps)).sqrt_()
    o.div_(den)
    del den, s_hat
    return lookup(RESCALES, spec.normuon_rescale, "normuon_rescale")(o, norm, spec)


def _reduced(shape: tuple[int, ...] | torch.Size, red: tuple[int, ...]) -> tuple[int, ...]:
    out = [int(d) for d in shape]
    for d in red:
        out[d] = 1
    return tuple(out)
