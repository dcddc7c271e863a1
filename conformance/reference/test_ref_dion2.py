"""Dion2 (``dion2_fraction``; microsoft/dion 0a059a4 ``dion/dion2.py``): the reference against a float64
transcription of ``dion2_pre_orthogonalize`` / ``dion2_post_orthogonalize`` (one matrix, unsharded, inputs with
distinct slice norms so the top-k is unique), and the identity of V7.1: with ``fraction = 1`` Dion2 is dion's Muon
without Nesterov."""

from __future__ import annotations

import math

import numpy as np
import pytest

import muonlab.reference as R
from muonlab.contract import update_scale


def _upstream(
    w: np.ndarray, grads: list[np.ndarray], fraction: float, ef_decay: float, nordion2: bool = False
) -> np.ndarray:
    """Dion2, or NorDion2 (``nordion2.py``: rows always, ``select_dim = -2``; then ``_normuon_normalization_core``
    on the selected rows with their slice of the per-row variance ``V``, scattered back)."""
    spec = R.get_preset("dion2")  # its orthogonalizer (Polar Express x1.02, +1e-8) and sqrt(m/n) rule
    lr, wd = spec.lr, spec.weight_decay
    m_buf = np.zeros_like(w)
    variance = np.zeros((w.shape[0], 1))
    rows, cols = w.shape
    select_dim = -2 if rows <= cols or nordion2 else -1
    for g in grads:
        m_buf = m_buf + g  # torch._foreach_add_(M, G)
        sl = m_buf if select_dim == -2 else m_buf.T  # slices as rows
        k = max(1, math.ceil(fraction * sl.shape[0]))
        norms = [float(np.sum(np.abs(r))) for r in sl]  # M.norm(p=1, dim=norm_dim)
        chosen = sorted(range(len(norms)), key=lambda i: -norms[i])[:k]  # topk
        u = sl[chosen].copy()
        for i in chosen:  # m.scatter_(select_dim, idx, selected * ef_decay)
            sl[i] = ef_decay * sl[i]
        o = R.orthogonalize(u if select_dim == -2 else u.T, spec)
        if nordion2:
            v = variance[chosen]
            v = v + (1 - 0.95) * (np.mean(o * o, axis=-1, keepdims=True) - v)  # torch.lerp(V, mean(U^2), 1 - b2)
            normed = o / (np.sqrt(v) + 1e-8)
            o = normed * (np.linalg.norm(o) / max(np.linalg.norm(normed), 1e-8))
            variance[chosen] = v
        w = w * (1 - lr * wd)  # dion2_post_orthogonalize: decay everything with the base lr
        adjusted = lr * update_scale(w.shape, spec)  # adjust_lr_spectral_norm on the full shape
        step = np.zeros_like(w)
        if select_dim == -2:
            step[chosen] = o
        else:
            step[:, chosen] = o
        w = w - adjusted * step  # scatter_add of -adjusted_lr O at the selected slices
    return w


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (12, 12)])
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_dion2_is_the_upstream_step(shape: tuple[int, int], fraction: float) -> None:
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(5)]
    spec = R.get_preset("dion2").replace(dion2_fraction=fraction)
    w, state = w0, R.init_muon_state(w0, spec)
    for g in grads:
        w, state = R.muon_step(w, g, state, spec)
    want = _upstream(w0, grads, fraction, spec.momentum)
    assert np.max(np.abs(w - want)) <= 1e-12 * np.max(np.abs(want - w0))


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (3, 8, 8)])
def test_fraction_one_is_dion_muon_without_nesterov(shape: tuple[int, ...]) -> None:
    """``U_t = M_{t-1} + G_t`` and ``M_t = mu U_t`` give ``U_t = mu U_{t-1} + G_t``: the same updates as the sum-form
    momentum (the stored buffers differ by the factor mu)."""
    dion2 = R.get_preset("dion2").replace(dion2_fraction=1.0)
    muon = R.get_preset("dion").replace(nesterov=False)
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal(shape)
    a, sa, b, sb = w0, R.init_muon_state(w0, dion2), w0, R.init_muon_state(w0, muon)
    for _ in range(5):
        g = rng.standard_normal(shape)
        a, sa = R.muon_step(a, g, sa, dion2)
        b, sb = R.muon_step(b, g, sb, muon)
    assert np.max(np.abs(a - b)) <= 1e-12 * np.max(np.abs(b - w0))
    np.testing.assert_allclose(sa.momentum, dion2.momentum * sb.momentum, rtol=1e-12, atol=1e-14)


def test_only_the_selected_slices_move_beyond_decay() -> None:
    spec = R.get_preset("dion2").replace(weight_decay=0.0)
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((8, 16))
    g = rng.standard_normal((8, 16))
    w, state = R.muon_step(w0, g, R.init_muon_state(w0, spec), spec)
    moved = np.flatnonzero(np.any(w != w0, axis=1))
    top = np.argsort(-np.abs(g).sum(axis=1))[:2]  # ceil(0.25 * 8) rows of the largest L1 norm
    assert sorted(moved) == sorted(top)
    np.testing.assert_array_equal(state.momentum[top], spec.momentum * g[top])  # error feedback
    rest = np.setdiff1d(np.arange(8), top)
    np.testing.assert_array_equal(state.momentum[rest], g[rest])


def test_dion2_is_validated_and_from_upstream() -> None:
    with pytest.raises(ValueError, match=r"dion2_fraction: must lie in \(0, 1\]"):
        R.get_preset("dion2").replace(dion2_fraction=0.0)
    with pytest.raises(ValueError, match="momentum_form='sum' and nesterov=False"):
        R.get_preset("keller").replace(dion2_fraction=0.5)
    with pytest.raises(ValueError, match="NorDion2"):
        R.get_preset("dion2").replace(normuon=True, normuon_axis="col")
    assert R.from_upstream("dion2") == R.get_preset("dion2")
    assert R.from_upstream("dion2", fraction=0.5, ef_decay=0.9).replace(name="x") == R.get_preset("dion2").replace(
        name="x", dion2_fraction=0.5, momentum=0.9
    )


@pytest.mark.parametrize("shape", [(8, 20), (20, 8)])
def test_nordion2_is_the_upstream_step(shape: tuple[int, int]) -> None:
    """NorDion2 selects rows even when the matrix is tall (Dion2 would take columns), and only the selected rows'
    variance moves; an unselected row's stays 0 after one step."""
    rng = np.random.default_rng(6)
    w0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(5)]
    spec = R.get_preset("nordion2")
    w, state = w0, R.init_muon_state(w0, spec)
    for i, g in enumerate(grads):
        w, state = R.muon_step(w, g, state, spec)
        if i == 0:
            assert state.second_moment is not None
            assert int(np.count_nonzero(state.second_moment)) == math.ceil(0.25 * shape[0])
    want = _upstream(w0, grads, spec.dion2_fraction or 0.0, spec.momentum, nordion2=True)
    assert np.max(np.abs(w - want)) <= 1e-12 * np.max(np.abs(want - w0))
    assert R.from_upstream("nordion2") == spec
