"""Abort rules fire on NaN, sustained rising loss and weight blow-up, and not on normal curves."""

from __future__ import annotations

import math
import random

import pytest

from muonlab.harness.abort import AbortMonitor


def _normal_curve(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [2.0 + 5.0 * math.exp(-i / 60) + rng.gauss(0, 0.15) for i in range(n)]


def test_normal_curve_does_not_abort() -> None:
    m = AbortMonitor(window=20, patience=10)
    for step, loss in enumerate(_normal_curve(400), start=1):
        assert m.observe_loss(step, loss) is None
    assert not m.aborted


def test_nan_and_inf_abort_at_once() -> None:
    for bad in (float("nan"), float("inf")):
        m = AbortMonitor(window=20, patience=10)
        m.observe_loss(1, 3.0)
        reason = m.observe_loss(2, bad)
        assert reason is not None and "non-finite" in reason and "step 2" in reason


def test_sustained_rise_aborts_after_patience() -> None:
    m = AbortMonitor(window=10, rise_factor=1.25, patience=5)
    for step in range(1, 21):
        assert m.observe_loss(step, 2.0) is None
    # 1.3x the median for 4 steps then back: a spike, no abort
    for step in range(21, 25):
        assert m.observe_loss(step, 2.6) is None
    assert m.observe_loss(25, 2.0) is None
    # sustained: the 5th consecutive step above 2.5 aborts
    reasons = [m.observe_loss(s, 3.0) for s in range(26, 31)]
    assert reasons[:4] == [None] * 4 and reasons[4] is not None and "rolling median" in reasons[4]


def test_below_factor_does_not_abort() -> None:
    m = AbortMonitor(window=10, rise_factor=1.25, patience=3)
    for step in range(1, 11):
        m.observe_loss(step, 2.0)
    for step in range(11, 100):
        assert m.observe_loss(step, 2.45) is None  # 1.225x < 1.25x


def test_weight_blowup() -> None:
    m = AbortMonitor(early_points=3, weight_norm_factor=3.0)
    for step, w in zip((10, 20, 30), (1.0, 1.2, 1.1), strict=True):
        assert m.observe_weight_norms(step, {"a": w, "b": 5.0}) is None
    assert m.observe_weight_norms(40, {"a": 3.2, "b": 5.0}) is None  # 3.2 < 3 * median 1.1 = 3.3
    reason = m.observe_weight_norms(50, {"a": 3.4, "b": 5.0})
    assert reason is not None and "a" in reason and "step 50" in reason


def test_weight_decay_shrinkage_does_not_abort() -> None:
    m = AbortMonitor(early_points=3)
    for step in range(1, 50):
        assert m.observe_weight_norms(step, {"a": 10.0 * 0.97**step}) is None


def test_disabled_keeps_only_nonfinite() -> None:
    m = AbortMonitor(window=2, patience=1, enabled=False)
    for s, loss in enumerate([1.0, 1.0, 10.0, 10.0], start=1):
        assert m.observe_loss(s, loss) is None
    assert m.observe_loss(5, float("nan")) is not None


def test_state_dict_round_trip() -> None:
    a = AbortMonitor(window=5, patience=3)
    curve = [2.0] * 10 + [3.0] * 2
    for s, loss in enumerate(curve, start=1):
        a.observe_loss(s, loss)
    b = AbortMonitor(window=5, patience=3)
    b.load_state_dict(a.state_dict())
    assert a.observe_loss(13, 3.0) == b.observe_loss(13, 3.0) is not None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        AbortMonitor(window=0)
    with pytest.raises(ValueError, match="rise_factor"):
        AbortMonitor(rise_factor=1.0)
