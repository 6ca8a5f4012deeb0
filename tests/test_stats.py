"""The Wilson interval used by summary.csv and the slide report, against SciPy's reference implementation."""
from __future__ import annotations

import pytest
from scipy.stats import binomtest

from wbc_deploy.stats import wilson_interval, wilson_percent, z_value


def test_interval_contains_the_estimate_for_every_k_and_n_up_to_300():
    for n in range(1, 301):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            p = k / n
            assert 0.0 <= lo <= p <= hi <= 1.0, (k, n, lo, hi)
            assert lo < hi
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0  # exact, not 0.9999999999999999


@pytest.mark.parametrize("n", [*range(1, 41), 44, 45, 58, 59, 100, 200, 300])
def test_interval_equals_scipy_wilson_to_a_hundredth_of_a_point(n):
    """SciPy's binomtest(...).proportion_ci(method='wilson') is the reference (0.01 percentage points)."""
    worst = 0.0
    for k in range(n + 1):
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_percent(k, n)
        worst = max(worst, abs(lo - 100 * ref.low), abs(hi - 100 * ref.high))
    assert worst <= 0.01, f"n={n}: largest difference {worst:.2e} points"


def test_worked_example_and_edge_cases():
    # 9 monocytes in 100 cells: about 5% to 16% (issue 13's example); by hand from the formula 4.81-16.22
    lo, hi = wilson_percent(9, 100)
    assert (lo, hi) == pytest.approx((4.81, 16.22), abs=0.01)
    assert z_value() == pytest.approx(1.959964, abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    assert wilson_interval(1, 1) == (pytest.approx(0.2065, abs=1e-4), 1.0)
    for bad in ((-1, 5), (6, 5), (0, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)
