"""Polar Express coefficient generator (Amsel, Persson, Musco, Gower; arXiv 2505.16932), pure NumPy float64.

Follows the procedure of NoahAmsel/PolarExpress ``polar_express/_core.py`` (``optimal_quintic``,
``optimal_composition``) as described in [S §5.1]:

* `optimal_quintic` finds the minimax odd quintic ``p(x) = a x + b x^3 + c x^5`` approximating 1 on
  ``[l, u]`` by a simplified Remez exchange on four points ``{l, q, r, u}``;
* `optimal_composition` chains ``num_iters`` such quintics, each designed for the image interval of the
  previous ones, with a lower-bound cushion and a safety factor.

``optimal_composition(1e-3, 5, 0.02, 0.02)`` is ``coefficients.POLAR_EXPRESS`` (modded-nanogpt, dion) and
``optimal_composition(1e-3, 8, 0.0, 0.02407327424182761)`` is the paper's raw listing before its post-hoc
``1.01`` safety division (``coefficients._PAPER_RAW``).
"""

from __future__ import annotations

import math

import numpy as np

from muonlab.contract.coefficients import CoefficientSet, Triple

__all__ = ["optimal_composition", "optimal_quintic", "quintic"]

_MAX_EXCHANGES = 200


def quintic(triple: Triple, x: float) -> float:
    """``p(x) = a x + b x^3 + c x^5``."""
    a, b, c = triple
    return a * x + b * x**3 + c * x**5


def optimal_quintic(l: float, u: float) -> Triple:  # noqa: E741 - the paper's names
    """Minimax odd quintic approximating 1 on ``[l, u]`` (simplified Remez exchange).

    Solve ``p(x_i) + (-1)^i E = 1`` at ``x = (l, q, r, u)`` (alternating error signs, a 4x4 linear
    system in ``a, b, c, E``), move ``q, r`` to the critical points of ``p``,
    ``sqrt((-3b -+ sqrt(9 b^2 - 20 a c)) / (10 c))``, and repeat until ``E`` changes by at most ``1e-15``.
    Start from ``q = (3 l + u)/4``, ``r = (l + 3 u)/4``. A nearly degenerate interval
    (``l/u >= 1 - 5e-6``) returns ``(15/8, -10/8, 3/8) / (u, u^3, u^5)``.
    """
    lo, hi = float(l), float(u)
    if not (0.0 <= lo <= hi) or hi <= 0.0:
        raise ValueError(f"l, u: need 0 <= l <= u and u > 0, got ({l!r}, {u!r})")
    if lo / hi >= 1.0 - 5e-6:
        return (15.0 / 8.0 / hi, -10.0 / 8.0 / hi**3, 3.0 / 8.0 / hi**5)
    q = (3.0 * lo + hi) / 4.0
    r = (lo + 3.0 * hi) / 4.0
    err_old = math.inf
    a = b = c = 0.0
    for _ in range(_MAX_EXCHANGES):
        pts = np.array([lo, q, r, hi])
        signs = np.array([1.0, -1.0, 1.0, -1.0])
        lhs = np.stack([pts, pts**3, pts**5, signs], axis=1)
        a, b, c, err = (float(v) for v in np.linalg.solve(lhs, np.ones(4)))
        disc = math.sqrt(9.0 * b * b - 20.0 * a * c)
        q = math.sqrt((-3.0 * b - disc) / (10.0 * c))
        r = math.sqrt((-3.0 * b + disc) / (10.0 * c))
        if abs(err_old - err) <= 1e-15:
            break
        err_old = err
    else:  # pragma: no cover - the exchange converges in a handful of iterations
        raise RuntimeError(f"optimal_quintic: Remez exchange did not converge on [{lo}, {hi}]")
    return (a, b, c)


def optimal_composition(
    l: float,  # noqa: E741 - the paper's name
    num_iters: int,
    safety_factor_eps: float = 0.0,
    cushion: float = 0.0,
) -> CoefficientSet:
    """``num_iters`` quintics whose composition maps ``[l, 1]`` towards 1 (arXiv 2505.16932, [S §5.1]).

    With ``u = 1`` and ``sf = 1 + safety_factor_eps``, for each iteration:

    1. ``p = optimal_quintic(max(l, cushion u), u)`` (just ``l`` when ``cushion = 0``);
    2. if the cushion is active (``cushion u > l``), rescale ``p`` by ``2 / (p(l) + p(u))`` so the image of
       ``[l, u]`` is centred on 1;
    3. except on the last iteration, ``p(x) -> p(x / sf)``: divide ``(a, b, c)`` by ``(sf, sf^3, sf^5)``;
    4. ``l <- p(l)``, ``u <- 2 - l``, ``l <- min(l, u)``.
    """
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters: expected an integer >= 1, got {num_iters!r}")
    if not 0.0 < l <= 1.0:
        raise ValueError(f"l: expected 0 < l <= 1, got {l!r}")
    if safety_factor_eps < 0.0 or cushion < 0.0:
        raise ValueError(f"safety_factor_eps, cushion: must be >= 0, got ({safety_factor_eps!r}, {cushion!r})")
    lo, hi = float(l), 1.0
    sf = 1.0 + float(safety_factor_eps)
    out: list[Triple] = []
    for it in range(num_iters):
        cushioned = cushion > 0.0 and cushion * hi > lo
        triple = optimal_quintic(max(lo, cushion * hi) if cushion > 0.0 else lo, hi)
        if cushioned:
            rescale = 2.0 / (quintic(triple, lo) + quintic(triple, hi))
            triple = (triple[0] * rescale, triple[1] * rescale, triple[2] * rescale)
        if it < num_iters - 1 and sf != 1.0:
            triple = (triple[0] / sf, triple[1] / sf**3, triple[2] / sf**5)
        out.append(triple)
        lo = quintic(triple, lo)
        hi = 2.0 - lo
        lo = min(lo, hi)
    return tuple(out)
