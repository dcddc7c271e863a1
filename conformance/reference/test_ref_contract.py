"""Contract of the public step API over every preset, and bad-input handling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from muonlab.reference import (
    PRESETS,
    AdamState,
    MuonSpec,
    MuonState,
    adamw_step,
    get_preset,
    init_adam_state,
    init_muon_state,
    init_state,
    muon_step,
    normuon_state_shape,
    step,
)

SHAPES = [(6, 4), (4, 6), (1, 5), (5, 1), (3, 4, 5), (4, 2, 3, 3)]


def _problem(name: str, shape: tuple[int, ...], seed: int = 0) -> tuple[MuonSpec, np.ndarray, list[np.ndarray]]:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    spec = get_preset(name)
    w = rng.standard_normal(shape)
    if spec.sphere != "none":
        w /= np.linalg.norm(w, axis=-1, keepdims=True)
    return spec, w, [rng.standard_normal(shape) for _ in range(3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(PRESETS))
def test_state_shapes_step_counter_and_dtypes(name: str, shape: tuple[int, ...]) -> None:
    spec, w, grads = _problem(name, shape)
    st = init_muon_state(w, spec)
    assert st.step == 0 and st.momentum.shape == shape and np.all(st.momentum == 0)
    assert (st.second_moment is None) == (not spec.normuon)
    for k, g in enumerate(grads, start=1):
        w, st = muon_step(w, g, st, spec)
        assert st.step == k
        assert w.shape == shape and w.dtype == np.float64 and np.all(np.isfinite(w))
        assert st.momentum.shape == shape and st.momentum.dtype == np.float64
        if spec.normuon:
            assert st.second_moment is not None
            assert st.second_moment.shape == normuon_state_shape(shape, spec)
            assert np.all(st.second_moment >= 0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(PRESETS))
def test_inputs_never_mutated_and_deterministic(name: str, shape: tuple[int, ...]) -> None:
    spec, w, grads = _problem(name, shape)
    st = init_muon_state(w, spec)
    w1, st1 = muon_step(w, grads[0], st, spec)
    w_copy, g_copy = w.copy(), grads[1].copy()
    m_copy = st1.momentum.copy()
    s_copy = None if st1.second_moment is None else st1.second_moment.copy()
    a = muon_step(w1, grads[1], st1, spec)
    b = muon_step(w1, grads[1], st1, spec)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1].momentum, b[1].momentum)
    np.testing.assert_array_equal(grads[1], g_copy)
    np.testing.assert_array_equal(st1.momentum, m_copy)
    if s_copy is not None:
        assert st1.second_moment is not None
        np.testing.assert_array_equal(st1.second_moment, s_copy)
    assert st1.step == 1
    np.testing.assert_array_equal(w, w_copy)
    for new in (a[0], a[1].momentum):
        assert not np.shares_memory(new, w1) and not np.shares_memory(new, grads[1])
        assert not np.shares_memory(new, st1.momentum)


def test_float32_inputs_are_not_mutated_and_results_are_float64() -> None:
    w = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    g = np.ones((4, 6), dtype=np.float32)
    w0, g0 = w.copy(), g.copy()
    new_w, _ = muon_step(w, g, init_muon_state(w, MuonSpec()), MuonSpec())
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(g, g0)
    assert new_w.dtype == np.float64


@pytest.mark.parametrize("name", list(PRESETS))
def test_step_over_lists_skips_none_grads_and_routes_adam(name: str) -> None:
    spec = get_preset(name)
    rng = np.random.default_rng(1)
    params = [rng.standard_normal((4, 6)), rng.standard_normal((6,)), rng.standard_normal((3, 3))]
    if spec.sphere != "none":
        params[0] /= np.linalg.norm(params[0], axis=-1, keepdims=True)
    states = [init_state(p, spec) for p in params]
    assert isinstance(states[0], MuonState) and isinstance(states[1], AdamState) and isinstance(states[2], MuonState)
    grads = [rng.standard_normal((4, 6)), rng.standard_normal((6,)), None]
    new_params, new_states = step(params, grads, states, spec)
    assert new_states[2] is states[2]
    np.testing.assert_array_equal(new_params[2], params[2])
    assert not np.shares_memory(new_params[2], params[2])
    assert new_states[0].step == 1 and new_states[1].step == 1
    ref0, _ = muon_step(params[0], grads[0], states[0], spec)  # type: ignore[arg-type]
    ref1, _ = adamw_step(params[1], grads[1], states[1], spec)  # type: ignore[arg-type]
    np.testing.assert_array_equal(new_params[0], ref0)
    np.testing.assert_array_equal(new_params[1], ref1)


def test_default_lr_is_spec_lr() -> None:
    spec = get_preset("moonlight")
    w = np.random.default_rng(2).standard_normal((3, 5))
    g = np.ones((3, 5))
    a, _ = muon_step(w, g, init_muon_state(w, spec), spec)
    b, _ = muon_step(w, g, init_muon_state(w, spec), spec, lr=spec.lr)
    c, _ = muon_step(w, g, init_muon_state(w, spec), "moonlight", lr=spec.lr)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", list(PRESETS))
def test_nonfinite_grad_raises_naming_the_parameter(name: str, bad: float) -> None:
    spec = get_preset(name)
    rng = np.random.default_rng(3)
    params = [rng.standard_normal((3, 4)), rng.standard_normal((4, 3)), rng.standard_normal((5,))]
    states = [init_state(p, spec) for p in params]
    for idx in (1, 2):
        grads = [rng.standard_normal(p.shape) for p in params]
        grads[idx][0] = bad
        saved = [(p.copy(), s) for p, s in zip(params, states, strict=True)]
        with pytest.raises(ValueError, match=rf"grads\[{idx}\] contains non-finite"):
            step(params, grads, states, spec)
        for (p0, s0), p, s in zip(saved, params, states, strict=True):
            np.testing.assert_array_equal(p0, p)
            assert s is s0 and s.step == 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_nonfinite_grad_skip_leaves_param_and_state(name: str) -> None:
    spec = get_preset(name).replace(nonfinite="skip")
    w = np.random.default_rng(4).standard_normal((3, 4))
    st = init_muon_state(w, spec)
    w1, st1 = muon_step(w, np.ones((3, 4)), st, spec)
    g = np.ones((3, 4))
    g[1, 2] = math.nan
    w2, st2 = muon_step(w1, g, st1, spec)
    np.testing.assert_array_equal(w2, w1)
    assert st2 is st1 and st2.step == 1
    a = np.zeros(5)
    ast = init_adam_state(a)
    a2, ast2 = adamw_step(a, np.full(5, math.inf), ast, spec)
    np.testing.assert_array_equal(a2, a)
    assert ast2 is ast


def test_bad_shapes_and_dims() -> None:
    spec = MuonSpec()
    w = np.zeros((3, 4))
    st = init_muon_state(w, spec)
    with pytest.raises(ValueError, match=r"grad has shape \(4, 3\) but param has shape \(3, 4\)"):
        muon_step(w, np.zeros((4, 3)), st, spec)
    with pytest.raises(ValueError, match="param must have at least 2 dims"):
        muon_step(np.zeros(4), np.zeros(4), st, spec)
    with pytest.raises(ValueError, match="param must have at least 2 dims"):
        init_muon_state(np.zeros(4), spec)
    with pytest.raises(ValueError, match="param is empty"):
        muon_step(np.zeros((0, 4)), np.zeros((0, 4)), init_muon_state(np.zeros((0, 4)), spec), spec)
    with pytest.raises(ValueError, match="param is empty"):
        adamw_step(np.zeros(0), np.zeros(0), init_adam_state(np.zeros(0)), spec)
    with pytest.raises(ValueError, match=r"states\[0\]\.momentum has shape"):
        step([w], [np.zeros((3, 4))], [init_muon_state(np.zeros((4, 3)), spec)], spec)
    with pytest.raises(ValueError, match=r"states\[0\]: expected a MuonState or an AdamState"):
        step([w], [np.zeros((3, 4))], [None], spec)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"params\[1\] must have at least 2 dims"):
        step([w, np.zeros(3)], [np.zeros((3, 4)), np.zeros(3)], [st, st], spec)
    with pytest.raises(ValueError, match="equal lengths"):
        step([w], [], [st], spec)
    with pytest.raises(ValueError, match="second_moment"):
        muon_step(w, np.zeros((3, 4)), st, spec.replace(normuon=True))
    with pytest.raises(ValueError, match="grad: complex"):
        muon_step(w, np.zeros((3, 4), dtype=complex), st, spec)


@pytest.mark.parametrize("lr", [-0.1, math.nan, math.inf])
def test_bad_lr(lr: float) -> None:
    w = np.zeros((2, 2))
    with pytest.raises(ValueError, match="lr"):
        muon_step(w, w, init_muon_state(w, MuonSpec()), MuonSpec(), lr=lr)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
    w = np.zeros((2, 2))
    with pytest.raises(ValueError, match="preset"):
        muon_step(w, w, init_muon_state(w, MuonSpec()), "nope")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"momentum": 1.0}, "momentum"),
        ({"eps_mode": "mul"}, "eps_mode"),
        ({"ns_steps": 0}, "ns_steps"),
        ({"ns_coefficients": "nope"}, "ns_coefficients"),
        ({"eps": 0.0}, "eps"),
        ({"beta2": -0.1}, "beta2"),
        ({"sphere": "geodesic", "weight_decay": 0.1}, "weight_decay"),
        ({"adam_betas": (0.9,)}, "adam_betas"),
        ({"lr": math.nan}, "lr"),
        ({"nonfinite": "ignore"}, "nonfinite"),
        ({"not_a_field": 1}, "unknown MuonSpec field"),
    ],
)
def test_invalid_spec_fields_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MuonSpec().replace(**changes)
