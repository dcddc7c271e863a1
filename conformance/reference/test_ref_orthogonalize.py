"""`orthogonalize`: the odd-polynomial map on singular values, bands, polar factor, batching, eps handling.

Expectations come from docs/variants.md sections 0.2-0.3 (measured bands, rank-1 gains, prod a_k).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from refhelpers import FAST, band_input, matrix_shapes, relerr, seeds, tensor_shapes, with_singular_values

from muonlab.contract import choices
from muonlab.reference import (
    MuonSpec,
    as_matrices,
    matrix_view_shape,
    newton_schulz,
    orthogonalize,
    polar_factor,
    scalar_map,
    schedule,
)

# (coefficient set, steps, norm scale) -> measured band for normalized sigma in [1e-2, 1], variants.md 0.3
BANDS = {
    ("keller", 5, 1.0): (0.682, 1.134),
    ("leloykun", 5, 1.0): (0.978, 1.032),
    ("polar_express", 5, 1.02): (0.859, 1.141),
    ("polar_express_paper", 5, 1.01): (0.870, 1.124),
    ("polar_express_paper", 8, 1.01): (1.0, 1.0),
    ("accurate", 12, 1.0): (1.0, 1.0),
}
BAND_DIGITS = 1e-3  # the table is printed to 3 decimals


def _spec(name: str, steps: int, scale: float, **kw: object) -> MuonSpec:
    return MuonSpec(ns_coefficients=name, ns_steps=steps, norm_scale=scale, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "band"), list(BANDS.items()), ids=[k[0] + str(k[1]) for k in BANDS])
def test_scalar_map_band_matches_table(key: tuple[str, int, float], band: tuple[float, float]) -> None:
    name, steps, scale = key
    x = np.geomspace(1e-2, 1.0, 20001) / scale
    y = scalar_map(x, schedule(name, steps))
    assert abs(y.min() - band[0]) <= BAND_DIGITS
    assert abs(y.max() - band[1]) <= BAND_DIGITS


@FAST
@given(shape=matrix_shapes(), seed=seeds, key=st.sampled_from(sorted(BANDS)))
def test_orth_is_the_scalar_map_on_singular_values(
    shape: tuple[int, int], seed: int, key: tuple[str, int, float]
) -> None:
    """Orth(U S V^T) = U p(S / (s ||S|| + eps)) V^T exactly (float64), and the output is inside the band."""
    name, steps, scale = key
    rng = np.random.default_rng(seed)
    m, n = shape
    x, u, v = band_input(rng, m, n)
    spec = _spec(name, steps, scale, eps=1e-7)
    sigma = np.linalg.svd(x, compute_uv=False)
    sig_in = np.sqrt(np.sum((u.T @ x @ v) ** 2, axis=1))  # sigma in the order of u, v
    mapped = scalar_map(sig_in / (scale * np.linalg.norm(x) + 1e-7), schedule(name, steps))
    expected = (u * mapped) @ v.T
    out = orthogonalize(x, spec)
    assert relerr(out, expected) <= 1e-11
    lo, hi = BANDS[key]
    out_sigma = np.linalg.svd(out, compute_uv=False)
    assert out_sigma.min() >= lo - BAND_DIGITS and out_sigma.max() <= hi + BAND_DIGITS
    assert sigma.shape == out_sigma.shape


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polar_express_closer_to_polar_factor_than_keller(seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((32, 64))
    polar = polar_factor(x)
    pe = orthogonalize(x, _spec("polar_express", 5, 1.02, eps=1e-6))
    kj = orthogonalize(x, _spec("keller", 5, 1.0))
    assert relerr(pe, polar) < relerr(kj, polar)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48)])
def test_paper_polar_express_8_steps_is_orthogonal(shape: tuple[int, int]) -> None:
    x = np.random.default_rng(7).standard_normal(shape)
    o = orthogonalize(x, _spec("polar_express_paper", 8, 1.01))
    k = min(shape)
    gram = o @ o.T if shape[0] <= shape[1] else o.T @ o
    assert np.max(np.abs(gram - np.eye(k))) <= 1e-4
    assert relerr(o, polar_factor(x)) <= 1e-4


@pytest.mark.parametrize(
    ("name", "scale", "eps", "gain"), [("keller", 1.0, 1e-7, 0.696), ("polar_express", 1.02, 1e-6, 0.904)]
)
@pytest.mark.parametrize("shape", [(1, 17), (17, 1)])
def test_rank_one_gain(name: str, scale: float, eps: float, gain: float, shape: tuple[int, int]) -> None:
    g = np.random.default_rng(3).standard_normal(shape)
    o = orthogonalize(g, _spec(name, 5, scale, eps=eps))
    direction = g / np.linalg.norm(g)
    exact = float(scalar_map(np.linalg.norm(g) / (scale * np.linalg.norm(g) + eps), schedule(name, 5)))
    np.testing.assert_allclose(o, exact * direction, rtol=1e-12, atol=0)
    assert abs(exact - gain) <= 5e-4  # the measured value, 3 decimals


@FAST
@given(shape=tensor_shapes(), seed=seeds, name=st.sampled_from(["keller", "polar_express", "leloykun"]))
def test_transpose_invariance(shape: tuple[int, ...], seed: int, name: str) -> None:
    """orth(X^T) = orth(X)^T on the last two dims (batched 2-D/3-D; the transpose rule is exact)."""
    if len(shape) == 4:
        shape = shape[1:]
    x = np.random.default_rng(seed).standard_normal(shape)
    spec = _spec(name, 5, 1.0)
    a = orthogonalize(np.swapaxes(x, -2, -1), spec)
    b = np.swapaxes(orthogonalize(x, spec), -2, -1)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(1.0, float(np.abs(b).max())))


@FAST
@given(shape=tensor_shapes(), seed=seeds, nd_mode=st.sampled_from(choices("nd_mode")))
def test_batch_equals_per_matrix_loop(shape: tuple[int, ...], seed: int, nd_mode: str) -> None:
    x = np.random.default_rng(seed).standard_normal(shape)
    spec = MuonSpec(nd_mode=nd_mode)  # type: ignore[arg-type]
    out = orthogonalize(x, spec)
    view = matrix_view_shape(shape, spec)
    mats = np.reshape(x, (-1, view[-2], view[-1]))
    loop = np.stack([newton_schulz(mm, schedule("keller", 5), eps=1e-7) for mm in mats])
    np.testing.assert_array_equal(out, np.reshape(loop, shape))


def test_nd_modes_differ_for_conv_filters() -> None:
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    flat = orthogonalize(x, MuonSpec(nd_mode="flatten"))
    np.testing.assert_array_equal(flat, orthogonalize(x.reshape(4, 12), MuonSpec()).reshape(x.shape))
    batch = orthogonalize(x, MuonSpec(nd_mode="batch"))
    for i in range(4):
        for j in range(3):
            np.testing.assert_array_equal(batch[i, j], orthogonalize(x[i, j], MuonSpec()))
    assert not np.allclose(flat, batch)
    mats, restore = as_matrices(x, MuonSpec(nd_mode="batch"))
    assert mats.shape == (12, 2, 2) and restore(mats).shape == x.shape


@FAST
@given(
    shape=tensor_shapes(),
    orth=st.sampled_from(choices("orthogonalizer")),
    mode=st.sampled_from(choices("eps_mode")),
    pre=st.sampled_from(choices("prescale")),
)
def test_zero_in_zero_out(shape: tuple[int, ...], orth: str, mode: str, pre: str) -> None:
    """Every orthogonalizer and prescale maps 0 to 0 (optax's clamps give 1e4 * 0 on zero rows, V4); the unguarded
    Frobenius norm (``eps_mode="none"``, NeMo ``normalize_in_double``) gives NaN, as upstream by design."""
    spec = MuonSpec(orthogonalizer=orth, eps_mode=mode, prescale=pre, compute_dtype="float32")  # type: ignore[arg-type]
    out = orthogonalize(np.zeros(shape), spec)
    assert out.shape == shape
    unguarded = mode == "none" and pre in ("frobenius", "spectral") and orth != "svd"
    assert np.all(np.isnan(out)) if unguarded else np.all(out == 0.0)


@pytest.mark.parametrize(("name", "prod_a"), [("keller", 484.9), ("leloykun", 492.7), ("polar_express", 989.5)])
def test_tiny_input_gain_regime(name: str, prod_a: float) -> None:
    """||X|| << eps: Orth(X) ~ (prod a_k) X / eps (variants.md 0.2).

    The cubic and quintic terms are relatively O((prod a_k ||X|| / eps)^2) ~ 1e-11 at this size.
    """
    x = 1e-16 * np.random.default_rng(1).standard_normal((5, 8))
    eps = 1e-7
    out = orthogonalize(x, _spec(name, 5, 1.0, eps=eps))
    gain = math.prod(a for a, _, _ in schedule(name, 5))
    assert abs(gain - prod_a) <= 0.05
    np.testing.assert_allclose(out, gain * x / (np.linalg.norm(x) + eps), rtol=1e-9)
    np.testing.assert_allclose(out, gain * x / eps, rtol=1e-5)


def test_clamp_vs_add_eps() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 9))
    add, clamp = MuonSpec(eps_mode="add", eps=1e-7), MuonSpec(eps_mode="clamp", eps=1e-7)
    # large input: the two differ only through eps / ||X||
    assert relerr(orthogonalize(x, add), orthogonalize(x, clamp)) <= 1e-6
    assert relerr(orthogonalize(x, add), orthogonalize(x, clamp)) > 0.0
    # tiny input: clamp divides by eps exactly, add by ||X|| + eps
    tiny = 3e-8 * x / np.linalg.norm(x)
    a = orthogonalize(tiny, add)
    c = orthogonalize(tiny, clamp)
    coeffs = schedule("keller", 5)
    u, sig, vt = np.linalg.svd(tiny, full_matrices=False)
    np.testing.assert_allclose(c, (u * scalar_map(sig / 1e-7, coeffs)) @ vt, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, (u * scalar_map(sig / (3e-8 + 1e-7), coeffs)) @ vt, rtol=0, atol=1e-12)
    assert relerr(a, c) > 0.1


@FAST
@given(shape=matrix_shapes(), seed=seeds, rank=st.integers(1, 3))
def test_svd_polar_factor_is_rank_preserving(shape: tuple[int, int], seed: int, rank: int) -> None:
    rng = np.random.default_rng(seed)
    m, n = shape
    k = min(m, n)
    r = min(rank, k)
    sigma = np.concatenate([rng.uniform(0.5, 2.0, size=r), np.zeros(k - r)])
    x, u, v = with_singular_values(rng, m, n, sigma)
    o = orthogonalize(x, MuonSpec(orthogonalizer="svd"))
    np.testing.assert_allclose(o, u[:, :r] @ v[:, :r].T, atol=1e-12)


@pytest.mark.parametrize("bad", [np.zeros(3), np.float64(1.0), np.zeros((0, 3))])
def test_rejects_vectors_scalars_and_empty(bad: np.ndarray) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match="x must"):
        orthogonalize(bad, MuonSpec())
