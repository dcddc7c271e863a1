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


# -- NeMo MuonHyperball (Emerging-Optimizers fd77292: muon_hyperball.py + weight_update_hooks/hyperball.py) ----------

_QUINTIC = [  # muon_utils._COEFFICIENT_SETS["quintic"], cycled
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
]


def _nemo_hyperball(w: np.ndarray, grads: list[np.ndarray], lr: float, wd: float, radius: float) -> np.ndarray:
    """``OrthogonalizedOptimizer.step`` with ``HyperballHook``, float64: decoupled decay ``W <- W - lr wd W`` first,
    ``M = lerp(M, G, 1 - 0.95)`` (no Nesterov), ``O = newton_schulz(M, 5, "quintic")`` (``x / max(||x||, 1e-15)``),
    pre hook ``U <- R U / ||U||_F`` (the scale factor cancels), ``W <- W - lr U``, post hook ``W <- R W / ||W||_F``."""
    m_buf = np.zeros_like(w)
    for g in grads:
        w = w - lr * wd * w
        m_buf = m_buf + 0.05 * (g - m_buf)
        tall = m_buf.shape[0] > m_buf.shape[1]
        x = m_buf.T if tall else m_buf
        x = x / max(np.linalg.norm(x), 1e-15)
        for i in range(5):
            a, b, c = _QUINTIC[i % 5]
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        u = x.T if tall else x
        u = radius * u / np.linalg.norm(u)
        w = w - lr * u
        w = radius * w / np.linalg.norm(w)
    return w


@pytest.mark.parametrize("method", ["decoupled", "independent"])
@pytest.mark.parametrize("shape", [(8, 14), (14, 8)])
def test_nemo_muon_hyperball_with_weight_decay(method: str, shape: tuple[int, int]) -> None:
    """``from_upstream("emerging_optimizers_hyperball", hyperball_radius=R)``: unlike modded's MuonH, NeMo's
    default weight decay (0.01) applies before the step; the weight starts on the sphere (NeMo checks it) and
    returns to it every step. ``"independent"`` decays by ``lambda`` alone (``lr`` = 1 in the transcription's
    decay factor)."""
    radius, lr, wd = 2.0, 0.05, 0.3
    spec = R.from_upstream(
        "emerging_optimizers_hyperball", hyperball_radius=radius, lr=lr, weight_decay=wd, weight_decay_method=method
    )
    rng = np.random.default_rng(11)
    w0 = rng.standard_normal(shape)
    w0 *= radius / np.linalg.norm(w0)
    grads = [rng.standard_normal(shape) for _ in range(5)]
    w, state = w0, R.init_muon_state(w0, spec)
    for g in grads:
        w, state = R.muon_step(w, g, state, spec)
    decay_lr = lr if method == "decoupled" else 1.0
    want = _nemo_hyperball(w0, grads, lr, wd * decay_lr / lr, radius)
    assert np.max(np.abs(w - want)) <= 1e-12 * np.max(np.abs(want - w0))
    assert abs(np.linalg.norm(w) - radius) <= 1e-12
    no_decay = R.from_upstream("emerging_optimizers_hyperball", hyperball_radius=radius, lr=lr, weight_decay=0.0)
    w2, s2 = w0, R.init_muon_state(w0, no_decay)
    for g in grads:
        w2, s2 = R.muon_step(w2, g, s2, no_decay)
    assert np.max(np.abs(w2 - w)) > 1e-6  # the decay changed the trajectory


def test_hyperball_decay_needs_a_fixed_radius() -> None:
    with pytest.raises(ValueError, match="only a hyperball of fixed radius takes decoupled decay"):
        R.get_preset("muonh").replace(weight_decay=0.1)
    with pytest.raises(ValueError, match="hyperball_radius"):
        R.from_upstream("emerging_optimizers_hyperball")
    with pytest.raises(ValueError, match="cannot be expressed"):
        R.from_upstream("emerging_optimizers_hyperball", hyperball_radius=1.0, weight_decay_method="l2")
