"""NorMuon neuron-wise normalization (docs/variants.md "NorMuon"; [S §3.2, §4]; arXiv 2510.05491 Alg. 1).

Acts on the orthogonalized update ``O`` of shape ``[..., m, n]`` (the matrix view, batched over leading
dims) with a second-moment buffer ``S``:

* axis ``"row"``: ``vbar = mean(O^2, axis=-1)``, ``S`` of shape ``[..., m, 1]`` (paper, official code, dion);
  ``"col"``: ``vbar = mean(O^2, axis=-2)``, ``S`` of shape ``[..., 1, n]``;
  ``"longer"``: per row when ``m >= n``, else per column (modded-nanogpt ``_apply_normuon_variance_reduction``);
  ``"element"``: ``vbar = O^2``, ``S`` of ``O``'s shape (AdaMuon);
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
from muonlab.contract.spec import MuonSpec, NorMuonRescale, lookup

from .array import Array

__all__ = ["RESCALES", "normuon_normalize"]


def _frobenius(x: Array) -> Array:
    out: Array = np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True))
    return out


def _guard(x: Array, spec: MuonSpec) -> Array:
    out: Array = x + spec.normuon_eps if spec.normuon_eps_mode == "add" else np.maximum(x, spec.normuon_eps)
    return out


def _rms(o_hat: Array, o: Array, spec: MuonSpec) -> Array:
    hat_norm = _frobenius(o_hat)
    target = spec.rms_scale * np.sqrt(float(o.shape[-2] * o.shape[-1]))
    safe = np.where(hat_norm > 0.0, hat_norm, 1.0)
    out: Array = np.where(hat_norm > 0.0, o_hat * (target / safe), 0.0)
    return out


def _rms_eps(o_hat: Array, o: Array, spec: MuonSpec) -> Array:
    out: Array = o_hat * (spec.rms_scale * np.sqrt(float(o.shape[-2] * o.shape[-1])) / _guard(_frobenius(o_hat), spec))
    return out


RESCALES: dict[NorMuonRescale, Callable[[Array, Array, MuonSpec], Array]] = {
    "frobenius": lambda o_hat, o, spec: o_hat * (_frobenius(o) / _guard(_frobenius(o_hat), spec)),
    "frobenius_clamp": lambda o_hat, o, spec: o_hat * (_frobenius(o) / np.maximum(_frobenius(o_hat), spec.normuon_eps)),
    "rms": _rms,
    "rms_eps": _rms_eps,
    "none": lambda o_hat, o, spec: o_hat,  # NorMuonH: the hyperball step normalizes the update anyway
}
"""``spec.normuon_rescale`` -> ``(O_hat, O, spec) -> O_hat'`` per matrix; the fast side's table is
`muonlab.fast.normuon.RESCALES`."""


def normuon_normalize(o: Array, s: Array, spec: MuonSpec, step: int = 1) -> tuple[Array, Array]:
    """Return ``(O_hat, S_new)`` for the update ``O`` (``[..., m, n]``) and buffer ``S`` (see module doc) at step
    ``step`` (1-based; read only by the bias correction).

    Reads ``beta2``, ``normuon_axis``, ``normuon_eps``, ``normuon_eps_mode``, ``normuon_rescale``,
    ``normuon_bias_correction`` and ``rms_scale`` from ``spec``.
    """
    o = np.asarray(o, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    m, n = o.shape[-2], o.shape[-1]
    red = normuon_reduce_axis(m, n, spec.normuon_axis)
    expected = second_moment_shape(o.shape, spec.normuon_axis)
    if s.shape != expected:
        raise ValueError(f"second_moment: expected shape {expected} for an update of shape {o.shape}, got {s.shape}")
    vbar = np.mean(o * o, axis=red, keepdims=True) if red else o * o
    s_new = s + (1.0 - spec.beta2) * (vbar - s)
    s_hat = s_new / (1.0 - spec.beta2**step) if spec.normuon_bias_correction else s_new
    eps = spec.normuon_eps
    o_hat = o / (np.sqrt(s_hat) + eps) if spec.normuon_eps_mode == "add" else o / np.sqrt(np.maximum(s_hat, eps))
    return lookup(RESCALES, spec.normuon_rescale, "normuon_rescale")(o_hat, o, spec), s_new
