"""Endpoint math against hand-computed values."""

from __future__ import annotations

import math

import pytest

from muonlab.harness.endpoints import (
    auc_early_loss,
    compute_endpoints,
    ema,
    first_crossing,
    least_squares_slope,
    mean_std,
    minutes_to_target_loss,
    tokens_to_target_loss,
    val_loss_at_budget,
)


def test_ema_bias_corrected() -> None:
    # m1 = 0.5*2 = 1 -> 1/(1-0.5) = 2; m2 = 0.5*1 + 0.5*4 = 2.5 -> 2.5/0.75 = 3.3333
    assert ema([2.0, 4.0], 0.5) == pytest.approx([2.0, 10.0 / 3.0])
    assert ema([3.0, 1.0], 0.0) == [3.0, 1.0]
    with pytest.raises(ValueError, match="beta"):
        ema([1.0], 1.0)


def test_tokens_to_target_interpolates() -> None:
    tokens = [100, 200, 300, 400]
    loss = [5.0, 4.0, 3.0, 2.0]
    # 3.5 lies halfway between (200, 4.0) and (300, 3.0)
    assert tokens_to_target_loss(tokens, loss, 3.5) == pytest.approx(250.0)
    # 3.2: (4.0 - 3.2) / (4.0 - 3.0) = 0.8 of the way -> 280
    assert tokens_to_target_loss(tokens, loss, 3.2) == pytest.approx(280.0)
    assert tokens_to_target_loss(tokens, loss, 3.0) == pytest.approx(300.0)
    assert tokens_to_target_loss(tokens, loss, 6.0) == 100.0  # already below at the first point
    assert tokens_to_target_loss(tokens, loss, 1.0) is None


def test_first_crossing_uses_first_crossing_not_last() -> None:
    assert first_crossing([0, 10, 20, 30], [4.0, 2.0, 5.0, 1.0], 3.0) == pytest.approx(5.0)


def test_minutes_to_target() -> None:
    assert minutes_to_target_loss([60.0, 120.0, 180.0], [4.0, 3.0, 2.0], 2.5) == pytest.approx(2.5)
    assert minutes_to_target_loss([60.0, 120.0], [4.0, 3.0], 1.0) is None


def test_auc_early_loss_trapezoid() -> None:
    tokens = [0, 10, 20, 30, 40]
    loss = [4.0, 3.0, 2.0, 1.0, 1.0]
    # window [0, 20]: trapezoids (4+3)/2*10 + (3+2)/2*10 = 60, span 20 -> 3.0
    assert auc_early_loss(tokens, loss, 0.5, 40) == pytest.approx(3.0)
    # window [0, 25]: + (2 + 1.5)/2*5 = 8.75 -> 68.75 / 25
    assert auc_early_loss(tokens, loss, 0.625, 40) == pytest.approx(68.75 / 25)
    # window [0, 4]: the point at 4 is interpolated (3.6): (4 + 3.6)/2
    assert auc_early_loss(tokens, loss, 0.1, 40) == pytest.approx(3.8)
    assert auc_early_loss([0], [4.0], 1.0, 40) is None
    with pytest.raises(ValueError, match="fraction"):
        auc_early_loss(tokens, loss, 0.0, 40)


def test_least_squares_slope() -> None:
    # y = 1 + 2x exactly
    assert least_squares_slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    # x = 0,1,2 ; y = 0,2,1: xbar 1, ybar 1, sxy = (-1)(-1) + 0 + (1)(0) = 1, sxx = 2 -> 0.5
    assert least_squares_slope([0, 1, 2], [0, 2, 1]) == pytest.approx(0.5)
    assert least_squares_slope([1], [1]) is None
    assert least_squares_slope([2, 2], [1, 3]) is None


def test_mean_std_sample() -> None:
    mean, std, n = mean_std([1.0, 2.0, 3.0, None])
    assert (mean, n) == (2.0, 3) and std == pytest.approx(1.0)
    assert mean_std([5.0]) == (5.0, 0.0, 1)
    assert mean_std([None, float("nan")]) == (None, None, 0)


def test_val_loss_at_budget_is_last_logged() -> None:
    assert val_loss_at_budget([1, 2, 3], [None, 3.0, None, 2.5, None]) == 2.5
    assert val_loss_at_budget([], [None]) is None


def test_compute_endpoints_combines() -> None:
    recs = [
        {"step": 1, "tokens": 100, "elapsed_s": 30.0, "train_loss": 5.0, "smoothed_loss": 5.0},
        {"step": 2, "tokens": 200, "elapsed_s": 60.0, "train_loss": 3.0, "smoothed_loss": 4.0, "val_loss": 3.9},
    ]
    out = compute_endpoints(recs, target=4.5, auc_fraction=1.0, total_tokens=200, weight_norms=[(0.0, 1.0), (1e6, 3.0)])
    assert out["tokens_to_target_loss"] == pytest.approx(150.0)
    assert out["minutes_to_target_loss"] == pytest.approx(0.75)
    assert out["val_loss"] == 3.9
    assert out["auc_early_loss"] == pytest.approx(4.0)
    assert out["weight_norm_slope"] == pytest.approx(2.0)  # per million tokens
    assert math.isclose(out["final_smoothed_loss"], 4.0)
