"""The book's decision rule for "method A against method B over seeds", in one place.

Both methods are trained with the same seeds; one seed fixes the initialisation and the order of
the data, so the two runs of a seed form a pair and the rule works on the per-seed differences
``d_i = a_i - b_i`` (a paired design: what the seed does to both methods cancels).

* **Interval.** The mean difference with a two-sided Student-t confidence interval (95% unless
  ``level`` says otherwise), ``mean(d) +- t_{n-1} * sd(d) / sqrt(n)``.
* **Difference.** "A better" or "B better" (in the metric's direction) only when that interval
  excludes zero, i.e. the paired t-test rejects "no difference" at ``1 - level``.
* **No difference.** Only through an equivalence test against a margin fixed *before* looking at
  the data (``margin``): two one-sided tests (TOST) that the true difference lies inside
  ``(-margin, +margin)``, i.e. the ``1 - 2 * alpha`` interval lies inside the margin.
* **Inconclusive** otherwise: the data cannot tell the methods apart, which is not evidence that
  they are the same.
* **Many comparisons.** :func:`holm` adjusts a family of comparisons (Holm's step-down method
  controls the chance of any false verdict in the family at ``alpha``); a comparison marked
  ``exploratory`` stays outside the family and keeps its unadjusted verdict.

Standard library only: the Student-t distribution is computed here from the regularized
incomplete beta function (Lentz's continued fraction), its quantile by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional, Sequence

__all__ = ["Comparison", "compare", "holm", "t_cdf", "t_quantile"]

A_BETTER, B_BETTER, NO_DIFFERENCE, INCONCLUSIVE = "A better", "B better", "no difference", "inconclusive"


# ----------------------------------------------------------------------- Student-t distribution
def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------------- the rule
@dataclass
class Comparison:
    """Method A against method B over seeds, paired by seed (see :func:`compare`)."""

    effect: float  #: mean of the per-seed differences A - B, in the metric's units
    spread: float  #: sample standard deviation of the per-seed differences
    per_seed: list  #: A - B for each seed (paired by seed)
    verdict: str  #: "A better", "B better", "no difference" or "inconclusive"
    low: float = math.nan  #: lower end of the ``level`` t interval of the mean difference
    high: float = math.nan  #: upper end of that interval
    p: float = 1.0  #: two-sided p-value of the paired t-test (after :func:`holm`: adjusted)
    p_equivalence: Optional[float] = None  #: TOST p-value against ``margin`` (adjusted by :func:`holm`)
    margin: Optional[float] = None  #: equivalence margin, fixed in advance; None: no equivalence test
    higher_is_better: bool = True
    level: float = 0.95
    exploratory: bool = False  #: outside the family that :func:`holm` adjusts
    adjusted: bool = False  #: True once :func:`holm` has adjusted ``p`` and ``verdict``

    @property
    def n(self) -> int:
        return len(self.per_seed)

    def __str__(self) -> str:
        seeds = ", ".join(f"{d:+.2f}" for d in self.per_seed)
        return (f"{self.effect:+.2f} [{self.level:.0%} CI {self.low:+.2f}, {self.high:+.2f}] "
                f"(per seed {seeds}): {self.verdict}")


def _verdict(c: Comparison, alpha: float) -> str:
    if c.p < alpha:
        return A_BETTER if (c.effect > 0) == c.higher_is_better else B_BETTER
    if c.p_equivalence is not None and c.p_equivalence < alpha:
        return NO_DIFFERENCE
    return INCONCLUSIVE


def compare(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True,
            margin: Optional[float] = None, level: float = 0.95, exploratory: bool = False) -> Comparison:
    """Compare two methods' per-seed values of one metric (equal length, same seeds, same order).

    The verdict is "A better" / "B better" (by ``higher_is_better``) when the paired ``level``
    t interval of the mean difference excludes zero; "no difference" only when ``margin`` (fixed in
    advance, in the metric's units) is given and the two one-sided tests at ``1 - level`` put the
    difference inside ``(-margin, margin)``; otherwise "inconclusive". One comparison on its own is
    unadjusted: pass all the comparisons that decide claims together through :func:`holm`."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a and b must hold one value per seed for the same >= 2 seeds, got {len(a)} and {len(b)}")
    if not 0.5 < level < 1.0:
        raise ValueError(f"level must lie in (0.5, 1), got {level}")
    if margin is not None and not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")
    diffs = [x - y for x, y in zip(a, b)]
    n, alpha = len(diffs), 1.0 - level
    mean = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(1.0 - alpha / 2.0, n - 1) * se
    if se > 0:
        p = 2.0 * (1.0 - t_cdf(abs(mean) / se, n - 1))
    else:  # every seed gives the same difference
        p = 1.0 if mean == 0 else 0.0
    p_eq = None
    if margin is not None:
        if se > 0:  # H0: d <= -margin (test the lower side) and H0: d >= margin (the upper side)
            p_eq = max(1.0 - t_cdf((mean + margin) / se, n - 1), t_cdf((mean - margin) / se, n - 1))
        else:
            p_eq = 0.0 if abs(mean) < margin else 1.0
    c = Comparison(mean, sd, diffs, INCONCLUSIVE, mean - half, mean + half, p, p_eq, margin,
                   higher_is_better, level, exploratory)
    c.verdict = _verdict(c, alpha)
    return c


def holm(comparisons: Sequence[Comparison], alpha: Optional[float] = None) -> list:
    """The comparisons with their p-values adjusted by Holm's step-down method and their verdicts
    decided again on the adjusted values (same order as given; new objects).

    The family is every test of the non-exploratory comparisons: each paired t-test, and each
    equivalence test where a margin was given. With ``m`` tests and p-values sorted
    ``p_(1) <= ... <= p_(m)``, the adjusted ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))``;
    a verdict stands when its adjusted p-value is below ``alpha`` (default ``1 - level`` of the
    comparisons). Exploratory comparisons come back unchanged."""
    comparisons = list(comparisons)
    if alpha is None:
        levels = {c.level for c in comparisons if not c.exploratory}
        if len(levels) > 1:
            raise ValueError(f"the family mixes levels {sorted(levels)}; pass alpha")
        alpha = 1.0 - (levels.pop() if levels else 0.95)
    tests = [(i, "p") for i, c in enumerate(comparisons) if not c.exploratory]
    tests += [(i, "p_equivalence") for i, c in enumerate(comparisons)
              if not c.exploratory and c.p_equivalence is not None]
    tests.sort(key=lambda t: getattr(comparisons[t[0]], t[1]))
    m, running, adjusted = len(tests), 0.0, {}
    for rank, (i, field) in enumerate(tests):
        running = max(running, min(1.0, (m - rank) * getattr(comparisons[i], field)))
        adjusted.setdefault(i, {})[field] = running
    out = []
    for i, c in enumerate(comparisons):
        if c.exploratory:
            out.append(c)
            continue
        new = replace(c, per_seed=list(c.per_seed), adjusted=True, **adjusted[i])
        new.verdict = _verdict(new, alpha)
        out.append(new)
    return out
