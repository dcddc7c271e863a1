"""Equilibration and post-orthogonalization in float64 (MuonEq, Muon+, nanochat), against independent loop-level
transcriptions of the upstream functions (file and commit at each), their stated properties, and the nanochat
preset's invariant ``||eta_adj V_hat||_F = lr sqrt(m)``."""

from __future__ import annotations

import math

import numpy as np
import pytest

import muonlab.reference as R
from muonlab.contract import MuonSpec, get_preset, update_scale

Array = np.ndarray


def _x(m: int, n: int, seed: int = 0) -> Array:
    return np.random.default_rng(seed).standard_normal((m, n))


def _muoneq(x: Array, mode: str, e: float = -0.5, delta: float = 1e-8) -> Array:
    """MaeChd/muon-eq 99b6c8b ``llm-baselines/src/optim/muoneq.py`` (MuonEq, no clip, no phase), row by row and
    column by column; ``rowcol`` takes both scales from the same N."""
    r = [sum(v * v for v in x[i]) for i in range(x.shape[0])]
    c = [sum(x[i, j] ** 2 for i in range(x.shape[0])) for j in range(x.shape[1])]
    out = x.copy()
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if mode in ("row", "rowcol"):
                out[i, j] *= (r[i] + delta) ** e
            if mode in ("col", "rowcol"):
                out[i, j] *= (c[j] + delta) ** e
    return out


def _muon_plus(u: Array, mode: str) -> Array:
    """K1seki221/MuonPlus 8a9ace1 ``utils/optim/muon_plus.py::apply_post_polar_norm``: 1e-7 inside the root (its
    norm_eps argument is unused); col_row = col then row."""

    def cols(a: Array) -> Array:
        return a / np.sqrt((a**2).sum(axis=0, keepdims=True) + 1e-7)

    def rows(a: Array) -> Array:
        return a / np.sqrt((a**2).sum(axis=1, keepdims=True) + 1e-7)

    return {"col": cols, "row": rows, "col_row": lambda a: rows(cols(a)), "row_col": lambda a: cols(rows(a))}[mode](u)


def _nanochat_row_mean(x: Array) -> Array:
    """karpathy/nanochat 92d63d4 ``muon_step_fused``, its MuonEq-R lines in float64: ``tau = ||X||_F / sqrt(m)``,
    ``X_i <- X_i tau / max(||X_i||, 1e-6)``."""
    tau = math.sqrt((x**2).sum()) / math.sqrt(x.shape[0])
    return np.stack([row * (tau / max(math.sqrt((row**2).sum()), 1e-6)) for row in x])


@pytest.mark.parametrize("mode", ["row", "col", "rowcol"])
@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])
def test_muoneq_matches_its_source(mode: str, shape: tuple[int, int]) -> None:
    x = _x(*shape)
    got = R.equilibrate(x[None], MuonSpec(equilibrate=mode))[0]  # type: ignore[arg-type]
    assert np.allclose(got, _muoneq(x, mode), rtol=1e-13, atol=0)


@pytest.mark.parametrize("mode", ["row", "col", "row_col", "col_row"])
@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])
def test_muon_plus_matches_its_source(mode: str, shape: tuple[int, int]) -> None:
    u = _x(*shape, seed=1)
    got = R.post_orth(u[None], MuonSpec(post_orth=mode))[0]  # type: ignore[arg-type]
    assert np.allclose(got, _muon_plus(u, mode), rtol=1e-13, atol=0)


def test_nanochat_row_mean_matches_its_source_and_keeps_the_norm() -> None:
    x = _x(7, 12, seed=2)
    x[3] = 0.0  # a zero row stays 0 (the clamp)
    got = R.equilibrate(x[None], get_preset("nanochat"))[0]
    assert np.allclose(got, _nanochat_row_mean(x), rtol=1e-13, atol=0)
    assert np.all(got[3] == 0.0)
    live = np.linalg.norm(np.delete(got, 3, axis=0), axis=1)
    assert np.allclose(live, live[0], rtol=1e-12)  # every live row at the same norm


def test_stated_properties() -> None:
    """MuonEq ``row`` at e = -1/2: unit rows (to delta); Muon+ ``col_row`` after the polar factor: unit rows and
    ``||u||_F = sqrt(m)`` (V3.2, measured on 256x1024: 16.000); the Frobenius snap: ``sqrt(min(m, n))``."""
    x = _x(64, 256, seed=3)
    rows = np.linalg.norm(R.equilibrate(x[None], MuonSpec(equilibrate="row"))[0], axis=1)
    assert np.allclose(rows, 1.0, atol=1e-6)
    u = R.polar_factor(_x(256, 1024, seed=4))
    v = R.post_orth(u[None], MuonSpec(post_orth="col_row"))[0]
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert abs(np.linalg.norm(v) - 16.0) <= 1e-5
    snapped = R.post_orth(x[None] * 3.0, MuonSpec(post_orth="frobenius_snap"))[0]
    assert abs(np.linalg.norm(snapped) - 8.0) <= 1e-12


def test_zero_input_stays_zero_and_col_row_reinflates_a_null_direction() -> None:
    """Zero rows / columns stay 0 under every transform. A rank-1 polar factor under Muon+ ``col_row``: its
    columns are rescaled to unit norm, so directions the polar step left small are amplified (up to
    ``1/sqrt(1e-7)``; V3.3): the output is finite and its rows have unit norm."""
    for mode in ("row", "col", "rowcol", "row_mean"):
        assert np.all(R.equilibrate(np.zeros((1, 4, 6)), MuonSpec(equilibrate=mode)) == 0.0)  # type: ignore[arg-type]
    for mode in ("row", "col", "row_col", "col_row", "frobenius_snap"):
        assert np.all(R.post_orth(np.zeros((1, 4, 6)), MuonSpec(post_orth=mode)) == 0.0)  # type: ignore[arg-type]
    rank1 = np.outer(_x(8, 1)[:, 0], _x(1, 16)[0])
    v = R.post_orth(R.polar_factor(rank1)[None], MuonSpec(post_orth="col_row"))[0]
    assert np.all(np.isfinite(v)) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 96), (1, 64)])
def test_nanochat_update_norm_is_lr_sqrt_m(shape: tuple[int, int]) -> None:
    """The snap fixes ``||O||_F = sqrt(min(m, n))``, NorMuon's rescale keeps it, and ``eta_adj = lr sqrt(max(1,
    m/n))``: the update has ``||eta_adj V_hat||_F = lr sqrt(m)`` on every step, whatever the gradient's size."""
    spec = get_preset("nanochat")
    lr = 0.02
    w = _x(*shape, seed=5)
    state = R.init_muon_state(w, spec)
    for t, scale in enumerate([1.0, 1e-9, 30.0]):
        new, state = R.muon_step(w, scale * _x(*shape, seed=10 + t), state, spec, lr=lr)
        assert abs(np.linalg.norm(new - w) - lr * math.sqrt(shape[0])) <= 1e-9 * lr * math.sqrt(shape[0])
        w = new
    assert update_scale(shape, spec) == pytest.approx(math.sqrt(max(1.0, shape[0] / shape[1])))


@pytest.mark.parametrize("shape", [(12, 30), (30, 12)])
def test_muoneq_and_muon_plus_presets_by_hand(shape: tuple[int, int]) -> None:
    """One step from zero state, by hand from the two sources: sum momentum with Nesterov (``N = G + mu G``),
    the transform, NS5 Keller, then MuonEq's ``W(1 - eta lambda) - eta 0.2 sqrt(max(m, n)) O`` or Muon+'s
    ``W(1 - eta lambda) - eta sqrt(m/n) u``."""
    from muonlab.contract import schedule

    m, n = shape
    w, g = _x(m, n, seed=7), _x(m, n, seed=8)
    nesterov = g + 0.95 * g
    spec = get_preset("muoneq")
    o = R.newton_schulz(_muoneq(nesterov, "row"), schedule("keller", 5))
    want = w * (1 - 1e-3 * 0.1) - 1e-3 * 0.2 * math.sqrt(max(m, n)) * o
    got, _ = R.muon_step(w, g, R.init_muon_state(w, spec), spec, lr=1e-3)
    assert np.allclose(got, want, rtol=1e-13, atol=1e-15)
    spec = get_preset("muon_plus")
    u = _muon_plus(R.newton_schulz(nesterov, schedule("keller", 5)), "col_row")
    want = w * (1 - 0.01 * 0.1) - 0.01 * math.sqrt(m / n) * u
    got, _ = R.muon_step(w, g, R.init_muon_state(w, spec), spec, lr=0.01)
    assert np.allclose(got, want, rtol=1e-13, atol=1e-15)
