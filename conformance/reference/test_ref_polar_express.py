"""The Polar Express generator reproduces the published coefficient sets (docs/variants.md section 5)."""

from __future__ import annotations

import numpy as np
import pytest

from muonlab.contract import coefficients
from muonlab.reference import optimal_composition, optimal_quintic
from muonlab.reference.polar_express import quintic


def test_reproduces_modded_and_dion_pe5() -> None:
    got = np.array(optimal_composition(1e-3, 5, 0.02, 0.02))
    np.testing.assert_allclose(got, np.array(coefficients.POLAR_EXPRESS), rtol=1e-10, atol=0)


def test_reproduces_paper_listing_before_safety_division() -> None:
    got = np.array(optimal_composition(1e-3, 8, 0.0, 0.02407327424182761))
    raw = np.array(coefficients._PAPER_RAW)
    np.testing.assert_allclose(got[:7], raw[:7], rtol=1e-10, atol=0)
    # The 8th triple: the recursion's upper bound is u = 2 - l = 1 + 1.04e-9, and the degenerate branch
    # returns (15/8, -10/8, 3/8) / (u, u^3, u^5); the paper prints the u -> 1 limit exactly.
    np.testing.assert_array_equal(raw[7], [1.875, -1.25, 0.375])
    np.testing.assert_allclose(got[7], raw[7], rtol=1e-8, atol=0)
    assert not np.array_equal(got[7], raw[7])


def test_paper_set_is_raw_divided_by_safety() -> None:
    raw = optimal_composition(1e-3, 8, 0.0, 0.02407327424182761)
    for (a, b, c), (pa, pb, pc) in zip(raw[:7], coefficients.POLAR_EXPRESS_PAPER[:7], strict=True):
        np.testing.assert_allclose([a / 1.01, b / 1.01**3, c / 1.01**5], [pa, pb, pc], rtol=1e-10)


def test_package_default_first_triple() -> None:
    a, b, c = optimal_composition(1e-3, 10, 1e-2, 0.02)[0]
    np.testing.assert_allclose([a, b, c], [8.2373, -23.1577, 16.6806], atol=1e-4)


@pytest.mark.parametrize(("lo", "hi"), [(1e-3, 1.0), (0.1, 1.0), (0.5, 2.0), (0.9, 1.1)])
def test_optimal_quintic_equioscillates(lo: float, hi: float) -> None:
    """Minimax: the error 1 - p reaches +-E at lo, q, r, hi with alternating signs and |1 - p| <= E inside."""
    coeffs = optimal_quintic(lo, hi)
    a, b, c = coeffs
    disc = np.sqrt(9 * b * b - 20 * a * c)
    q, r = np.sqrt((-3 * b - disc) / (10 * c)), np.sqrt((-3 * b + disc) / (10 * c))
    errs = [1.0 - quintic(coeffs, x) for x in (lo, q, r, hi)]
    e = abs(errs[0])
    np.testing.assert_allclose(np.abs(errs), e, rtol=1e-9)
    assert errs[0] > 0 > errs[1] and errs[2] > 0 > errs[3]
    grid = np.linspace(lo, hi, 4001)
    assert np.max(np.abs(1.0 - (a * grid + b * grid**3 + c * grid**5))) <= e * (1 + 1e-9)


def test_degenerate_interval_is_the_limit_polynomial() -> None:
    np.testing.assert_allclose(optimal_quintic(1.0, 1.0), (1.875, -1.25, 0.375), rtol=0, atol=0)


@pytest.mark.parametrize(
    "bad", [dict(l=0.0, num_iters=5), dict(l=1e-3, num_iters=0), dict(l=1e-3, num_iters=5, cushion=-1.0)]
)
def test_generator_rejects_bad_arguments(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        optimal_composition(**bad)  # type: ignore[arg-type]
