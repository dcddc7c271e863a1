"""The orthogonalization operator ``Orth(X; C, s, eps)`` (docs/variants.md, "Orthogonalization").

Pure NumPy, float64. One matrix ``X`` of shape ``[m, n]`` is processed as in KellerJordan/Muon
``zeropower_via_newtonschulz5`` ([S §0.2]):

1. if ``m > n`` (strict) transpose, so the iteration runs on the wide side (``p(X^T) = p(X)^T``: this
   changes the FLOPs and the rounding, never the exact result);
2. normalize ``X <- X / (s ||X||_F + eps)`` (``eps_mode="add"``) or ``X <- X / max(s ||X||_F, eps)``
   (``eps_mode="clamp"``, torch.optim.Muon);
3. for each ``(a, b, c)`` of ``schedule(spec.ns_coefficients, spec.ns_steps)``:
   ``A = X X^T``, ``B = b A + c A^2``, ``X <- a X + B X``;
4. transpose back.

``orthogonalizer="svd"`` instead returns the exact polar factor ``U V^T`` of the thin SVD.

Leading dims are a batch (one norm per matrix); tensors with ``ndim >= 4`` follow ``spec.nd_mode``
(`as_matrices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from muonlab.contract.coefficients import CoefficientSet, schedule
from muonlab.contract.shapes import check_ndim, matrix_view_shape
from muonlab.contract.spec import EpsMode, MuonSpec, Orthogonalizer, lookup

from .array import Array

__all__ = [
    "ORTHOGONALIZERS",
    "as_matrices",
    "newton_schulz",
    "normalize_frobenius",
    "orthogonalize",
    "polar_factor",
    "scalar_map",
]


def as_matrices(x: npt.ArrayLike, spec: MuonSpec, name: str = "x") -> tuple[Array, Callable[[Array], Array]]:
    """View ``x`` as a float64 stack of matrices ``[B, m, n]`` and return a function restoring ``x.shape``.

    The matrices are those of `matrix_view_shape`; ``B`` is the product of the view's leading dims
    (1 for a matrix). The returned array is a copy; ``restore(y)`` reshapes a ``[B, m, n]`` result back.
    """
    arr = np.array(x, dtype=np.float64, copy=True)
    view = matrix_view_shape(arr.shape, spec, name)
    m, n = view[-2], view[-1]
    batch = math.prod(view[:-2])
    original = arr.shape

    def restore(y: Array) -> Array:
        return np.reshape(y, original)

    return np.reshape(arr, (batch, m, n)), restore


def normalize_frobenius(x: Array, norm_scale: float, eps: float, eps_mode: EpsMode) -> Array:
    """``X / (s ||X||_F + eps)`` (``"add"``) or ``X / max(s ||X||_F, eps)`` (``"clamp"``), per matrix.

    The norm is over the last two dims ([S §0.2], step 3); ``Orth(0) = 0`` exactly.
    """
    norm = np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True))
    denom = norm_scale * norm + eps if eps_mode == "add" else np.maximum(norm_scale * norm, eps)
    out: Array = x / denom
    return out


def newton_schulz(
    x: npt.ArrayLike,
    coefficients: CoefficientSet,
    *,
    norm_scale: float = 1.0,
    eps: float = 1e-7,
    eps_mode: EpsMode = "add",
) -> Array:
    """Odd-polynomial Newton-Schulz / Polar Express iteration on ``[..., m, n]`` (batched over leading dims).

    ``coefficients`` are the triples actually applied, one per iteration (use
    `muonlab.contract.coefficients.schedule` to expand a set to ``ns_steps``). Each iteration maps every
    singular value by ``p(s) = a s + b s^3 + c s^5`` (KellerJordan/Muon ``zeropower_via_newtonschulz5``;
    Moonlight Eq. 2; Polar Express arXiv 2505.16932).
    """
    arr = np.array(x, dtype=np.float64, copy=True)
    check_ndim(arr.shape, "x")
    transpose = arr.shape[-2] > arr.shape[-1]
    xm = np.swapaxes(arr, -2, -1) if transpose else arr
    xm = normalize_frobenius(xm, norm_scale, eps, eps_mode)
    for a, b, c in coefficients:
        gram = xm @ np.swapaxes(xm, -2, -1)
        poly = b * gram + c * (gram @ gram)
        xm = a * xm + poly @ xm
    out = np.swapaxes(xm, -2, -1) if transpose else xm
    return np.ascontiguousarray(out)


def polar_factor(x: npt.ArrayLike) -> Array:
    """Exact polar factor ``U V^T`` of the thin SVD ``X = U diag(sigma) V^T``, per matrix (batched).

    Rank-preserving: singular values ``sigma <= max(m, n) * eps_64 * sigma_max`` (NumPy's ``matrix_rank``
    tolerance) count as zero and map to zero, so ``polar_factor(0) = 0``.
    """
    arr = np.array(x, dtype=np.float64, copy=True)
    check_ndim(arr.shape, "x")
    u, s, vt = np.linalg.svd(arr, full_matrices=False)
    smax = np.max(s, axis=-1, keepdims=True) if s.shape[-1] else s
    tol = max(arr.shape[-2], arr.shape[-1]) * np.finfo(np.float64).eps * smax
    keep = (s > tol).astype(np.float64)
    out: Array = (u * keep[..., None, :]) @ vt
    return out


def orthogonalize(x: npt.ArrayLike, spec: MuonSpec) -> Array:
    """``O = Orth(x)`` in float64 per ``spec`` ([S §0.2]); same shape as ``x``.

    ``x`` must have at least 2 dims. Leading dims are a batch; ``ndim >= 4`` follows ``spec.nd_mode``.
    ``orthogonalizer="newton_schulz"`` iterates ``schedule(spec.ns_coefficients, spec.ns_steps)`` after the
    ``norm_scale`` / ``eps`` / ``eps_mode`` normalization; ``"svd"`` returns the exact polar factor and
    ignores ``norm_scale``, ``eps`` and the coefficients. Zero input gives zero output exactly.
    """
    mats, restore = as_matrices(x, spec, "x")
    if mats.size == 0:
        raise ValueError(f"x must not be empty, got shape {np.shape(x)}")
    return restore(lookup(ORTHOGONALIZERS, spec.orthogonalizer, "orthogonalizer")(mats, spec))


def _newton_schulz_of(mats: Array, spec: MuonSpec) -> Array:
    return newton_schulz(
        mats,
        schedule(spec.ns_coefficients, spec.ns_steps),
        norm_scale=spec.norm_scale,
        eps=spec.eps,
        eps_mode=spec.eps_mode,
    )


ORTHOGONALIZERS: dict[Orthogonalizer, Callable[[Array, MuonSpec], Array]] = {
    "newton_schulz": _newton_schulz_of,
    "svd": lambda mats, spec: polar_factor(mats),
}
"""``spec.orthogonalizer`` -> ``Orth`` of a ``[B, m, n]`` float64 stack (the one place the choice is made; the
fast side's table is `muonlab.fast.orthogonalize.ORTHOGONALIZERS`)."""


def scalar_map(sigma: npt.ArrayLike, coefficients: CoefficientSet) -> Array:
    """The composition ``p_K(...p_1(sigma))`` applied to already-normalized singular values ``sigma``.

    ``Orth`` maps the singular values of ``X / (s ||X||_F + eps)`` exactly by this map ([S §0.2]);
    used for the band table of docs/variants.md "Orthogonalization" ([S §0.3]).
    """
    s = np.array(sigma, dtype=np.float64, copy=True)
    for a, b, c in coefficients:
        s2 = s * s
        s = s * (a + s2 * (b + c * s2))
    return s
