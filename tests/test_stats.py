"""The book's decision rule (``distilkit.stats``): the Student-t distribution against printed
tables, the paired interval, the equivalence test, Holm's adjustment, and the rule's error rates
by simulation (false positives under no effect, power at a one-standard-deviation effect against
what the t-test's theory gives)."""

import math
import random

import pytest

from distilkit.stats import Comparison, compare, holm, incomplete_beta, t_cdf, t_quantile

# two-sided 95% (p = 0.975), one-sided 95% (p = 0.95) and 99% (p = 0.995) critical values of
# Student's t, from a printed table (e.g. NIST/SEMATECH e-Handbook, section 1.3.6.7.2)
TABLE = [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776),
         (0.975, 9, 2.262), (0.975, 30, 2.042), (0.975, 100, 1.984), (0.95, 2, 2.920),
         (0.95, 4, 2.132), (0.95, 10, 1.812), (0.995, 3, 5.841), (0.995, 20, 2.845)]


@pytest.mark.parametrize("p, df, value", TABLE)
def test_t_quantile_matches_the_printed_table(p, df, value):
    assert t_quantile(p, df) == pytest.approx(value, abs=6e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-value, abs=6e-4)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_cdf_closed_forms():
    # df = 1 is the Cauchy distribution, df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert incomplete_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1 - 0.6^4 - 4*0.4*0.6^3
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_the_interval_is_the_paired_t_interval():
    c = compare([3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 2.0, 2.0])  # differences 2, 3, 2, 4
    half = t_quantile(0.975, 3) * math.sqrt(((2 - 2.75) ** 2 * 2 + 0.25 ** 2 + 1.25 ** 2) / 3) / 2
    assert c.effect == pytest.approx(2.75) and c.per_seed == [2.0, 3.0, 2.0, 4.0] and c.n == 4
    assert (c.low, c.high) == pytest.approx((2.75 - half, 2.75 + half))
    assert c.low > 0 and c.p < 0.05 and c.verdict == "A better"


def test_pairing_finds_a_consistent_effect_that_the_seed_spread_hides():
    # the seeds move both methods by +-10; A is 0.1-0.2 above B on every seed
    a, b = [10.1, 20.2, 30.15], [10.0, 20.0, 30.0]
    c = compare(a, b)
    assert c.verdict == "A better" and c.low > 0
    # the same numbers without the pairing (A's seeds shuffled against B's) tell nothing
    assert compare([30.15, 10.1, 20.2], b).verdict == "inconclusive"


def test_seeds_that_disagree_leave_it_inconclusive_and_direction_follows_the_metric():
    assert compare([10.0, 10.0, 10.0, 10.0], [0.0, 0.0, 0.0, 12.0]).verdict == "inconclusive"
    assert compare([1.0, 1.1, 0.9], [5.0, 5.2, 4.9], higher_is_better=False).verdict == "A better"
    assert compare([1.0, 1.1, 0.9], [5.0, 5.2, 4.9]).verdict == "B better"


def test_no_difference_needs_a_margin_and_a_narrow_interval():
    a, b = [7.60, 7.71, 7.52], [7.58, 7.66, 7.50]  # differences 0.02, 0.05, 0.02
    assert compare(a, b).verdict in ("A better", "inconclusive")  # never "no difference" unasked
    wide = compare([7.0, 8.0, 7.5], [7.5, 7.2, 7.9], margin=0.1)
    assert wide.verdict == "inconclusive" and wide.p_equivalence > 0.05
    tight = compare([1.00, 1.01, 0.99, 1.00], [1.00, 1.00, 1.00, 1.00], margin=0.1)
    assert tight.verdict == "no difference" and tight.p_equivalence < 0.05
    # TOST at 5% is the 90% interval inside the margin
    t90 = t_quantile(0.95, 3) * tight.spread / 2
    assert abs(tight.effect) + t90 < 0.1
    with pytest.raises(ValueError, match="margin"):
        compare([1.0, 2.0], [1.0, 2.0], margin=0.0)


def test_compare_needs_paired_seeds():
    with pytest.raises(ValueError, match="one value per seed"):
        compare([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=">= 2 seeds"):
        compare([1.0], [2.0])


def _with_p(p, exploratory=False, p_eq=None):
    return Comparison(effect=1.0, spread=1.0, per_seed=[1.0, 1.0], verdict="?", p=p,
                      p_equivalence=p_eq, margin=None if p_eq is None else 1.0, exploratory=exploratory)


def test_holm_on_a_known_example():
    # p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1
    # = 0.02, 0.03, 0.06, 0.04 -> running maximum 0.02, 0.03, 0.06, 0.06
    family = [_with_p(0.01), _with_p(0.04), _with_p(0.03), _with_p(0.005), _with_p(0.001, exploratory=True)]
    out = holm(family)
    assert [c.p for c in out[:4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [c.verdict for c in out[:4]] == ["A better", "inconclusive", "inconclusive", "A better"]
    assert out[4] is family[4] and not out[4].adjusted  # exploratory: outside the family
    assert [c.p for c in family[:4]] == [0.01, 0.04, 0.03, 0.005]  # the inputs are untouched
    # an equivalence test is one more test in the family
    # three tests, 0.2, 0.01 and 0.02: adjusted 0.2, 0.03 (x3) and 0.04 (x2)
    out = holm([_with_p(0.2, p_eq=0.01), _with_p(0.02)])
    assert out[0].p == pytest.approx(0.2) and out[0].p_equivalence == pytest.approx(0.03)
    assert out[0].verdict == "no difference"
    assert out[1].p == pytest.approx(0.04) and out[1].verdict == "A better"
    assert holm([_with_p(0.6), _with_p(0.9)])[1].p == 1.0  # capped at 1


# ------------------------------------------------------------------ error rates by simulation
DRAWS = 20_000
MC = 4 * math.sqrt(0.05 * 0.95 / DRAWS)  # four Monte-Carlo standard errors of a 5% rate


def simulate(n, effect, rng, margin=None):
    """Verdicts of ``compare`` on ``DRAWS`` experiments of ``n`` seeds each: a seed moves both
    methods by the same large amount (sd 10); each run adds its own noise, so that the per-seed
    difference A - B has standard deviation 1 and mean ``effect``."""
    counts = {}
    noise = math.sqrt(0.5)
    for _ in range(DRAWS):
        seeds = [rng.gauss(0.0, 10.0) for _ in range(n)]
        a = [s + effect + rng.gauss(0.0, noise) for s in seeds]
        b = [s + rng.gauss(0.0, noise) for s in seeds]
        v = compare(a, b, margin=margin).verdict
        counts[v] = counts.get(v, 0) + 1
    return {k: v / DRAWS for k, v in counts.items()}


def t_test_power(n, effect, level=0.95):
    """``P(T > t_crit)`` for the paired t statistic when the differences are normal with mean
    ``effect`` and standard deviation 1: ``T = (Z + effect sqrt(n)) / sqrt(V / df)`` with
    ``V ~ chi-square(df)``, integrated over ``V`` (Simpson's rule)."""
    df, crit, ncp = n - 1, t_quantile(1 - (1 - level) / 2, n - 1), effect * math.sqrt(n)
    log_norm = (df / 2) * math.log(2) + math.lgamma(df / 2)

    def integrand(v):
        if v == 0:  # the chi-square density at 0: 1/2 for df = 2, 0 above (n = 3 and 5 only here)
            density = 0.5 if df == 2 else 0.0
        else:
            density = math.exp((df / 2 - 1) * math.log(v) - v / 2 - log_norm)
        return density * 0.5 * math.erfc((crit * math.sqrt(v / df) - ncp) / math.sqrt(2))

    steps, top = 20_000, 120.0
    h = top / steps
    total = integrand(0.0) + integrand(top)
    total += sum((4 if i % 2 else 2) * integrand(i * h) for i in range(1, steps))
    return total * h / 3


@pytest.mark.parametrize("n", [3, 5])
def test_false_positives_stay_at_five_percent_under_no_effect(n):
    rates = simulate(n, 0.0, random.Random(1000 + n))
    false = rates.get("A better", 0.0) + rates.get("B better", 0.0)
    print(f"n = {n}: false-positive rate {false:.4f} ({DRAWS} draws)")
    assert false <= 0.05 + MC
    assert false >= 0.05 - MC  # the t-test's size is exactly 5%: the rule is not needlessly strict


@pytest.mark.parametrize("n", [3, 5])
def test_power_at_one_standard_deviation_is_the_t_tests(n):
    theory = t_test_power(n, 1.0)
    rates = simulate(n, 1.0, random.Random(2000 + n))
    power = rates.get("A better", 0.0)
    print(f"n = {n}: power at a 1-sd effect {power:.4f} (t-test theory {theory:.4f})")
    se = math.sqrt(theory * (1 - theory) / DRAWS)
    assert abs(power - theory) <= 4 * se
    assert rates.get("B better", 0.0) <= 0.005  # the wrong direction is almost never declared


def test_equivalence_is_rarely_declared_when_the_difference_sits_on_the_margin():
    rates = simulate(5, 1.0, random.Random(3000), margin=1.0)
    assert rates.get("no difference", 0.0) <= 0.05 + MC
