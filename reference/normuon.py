"""NorMuon neuron-wise normalization (docs/variants.md "NorMuon"; [S §3.2, §4]; arXiv 2510.05491 Alg. 1).

Acts on the orthogonalized update ``O`` of shape ``[..., m, n]`` (the matrix view, batched over leading
dims) with a second-moment buffer ``S``:

* axis ``"row"``: ``vbar = mean(O^2, axis=-1)``, ``S`` of shape ``[..., m, 1]`` (paper, official code, dion);
  ``"col"``: ``vbar = mean(O^2, axis=-2)``, ``S`` of shape ``[..., 1, n]``;
  ``"longer"``: per row when ``m >= n``, else per column (modded-nanogpt ``_apply_normuon_variance_reduction``);
  ``"element"``: ``vbar = O^2``, ``S`` of ``O``'s shape (AdaMuon); ``"matrix"``: one per matrix;
  with ``normuon_input="gradient"`` (NAMO) ``vbar`` is the raw gradient's ``sum(G^2)`` over those dims
  (`STATISTICS`);
* ``S <- lerp(S, vbar, 1-beta2) = S + (1-beta2)(vbar - S)``; with ``normuon_bias_correction`` (AdaMuon v1) the
  normalization reads ``S_hat = S / (1 - beta2^t)``, else ``S`` itself;
* ``O_hat = O / (sqrt(S) + eps)`` (``"add"``) or ``O / sqrt(max(S, eps))`` (``"clamp"``, modded);
* rescale ``"frobenius"``: ``O_hat * ||O||_F / (||O_hat||_F + eps)`` (or ``max(||O_hat||_F, eps)`` under
  ``"clamp"``), per matrix (official ``normuon_update``, modded, dion);
  ``"rms"``: ``O_hat * rms_scale * sqrt(m n) / ||O_hat||_F`` (the paper's ``eta_hat = 0.2 eta sqrt(mn)/||O_hat||_F``),
  with ``0/0 -> 0``; ``"rms_eps"``: ``O_hat * rms_scale * sqrt(m n) / (||O_hat||_F + eps)`` (or ``max``; AdaMuon);
  ``"none"``: ``O_hat`` as is (modded NorMuonH). Table `RESCALES`.

Zero input gives zero output and no NaN ([S §3.7]).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from muonlab.contract.shapes import normuon_reduce_axis, second_moment_shape
from muonlab.contract.spec import MuonSpec, NorMuonInput, NorMuonRescale, lookup

from .array import Array

__all__ = ["RESCALES", "STATISTICS", "normuon_normalize"]


def _frobenius(x: Array) -> Array:
    out: Array = np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True))
    return out


def _guard(x: Array, spec: MuonSpec) -> Array:
    out: Array = x + spec.normuon_eps if spec.normuon_eps_mode == "add" else np.maximum(x, spec.normuon_eps)
    return out


def _rms(o_hat: Array, o: Array, n: Array | None, spec: MuonSpec) -> Array:
    hat_norm = _frobenius(o_hat)
    target = spec.rms_scale * np.sqrt(float(o.shape[-2] * o.shape[-1]))
    safe = np.where(hat_norm > 0.0, hat_norm, 1.0)
    out: Array = np.where(hat_norm > 0.0, o_hat * (target / safe), 0.0)
    return out


def _rms_eps(o_hat: Array, o: Array, n: Array | None, spec: MuonSpec) -> Array:
    out: Array = o_hat * (spec.rms_scale * np.sqrt(float(o.shape[-2] * o.shape[-1])) / _guard(_frobenius(o_hat), spec))
    return out


def _input_norm(o_hat: Array, o: Array, n: Array | None, spec: MuonSpec) -> Array:
    if n is None:
        raise ValueError("n: normuon_rescale='input_norm' needs the orthogonalizer's input N")
    out: Array = o_hat * _frobenius(n)
    return out


RESCALES: dict[NorMuonRescale, Callable[[Array, Array, Array | None, MuonSpec], Array]] = {
    "frobenius": lambda o_hat, o, n, spec: o_hat * (_frobenius(o) / _guard(_frobenius(o_hat), spec)),
    "frobenius_clamp": lambda o_hat, o, n, spec: (
        o_hat * (_frobenius(o) / np.maximum(_frobenius(o_hat), spec.normuon_eps))
    ),
    "rms": _rms,
    "rms_eps": _rms_eps,
    "input_norm": _input_norm,  # NAMO: alpha = ||N||_F / (sqrt(v) + eps)
    "none": lambda o_hat, o, n, spec: o_hat,  # NorMuonH: the hyperball step normalizes the update anyway
}
"""``spec.normuon_rescale`` -> ``(O_hat, O, N or None, spec) -> O_hat'`` per matrix; the fast side's table is
`muonlab.fast.normuon.RESCALES`."""


def _statistic(x: Array, red: tuple[int, ...], mean: bool) -> Array:
    sq = x * x
    if not red:
        return sq
    out: Array = np.mean(sq, axis=red, keepdims=True) if mean else np.sum(sq, axis=red, keepdims=True)
    return out


STATISTICS: dict[NorMuonInput, Callable[[Array, Array | None, tuple[int, ...]], Array]] = {
    "update": lambda o, g, red: _statistic(o, red, mean=True),  # mean of O^2 (NorMuon, AdaMuon)
    "gradient": lambda o, g, red: _statistic(_need(g), red, mean=False),  # ||G||^2 (NAMO)
}
"""``spec.normuon_input`` -> ``(O, G or None, averaged dims) -> vbar``; the fast side's table is
`muonlab.fast.normuon.STATISTICS`."""


def _need(g: Array | None) -> Array:
    if g is None:
        raise ValueError("grad: normuon_input='gradient' needs the raw gradient")
    return g


def normuon_normalize(
    o: Array, s: Array, spec: MuonSpec, step: int = 1, *, grad: Array | None = None, n: Array | None = None
) -> tuple[Array, Array]:
    """Return ``(O_hat, S_new)`` for the update ``O`` (``[..., m, n]``) and buffer ``S`` (see module doc) at step
    ``step`` (1-based; read only by the bias correction); ``grad`` (the raw gradient, ``normuon_input="gradient"``)
    and ``n`` (the orthogonalizer's input, ``normuon_rescale="input_norm"``) have ``O``'s shape.

    Reads ``beta2``, ``normuon_axis``, ``normuon_input``, ``normuon_eps``, ``normuon_eps_mode``,
    ``normuon_rescale``, ``normuon_bias_correction`` and ``rms_scale`` from ``spec``.
    """
    o = np.asarray(o, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    m, cols = o.shape[-2], o.shape[-1]
    red = normuon_reduce_axis(m, cols, spec.normuon_axis)
    expected = second_moment_shape(o.shape, spec.normuon_axis)
    if s.shape != expected:
        raise ValueError(f"second_moment: expected shape {expected} for an update of shape {o.shape}, got {s.shape}")
    vbar = lookup(STATISTICS, spec.normuon_input, "normuon_input")(o, grad, red)
    s_new = s + (1.0 - spec.beta2) * (vbar - s)
    s_hat = s_new / (1.0 - spec.beta2**step) if spec.normuon_bias_correction else s_new
    eps = spec.normuon_eps
    o_hat = o / (np.sqrt(s_hat) + eps) if spec.normuon_eps_mode == "add" else o / np.sqrt(np.maximum(s_hat, eps))
    return lookup(RESCALES, spec.normuon_rescale, "normuon_rescale")(o_hat, o, n, spec), s_new
