"""Is one arm better than another beyond the seed noise? Welch's unequal-variance t-test.

For arms ``a`` and ``b`` with ``n_a, n_b >= 2`` seeds, means ``m``, sample variances ``s^2`` (ddof 1):

* difference ``d = m_a - m_b``, standard error ``se = sqrt(s_a^2/n_a + s_b^2/n_b)``, ``t = d / se``;
* Welch-Satterthwaite degrees of freedom
  ``df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))`` (Welch 1947, Biometrika 34, eq. 9);
* two-sided ``p = P(|T_df| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2)``, the regularized incomplete beta function
  (Abramowitz & Stegun 26.7.1), evaluated by its continued fraction (Numerical Recipes 3rd ed., 6.4).

The rule of the reports: a lead is *decided* when ``p < ALPHA`` (0.05, two-sided). With fewer than 2 seeds in
either arm there is no spread to judge by and nothing is decided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALPHA = 0.05
"""Two-sided significance level at which a lead counts as beyond the seed noise."""

RULE = "Welch's t-test, two-sided p < 0.05, over the stable seeds (n >= 2 per arm)"
"""The decision rule in words, as the reports state it."""


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta: continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1`` (A&S 26.5.1)."""
    if a <= 0 or b <= 0:
        raise ValueError(f"a, b: must be positive, got a={a!r}, b={b!r}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x: must lie in [0, 1], got {x!r}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df > 0`` degrees of freedom (A&S 26.7.1)."""
    if not df > 0:
        raise ValueError(f"df: must be positive, got {df!r}")
    if math.isinf(t):
        return 0.0
    if math.isnan(t):
        raise ValueError("t: is NaN")
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: float, alpha: float = ALPHA) -> float:
    """The ``t`` with ``P(|T_df| >= t) = alpha``: `t_two_sided_p` inverted by bisection (it falls as ``t``
    grows), to 1e-12."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha!r}")
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > alpha else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class TTest:
    """A t-test of ``mean(a) - mean(b)``: Welch's (`welch`) or paired by seed (`paired`; ``n_a = n_b``)."""

    diff: float
    se: float
    t: float
    df: float
    p: float
    n_a: int
    n_b: int

    @property
    def decided(self) -> bool:
        """Whether the difference is beyond the seed noise (``p < ALPHA``)."""
        return self.p < ALPHA

    def interval(self, alpha: float = ALPHA) -> tuple[float, float]:
        """The two-sided ``1 - alpha`` confidence interval of the difference, ``diff -+ t_crit(df) se``."""
        half = t_critical(self.df, alpha) * self.se
        return self.diff - half, self.diff + half


def _clean(values: Sequence[float | None], name: str) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{name}: non-finite value {v!r}")
        out.append(f)
    return out


def welch(a: Sequence[float | None], b: Sequence[float | None]) -> TTest | None:
    """Welch's t-test of arm ``a`` against arm ``b`` (missing values dropped); ``None`` when either arm has
    fewer than 2 values. Zero spread in both arms: ``p = 0`` for a nonzero difference, 1 for none."""
    xa, xb = _clean(a, "a"), _clean(b, "b")
    na, nb = len(xa), len(xb)
    if na < 2 or nb < 2:
        return None
    ma, mb = sum(xa) / na, sum(xb) / nb
    va = sum((x - ma) ** 2 for x in xa) / (na - 1)
    vb = sum((x - mb) ** 2 for x in xb) / (nb - 1)
    qa, qb = va / na, vb / nb
    se = math.sqrt(qa + qb)
    diff = ma - mb
    if se == 0.0:
        t0 = math.copysign(math.inf, diff) if diff else 0.0
        return TTest(diff, 0.0, t0, float(na + nb - 2), 0.0 if diff else 1.0, na, nb)
    df = (qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1))
    t = diff / se
    return TTest(diff, se, t, df, t_two_sided_p(t, df), na, nb)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> TTest | None:
    """Paired t-test of ``a[s] - b[s]`` over the seeds ``s`` both arms have (same seed = same initialization and
    data order): ``d_s = a[s] - b[s]``, ``se = std(d) / sqrt(n)``, ``t = mean(d) / se``, ``df = n - 1``
    (Student 1908); ``None`` with fewer than 2 shared seeds. The reports show it for information; their
    decision rule is Welch's (`RULE`)."""
    seeds = sorted(set(a) & set(b))
    d = _clean([a[k] - b[k] for k in seeds], "a - b")
    n = len(d)
    if n < 2:
        return None
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
    if se == 0.0:
        return TTest(mean, 0.0, math.copysign(math.inf, mean) if mean else 0.0, n - 1.0, 0.0 if mean else 1.0, n, n)
    t = mean / se
    return TTest(mean, se, t, n - 1.0, t_two_sided_p(t, n - 1.0), n, n)


def ratio_se(mean_a: float, se_a: float, mean_b: float, se_b: float) -> float:
    """Standard error of ``mean_a / mean_b`` by the delta method (independent arms):
    ``|r| sqrt((se_a/mean_a)^2 + (se_b/mean_b)^2)``."""
    if mean_a == 0 or mean_b == 0:
        raise ValueError("mean_a, mean_b: must be nonzero for a ratio's relative error")
    r = mean_a / mean_b
    return abs(r) * math.hypot(se_a / mean_a, se_b / mean_b)


def wilson_interval(correct: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927, JASA 22: 209-212), 95% by default:
    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``. It stays inside [0, 1] and is not empty at
    0 or n successes, unlike the normal approximation."""
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"correct, total: need 0 <= correct <= total and total > 0, got {correct}, {total}")
    p, z2 = correct / total, z * z
    centre = p + z2 / (2 * total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    denom = 1 + z2 / total
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)
