"""Hypersphere updates on torch tensors (docs/variants.md section 9, decision A12; mirrors
`muonlab.reference.sphere`).

The Euclidean step ``D = -eta_u O`` is replaced by one that keeps each vector of the matrix view on its
sphere: rows (``sphere_axis="row"``), columns (``"col"``) or the whole matrix at its current radius
(``"matrix"``). ``"renormalize"``: ``w' = R (w + d) / ||w + d||`` (``w`` where ``w + d = 0``);
``"geodesic"``: rotate ``u = w/r`` towards the tangent part ``t`` of ``e = d/r`` by the angle of
``angle_mode`` (see the reference module for the corner cases, reproduced here exactly).
"""

from __future__ import annotations

import math

import torch

from muonlab.contract.spec import GEODESIC_TAU_MIN, AngleMode, MuonSpec, SphereAxis

from .decay import Scalar
from .orthogonalize import as_matrices

HYPERBALL_EPS = 1e-10  # modded scale_invariant_update_: max(||O||_F, 1e-10)
_TINY = 1e-30  # keeps a zero norm's reciprocal finite; any real norm is far above it

__all__ = ["GEODESIC_TAU_MIN", "geodesic_vectors", "renormalize_vectors", "sphere_step"]


def _norm(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return out


def _safe(x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    return torch.where(live, x, torch.ones_like(x))


def renormalize_vectors(w: torch.Tensor, d: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``radius (w + d) / ||w + d||`` along the last axis; ``w`` where ``w + d = 0``."""
    return _renormalized_(w + d, w, radius)


def _renormalized_(v: torch.Tensor, w: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """`renormalize_vectors` of ``v = w + d``, written into ``v``: one per-vector factor, then ``w`` added back
    where ``v = 0`` (times 0 elsewhere: exact for finite ``w``), so no other vector-sized tensor is made."""
    nv = _norm(v)
    v.mul_(radius / nv.clamp(min=_TINY))  # a zero vector stays 0 (finite factor)
    return v.addcmul_(w, nv == 0.0)


def _angle(tau: torch.Tensor, radial: torch.Tensor, mode: AngleMode, lr_update: Scalar) -> torch.Tensor:
    if mode == "exp":
        return tau.clamp(max=math.pi / 2)
    if mode == "renorm":
        return torch.atan2(tau, 1.0 + radial)
    if mode == "retract":
        return torch.atan(tau)
    fixed = torch.as_tensor(lr_update, dtype=tau.dtype, device=tau.device).clamp(max=math.pi / 2)
    return fixed.expand_as(tau)


def geodesic_vectors(
    w: torch.Tensor, d: torch.Tensor, radius: torch.Tensor, mode: AngleMode, lr_update: Scalar
) -> torch.Tensor:
    """Geodesic step of each vector (last axis) of ``w`` along the tangent part of ``d``."""
    r = _norm(w)
    live = r > 0.0
    r_safe = _safe(r, live)
    u = w / r_safe
    e = d / r_safe
    radial = (u * e).sum(dim=-1, keepdim=True)
    t = e - radial * u
    tau = _norm(t)
    theta = _angle(tau, radial, mode, lr_update)
    moving = tau > (0.0 if mode == "renorm" else GEODESIC_TAU_MIN)
    direction = t / _safe(tau, moving)
    turned = torch.cos(theta) * u + torch.sin(theta) * direction
    still = torch.cos(theta) * u if mode == "renorm" else u
    rotated = torch.where(moving, turned, still)
    nrot = _norm(rotated)
    stepped = radius * rotated / _safe(nrot, nrot > 0.0)
    return torch.where(live, stepped, renormalize_vectors(w, d, radius))


def _to_vectors(x: torch.Tensor, axis: SphereAxis) -> torch.Tensor:
    if axis == "row":
        return x
    if axis == "col":
        return x.mT
    return x.reshape(x.shape[0], 1, x.shape[1] * x.shape[2])


def _from_vectors(v: torch.Tensor, axis: SphereAxis, shape: torch.Size) -> torch.Tensor:
    if axis == "row":
        return v
    if axis == "col":
        return v.mT
    return v.reshape(shape)


def sphere_step(
    weight: torch.Tensor, step: torch.Tensor, spec: MuonSpec, lr_update: Scalar, *, overwrite: bool = False
) -> torch.Tensor:
    """Stage 8: ``W + D`` kept on the sphere, of ``weight``'s shape and dtype: a new tensor, or with ``overwrite``
    (``step`` is the caller's own) ``step``'s storage where the rule allows (`_renormalized_`)."""
    if spec.sphere == "none":
        return weight + step
    wm, restore = as_matrices(weight, spec, "param")
    dm, _ = as_matrices(step.reshape(weight.shape), spec, "param")
    wv = _to_vectors(wm, spec.sphere_axis)
    dv = _to_vectors(dm, spec.sphere_axis)
    if spec.sphere == "hyperball":  # the math: muonlab.reference.sphere.sphere_step
        radius = _norm(wv) if spec.hyperball_radius is None else spec.hyperball_radius
        eta = torch.as_tensor(lr_update, dtype=dv.dtype, device=dv.device)
        # D rescaled to length eta R, then W + D, with per-vector factors and in-place sums; D = 0 stays 0 (and
        # eta = 0, a skipped matrix, gives a finite 0 / tiny)
        scale = (eta * radius) / torch.maximum(_norm(dv), eta * HYPERBALL_EPS).clamp_(min=_TINY)
        v = dv.mul_(scale) if overwrite else dv * scale
        nv = _renormalized_(v.add_(wv), wv, radius)
        return restore(_from_vectors(nv, spec.sphere_axis, wm.shape).contiguous())
    radius = _norm(wv) if spec.sphere_axis == "matrix" else torch.ones_like(wv[..., :1])
    if spec.sphere == "renormalize":
        nv = _renormalized_(dv.add_(wv) if overwrite else wv + dv, wv, radius)
    else:
        nv = geodesic_vectors(wv, dv, radius, spec.angle_mode, lr_update)
    return restore(_from_vectors(nv, spec.sphere_axis, wm.shape).contiguous())
