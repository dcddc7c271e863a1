"""Helpers and hypothesis strategies for the reference suite (matrices with chosen singular values, shapes)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

Array = npt.NDArray[np.float64]

# Fast on 2 shared cores: few examples, no deadline.
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def orthonormal(rng: np.random.Generator, rows: int, cols: int) -> Array:
    """``rows x cols`` with orthonormal columns (``cols <= rows``)."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    out: Array = q * np.sign(np.diag(r))
    return out


def with_singular_values(rng: np.random.Generator, m: int, n: int, sigma: Array) -> tuple[Array, Array, Array]:
    """``X = U diag(sigma) V^T`` of shape ``m x n`` with ``len(sigma) = min(m, n)``; returns ``(X, U, V)``."""
    k = min(m, n)
    assert sigma.shape == (k,)
    u = orthonormal(rng, m, k)
    v = orthonormal(rng, n, k)
    x: Array = (u * sigma) @ v.T
    return x, u, v


def band_input(rng: np.random.Generator, m: int, n: int, lo: float = 1.03e-2) -> tuple[Array, Array, Array]:
    """A matrix whose Frobenius-normalized singular values all lie in ``[lo, 1]`` (and ``[lo/1.02, 1]`` after a
    1.02 safety factor stays above 1e-2)."""
    k = min(m, n)
    v = np.exp(rng.uniform(np.log(lo), np.log(1.0 / np.sqrt(k)), size=k))
    v[0] = lo  # always exercise the bottom of the band
    return with_singular_values(rng, m, n, 3.7 * v)


def relerr(a: Array, b: Array) -> float:
    """``||a - b||_F / max(||b||_F, tiny)``."""
    nb = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / max(nb, 1e-300)


# -- shape strategies: 1xN, Nx1, square, 16:1 tall and wide, general ---------------------------------------------

_small = st.integers(min_value=1, max_value=12)


@st.composite
def matrix_shapes(draw: st.DrawFn) -> tuple[int, int]:
    kind = draw(st.sampled_from(["row", "col", "square", "tall16", "wide16", "any"]))
    k = draw(st.integers(min_value=1, max_value=4))
    if kind == "row":
        return (1, draw(st.integers(2, 40)))
    if kind == "col":
        return (draw(st.integers(2, 40)), 1)
    if kind == "square":
        s = draw(_small)
        return (s, s)
    if kind == "tall16":
        return (16 * k, k)
    if kind == "wide16":
        return (k, 16 * k)
    return (draw(_small), draw(_small))


@st.composite
def tensor_shapes(draw: st.DrawFn) -> tuple[int, ...]:
    """2-D shapes of `matrix_shapes`, plus 3-D batches and 4-D conv filters."""
    kind = draw(st.sampled_from(["2d", "2d", "3d", "4d"]))
    m, n = draw(matrix_shapes())
    if kind == "2d":
        return (m, n)
    if kind == "3d":
        return (draw(st.integers(1, 3)), min(m, 16), min(n, 16))
    return (draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))


seeds = st.integers(min_value=0, max_value=2**32 - 1)
