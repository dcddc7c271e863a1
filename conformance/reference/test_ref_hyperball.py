"""The hyperball step (MuonH / NorMuonH, modded-nanogpt track 3; NeMo ``MuonHyperball``'s fixed radius) in
float64: against a transcription of the record script's ``scale_invariant_update_``, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest

import muonlab.reference as R
from muonlab.contract import get_preset


def _scale_invariant_update(w: np.ndarray, o: np.ndarray, lr: float, eps: float = 1e-10) -> np.ndarray:
    """modded-nanogpt ``records/track_3_optimization/results/20260430_muonh/train_gpt_simple_muonh.py`` (f411b3d)
    ``scale_invariant_update_``, float64: ``R = ||W||_F``; ``W' = W - lr O R / max(||O||_F, eps)``;
    ``W <- R W' / max(||W'||_F, eps)``."""
    r = np.linalg.norm(w)
    w2 = w - lr * o * r / max(np.linalg.norm(o), eps)
    return r * w2 / max(np.linalg.norm(w2), eps)


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (16, 16)])
def test_muonh_step_is_the_record_scripts(shape: tuple[int, int]) -> None:
    spec = get_preset("muonh")
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape) * 0.3
    state = R.init_muon_state(w, spec)
    g = rng.standard_normal(shape)
    new, state = R.muon_step(w, g, state, spec, lr=0.018)
    o, _ = R.muon_update(w, g, R.init_muon_state(w, spec), spec)  # the same O (first step from zero state)
    want = _scale_invariant_update(w, o, 0.018)
    assert np.linalg.norm(new - want) <= 1e-12 * np.linalg.norm(want)
    assert abs(np.linalg.norm(new) - np.linalg.norm(w)) <= 1e-12 * np.linalg.norm(w)  # on the sphere of ||W||


def test_hyperball_radius_and_step_length() -> None:
    """Fixed radius: every step lands on ``||W||_F = R`` (NeMo); the step before the projection has length
    ``lr R`` whatever the gradient's scale; NorMuonH's normalization skips NorMuon's own rescale."""
    rng = np.random.default_rng(1)
    spec = get_preset("muonh").replace(hyperball_radius=3.0)
    w = rng.standard_normal((10, 14))
    w *= 3.0 / np.linalg.norm(w)
    state = R.init_muon_state(w, spec)
    for scale in (1.0, 1e-8, 1e4):
        w, state = R.muon_step(w, scale * rng.standard_normal(w.shape), state, spec, lr=0.05)
        assert abs(np.linalg.norm(w) - 3.0) <= 1e-12
    spec_h = get_preset("normuonh")
    o = rng.standard_normal((1, 14, 10))  # m >= n: the longer dim is the rows
    s = np.zeros((1, 14, 1))
    hat, _ = R.normuon_normalize(o, s, spec_h)
    v = np.mean(o * o, axis=-1, keepdims=True) * (1 - spec_h.beta2)
    assert np.allclose(hat, o / np.sqrt(np.maximum(v, 1e-10)), rtol=1e-14, atol=0)


def test_hyperball_needs_the_matrix_sphere() -> None:
    with pytest.raises(ValueError, match="sphere_axis: 'hyperball' is a sphere of matrices"):
        get_preset("muonh").replace(sphere_axis="row")
