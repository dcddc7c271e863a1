"""Momentum, NorMuon, shape scale, weight decay and AdamW against hand-derived expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from refhelpers import FAST, matrix_shapes, seeds, tensor_shapes

from muonlab.contract import choices
from muonlab.reference import (
    MuonSpec,
    adamw_step,
    cautious_mask,
    get_preset,
    init_adam_state,
    init_muon_state,
    muon_step,
    normuon_normalize,
    normuon_state_shape,
    optax_momentum,
    orthogonalize,
    scale_dims,
    shape_scale,
    update_scale,
)
from muonlab.reference.momentum import ema_momentum, sum_momentum

# -- momentum ------------------------------------------------------------------------------------------------------


@FAST
@given(shape=tensor_shapes(), seed=seeds, nesterov=st.booleans())
def test_ema_is_one_minus_beta_times_sum(shape: tuple[int, ...], seed: int, nesterov: bool) -> None:
    rng = np.random.default_rng(seed)
    beta = 0.9
    m_e = m_s = np.zeros(shape)
    for _ in range(3):
        g = rng.standard_normal(shape)
        m_e, n_e = ema_momentum(m_e, g, beta, nesterov)
        m_s, n_s = sum_momentum(m_s, g, beta, nesterov)
        np.testing.assert_allclose(m_e, (1 - beta) * m_s, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(n_e, (1 - beta) * n_s, rtol=1e-12, atol=1e-15)


@FAST
@given(shape=tensor_shapes(), seed=seeds)
def test_ema_and_sum_steps_agree_when_eps_is_negligible(shape: tuple[int, ...], seed: int) -> None:
    """Orth is scale-invariant up to eps: with eps = 1e-30 << ||N|| the weights agree to ~1e-12,
    while the momentum buffers differ by exactly the factor (1 - beta)."""
    rng = np.random.default_rng(seed)
    base = MuonSpec(eps=1e-30, momentum=0.95)
    ema, summ = base.replace(momentum_form="ema"), base.replace(momentum_form="sum")
    w = rng.standard_normal(shape)
    we, se = w, init_muon_state(w, ema)
    ws, ss = w, init_muon_state(w, summ)
    for _ in range(3):
        g = rng.standard_normal(shape)
        we, se = muon_step(we, g, se, ema, lr=0.02)
        ws, ss = muon_step(ws, g, ss, summ, lr=0.02)
    np.testing.assert_allclose(we, ws, rtol=0, atol=1e-12)
    np.testing.assert_allclose(se.momentum, 0.05 * ss.momentum, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("nesterov", [True, False])
def test_optax_bias_correction_by_hand(nesterov: bool) -> None:
    beta = 0.9
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)) for _ in range(3)]
    mu = np.zeros((3, 4))
    for t, g in enumerate(grads, start=1):
        mu_new, n = optax_momentum(mu, g, beta, nesterov, t)
        mu = beta * mu + (1 - beta) * g
        np.testing.assert_allclose(mu_new, mu, rtol=1e-14)
        if nesterov:
            expected = beta * mu / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta**t)
        else:
            expected = mu / (1 - beta**t)
        np.testing.assert_allclose(n, expected, rtol=1e-14)
    # constant gradient, no Nesterov: the bias-corrected EMA is the gradient itself
    mu = np.zeros((2, 2))
    g = np.full((2, 2), 3.0)
    for t in range(1, 5):
        mu, n = optax_momentum(mu, g, beta, False, t)
        np.testing.assert_allclose(n, g, rtol=1e-14)
    with pytest.raises(ValueError, match="t"):
        optax_momentum(mu, g, beta, True, 0)


# -- NorMuon -------------------------------------------------------------------------------------------------------


def _normuon(axis: str, rescale: str = "frobenius", mode: str = "add", **kw: object) -> MuonSpec:
    return MuonSpec(
        normuon=True,
        normuon_axis=axis,
        normuon_rescale=rescale,
        normuon_eps_mode=mode,
        **kw,  # type: ignore[arg-type]
    )


@FAST
@given(
    shape=matrix_shapes(),
    seed=seeds,
    axis=st.sampled_from(choices("normuon_axis")),
    mode=st.sampled_from(choices("normuon_eps_mode")),
)
def test_normuon_equalizes_per_axis_rms_and_keeps_frobenius(
    shape: tuple[int, int], seed: int, axis: str, mode: str
) -> None:
    m, n = shape
    o = orthogonalize(np.random.default_rng(seed).standard_normal(shape), MuonSpec())
    spec = _normuon(axis, mode=mode, beta2=0.9, normuon_eps=1e-30)  # eps negligible: exact identities
    s0 = np.zeros(normuon_state_shape(shape, spec))
    out, s1 = normuon_normalize(o, s0, spec)
    if axis == "matrix":  # one statistic per matrix: O / sqrt(S) is a multiple of O, so the Frobenius rescale gives O
        assert s1.shape == (1, 1)
        np.testing.assert_allclose(s1, 0.1 * np.mean(o * o, keepdims=True), rtol=1e-14)
        np.testing.assert_allclose(out, o, rtol=1e-12, atol=1e-15)
        return
    if axis == "element":  # AdaMuon: S = (1 - beta2) O^2, so every entry of O_hat has the same magnitude
        assert s1.shape == (m, n)
        np.testing.assert_allclose(s1, 0.1 * o * o, rtol=1e-14)
        live = np.abs(o) > 1e-12
        np.testing.assert_allclose(np.abs(out[live]), np.abs(out[live]).mean(), rtol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(out), np.linalg.norm(o), rtol=1e-12)
        return
    red = -1 if axis == "row" or (axis == "longer" and m >= n) else -2
    assert s1.shape == ((m, 1) if red == -1 else (1, n))
    np.testing.assert_allclose(s1, 0.1 * np.mean(o * o, axis=red, keepdims=True), rtol=1e-14)
    rms = np.sqrt(np.mean(out * out, axis=red))
    np.testing.assert_allclose(rms, rms.mean(), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out), np.linalg.norm(o), rtol=1e-12)


@FAST
@given(shape=matrix_shapes(), seed=seeds)
def test_normuon_rms_rescale_gives_rms_scale(shape: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    o = orthogonalize(rng.standard_normal(shape), MuonSpec())
    spec = _normuon("row", rescale="rms", rms_scale=0.2, beta2=0.95, normuon_eps=1e-8)
    s = rng.uniform(0.0, 0.1, size=normuon_state_shape(shape, spec))
    out, s1 = normuon_normalize(o, s, spec)
    s_expected = 0.95 * s + 0.05 * np.mean(o * o, axis=-1, keepdims=True)
    np.testing.assert_allclose(s1, s_expected, rtol=1e-14)
    o_hat = o / (np.sqrt(s_expected) + 1e-8)
    np.testing.assert_allclose(out, o_hat * 0.2 * math.sqrt(o.size) / np.linalg.norm(o_hat), rtol=1e-12)
    assert abs(math.sqrt(np.mean(out * out)) - 0.2) <= 1e-12


def test_normuon_clamp_mode_by_hand() -> None:
    o = np.array([[3.0, 4.0], [0.0, 1e-6]])
    spec = _normuon("row", mode="clamp", beta2=0.5, normuon_eps=1e-10)
    out, s1 = normuon_normalize(o, np.zeros((2, 1)), spec)
    s_exp = 0.5 * np.array([[12.5], [0.5e-12]])
    np.testing.assert_allclose(s1, s_exp, rtol=1e-15)
    o_hat = o / np.sqrt(np.maximum(s_exp, 1e-10))  # the second row is clamped: 0.5e-12 < 1e-10
    np.testing.assert_allclose(out, o_hat * np.linalg.norm(o) / max(np.linalg.norm(o_hat), 1e-10), rtol=1e-14)


@pytest.mark.parametrize("rescale", ["frobenius", "rms"])
@pytest.mark.parametrize("mode", ["add", "clamp"])
@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (1, 5), (3, 2, 2)])
def test_normuon_zero_in_zero_out(rescale: str, mode: str, shape: tuple[int, ...]) -> None:
    spec = _normuon("longer", rescale=rescale, mode=mode)
    w = np.ones(shape)
    state = init_muon_state(w, spec)
    with np.errstate(all="raise"):
        new_w, new_state = muon_step(w, np.zeros(shape), state, spec, lr=0.1)
    np.testing.assert_array_equal(new_w, w)
    assert new_state.second_moment is not None and np.all(new_state.second_moment == 0.0)


def test_normuon_one_by_n_gate_pathology() -> None:
    """1xN with the longer axis: per-column statistic of one element, so |O_hat| is constant (variants.md 3.7)."""
    o = orthogonalize(np.random.default_rng(0).standard_normal((1, 9)), MuonSpec())
    spec = _normuon("longer")
    out, _ = normuon_normalize(o, np.zeros((1, 9)), spec)
    np.testing.assert_allclose(np.abs(out), np.abs(out).mean(), rtol=1e-8)


# -- shape scale ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "n", "rule", "expected"),
    [
        (16, 1, "keller", 4.0),
        (1, 16, "keller", 1.0),
        (16, 1, "moonlight", 0.8),
        (1, 16, "moonlight", 0.8),
        (16, 1, "dion", 4.0),
        (1, 16, "dion", 0.25),
        (7, 3, "none", 1.0),
    ],
)
def test_shape_scale_values(m: int, n: int, rule: str, expected: float) -> None:
    assert shape_scale(m, n, rule, 0.2) == pytest.approx(expected, rel=1e-15)  # type: ignore[arg-type]


@FAST
@given(shape=matrix_shapes())
def test_shape_scale_formulas(shape: tuple[int, int]) -> None:
    m, n = shape
    assert shape_scale(m, n, "keller") == math.sqrt(max(1.0, m / n))
    assert shape_scale(m, n, "moonlight", 0.3) == 0.3 * math.sqrt(max(m, n))
    assert shape_scale(m, n, "dion") == math.sqrt(m / n)
    assert shape_scale(m, n, "keller") == max(1.0, shape_scale(m, n, "dion"))


def test_scale_dims_conv_quirk() -> None:
    shape = (8, 1, 3, 1)
    assert scale_dims(shape, MuonSpec(scale_shape="last2")) == (3, 1)
    assert scale_dims(shape, MuonSpec(scale_shape="matrix", nd_mode="flatten")) == (8, 3)
    assert scale_dims(shape, MuonSpec(scale_shape="matrix", nd_mode="batch")) == (3, 1)
    assert update_scale(shape, get_preset("keller")) == pytest.approx(math.sqrt(3))
    assert update_scale(shape, MuonSpec()) == pytest.approx(math.sqrt(8 / 3))


def test_moonlight_update_rms_is_about_point_two() -> None:
    """variants.md 2.3: for a random 256x1024 input, RMS(eta_u O) / eta lies in [0.15, 0.25]."""
    g = np.random.default_rng(0).standard_normal((256, 1024))
    spec = get_preset("moonlight").replace(weight_decay=0.0)
    w = np.zeros_like(g)
    new_w, _ = muon_step(w, g, init_muon_state(w, spec), spec, lr=1.0)
    assert 0.15 <= math.sqrt(np.mean(new_w**2)) <= 0.25


# -- weight decay --------------------------------------------------------------------------------------------------


def _first_step_update(g: np.ndarray, spec: MuonSpec) -> np.ndarray:  # type: ignore[type-arg]
    """O of the first step from zero momentum, computed independently of muon_step."""
    beta = spec.momentum
    if spec.momentum_form == "sum":
        n = g + beta * g if spec.nesterov else g
    else:
        m = (1 - beta) * g
        n = (1 - beta) * g + beta * m if spec.nesterov else m
    return orthogonalize(n, spec)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_moonlight_eq3_and_eq4(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(5)
    w, g = rng.standard_normal(shape), rng.standard_normal(shape)
    lr, lam = 0.01, 0.1
    eq3 = get_preset("moonlight").replace(shape_scale="none", weight_decay=lam)
    new_w, _ = muon_step(w, g, init_muon_state(w, eq3), eq3, lr=lr)
    o = _first_step_update(g, eq3)
    np.testing.assert_allclose(new_w, w - lr * (o + lam * w), rtol=1e-14, atol=1e-15)
    eq4 = get_preset("moonlight")
    new_w, _ = muon_step(w, g, init_muon_state(w, eq4), eq4, lr=lr)
    np.testing.assert_allclose(new_w, w - lr * (0.2 * math.sqrt(max(shape)) * o + lam * w), rtol=1e-14, atol=1e-15)


def test_cautious_mask_ge_vs_gt_at_exact_zeros() -> None:
    u = np.array([[1.0, -1.0, 0.0, 2.0], [0.0, 3.0, -2.0, 1.0]])
    w = np.array([[2.0, 1.0, 5.0, 0.0], [0.0, -1.0, -1.0, 1.0]])
    np.testing.assert_array_equal(cautious_mask(u, w, "ge"), [[1, 0, 1, 1], [1, 0, 1, 1]])
    np.testing.assert_array_equal(cautious_mask(u, w, "gt"), [[1, 0, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(cautious_mask(u, w, "off"), np.ones((2, 4)))


@pytest.mark.parametrize("cautious", ["off", "ge", "gt"])
@pytest.mark.parametrize(("decay_lr", "factor"), [("base", 1.0), ("scaled", 2.0), ("lr2", 0.1 * 2.0)])
@pytest.mark.parametrize("lam", [0.5, -0.5])
def test_decoupled_decay_by_hand(cautious: str, decay_lr: str, factor: float, lam: float) -> None:
    """W_new = W - eta_d lambda mask(O, W_pre) (.) W_pre - eta_u O, eta_u = eta * 2 for a 4x1 matrix."""
    rng = np.random.default_rng(9)
    w, g = rng.standard_normal((4, 1)), rng.standard_normal((4, 1))
    w[0, 0] = 0.0
    lr = 0.1
    spec = MuonSpec(weight_decay=lam, cautious=cautious, decay_lr=decay_lr, shape_scale="keller")  # type: ignore[arg-type]
    new_w, _ = muon_step(w, g, init_muon_state(w, spec), spec, lr=lr)
    o = _first_step_update(g, spec)
    mask = {"off": np.ones_like(w), "ge": (o * w >= 0) * 1.0, "gt": (o * w > 0) * 1.0}[cautious]
    eta_d = lr * factor if decay_lr != "lr2" else lr * lr * 2.0
    np.testing.assert_allclose(new_w, w - eta_d * lam * mask * w - lr * 2.0 * o, rtol=1e-14, atol=1e-16)


def test_negative_decay_grows_weights() -> None:
    w = np.random.default_rng(1).standard_normal((3, 3))
    spec = MuonSpec(weight_decay=-0.5)
    new_w, _ = muon_step(w, np.zeros_like(w), init_muon_state(w, spec), spec, lr=0.1)
    np.testing.assert_allclose(new_w, w * 1.05, rtol=1e-15)


@pytest.mark.parametrize("placement", ["update", "both"])
def test_coupled_decay_enters_before_momentum(placement: str) -> None:
    rng = np.random.default_rng(2)
    w, g = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    lam, lr = 0.3, 0.05
    spec = MuonSpec(weight_decay=lam, decay_placement=placement)  # type: ignore[arg-type]
    new_w, st = muon_step(w, g, init_muon_state(w, spec), spec, lr=lr)
    plain = MuonSpec()
    ref_w, ref_st = muon_step(w, g + lam * w, init_muon_state(w, plain), plain, lr=lr)
    if placement == "both":
        ref_w = ref_w - lr * lam * w
    np.testing.assert_allclose(new_w, ref_w, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(st.momentum, ref_st.momentum, rtol=1e-15)


# -- AdamW ---------------------------------------------------------------------------------------------------------


def test_adamw_corrected_matches_torch_adamw() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((7,))
    grads = [rng.standard_normal((7,)) for _ in range(4)]
    spec = MuonSpec(adam_lr=1e-2, adam_betas=(0.9, 0.95), adam_eps=1e-8, adam_weight_decay=0.1)
    tw = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([tw], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    w, st = w0, init_adam_state(w0)
    for g in grads:
        tw.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        w, st = adamw_step(w, g, st, spec)
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-13, atol=1e-15)
    assert st.step == 4


def test_adamw_uncorrected_and_fallbacks_by_hand() -> None:
    rng = np.random.default_rng(1)
    w, g = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    spec = MuonSpec(
        weight_decay=0.2,
        adam_lr=None,
        adam_weight_decay=None,
        adam_betas=(0.9, 0.99),
        adam_eps=1e-3,
        adam_eps_mode="uncorrected",
    )
    lr = 0.05
    new_w, _st = adamw_step(w, g, init_adam_state(w), spec, lr=lr)
    m, v = 0.1 * g, 0.01 * g * g
    u = m / (np.sqrt(v) + 1e-3) * math.sqrt(1 - 0.99) / (1 - 0.9)
    np.testing.assert_allclose(new_w, w * (1 - lr * 0.2) - lr * u, rtol=1e-14)
    corrected = spec.replace(adam_eps_mode="corrected")
    new_c, _ = adamw_step(w, g, init_adam_state(w), corrected, lr=lr)
    u_c = (m / 0.1) / (np.sqrt(v / 0.01) + 1e-3)
    np.testing.assert_allclose(new_c, w * (1 - lr * 0.2) - lr * u_c, rtol=1e-14)
    assert not np.allclose(new_w, new_c, rtol=1e-6)


# -- whole steps assembled by hand ---------------------------------------------------------------------------------


def test_modded_normuon_step_by_hand() -> None:
    """modded-nanogpt _normuon_update, written out: lerp-Nesterov, PE5 (x1.02, +1e-6), NorMuon per longer dim
    with clamp, eta_eff = eta sqrt(max(1, m/n)), cautious (>=) decay lambda eta eta_eff on the pre-update W."""
    rng = np.random.default_rng(11)
    shape = (3, 6, 4)  # a bank of tall matrices: the statistic is per row
    spec = get_preset("modded_normuon")
    w, g1, g2 = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal(shape)
    lr = 0.03
    st = init_muon_state(w, spec)
    w1, st = muon_step(w, g1, st, spec, lr=lr)
    w2, st = muon_step(w1, g2, st, spec, lr=lr)

    m = np.zeros(shape)
    s = np.zeros((3, 6, 1))
    ww = w
    for g in (g1, g2):
        m = 0.95 * m + 0.05 * g
        n = 0.05 * g + 0.95 * m
        x = n / (1.02 * np.linalg.norm(n, axis=(-2, -1), keepdims=True) + 1e-6)
        for a, b, c in spec.coefficients:
            xt = np.swapaxes(x, -2, -1)
            gram = xt @ x  # tall form: A = X^T X, X <- aX + X B (the same map)
            x = a * x + x @ (b * gram + c * gram @ gram)
        vbar = np.mean(x * x, axis=-1, keepdims=True)
        s = s + 0.1 * (vbar - s)
        vh = x / np.sqrt(np.maximum(s, 1e-10))
        vh = (
            vh
            * np.linalg.norm(x, axis=(-2, -1), keepdims=True)
            / np.maximum(np.linalg.norm(vh, axis=(-2, -1), keepdims=True), 1e-10)
        )
        eta_eff = lr * math.sqrt(6 / 4)
        mask = (vh * ww >= 0) * 1.0
        ww = ww - 1.2 * lr * eta_eff * mask * ww - eta_eff * vh
    np.testing.assert_allclose(w2, ww, rtol=1e-12, atol=1e-14)
    assert st.second_moment is not None
    np.testing.assert_allclose(st.second_moment, s, rtol=1e-12)
    np.testing.assert_allclose(st.momentum, m, rtol=1e-14, atol=1e-16)  # lerp vs beta*m + (1-beta)*g rounding


def test_optax_preset_two_steps_by_hand() -> None:
    rng = np.random.default_rng(12)
    spec = get_preset("optax").replace(weight_decay=0.05)
    w, g1, g2 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    lr = 0.02
    st = init_muon_state(w, spec)
    w1, st = muon_step(w, g1, st, spec, lr=lr)
    w2, st = muon_step(w1, g2, st, spec, lr=lr)
    mu, ww = np.zeros((5, 3)), w
    for t, g in enumerate((g1, g2), start=1):
        mu = 0.95 * mu + 0.05 * g
        n = 0.95 * mu / (1 - 0.95 ** (t + 1)) + 0.05 * g / (1 - 0.95**t)
        o = orthogonalize(n, spec)
        ww = ww - lr * (math.sqrt(5 / 3) * o + 0.05 * ww)
    np.testing.assert_allclose(w2, ww, rtol=1e-13, atol=1e-15)
    assert st.step == 2


def test_keller_conv_filter_quirk_in_a_step() -> None:
    """Keller flattens [out, in, kh, kw] to [out, in kh kw] but scales by sqrt(max(1, kh/kw))."""
    rng = np.random.default_rng(13)
    shape = (8, 1, 3, 1)
    w, g = rng.standard_normal(shape), rng.standard_normal(shape)
    spec = get_preset("keller")
    new_w, _ = muon_step(w, g, init_muon_state(w, spec), spec, lr=0.1)
    n = 0.05 * g + 0.95 * (0.05 * g)
    o = orthogonalize(n.reshape(8, 3), spec).reshape(shape)
    np.testing.assert_allclose(new_w, w - 0.1 * math.sqrt(3) * o, rtol=1e-14, atol=1e-15)
