"""`muonlab.fast.qk_clip_` against `muonlab.reference.qk_clip`: randomized layers, heads (MHA and GQA), shapes,
taus from all-clipped to none-clipped; in place on views; float32 / bf16 rounding; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fasthelpers import FAST
from hypothesis import given
from hypothesis import strategies as st

from muonlab import reference as R
from muonlab.fast.qk_clip import qk_clip_, qk_clip_factors


@st.composite
def clip_cases(draw: st.DrawFn) -> dict[str, object]:
    n_kv = draw(st.integers(1, 4))
    g = draw(st.integers(1, 3))
    return {
        "layers": draw(st.integers(1, 4)),
        "n_kv": n_kv,
        "n_heads": n_kv * g,
        "d_head": draw(st.integers(1, 5)),
        "d_model": draw(st.integers(1, 9)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        # where tau sits among the logits: below all (all clipped), a quantile, above all (none clipped)
        "where": draw(st.sampled_from(["all", "none", 0.25, 0.5, 0.75])),
        "alpha": draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
        "gqa": draw(st.sampled_from(R.GQA_RULES)),
        "stacked": draw(st.booleans()),
    }


def _draw(c: dict[str, object]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(int(c["seed"]))  # type: ignore[call-overload]
    L, H, K, dh, dm = (int(c[k]) for k in ("layers", "n_heads", "n_kv", "d_head", "d_model"))  # type: ignore[call-overload]
    wq = rng.standard_normal((L, H * dh, dm))
    wk = rng.standard_normal((L, K * dh, dm))
    s = rng.uniform(-5.0, 50.0, size=(L, H))
    where = c["where"]
    if where == "all":
        s = np.abs(s) + 1.0
        tau = 0.5
    elif where == "none":
        tau = 100.0
    else:
        tau = float(np.quantile(s, float(where)))  # type: ignore[arg-type]
        tau = max(tau, 1e-3)
    return wq, wk, s, tau


@FAST
@given(c=clip_cases())
def test_fast_matches_reference_float64(c: dict[str, object]) -> None:
    wq, wk, s, tau = _draw(c)
    H, K, alpha, gqa = int(c["n_heads"]), int(c["n_kv"]), float(c["alpha"]), str(c["gqa"])  # type: ignore[call-overload, arg-type]
    tq, tk = torch.from_numpy(wq.copy()), torch.from_numpy(wk.copy())
    args = (tq, tk) if c["stacked"] else (list(tq.unbind(0)), list(tk.unbind(0)))
    gamma = qk_clip_(*args, torch.from_numpy(s), tau=tau, n_heads=H, n_kv_heads=K, alpha=alpha, gqa=gqa)
    # gamma = tau/s, gamma**alpha and the product each round once, and torch's and NumPy's pow may differ by
    # one ulp: the float64 results agree to a few ulps (4 eps relative), not bit for bit.
    ulps = 4 * float(np.finfo(np.float64).eps)
    for layer in range(wq.shape[0]):
        want_q, want_k = R.qk_clip(
            wq[layer], wk[layer], s[layer], tau=tau, n_heads=H, n_kv_heads=K, alpha=alpha, gqa=gqa
        )  # type: ignore[arg-type]
        np.testing.assert_allclose(tq[layer].numpy(), want_q, rtol=ulps, atol=0)
        np.testing.assert_allclose(tk[layer].numpy(), want_k, rtol=ulps, atol=0)
    want_gamma = np.where(s > tau, tau / np.where(s > tau, s, 1.0), 1.0)
    np.testing.assert_allclose(gamma.numpy(), want_gamma, rtol=ulps, atol=0)
    if c["where"] == "none":
        np.testing.assert_array_equal(tq.numpy(), wq)  # nothing clipped: bitwise untouched
        np.testing.assert_array_equal(tk.numpy(), wk)
    if c["where"] == "all":
        assert bool((gamma < 1).all())


@FAST
@given(c=clip_cases(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_fast_low_precision_rounds_once(c: dict[str, object], dtype: torch.dtype) -> None:
    """float32 / bf16 weights: the result is the float64 answer rounded once to the dtype (to within one ulp of
    the float32 factor)."""
    wq, wk, s, tau = _draw(c)
    H, K, alpha, gqa = int(c["n_heads"]), int(c["n_kv"]), float(c["alpha"]), str(c["gqa"])  # type: ignore[call-overload, arg-type]
    tq, tk = torch.from_numpy(wq).to(dtype), torch.from_numpy(wk).to(dtype)
    q0, k0 = tq.double().numpy(), tk.double().numpy()
    qk_clip_(tq, tk, torch.from_numpy(s).float(), tau=tau, n_heads=H, n_kv_heads=K, alpha=alpha, gqa=gqa)
    ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-23
    for layer in range(wq.shape[0]):
        want_q, want_k = R.qk_clip(
            q0[layer], k0[layer], s[layer], tau=tau, n_heads=H, n_kv_heads=K, alpha=alpha, gqa=gqa
        )  # type: ignore[arg-type]
        np.testing.assert_allclose(tq[layer].double().numpy(), want_q, rtol=ulp + 2.0**-23, atol=0)
        np.testing.assert_allclose(tk[layer].double().numpy(), want_k, rtol=ulp + 2.0**-23, atol=0)


def test_in_place_on_fused_conv1d_views() -> None:
    """GPT-2's c_attn stores [d_model, 3 d_model] (Conv1D); its q / k parts seen as nn.Linear are transposed
    column slices, and the clip lands in the parameter."""
    torch.manual_seed(0)
    d, H = 8, 2
    c_attn = torch.randn(d, 3 * d, dtype=torch.float64)
    ref_q, ref_k = c_attn[:, :d].T.numpy().copy(), c_attn[:, d : 2 * d].T.numpy().copy()
    v_before = c_attn[:, 2 * d :].clone()
    s = torch.tensor([3.0, 0.5], dtype=torch.float64)
    qk_clip_(c_attn[:, :d].T, c_attn[:, d : 2 * d].T, s, tau=1.0, n_heads=H)
    want_q, want_k = R.qk_clip(ref_q, ref_k, s.numpy(), tau=1.0, n_heads=H)
    np.testing.assert_allclose(c_attn[:, :d].T.numpy(), want_q, rtol=4e-16, atol=0)
    np.testing.assert_allclose(c_attn[:, d : 2 * d].T.numpy(), want_k, rtol=4e-16, atol=0)
    assert torch.equal(c_attn[:, 2 * d :], v_before)  # values untouched


def test_factors_batched_shape_and_split_rule() -> None:
    s = torch.tensor([[400.0, 200.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    gamma, f_q, f_k = qk_clip_factors(s, tau=100.0, n_heads=4, n_kv_heads=2, gqa="split")
    assert gamma.shape == (2, 4) and f_q.shape == (2, 4) and f_k.shape == (2, 2)
    torch.testing.assert_close(f_k[0], torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(f_q[0], torch.tensor([0.5, math.sqrt(0.5), 1.0, 1.0]))
    assert bool((f_q[1] == 1).all() and (f_k[1] == 1).all())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"tau": 0.0}, ValueError, "tau: must be finite and > 0"),
        ({"tau": float("nan")}, ValueError, "tau: must be finite and > 0"),
        ({"alpha": -0.1}, ValueError, "alpha: must be in"),
        ({"gqa": "max"}, ValueError, "gqa: expected one of"),
        ({"n_kv_heads": 3}, ValueError, "n_kv_heads: 3 does not divide n_heads=4"),
        ({"max_logits": torch.ones(2, 3)}, ValueError, r"max_logits: expected shape \[..., 4\]"),
        ({"max_logits": torch.ones(3, 4)}, ValueError, r"max_logits: expected shape \(2, 4\) for 2 layer"),
        (
            {"max_logits": torch.tensor([[1.0, float("nan"), 1, 1], [1, 1, 1, 1]])},
            ValueError,
            "max_logits: must be finite",
        ),
        ({"max_logits": [1.0] * 4}, TypeError, "max_logits: expected a tensor"),
        ({"w_q": torch.ones(2, 7, 3)}, ValueError, r"w_q\[0\]: 7 rows do not split into n_heads=4"),
        ({"w_k": torch.ones(2, 8, 5)}, ValueError, r"w_k\[0\]: expected shape \(8, 3\)"),
        ({"w_k": torch.ones(3, 8, 3)}, ValueError, "w_k: 3 layers for 2 layers of w_q"),
        ({"w_q": [torch.ones(8, 3), torch.ones(8)]}, ValueError, r"w_q\[1\]: expected a 2-D"),
        ({"w_q": torch.ones(2, 2, 8, 3)}, ValueError, "w_q: expected"),
        ({"w_k": torch.ones(2, 8, 3, dtype=torch.int64)}, ValueError, r"w_k\[0\]: expected a floating tensor"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    args: dict[str, object] = {
        "w_q": torch.ones(2, 8, 3),
        "w_k": torch.ones(2, 8, 3),
        "max_logits": torch.ones(2, 4),
        "tau": 1.0,
        "n_heads": 4,
        **kwargs,
    }
    w_q, w_k = args.pop("w_q"), args.pop("w_k")
    snapshot = [t.clone() for t in (w_q, w_k) if isinstance(t, torch.Tensor)]
    with pytest.raises(exc, match=match):
        qk_clip_(w_q, w_k, args.pop("max_logits"), **args)  # type: ignore[arg-type]
    live = [t for t in (w_q, w_k) if isinstance(t, torch.Tensor)]
    assert all(torch.equal(a, b) for a, b in zip(live, snapshot, strict=True))  # validated before any write


def test_biases_clip_with_a_second_call_on_column_views() -> None:
    """q/k biases (GPT-2's c_attn) scale with their rows: a second call on ``b.unsqueeze(1)`` ([rows, 1] views)
    with the same logits equals the clip of the augmented ``[W | b]``, so the clipped logits are exact."""
    torch.manual_seed(4)
    H, K, dh, d = 4, 2, 3, 5
    w_q, w_k = torch.randn(H * dh, d, dtype=torch.float64), torch.randn(K * dh, d, dtype=torch.float64)
    b_q, b_k = torch.randn(H * dh, dtype=torch.float64), torch.randn(K * dh, dtype=torch.float64)
    s = torch.tensor([9.0, 1.0, 4.0, 20.0], dtype=torch.float64)
    aug_q, aug_k = torch.cat([w_q, b_q[:, None]], 1), torch.cat([w_k, b_k[:, None]], 1)
    for gqa in R.GQA_RULES:
        wq, wk, bq, bk = w_q.clone(), w_k.clone(), b_q.clone(), b_k.clone()
        kw = {"tau": 5.0, "n_heads": H, "n_kv_heads": K, "gqa": gqa}
        qk_clip_(wq, wk, s, **kw)  # type: ignore[arg-type]
        qk_clip_(bq.unsqueeze(1), bk.unsqueeze(1), s, **kw)  # type: ignore[arg-type]
        want_q, want_k = R.qk_clip(aug_q.numpy(), aug_k.numpy(), s.numpy(), **kw)  # type: ignore[arg-type]
        np.testing.assert_allclose(torch.cat([wq, bq[:, None]], 1).numpy(), want_q, rtol=4e-16, atol=0)
        np.testing.assert_allclose(torch.cat([wk, bk[:, None]], 1).numpy(), want_k, rtol=4e-16, atol=0)
