"""QK-Clip (arXiv 2507.20534; docs/variants.md "QK-Clip"): the logits after the clip, recomputed from the clipped
weights, are exactly ``min(S_max^h, tau)`` per head (MHA, and GQA with ``gqa="query"``), at most that with
``gqa="split"``; heads under ``tau`` keep their rows; bad input raises naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from refhelpers import FAST, Array

from muonlab.reference import GQA_RULES, qk_clip, qk_clip_factors


def head_max_logits(x: Array, w_q: Array, w_k: Array, n_heads: int, n_kv: int) -> Array:
    """``S_max^h = max_{i,j} q_i^h . k_j^h / sqrt(d_head)`` over the tokens ``x`` [T, d_model] (query head h reads
    key head ``h // (n_heads // n_kv)``, transformers' repeat_kv order)."""
    d_head = w_q.shape[0] // n_heads
    q = (x @ w_q.T).reshape(len(x), n_heads, d_head)
    k = (x @ w_k.T).reshape(len(x), n_kv, d_head)
    k = np.repeat(k, n_heads // n_kv, axis=1)
    logits = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(d_head)
    out: Array = logits.reshape(n_heads, -1).max(axis=1)
    return out


@st.composite
def layers(draw: st.DrawFn) -> tuple[int, int, int, int, int, float, float]:
    n_kv = draw(st.integers(1, 4))
    g = draw(st.integers(1, 3))
    d_head = draw(st.integers(1, 6))
    d_model = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**32 - 1))
    # tau from below every head (all clipped) to above every head (none clipped), via quantiles of S_max
    q = draw(st.sampled_from([-1.0, 0.0, 0.3, 0.5, 0.8, 1.0, 2.0]))
    alpha = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    return n_kv * g, n_kv, d_head, d_model, seed, q, alpha


def _setup(
    n_heads: int, n_kv: int, d_head: int, d_model: int, seed: int, q: float
) -> tuple[Array, Array, Array, Array, float]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((7, d_model))
    w_q = rng.standard_normal((n_heads * d_head, d_model)) * rng.uniform(0.5, 3.0)
    w_k = rng.standard_normal((n_kv * d_head, d_model)) * rng.uniform(0.5, 3.0)
    s = head_max_logits(x, w_q, w_k, n_heads, n_kv)
    if q < 0:
        tau = 0.5 * float(s.min()) if s.min() > 0 else 1e-3  # all positive heads clipped
    elif q > 1:
        tau = 2.0 * float(np.abs(s).max()) + 1.0  # none clipped
    else:
        tau = max(float(np.quantile(s, q)), 1e-3)
    return x, w_q, w_k, s, tau


@FAST
@given(case=layers(), gqa=st.sampled_from(GQA_RULES))
def test_clipped_logits_recomputed(case: tuple[int, int, int, int, int, float, float], gqa: str) -> None:
    n_heads, n_kv, d_head, d_model, seed, qt, alpha = case
    x, w_q, w_k, s, tau = _setup(n_heads, n_kv, d_head, d_model, seed, qt)
    wq0, wk0 = w_q.copy(), w_k.copy()
    new_q, new_k = qk_clip(w_q, w_k, s, tau=tau, n_heads=n_heads, n_kv_heads=n_kv, alpha=alpha, gqa=gqa)  # type: ignore[arg-type]
    np.testing.assert_array_equal(w_q, wq0)  # inputs unchanged
    np.testing.assert_array_equal(w_k, wk0)
    after = head_max_logits(x, new_q, new_k, n_heads, n_kv)
    want = np.minimum(s, tau)
    scale = max(1.0, float(np.abs(s).max()))
    if n_kv == n_heads or gqa == "query":
        np.testing.assert_allclose(after, want, rtol=0, atol=1e-12 * scale)
    else:
        assert np.all(after <= want + 1e-12 * scale)
        g = n_heads // n_kv
        for kv in range(n_kv):  # the group's worst head lands exactly at tau (if any is over)
            grp = slice(kv * g, (kv + 1) * g)
            if s[grp].max() > tau:
                np.testing.assert_allclose(after[grp].max(), tau, rtol=1e-12)
    # heads at or under tau: their query rows are untouched (bitwise)
    rows = np.repeat(s <= tau, d_head)
    np.testing.assert_array_equal(new_q[rows], w_q[rows])
    if n_kv < n_heads and gqa == "query":
        np.testing.assert_array_equal(new_k, w_k)  # shared key heads untouched


def test_mha_factors_are_the_paper_split() -> None:
    s = np.array([50.0, 200.0, 100.0, -300.0])
    f_q, f_k = qk_clip_factors(s, tau=100.0, n_heads=4, alpha=0.5)
    np.testing.assert_allclose(f_q, [1.0, math.sqrt(0.5), 1.0, 1.0], rtol=0, atol=0)
    np.testing.assert_allclose(f_k, [1.0, math.sqrt(0.5), 1.0, 1.0], rtol=0, atol=0)
    f_q, f_k = qk_clip_factors(s, tau=100.0, n_heads=4, alpha=1.0)
    np.testing.assert_array_equal(f_q, [1.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(f_k, [1.0, 1.0, 1.0, 1.0])
    # GQA: 4 query heads on 2 key heads
    f_q, f_k = qk_clip_factors(s, tau=100.0, n_heads=4, n_kv_heads=2, gqa="query")
    np.testing.assert_array_equal(f_q, [1.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(f_k, [1.0, 1.0])
    f_q, f_k = qk_clip_factors(np.array([400.0, 200.0, 1.0, 1.0]), tau=100.0, n_heads=4, n_kv_heads=2, gqa="split")
    np.testing.assert_allclose(f_q, [0.5, math.sqrt(0.5), 1.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(f_k, [0.5, 1.0], rtol=1e-15)


def test_explicit_rows() -> None:
    w_q = np.arange(8.0).reshape(4, 2)  # 2 heads of d_head 2
    w_k = np.ones((4, 2))
    new_q, new_k = qk_clip(w_q, w_k, np.array([4.0, 1.0]), tau=1.0, n_heads=2)
    np.testing.assert_array_equal(new_q, np.array([[0.0, 0.5], [1.0, 1.5], [4, 5], [6, 7]]))
    np.testing.assert_array_equal(new_k, np.array([[0.5, 0.5], [0.5, 0.5], [1, 1], [1, 1]]))
    assert new_q.dtype == np.float64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 0.0}, "tau: must be finite and > 0"),
        ({"tau": -1.0}, "tau: must be finite and > 0"),
        ({"tau": float("nan")}, "tau: must be finite and > 0"),
        ({"tau": float("inf")}, "tau: must be finite and > 0"),
        ({"tau": "1"}, "tau: expected a real number"),
        ({"alpha": 1.5}, r"alpha: must be in \[0, 1\]"),
        ({"gqa": "max"}, "gqa: expected one of"),
        ({"n_heads": 0}, "n_heads: expected a positive int"),
        ({"n_heads": 2.0}, "n_heads: expected a positive int"),
        ({"n_kv_heads": 3}, "n_kv_heads: 3 does not divide n_heads=4"),
        ({"max_logits": np.ones(3)}, r"max_logits: expected shape \(4,\)"),
        ({"max_logits": np.array([1.0, np.nan, 1.0, np.inf])}, r"max_logits: must be finite.*\[1 3\]"),
        ({"w_q": np.ones((7, 3))}, "w_q: 7 rows do not split into n_heads=4"),
        ({"w_q": np.ones((8,))}, "w_q: expected a 2-D"),
        ({"w_k": np.ones((8, 4))}, r"w_k: expected shape \(8, 3\)"),
        ({"w_k": np.ones((4, 3)), "n_kv_heads": 4}, r"w_k: expected shape \(8, 3\)"),
        ({"w_k": np.ones((8, 3), dtype=np.int64)}, "w_k: expected a floating array"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "w_q": np.ones((8, 3)),
        "w_k": np.ones((8, 3)),
        "max_logits": np.ones(4),
        "tau": 1.0,
        "n_heads": 4,
        **kwargs,
    }
    w_q, w_k, s = args.pop("w_q"), args.pop("w_k"), args.pop("max_logits")
    with pytest.raises(ValueError, match=match):
        qk_clip(w_q, w_k, s, **args)  # type: ignore[arg-type]
