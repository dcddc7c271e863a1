"""AdaMuon (arXiv 2507.11005; Chongjie-Si/AdaMuon): the presets ``adamuon`` (code v2), ``adamuon_v1`` (code v1)
and ``adamuon_paper`` (the algorithm box) against float64 transcriptions of the upstream step loops, written from
the code (``gpt2/models/optimizers/adamuon.py`` @5b99dd0, ``adamuon.py`` @3b84e03) and the box (``src/algorithm.png``
@5b99dd0) per shared/specs/variants-2026.md V1; and the properties V1.8 lists."""

from __future__ import annotations

import numpy as np
import pytest

import muonlab.reference as R
from muonlab.contract import MuonSpec

KELLER = (3.4445, -4.7750, 2.0315)


def _ns5(g: np.ndarray, steps: int = 5, eps: float = 1e-7) -> np.ndarray:
    """``zeropower_via_newtonschulz5`` in float64 (the bf16 casts dropped): transpose when tall, ``X/(||X||+eps)``."""
    a, b, c = KELLER
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def _upstream(version: str, w: np.ndarray, grads: list[np.ndarray], lr: float, wd: float) -> np.ndarray:
    """The upstream step, one parameter, ``len(grads)`` steps; returns the final weight."""
    beta, eps = 0.95, 1e-8
    m_buf = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if version == "paper":  # M_t = beta M + G (sum form, no Nesterov); O = NS(Sign(M))
            m_buf = beta * m_buf + g
            n = m_buf
        else:  # buf.lerp_(g, 1 - momentum); g = g.lerp_(buf, momentum) (Nesterov)
            m_buf = m_buf + (1 - beta) * (g - m_buf)
            n = g + beta * (m_buf - g)
        o = _ns5(n if version == "v1" else np.sign(n))
        if version == "v1":  # separate beta2, bias-corrected
            b2 = 0.999
            v = b2 * v + (1 - b2) * o * o
            o_hat = o / (np.sqrt(v / (1 - b2**t)) + eps)
            o_hat = o_hat * np.sqrt(min(w.shape)) / (np.linalg.norm(o_hat) + eps)  # inside the step
            update = 0.2 * np.sqrt(max(w.shape)) * o_hat  # alpha = -lr 0.2 sqrt(max(A, B))
        else:  # v.mul_(momentum).addcmul_(1 - momentum, o, o)
            v = beta * v + (1 - beta) * o * o
            o_hat = o / (np.sqrt(v) + eps)
            denom = np.linalg.norm(o_hat) + (eps if version == "v2" else 0.0)  # the box has no eps here
            update = 0.2 * np.sqrt(min(w.shape) * max(w.shape)) / denom * o_hat
        w = w * (1 - lr * wd) - lr * update
    return w


PRESET = {"v2": "adamuon", "v1": "adamuon_v1", "paper": "adamuon_paper"}


def _run(spec: MuonSpec, w: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    state = R.init_muon_state(w, spec)
    for g in grads:
        w, state = R.muon_step(w, g, state, spec)
    return w


@pytest.mark.parametrize("version", sorted(PRESET))
@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (16, 16)])
def test_presets_are_the_upstream_steps(version: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(6)]
    spec = R.get_preset(PRESET[version])
    got = _run(spec, w0, grads)
    want = _upstream(version, w0, grads, spec.lr, spec.weight_decay)
    assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want - w0))


@pytest.mark.parametrize("version", sorted(PRESET))
def test_update_rms_is_0_2_and_step_one_is_a_sign(version: str) -> None:
    """``||U||_F = 0.2 sqrt(mn)`` every step (1e-6 relative, while ``||O_hat||_F >> eps``); at step 1,
    ``U = 0.2 sign(O_1)`` on at least 99.9 % of entries (``V_1 = (1 - beta) O_1^2``, bias-corrected for v1)."""
    spec = R.get_preset(PRESET[version]).replace(weight_decay=0.0, lr=1.0)
    rng = np.random.default_rng(6)
    shape = (24, 40)
    w = np.zeros(shape)
    state = R.init_muon_state(w, spec)
    for t in range(4):
        g = rng.standard_normal(shape)
        new, state = R.muon_step(w, g, state, spec)
        u = w - new
        assert abs(np.linalg.norm(u) / (0.2 * np.sqrt(u.size)) - 1.0) <= 1e-6
        if t == 0:
            o1 = R.orthogonalize(np.sign(g) if spec.equilibrate == "sign" else g, spec)
            close = np.isclose(u, 0.2 * np.sign(o1), rtol=1e-3, atol=0)  # off by eps / (sqrt(1 - beta) |O_ij|)
            assert close.mean() >= 0.999
        w = new


def test_sign_makes_v2_invariant_to_the_gradient_scale() -> None:
    """Scaling every gradient by 4 (exact in binary floating point) leaves code v2's trajectory unchanged bit for
    bit: the gradients reach the update only through ``sign(N)``."""
    spec = R.get_preset("adamuon")
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal((10, 14))
    grads = [rng.standard_normal((10, 14)) for _ in range(4)]
    np.testing.assert_array_equal(_run(spec, w0, grads), _run(spec, w0, [4.0 * g for g in grads]))


@pytest.mark.parametrize("name", sorted(PRESET.values()))
def test_zero_gradient_gives_a_zero_update(name: str) -> None:
    spec = R.get_preset(name).replace(weight_decay=0.0)
    w0 = np.random.default_rng(8).standard_normal((6, 9))
    out = _run(spec, w0, [np.zeros((6, 9))] * 3)
    np.testing.assert_array_equal(out, w0)


def test_a_nan_gradient_is_refused_before_the_sign() -> None:
    """``sign`` would hide a NaN (ATen's CPU kernel maps it to 0): the step's finiteness check comes first, so a
    non-finite gradient raises (or is skipped) as for every other spec, in both implementations."""
    torch = pytest.importorskip("torch")
    from muonlab.fast import Muon

    g = np.ones((4, 6))
    g[1, 2] = np.nan
    spec = R.get_preset("adamuon")
    with pytest.raises(ValueError, match="non-finite"):
        R.muon_step(np.zeros((4, 6)), g, R.init_muon_state(np.zeros((4, 6)), spec), spec)
    p = torch.nn.Parameter(torch.zeros(4, 6))
    p.grad = torch.tensor(g, dtype=torch.float32)
    with pytest.raises(ValueError, match="NaN"):
        Muon([p], "adamuon").step()
    skipping = Muon([p], "adamuon", nonfinite="skip")
    skipping.step()
    assert bool((p == 0).all())


# -- NVIDIA Emerging-Optimizers AdaptiveMuon (fd77292, adaptive_muon.py; needs Python >= 3.12: a transcription) ---

NEMO_QUINTIC = [  # muon_utils._COEFFICIENT_SETS["quintic"], cycled
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
]


def _nemo_adaptive(method: str, w: np.ndarray, grads: list[np.ndarray], kw: dict[str, float]) -> np.ndarray:
    """``OrthogonalizedOptimizer.step`` with ``AdaptiveMuon``'s orthogonalize, float64, one parameter: decoupled
    decay first, ``M = lerp(M, G, 1-beta)`` (no Nesterov), ``O = newton_schulz(M, 5, "quintic")``
    (``x / max(||x||_F, 1e-15)``, transposed when tall), ``_apply_moment2_normalization``, then
    ``get_muon_scale_factor(m, n, "spectral") = sqrt(max(m, n))``, ``W <- W - lr U``."""
    lr, beta, wd, beta2, eps = kw["lr"], kw["momentum"], kw["weight_decay"], 0.95, 1e-8
    m_buf = np.zeros_like(w)
    tall = w.shape[0] > w.shape[1]
    moment2 = np.zeros_like(w)  # "adamuon": full size
    v_namo = 0.0  # "namo": one scalar
    if method == "normuon":  # [m, 1] if m >= n else [1, n]: per element of the longer dim
        moment2 = np.zeros((w.shape[0], 1)) if w.shape[0] >= w.shape[1] else np.zeros((1, w.shape[1]))
    for g in grads:
        w = w - lr * wd * w
        m_buf = m_buf + (1 - beta) * (g - m_buf)
        x = m_buf.T if tall else m_buf
        x = x / max(np.linalg.norm(x), 1e-15)
        for i in range(5):
            a, b, c = NEMO_QUINTIC[i % len(NEMO_QUINTIC)]
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        o = x.T if tall else x
        if method == "adamuon":
            moment2 = moment2 + (1 - beta2) * (o * o - moment2)
            u = o / (np.sqrt(moment2) + eps)
        elif method == "namo":  # v <- lerp(v, ||G||_F^2, 1 - beta2) of the raw grad; alpha = ||M||_F / (sqrt(v) + eps)
            v_namo = v_namo + (1 - beta2) * (float(np.sum(g * g)) - v_namo)
            u = np.linalg.norm(m_buf) / (np.sqrt(v_namo) + eps) * o
        else:
            avg = -1 if o.shape[-2] >= o.shape[-1] else -2
            moment2 = moment2 + (1 - beta2) * (np.mean(o * o, axis=avg, keepdims=True) - moment2)
            u = o / np.sqrt(np.maximum(moment2, eps))
            u = u * (np.linalg.norm(o) / max(np.linalg.norm(u), eps))  # _match_frobenius_norm
        w = w - lr * np.sqrt(max(w.shape)) * u
    return w


@pytest.mark.parametrize("method", ["adamuon", "normuon", "namo"])
@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_nemo_adaptive_muon_is_from_upstream(method: str, shape: tuple[int, int]) -> None:
    """``from_upstream("emerging_optimizers_adaptive", moment2_method=...)``: NeMo's ``"adamuon"`` (no sign, a
    separate beta2, no RMS alignment, then the scale mode), ``"normuon"`` (clamped, Frobenius-matched) and
    ``"namo"`` (a scalar EMA of the raw gradient's squared norm, ``alpha = ||N||_F / (sqrt(v) + eps)``)."""
    kw = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1}
    spec = R.from_upstream("emerging_optimizers_adaptive", moment2_method=method, **kw)
    rng = np.random.default_rng(9)
    w0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(5)]
    got = _run(spec, w0, grads)
    want = _nemo_adaptive(method, w0, grads, kw)
    assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want - w0))


def test_nemo_adaptive_muon_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="no default for lr, momentum, weight_decay"):
        R.from_upstream("emerging_optimizers_adaptive")
    with pytest.raises(ValueError, match="weight_decay_method='l2' cannot be expressed"):
        R.from_upstream(
            "emerging_optimizers_adaptive",
            lr=1e-3,
            momentum=0.9,
            weight_decay=0.1,
            moment2_method="namo",
            weight_decay_method="l2",
        )


@pytest.mark.parametrize("shape", [(12, 20), (3, 20, 12)])
def test_fast_namo_matches_reference(shape: tuple[int, ...]) -> None:
    """NAMO in `muonlab.fast`: the gradient statistic taken in stage 1, ``||N||_F`` before ``Orth``."""
    torch = pytest.importorskip("torch")
    from muonlab.fast import Muon

    kw = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1}
    spec = R.from_upstream(
        "emerging_optimizers_adaptive", moment2_method="namo", fp32_matmul_prec="highest", **kw
    ).replace(nonfinite="skip")
    rng = np.random.default_rng(10)
    w0 = rng.standard_normal(shape)
    w, state = w0, R.init_muon_state(w0, spec)
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = Muon([p], spec, backend="torch")
    for _ in range(4):
        g = rng.standard_normal(shape)
        w, state = R.muon_step(w, g, state, spec)
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    got = p.detach().double().numpy()
    assert np.linalg.norm((got - w0) - (w - w0)) <= 1e-4 * np.linalg.norm(w - w0)
    assert state.second_moment is not None
    np.testing.assert_allclose(opt.state[p]["second_moment"].double().numpy(), state.second_moment, rtol=1e-5)
