"""The orthogonalization operator ``Orth(X)`` (docs/variants.md, "Orthogonalization (stage 3)").

Pure NumPy, float64. One matrix ``X`` of shape ``[m, n]`` is processed as in KellerJordan/Muon
``zeropower_via_newtonschulz5`` ([S §0.2]):

1. if ``m > n`` (strict) transpose, so the iteration runs on the wide side (``p(X^T) = p(X)^T``: this
   changes the FLOPs and the rounding, never the exact result);
2. bring ``X`` under the unit band by ``spec.prescale`` (`PRESCALES`: Frobenius ``X / (s ||X||_F + eps)`` by
   default; ``"schatten"`` and ``"aol"`` also return the scaled ``A = X X^T``, which iteration 0 reuses);
3. for each ``(a, b, c)`` of ``spec.schedule``: ``A = X X^T``, ``B = b A + c A^2``, ``X <- a X + B X``;
4. transpose back.

``orthogonalizer="gram_newton_schulz"`` runs step 3 on ``R = X X^T`` with an accumulated ``Q`` (`gram_newton_schulz`,
equal in exact arithmetic); ``"svd"`` returns the exact polar factor ``U V^T`` of the thin SVD.

Leading dims are a batch (one norm per matrix); tensors with ``ndim >= 4`` follow ``spec.nd_mode``
(`as_matrices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from muonlab.contract.coefficients import CoefficientSet
from muonlab.contract.shapes import check_ndim, matrix_view_shape
from muonlab.contract.spec import Magnitude, MuonSpec, NsEpsMode, Orthogonalizer, Prescale, lookup

from .array import Array

__all__ = [
    "MAGNITUDES",
    "NORM_GUARDS",
    "ORTHOGONALIZERS",
    "PRESCALES",
    "as_matrices",
    "gram_newton_schulz",
    "magnitude",
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


NORM_GUARDS: dict[NsEpsMode, Callable[[Array, float], Array]] = {
    "add": lambda norm, eps: norm + eps,
    "clamp": lambda norm, eps: np.maximum(norm, eps),
    "none": lambda norm, eps: norm,  # NeMo normalize_in_double: unguarded, 0 / 0 = NaN by design
}
"""``spec.eps_mode`` -> ``(s ||X||, eps) -> denominator`` of the norm prescales."""


def normalize_frobenius(x: Array, norm_scale: float, eps: float, eps_mode: NsEpsMode) -> Array:
    """``X / guard(s ||X||_F, eps)`` per matrix, the guard by ``eps_mode`` (`NORM_GUARDS`): ``s ||X||_F + eps``,
    ``max(s ||X||_F, eps)`` or none.

    The norm is over the last two dims ([S §0.2], step 3); ``Orth(0) = 0`` exactly when guarded.
    """
    norm = np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):  # "none": 0 / 0 is NaN, as upstream
        out: Array = x / lookup(NORM_GUARDS, eps_mode, "eps_mode")(norm_scale * norm, eps)
    return out


def _t(x: Array) -> Array:
    return np.swapaxes(x, -2, -1)


def _spectral(x: Array, norm_scale: float, eps: float, eps_mode: NsEpsMode) -> tuple[Array, Array | None]:
    norm = np.linalg.norm(x, ord=2, axis=(-2, -1), keepdims=True)  # sigma_max, an SVD per matrix
    with np.errstate(invalid="ignore", divide="ignore"):
        out: Array = x / lookup(NORM_GUARDS, eps_mode, "eps_mode")(norm_scale * norm, eps)
    return out, None


def _schatten(x: Array, norm_scale: float, eps: float, eps_mode: NsEpsMode) -> tuple[Array, Array | None]:
    gram = x @ _t(x)
    k = np.maximum(np.linalg.norm(gram, axis=(-2, -1), keepdims=True), eps) ** -0.5  # 1 / ||X||_S4, clamped
    return k * x, (k * k) * gram


def _aol(x: Array, norm_scale: float, eps: float, eps_mode: NsEpsMode) -> tuple[Array, Array | None]:
    gram = x @ _t(x)
    s = np.maximum(np.sum(np.abs(gram), axis=-1, keepdims=True), eps) ** -0.5  # row sums bound ||diag(s) X||_2 <= 1
    return s * x, s * gram * _t(s)


PRESCALES: dict[Prescale, Callable[[Array, float, float, NsEpsMode], tuple[Array, Array | None]]] = {
    "frobenius": lambda x, s, eps, mode: (normalize_frobenius(x, s, eps, mode), None),
    "spectral": _spectral,
    "schatten": _schatten,
    "aol": _aol,
}
"""``spec.prescale`` -> ``(X, s, eps, eps_mode) -> (X', A')``: the prescaled wide ``X`` and, when the prescale
formed it, ``A' = X' X'^T`` for iteration 0 (optax ``orthogonalize_via_newton_schulz``, Turbo-Muon). ``eps`` is
additive or a clamp by ``eps_mode`` for the norms, always a clamp for ``"schatten"`` and ``"aol"`` (optax's
helpers). The fast side's table is `muonlab.fast.orthogonalize.PRESCALES`."""


def _wide(x: npt.ArrayLike) -> tuple[Array, bool]:
    arr = np.array(x, dtype=np.float64, copy=True)
    check_ndim(arr.shape, "x")
    transpose = arr.shape[-2] > arr.shape[-1]
    return (_t(arr) if transpose else arr), transpose


def _restore(xm: Array, transpose: bool) -> Array:
    return np.ascontiguousarray(_t(xm) if transpose else xm)


def _iterate(xm: Array, gram: Array | None, coefficients: CoefficientSet) -> Array:
    for a, b, c in coefficients:
        gram = xm @ _t(xm) if gram is None else gram
        xm = a * xm + (b * gram + c * (gram @ gram)) @ xm
        gram = None
    return xm


def newton_schulz(
    x: npt.ArrayLike,
    coefficients: CoefficientSet,
    *,
    norm_scale: float = 1.0,
    eps: float = 1e-7,
    eps_mode: NsEpsMode = "add",
    prescale: Prescale = "frobenius",
) -> Array:
    """Odd-polynomial Newton-Schulz / Polar Express iteration on ``[..., m, n]`` (batched over leading dims).

    ``coefficients`` are the triples actually applied, one per iteration (`MuonSpec.schedule`). Each iteration
    maps every singular value by ``p(s) = a s + b s^3 + c s^5`` (KellerJordan/Muon ``zeropower_via_newtonschulz5``;
    Moonlight Eq. 2; Polar Express arXiv 2505.16932).
    """
    xm, transpose = _wide(x)
    xm, gram = lookup(PRESCALES, prescale, "prescale")(xm, norm_scale, eps, eps_mode)
    return _restore(_iterate(xm, gram, coefficients), transpose)


def gram_newton_schulz(
    x: npt.ArrayLike,
    coefficients: CoefficientSet,
    *,
    restarts: tuple[int, ...] = (2,),
    norm_scale: float = 1.0,
    eps: float = 1e-7,
    eps_mode: NsEpsMode = "add",
    prescale: Prescale = "frobenius",
) -> Array:
    """`newton_schulz`'s map computed on ``R = X X^T`` (Dao-AILab/gram-newton-schulz ``GramNewtonSchulz.__call__``
    at f08f25e; docs/variants.md "Gram Newton-Schulz"). With ``Z_t = b R + c R^2`` every step is
    ``X <- (a I + Z_t) X``, and all ``Z_t`` are polynomials in the first ``R``, so they commute: ``Q`` accumulates
    ``prod_t (a_t I + Z_t)`` and ``R <- (a I + Z) R (a I + Z)`` follows the iterate without forming it; at a
    restart ``X <- Q X`` and ``R`` is formed afresh (it bounds half-precision drift). A square matrix takes the
    standard iteration, as upstream."""
    xm, transpose = _wide(x)
    xm, gram = lookup(PRESCALES, prescale, "prescale")(xm, norm_scale, eps, eps_mode)
    p, q = xm.shape[-2], xm.shape[-1]
    if p == q:
        return _restore(_iterate(xm, gram, coefficients), transpose)
    r = xm @ _t(xm) if gram is None else gram
    eye = np.eye(p)
    acc: Array | None = None
    last = len(coefficients) - 1
    for t, (a, b, c) in enumerate(coefficients):
        if t in restarts and acc is not None:
            xm = acc @ xm
            r, acc = xm @ _t(xm), None
        z = b * r + c * (r @ r)
        acc = z + a * eye if acc is None else acc @ z + a * acc
        if t < last and t + 1 not in restarts:
            rz = r @ z + a * r
            r = z @ rz + a * rz
    assert acc is not None  # coefficients hold at least one triple
    return _restore(acc @ xm, transpose)


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
    The iterations run ``spec.schedule`` after ``spec.prescale``; ``"svd"`` returns the exact polar factor and
    ignores the prescale and the coefficients. Zero input gives zero output exactly.
    """
    mats, restore = as_matrices(x, spec, "x")
    if mats.size == 0:
        raise ValueError(f"x must not be empty, got shape {np.shape(x)}")
    return restore(lookup(ORTHOGONALIZERS, spec.orthogonalizer, "orthogonalizer")(mats, spec))


def _iteration_keywords(spec: MuonSpec) -> dict[str, Any]:
    """The keywords both Newton-Schulz forms take from ``spec``."""
    return {"norm_scale": spec.norm_scale, "eps": spec.eps, "eps_mode": spec.eps_mode, "prescale": spec.prescale}


def _newton_schulz_of(mats: Array, spec: MuonSpec) -> Array:
    return newton_schulz(mats, spec.schedule, **_iteration_keywords(spec))


def _gram_newton_schulz_of(mats: Array, spec: MuonSpec) -> Array:
    return gram_newton_schulz(mats, spec.schedule, restarts=spec.gram_restarts, **_iteration_keywords(spec))


ORTHOGONALIZERS: dict[Orthogonalizer, Callable[[Array, MuonSpec], Array]] = {
    "newton_schulz": _newton_schulz_of,
    "gram_newton_schulz": _gram_newton_schulz_of,
    "svd": lambda mats, spec: polar_factor(mats),
}
"""``spec.orthogonalizer`` -> ``Orth`` of a ``[B, m, n]`` float64 stack (the one place the choice is made; the
fast side's table is `muonlab.fast.orthogonalize.ORTHOGONALIZERS`)."""


MAGNITUDES: dict[Magnitude, Callable[[Array, Array], Array] | None] = {
    "none": None,
    "dual_norm": lambda n, o: np.sum(n * o, axis=(-2, -1), keepdims=True) * o,  # <N, O> O: optax adaptive=True
}
"""``spec.magnitude`` -> ``(N, O) -> O'`` on ``[B, m, n]`` stacks (None: ``O`` unchanged); the fast side's table
is `muonlab.fast.orthogonalize.MAGNITUDES`."""


def magnitude(n: npt.ArrayLike, o: npt.ArrayLike, spec: MuonSpec) -> Array:
    """``O`` rescaled by ``spec.magnitude`` (`MAGNITUDES`), per matrix of the matrix view; ``N`` is the
    orthogonalizer's input."""
    om, restore = as_matrices(o, spec, "o")
    rule = lookup(MAGNITUDES, spec.magnitude, "magnitude")
    return restore(om if rule is None else rule(as_matrices(n, spec, "n")[0], om))


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
