"""Hypersphere updates (docs/variants.md "Hypersphere"; nGPT arXiv 2410.01131, MuonH, the geodesic rule of
[S §9.3]).

The Euclidean step ``D = -eta_u O`` is replaced by a step that keeps each vector on its sphere. The
vectors are those of the matrix view ``[..., m, n]`` of the parameter (the view `orthogonalize` uses):

* ``sphere_axis="row"``: each row (``[out, in]``: one output neuron; nGPT ``query``/``key``/``c_fc``) is a
  unit vector; ``"col"``: each column (nGPT ``c_proj``); ``"matrix"``: the whole matrix lives on the
  Frobenius sphere of its current radius ``R = ||W||_F`` (MuonH).

For a vector ``w`` of norm ``r`` (target radius ``R``: 1 for rows/columns, ``r`` for the matrix sphere) and
its slice ``d`` of ``D``, with ``u = w / r`` and ``e = d / r``:

* ``"renormalize"`` (nGPT ``normalize_matrices``/``justnorm``; MuonH): ``w' = R (w + d) / ||w + d||``;
  if ``w + d = 0`` exactly, ``w`` is left unchanged.
* ``"geodesic"`` ([S §9.3]): ``t = e - (u.e) u``, ``tau = ||t||``;
  ``theta`` = ``min(tau, pi/2)`` (``"exp"``), ``atan2(tau, 1 + u.e)`` (``"renorm"``), ``atan(tau)``
  (``"retract"``) or ``min(eta_u, pi/2)`` (``"fixed"``);
  ``u' = cos(theta) u + sin(theta) t / tau``, then ``w' = R u' / ||u'||``.
  In ``"exp"``, ``"retract"`` and ``"fixed"``, ``tau <= 1e-12`` leaves the point ``u`` unchanged
  (``w' = R u``: ``w`` itself when it is already on its sphere; the final renormalization only rounds).
  In ``"renorm"`` the formula is used for every ``tau > 0`` and, for ``tau = 0`` (a purely radial step),
  ``u' = cos(theta) u``: ``w`` when ``1 + u.e > 0``, ``-w`` when ``1 + u.e < 0`` (the radial flip that
  renormalization performs), ``w`` when ``1 + u.e = 0`` (``w + d = 0``). So ``"renorm"`` reproduces
  ``"renormalize"`` exactly, including its flip (docs/variants.md, decision A12).

A zero vector has no sphere: a zero row/column takes the ``"renormalize"`` result ``d / ||d||`` (zero if
``d = 0``) in both modes; a zero matrix on the ``"matrix"`` sphere (radius 0) stays zero.
"""

from __future__ import annotations

import math

import numpy as np

from muonlab.contract.spec import GEODESIC_TAU_MIN, AngleMode, MuonSpec, SphereAxis

from .array import Array
from .orthogonalize import as_matrices

__all__ = ["HYPERBALL_EPS", "geodesic_vectors", "renormalize_vectors", "sphere_step"]

HYPERBALL_EPS = 1e-10  # modded scale_invariant_update_: max(||O||_F, 1e-10)


def _norm(x: Array) -> Array:
    out: Array = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    return out


def renormalize_vectors(w: Array, d: Array, radius: Array) -> Array:
    """``radius (w + d) / ||w + d||`` along the last axis; ``w`` (as given) where ``w + d = 0``."""
    v = w + d
    nv = _norm(v)
    safe = np.where(nv > 0.0, nv, 1.0)
    out: Array = np.where(nv > 0.0, radius * v / safe, w)
    return out


def _angle(tau: Array, radial: Array, mode: AngleMode, lr_update: float) -> Array:
    if mode == "exp":
        theta: Array = np.minimum(tau, math.pi / 2)
    elif mode == "renorm":
        theta = np.arctan2(tau, 1.0 + radial)
    elif mode == "retract":
        theta = np.arctan(tau)
    else:
        theta = np.full_like(tau, min(lr_update, math.pi / 2))
    return theta


def geodesic_vectors(w: Array, d: Array, radius: Array, mode: AngleMode, lr_update: float) -> Array:
    """Geodesic step of each vector (last axis) of ``w`` along the tangent part of ``d`` (module doc)."""
    r = _norm(w)
    live = r > 0.0
    r_safe = np.where(live, r, 1.0)
    u = w / r_safe
    e = d / r_safe
    radial = np.sum(u * e, axis=-1, keepdims=True)
    t = e - radial * u
    tau = _norm(t)
    theta = _angle(tau, radial, mode, lr_update)
    moving = tau > (0.0 if mode == "renorm" else GEODESIC_TAU_MIN)
    direction = t / np.where(moving, tau, 1.0)
    if mode == "renorm":
        rotated = np.where(moving, np.cos(theta) * u + np.sin(theta) * direction, np.cos(theta) * u)
    else:
        rotated = np.where(moving, np.cos(theta) * u + np.sin(theta) * direction, u)
    nrot = _norm(rotated)
    stepped = radius * rotated / np.where(nrot > 0.0, nrot, 1.0)
    # tau = 0 with 1 + u.e = 0 in "renorm": atan2(0, 0) = 0 gives cos(theta) = 1, i.e. u unchanged.
    out: Array = np.where(live, stepped, renormalize_vectors(w, d, radius))
    return out


def _to_vectors(x: Array, axis: SphereAxis) -> Array:
    """``[B, m, n]`` -> ``[B, k, dim]`` with the sphere's vectors along the last axis."""
    if axis == "row":
        return x
    if axis == "col":
        return np.swapaxes(x, -2, -1)
    return np.reshape(x, (x.shape[0], 1, x.shape[1] * x.shape[2]))


def _from_vectors(v: Array, axis: SphereAxis, shape: tuple[int, ...]) -> Array:
    if axis == "row":
        return v
    if axis == "col":
        return np.ascontiguousarray(np.swapaxes(v, -2, -1))
    return np.reshape(v, shape)


def sphere_step(weight: Array, step: Array, spec: MuonSpec, lr_update: float) -> Array:
    """Stage 8: ``W + D`` kept on the sphere per ``spec.sphere``, ``spec.sphere_axis``, ``spec.angle_mode``.

    ``weight`` and ``step`` (``D = -eta_u O``) have the parameter's shape; ``lr_update`` is ``eta_u`` (read by
    ``angle_mode="fixed"``). ``spec.sphere="none"`` returns ``W + D``.
    """
    w = np.asarray(weight, dtype=np.float64)
    dd = np.asarray(step, dtype=np.float64)
    if spec.sphere == "none":
        out: Array = w + dd
        return out
    wm, restore = as_matrices(w, spec, "param")
    dm, _ = as_matrices(dd, spec, "param")
    wv = _to_vectors(wm, spec.sphere_axis)
    dv = _to_vectors(dm, spec.sphere_axis)
    radius = _norm(wv) if spec.sphere_axis == "matrix" else np.ones((*wv.shape[:-1], 1))
    if spec.sphere == "hyperball":
        # W' = W - eta_u R U / max(||U||, eps) with D = -eta_u U (so ||U|| = ||D|| / eta_u), then R W' / ||W'||
        radius = radius if spec.hyperball_radius is None else np.full_like(radius, spec.hyperball_radius)
        nd = _norm(dv)
        safe = np.maximum(nd, lr_update * HYPERBALL_EPS)
        dv = np.where(nd > 0.0, dv * (lr_update * radius / np.where(safe > 0.0, safe, 1.0)), 0.0)
        nv = renormalize_vectors(wv, dv, radius)
    elif spec.sphere == "renormalize":
        nv = renormalize_vectors(wv, dv, radius)
    else:
        nv = geodesic_vectors(wv, dv, radius, spec.angle_mode, lr_update)
    return restore(_from_vectors(nv, spec.sphere_axis, wm.shape))
