"""The 2026 orthogonalizer stage in float64: Gram Newton-Schulz, prescales, coefficient policies and the
magnitude rule, each against an independent NumPy transcription of its upstream function (file and commit
cited at each), plus `from_upstream`'s keyword mapping."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from refhelpers import FAST

import muonlab.reference as R
from muonlab.contract import MuonSpec, choices, from_upstream, get_preset, update_scale
from muonlab.contract.coefficients import COEFFICIENT_SETS, CoefficientScheduleWarning, schedule

Array = np.ndarray


def _svals(x: Array) -> Array:
    return np.linalg.svd(x, compute_uv=False)


# -- Gram Newton-Schulz -----------------------------------------------------------------------------------


def _upstream_gram(x: Array, coeffs: list[tuple[float, float, float]], restarts: list[int]) -> Array:
    """Dao-AILab/gram-newton-schulz ``gram_newton_schulz.py::GramNewtonSchulz.__call__`` (f08f25e; file at
    2763e8b), one matrix, float64 in place of its fp32/fp16 casts: the loop as written there."""
    transpose = x.shape[0] > x.shape[1]
    X = x.T if transpose else x
    X = X / (np.linalg.norm(X) + 1e-7)
    if X.shape[0] == X.shape[1]:
        for a, b, c in coeffs:
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        return X.T if transpose else X
    R_ = X @ X.T
    eye = np.eye(X.shape[0])
    Q = None
    for i, (a, b, c) in enumerate(coeffs):
        if i in restarts and i != 0:
            X = Q @ X
            R_ = X @ X.T
            Q = None
        Z = b * R_ + c * R_ @ R_
        Q = Z + a * eye if i == 0 or i in restarts else Q @ Z + a * Q
        if i < len(coeffs) - 1 and i + 1 not in restarts:
            RZ = R_ @ Z + a * R_
            R_ = Z @ RZ + a * RZ
    X = Q @ X
    return X.T if transpose else X


def _matrix(kind: str, m: int, n: int, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    if kind == "rank_deficient":
        k = max(1, min(m, n) // 3)
        return rng.standard_normal((m, k)) @ rng.standard_normal((k, n))
    return rng.standard_normal((m, n))


@FAST
@given(
    kind=st.sampled_from(["gaussian", "rank_deficient"]),
    m=st.integers(2, 40),
    n=st.integers(2, 40),
    name=st.sampled_from(["keller", "gram_polar_express", "polar_express", "leloykun"]),
    restarts=st.sampled_from([(2,), (), (1, 3)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_gram_newton_schulz_equals_newton_schulz(
    kind: str, m: int, n: int, name: str, restarts: tuple[int, ...], seed: int
) -> None:
    """Every ``Z_t`` is a polynomial in the first ``R``, so the Gram form is standard NS in exact arithmetic: in
    float64 the two agree to 1e-12 on wide, tall, square and rank-deficient inputs. Without a restart, rounding in
    ``R <- F R F`` compounds on a null space (measured up to 6e-11 on rank-deficient inputs, 2e-13 on full-rank
    ones): the restart is what holds it, so rank-deficient inputs are drawn with one."""
    assume(kind == "gaussian" or restarts)
    x = _matrix(kind, m, n, seed)
    coeffs = schedule(name, 5)
    ns = R.newton_schulz(x, coeffs)
    gram = R.gram_newton_schulz(x, coeffs, restarts=restarts)
    assert np.linalg.norm(gram - ns) <= 1e-12 * max(np.linalg.norm(ns), 1.0)


@pytest.mark.parametrize("shape", [(24, 96), (96, 24), (33, 33), (40, 41)])
def test_gram_newton_schulz_is_the_upstream_loop(shape: tuple[int, int]) -> None:
    x = _matrix("gaussian", *shape, seed=3)
    coeffs = list(schedule("gram_polar_express", 5))
    ours = R.gram_newton_schulz(x, tuple(coeffs), restarts=(2,))
    assert np.allclose(ours, _upstream_gram(x, coeffs, [2]), rtol=0, atol=1e-13)


def test_gram_polar_express_coefficients_are_the_paper_over_1_05() -> None:
    """gram-newton-schulz ``coefficients.py`` (7721134): ``(a/1.05, b/1.05**3, c/1.05**5)`` on all five of the
    paper's first triples (the last one too, unlike the paper's own rule)."""
    raw = [
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    ]
    want = tuple((a / 1.05, b / 1.05**3, c / 1.05**5) for a, b, c in raw)
    assert COEFFICIENT_SETS["gram_polar_express"] == want


# -- prescales (optax) --------------------------------------------------------------------------------------


def _optax_orthogonalize(x: Array, coeffs: list[tuple[float, float, float]], pre: str, eps: float) -> Array:
    """optax ``contrib/_muon.py::orthogonalize_via_newton_schulz`` with ``_aol_first_newton_schulz_iteration`` and
    ``_schatten_first_newton_schulz_iteration`` (google-deepmind/optax 2edbcbe, file at 67cfab4), one matrix, as
    written: the helpers clamp at their own ``eps=1e-8``."""
    transposed = x.shape[0] > x.shape[1]
    X = x.T if transposed else x.copy()
    if pre == "frobenius":
        X = X / (np.linalg.norm(X, ord="fro") + eps)
    elif pre == "spectral":
        X = X / (np.linalg.norm(X, ord=2) + eps)
    for i, (a, b, c) in enumerate(coeffs):
        A = X @ X.T
        if i == 0 and pre == "aol":
            s = (1.0 / np.sqrt(np.clip(np.abs(A).sum(axis=-1), 1e-8, None)))[:, None]
            X, A = X * s, A * s * s.T
        elif i == 0 and pre == "schatten":
            s = 1.0 / np.sqrt(max(np.linalg.norm(A, ord="fro"), 1e-8))
            X, A = X * s, A * s**2
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X


@pytest.mark.parametrize("pre", ["frobenius", "spectral", "schatten", "aol"])
@pytest.mark.parametrize("ns_coeffs", ["standard", "dion"])
@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (20, 20)])
def test_optax_preconditioning_matches_optax(pre: str, ns_coeffs: str, shape: tuple[int, int]) -> None:
    spec = from_upstream("optax", preconditioning=pre, ns_coeffs=ns_coeffs, eps=1e-6)
    x = _matrix("gaussian", *shape, seed=11)
    rows = list(COEFFICIENT_SETS["keller"] * 5 if ns_coeffs == "standard" else COEFFICIENT_SETS["leloykun"])
    want = _optax_orthogonalize(x, rows, pre, 1e-6)
    got = R.orthogonalize(x, spec)
    assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)


@pytest.mark.parametrize("pre", ["schatten", "aol"])
def test_optax_clamped_prescales_ignore_the_user_eps(pre: str) -> None:
    """optax calls the aol / schatten helpers without ``eps``: they clamp at 1e-8 whatever ``muon(eps=...)``."""
    assert from_upstream("optax", preconditioning=pre, eps=1e-3) == from_upstream("optax", preconditioning=pre)
    assert from_upstream("optax", preconditioning="frobenius", eps=1e-3).eps == 1e-3


@given(pre=st.sampled_from(choices("prescale")), orth=st.sampled_from(["newton_schulz", "gram_newton_schulz"]))
def test_prescales_map_a_zero_row_to_zero(pre: str, orth: str) -> None:
    """A zero row under ``"aol"`` is scaled by 1e4 (the clamp) times 0: it stays exactly 0 (V4 edge cases)."""
    x = _matrix("gaussian", 6, 20, seed=5)
    x[2] = 0.0
    out = R.orthogonalize(x, MuonSpec(prescale=pre, orthogonalizer=orth, compute_dtype="float32"))  # type: ignore[arg-type]
    assert np.all(out[2] == 0.0) and np.all(np.isfinite(out))


# -- Turbo-Muon AOL and coefficient policies ------------------------------------------------------------------


def _bands(spec: MuonSpec) -> tuple[float, float]:
    s = _svals(R.orthogonalize(np.random.default_rng(0).standard_normal((256, 1024)), spec))
    return float(s.min()), float(s.max())


@pytest.mark.parametrize(
    ("name", "prescale", "steps", "policy", "band"),
    [
        ("turbo_aol", "aol", 4, "repeat_last", (0.941, 1.050)),  # Turbo-Muon cdb03db
        ("turbo_aol_b73111d", "aol", 4, "repeat_last", (0.987, 1.012)),  # b73111d with its prescale
        ("turbo_aol_b73111d", "frobenius", 4, "cycle", (0.987, 1.012)),  # NeMo "aol" at num_ns_steps=4
        ("turbo_aol_b73111d", "frobenius", 5, "cycle", (0.523, 0.641)),  # NeMo's default 5 steps: the pitfall
        ("deepseekv4", "frobenius", 10, "repeat_last", (1.000, 1.001)),
        ("gram_polar_express", "frobenius", 5, "repeat_last", (0.846, 1.124)),
        ("nemo_polar_express", "frobenius", 5, "repeat_last", (0.871, 1.124)),
        ("cans", "frobenius", 5, "repeat_last", (0.887, 1.120)),
        ("cubic5", "frobenius", 5, "cycle", (0.774, 1.300)),
    ],
)
def test_coefficient_set_bands(name: str, prescale: str, steps: int, policy: str, band: tuple[float, float]) -> None:
    """Output singular values on a Gaussian 256x1024 input, float64: the bands docs/variants.md states (V5, V12.2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoefficientScheduleWarning)
        spec = MuonSpec(ns_coefficients=name, prescale=prescale, ns_steps=steps, ns_policy=policy)  # type: ignore[arg-type]
    lo, hi = _bands(spec)
    assert abs(lo - band[0]) <= 1.5e-3 and abs(hi - band[1]) <= 1.5e-3, (lo, hi)


def test_cycling_past_a_set_or_leaving_its_prescale_warns() -> None:
    with pytest.warns(CoefficientScheduleWarning, match="cycle past its 4 triples"):
        from_upstream("emerging_optimizers", coefficient_type="aol")  # NeMo's default num_ns_steps=5
    with pytest.warns(CoefficientScheduleWarning, match="designed for prescale='aol'"):
        MuonSpec(ns_coefficients="turbo_aol", ns_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoefficientScheduleWarning)
        MuonSpec(ns_coefficients="turbo_aol", ns_steps=4, prescale="aol")
        MuonSpec(ns_coefficients="keller", ns_steps=8, ns_policy="cycle")  # one triple: cycling is repeating
    assert schedule("leloykun", 7, "cycle")[5:] == COEFFICIENT_SETS["leloykun"][:2]
    assert schedule("leloykun", 7, "repeat_last")[5:] == COEFFICIENT_SETS["leloykun"][-1:] * 2


def test_cubic5_needs_exactly_five_steps() -> None:
    with pytest.raises(ValueError, match="exactly 5 steps"):
        from_upstream("emerging_optimizers", coefficient_type="cubic5", num_ns_steps=4)
    assert from_upstream("emerging_optimizers", coefficient_type="cubic5").ns_steps == 5


# -- magnitude (optax adaptive) ---------------------------------------------------------------------------------


def test_dual_norm_magnitude_by_hand() -> None:
    """optax ``scale_by_muon(adaptive=True)``: ``O <- sum(conj(mu_hat) * O) O`` per matrix."""
    spec = MuonSpec(magnitude="dual_norm", nd_mode="batch")
    n = np.random.default_rng(2).standard_normal((3, 5, 7))
    o = R.orthogonalize(n, spec)
    want = np.stack([np.sum(n[k] * o[k]) * o[k] for k in range(3)])
    assert np.allclose(R.magnitude(n, o, spec), want, rtol=1e-14, atol=0)


# -- from_upstream ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["torch", "keller", "optax", "dion", "adamuon"])
def test_from_upstream_defaults_are_the_presets(source: str) -> None:
    assert from_upstream(source) == get_preset(source)


def test_from_upstream_refuses_unknown_keywords_and_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match=r"unknown keyword.*accepts learning_rate, ns_coeffs"):
        from_upstream("optax", learning_rat=0.1)
    with pytest.raises(ValueError, match="unknown upstream"):
        from_upstream("adamw")
    for source, kw in [
        ("emerging_optimizers", {"coefficient_type": "custom"}),
        ("optax", {"weight_decay_mask": lambda p: p}),
        ("dion", {"newton_schulz_func": print}),
        ("deepspeed", {"num_heads": 12}),
        ("torch", {"adjust_lr_fn": "unit"}),
    ]:
        with pytest.raises(ValueError, match="cannot be expressed"):
            from_upstream(source, **kw)


@pytest.mark.parametrize(
    ("mode", "extra", "want"),
    [
        ("spectral", 1.0, np.sqrt(96)),
        ("spectral", 0.2, 0.2 * np.sqrt(96)),
        ("shape_scaling", 2.0, 2 * np.sqrt(3.0)),
        ("unit_rms_norm", 1.0, np.sqrt(3.0)),
    ],
)
def test_nemo_scale_modes(mode: str, extra: float, want: float) -> None:
    """``get_muon_scale_factor`` (muon.py, fd77292) times ``extra_scale_factor``, on a 96x32 matrix."""
    spec = from_upstream("emerging_optimizers", scale_mode=mode, extra_scale_factor=extra)
    assert update_scale((96, 32), spec) == pytest.approx(want, rel=1e-15)


@pytest.mark.parametrize(
    ("method", "factor"), [("decoupled", 0.1 * 0.01), ("independent", 0.01), ("palm", 0.1 * 0.1 * 0.01)]
)
def test_nemo_weight_decay_methods(method: str, factor: float) -> None:
    """``W <- W - f W`` before the update with ``f = eta lambda`` / ``lambda`` / ``eta^2 lambda``; ``"l2"`` adds
    ``lambda W`` to the gradient."""
    spec = from_upstream("emerging_optimizers", weight_decay_method=method, lr=0.1, weight_decay=0.01)
    w = np.random.default_rng(4).standard_normal((4, 6))
    g = np.zeros_like(w)
    new, _ = R.muon_step(w, g, R.init_muon_state(w, spec), spec, lr=0.1)
    assert np.allclose(new, w * (1.0 - factor), rtol=1e-14, atol=0)
    assert from_upstream("emerging_optimizers", weight_decay_method="l2").decay_placement == "update"


def test_dion_gram_flag_swaps_the_map() -> None:
    """dion ``use_gram_newton_schulz=True`` ignores ``epsilon`` and runs PE/1.05 in float16 (megabatch_base.py)."""
    spec = from_upstream("dion", use_gram_newton_schulz=True, epsilon=1e-3)
    assert (spec.orthogonalizer, spec.ns_coefficients, spec.eps, spec.norm_scale, spec.compute_dtype) == (
        "gram_newton_schulz",
        "gram_polar_express",
        1e-7,
        1.0,
        "float16",
    )
    assert from_upstream("deepspeed").orthogonalizer == "gram_newton_schulz"
    assert from_upstream("deepspeed", ns_method="standard").orthogonalizer == "newton_schulz"


# -- NeMo's newton_schulz (emerging-optimizers needs Python >= 3.12: an independent transcription instead) ---------

_NEMO_REPEAT_LAST = ("polar_express", "cans", "deepseekv4")


def _nemo_newton_schulz(x: Array, steps: int, coefficient_type: str) -> Array:
    """NVIDIA-NeMo/Emerging-Optimizers ``muon_utils.newton_schulz`` (fd77292; file at ca0f167) in float64, one
    matrix, ``tp_group=None``, ``normalize_in_double=False``: transpose when ``m > n``, ``F.normalize(x, eps=1e-15)``
    (``x / max(||x||_F, eps)``), the triples by ``get_coefficient_iterator`` ("repeat_last" for the types above,
    "cycle" otherwise), the cubic path when ``c == 0``."""
    from itertools import chain, cycle, islice, repeat

    table = {
        "simple": COEFFICIENT_SETS["keller"],
        "quintic": COEFFICIENT_SETS["leloykun"],
        "polar_express": COEFFICIENT_SETS["nemo_polar_express"],
        "cans": COEFFICIENT_SETS["cans"],
        "aol": COEFFICIENT_SETS["turbo_aol_b73111d"],
        "deepseekv4": COEFFICIENT_SETS["deepseekv4"],
        "cubic5": COEFFICIENT_SETS["cubic5"],
    }
    sets = list(table[coefficient_type])
    it = chain(sets, repeat(sets[-1])) if coefficient_type in _NEMO_REPEAT_LAST else cycle(sets)
    transpose = x.shape[0] > x.shape[1]
    X = x.T if transpose else x
    X = X / max(np.linalg.norm(X), 1e-15)
    for a, b, c in islice(it, steps):
        A = X @ X.T
        X = a * X + b * A @ X if c == 0 else a * X + (b * A + c * A @ A) @ X
    return X.T if transpose else X


@pytest.mark.parametrize("steps", [4, 5, 8, 10])
@pytest.mark.parametrize("ctype", ["simple", "quintic", "polar_express", "cans", "aol", "deepseekv4", "cubic5"])
def test_nemo_newton_schulz(ctype: str, steps: int) -> None:
    if ctype == "cubic5" and steps != 5:
        pytest.skip("cubic5 is a fixed 5-step schedule (NeMo raises; test_cubic5_needs_exactly_five_steps)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoefficientScheduleWarning)  # NeMo cycles some sets past their end
        spec = from_upstream("emerging_optimizers", coefficient_type=ctype, num_ns_steps=steps)
    x = _matrix("gaussian", 24, 56, seed=9)
    for m in (x, x.T, 1e-12 * x):  # wide, tall, and tiny (the 1e-15 clamp keeps NeMo a true orthogonalizer)
        want = _nemo_newton_schulz(m, steps, ctype)
        assert np.linalg.norm(R.orthogonalize(m, spec) - want) <= 1e-12 * np.linalg.norm(want)
