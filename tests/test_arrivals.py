"""Open-loop Poisson arrivals: a pure function of seed and settings."""

from __future__ import annotations

import statistics

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.load.arrivals import poisson_arrivals


def test_same_seed_same_schedule():
    a = poisson_arrivals(7, 20.0, count=1000)
    assert a == poisson_arrivals(7, 20.0, count=1000)
    assert a != poisson_arrivals(8, 20.0, count=1000)
    assert len(a) == 1000 and all(x < y for x, y in zip(a, a[1:])) and a[0] > 0


def test_rate_scales_the_same_draws():
    # same uniforms, so doubling the rate halves every time (up to the microsecond rounding)
    slow, fast = poisson_arrivals(3, 5.0, count=200), poisson_arrivals(3, 10.0, count=200)
    assert all(abs(s / 2 - f) <= 1e-6 for s, f in zip(slow, fast))


def test_mean_gap_and_count_in_horizon():
    times = poisson_arrivals(42, 50.0, count=20_000)
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    # mean 1/rate = 20 ms; the standard error of 20,000 gaps is 0.7 %, so 3 % never flakes
    assert statistics.fmean(gaps) == pytest.approx(0.02, rel=0.03)
    assert statistics.pstdev(gaps) == pytest.approx(0.02, rel=0.05)  # exponential: sd = mean
    window = poisson_arrivals(42, 50.0, horizon_s=100.0)
    assert window == [t for t in times if t < 100.0]
    assert len(window) == pytest.approx(5000, rel=0.05)
    assert poisson_arrivals(42, 50.0, count=0) == [] == poisson_arrivals(42, 50.0, horizon_s=0)


@pytest.mark.parametrize("rate", [0, -1.5, float("nan"), float("inf"), True, "10"])
def test_bad_rate_names_the_option(rate):
    with pytest.raises(ConfigError, match="--kv-request-rate"):
        poisson_arrivals(1, rate, count=10)


@pytest.mark.parametrize("kw", [{}, {"count": 5, "horizon_s": 1.0}, {"count": -1}, {"horizon_s": -2.0}])
def test_bad_count_or_horizon(kw):
    with pytest.raises(ConfigError):
        poisson_arrivals(1, 10.0, **kw)
