"""Hypersphere steps (docs/variants.md 9.3): renormalize, geodesic angle modes, the radial-flip decision."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from refhelpers import FAST, matrix_shapes, seeds

from muonlab.contract import choices
from muonlab.reference import MuonSpec, get_preset, init_muon_state, muon_step, sphere_step


def _spec(sphere: str, axis: str = "row", angle: str = "exp") -> MuonSpec:
    return MuonSpec(sphere=sphere, sphere_axis=axis, angle_mode=angle)  # type: ignore[arg-type]


def _unit_rows(x: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _vectors(x: np.ndarray, axis: str) -> np.ndarray:  # type: ignore[type-arg]
    return {"row": x, "col": x.T, "matrix": x.reshape(1, -1)}[axis]


@FAST
@given(
    shape=matrix_shapes(),
    seed=seeds,
    axis=st.sampled_from(choices("sphere_axis")),
    step_size=st.sampled_from([1e-3, 0.3, 3.0]),
)
def test_geodesic_renorm_equals_renormalize(shape: tuple[int, int], seed: int, axis: str, step_size: float) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    d = step_size * rng.standard_normal(shape)
    a = sphere_step(w, d, _spec("renormalize", axis), 0.1)
    b = sphere_step(w, d, _spec("geodesic", axis, "renorm"), 0.1)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * max(1.0, float(np.abs(a).max())))
    norms = np.linalg.norm(_vectors(a, axis), axis=-1)
    target = np.linalg.norm(w) if axis == "matrix" else 1.0
    np.testing.assert_allclose(norms, target, rtol=1e-12)


@FAST
@given(shape=matrix_shapes(), seed=seeds, mode=st.sampled_from(choices("angle_mode")))
def test_geodesic_angle_and_unit_norms(shape: tuple[int, int], seed: int, mode: str) -> None:
    """Per unit row: w'.w = cos(theta) with theta from the tangent step norm tau, and ||w'|| = 1."""
    m, n = shape
    if n < 2:
        n = 2  # a 1-D sphere has no tangent directions
    rng = np.random.default_rng(seed)
    w = _unit_rows(rng.standard_normal((m, n)))
    d = 0.4 * rng.standard_normal((m, n))
    lr_u = 0.37
    out = sphere_step(w, d, _spec("geodesic", "row", mode), lr_u)
    radial = np.sum(w * d, axis=-1)
    tau = np.linalg.norm(d - radial[:, None] * w, axis=-1)
    theta = {
        "exp": np.minimum(tau, math.pi / 2),
        "retract": np.arctan(tau),
        "fixed": np.full_like(tau, lr_u),
        "renorm": np.arctan2(tau, 1 + radial),
    }[mode]
    np.testing.assert_allclose(np.sum(out * w, axis=-1), np.cos(theta), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-12)
    # the motion stays in span(w, t): no component outside the plane of the step
    t = d - radial[:, None] * w
    resid = out - np.sum(out * w, axis=-1, keepdims=True) * w
    cross = resid - np.sum(resid * t, axis=-1, keepdims=True) * t / np.maximum(tau[:, None] ** 2, 1e-300)
    assert np.max(np.abs(cross)) <= 1e-12


@pytest.mark.parametrize("mode", ["exp", "retract", "fixed"])
def test_radial_step_leaves_vector_unchanged(mode: str) -> None:
    w = _unit_rows(np.random.default_rng(0).standard_normal((3, 5)))
    d = np.array([[0.5], [-3.0], [0.0]]) * w  # tau = 0: parallel, anti-parallel beyond the origin, zero
    out = sphere_step(w, d, _spec("geodesic", "row", mode), 0.2)
    # unchanged up to the final renormalization (9.3 step 5), which only rounds a unit vector
    np.testing.assert_allclose(out, w, rtol=0, atol=2e-16)
    off = 3.0 * _unit_rows(w)  # off the sphere: a stationary vector is still projected onto it
    np.testing.assert_allclose(sphere_step(off, 0.0 * off, _spec("geodesic", "row", mode), 0.2), w, atol=2e-16)


def test_renorm_mode_flips_on_radial_overshoot_like_renormalize() -> None:
    """Decision A12: 'renorm' reproduces renormalize exactly, including w -> -w when 1 + w.d < 0, and
    w + d = 0 leaves w unchanged in both."""
    w = _unit_rows(np.random.default_rng(1).standard_normal((3, 4)))
    d = np.array([[-3.0], [-1.0], [0.5]]) * w
    ren = sphere_step(w, d, _spec("renormalize"), 0.1)
    geo = sphere_step(w, d, _spec("geodesic", "row", "renorm"), 0.1)
    np.testing.assert_allclose(ren[0], -w[0], atol=1e-15)
    np.testing.assert_array_equal(ren[1], w[1])
    np.testing.assert_allclose(ren[2], w[2], atol=1e-15)
    np.testing.assert_allclose(geo, ren, atol=1e-15)


def test_zero_rows_and_zero_matrix() -> None:
    w = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    d = np.array([[0.0, 3.0, 4.0], [0.0, 0.1, 0.0]])
    for sphere in ("renormalize", "geodesic"):
        out = sphere_step(w, d, _spec(sphere), 0.1)
        np.testing.assert_allclose(out[0], [0.0, 0.6, 0.8], atol=1e-15)
        out_m = sphere_step(np.zeros((2, 3)), d, _spec(sphere, "matrix"), 0.1)
        np.testing.assert_array_equal(out_m, np.zeros((2, 3)))


def test_matrix_sphere_keeps_radius_and_exp_angle() -> None:
    rng = np.random.default_rng(4)
    w, d = rng.standard_normal((4, 6)), 0.2 * rng.standard_normal((4, 6))
    r = np.linalg.norm(w)
    out = sphere_step(w, d, _spec("geodesic", "matrix", "exp"), 0.1)
    assert abs(np.linalg.norm(out) - r) <= 1e-12 * r
    u, e = w / r, d / r
    tau = np.linalg.norm(e - np.sum(u * e) * u)
    assert abs(np.sum(out * w) / r**2 - math.cos(tau)) <= 1e-12


def test_column_sphere() -> None:
    rng = np.random.default_rng(6)
    w = rng.standard_normal((5, 3))
    w /= np.linalg.norm(w, axis=0, keepdims=True)
    out = sphere_step(w, 0.3 * rng.standard_normal((5, 3)), _spec("geodesic", "col", "exp"), 0.1)
    np.testing.assert_allclose(np.linalg.norm(out, axis=0), 1.0, rtol=1e-12)


def test_ngpt_preset_keeps_rows_on_the_sphere() -> None:
    rng = np.random.default_rng(7)
    spec = get_preset("ngpt")
    w = _unit_rows(rng.standard_normal((6, 8)))
    st_ = init_muon_state(w, spec)
    for _ in range(3):
        w, st_ = muon_step(w, rng.standard_normal((6, 8)), st_, spec, lr=0.05)
        np.testing.assert_allclose(np.linalg.norm(w, axis=-1), 1.0, rtol=1e-12)
    geo = spec.replace(sphere="geodesic", angle_mode="renorm")
    w0 = _unit_rows(rng.standard_normal((6, 8)))
    g = rng.standard_normal((6, 8))
    a, _ = muon_step(w0, g, init_muon_state(w0, spec), spec, lr=0.3)
    b, _ = muon_step(w0, g, init_muon_state(w0, geo), geo, lr=0.3)
    np.testing.assert_allclose(a, b, atol=1e-12)
