"""Capacity sweep: how much memory does this load need?

``test_capacity_sweep`` runs one seeded trace on ``cpu+storage`` several times, each with a
different CPU-tier budget, from well below the KV the users keep live to above it, and
``test_capacity_curve`` puts the points together (``pytest_kvcache.capacity``): the share of
each prompt found and read back from RAM (``cache.tier_hit_rate.cpu``), the hit rate from any
tier, and the storage load (GB/s and bytes per request) against the budget. The curve is in
the JSON report (``summary.capacity_sweep`` on each point), in the terminal summary and, with
``--kv-plots``, a capacity-curve PNG. The RAM hit rate must not fall as the budget grows (a
larger tier holds what a smaller one held), within ``TOLERANCE`` for the run-to-run noise of a
short closed-loop window.

The default sweep is six short steps (about 20-30 s in all); ``-m slow`` adds the
``test_capacity_sweep_wide`` sweep (ten steps, longer windows).
"""

import pytest

from pytest_kvcache.capacity import curve_text, curves, rises_with_budget, tag

SWEEP = "cpu+storage, cpu budget"
WIDE_SWEEP = "cpu+storage, cpu budget (wide)"
BUDGETS_GB = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # the default load keeps about 0.12 GB live
WIDE_BUDGETS_GB = (0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.4, 0.8)
TOLERANCE = 0.05  # absolute hit-rate points a larger budget may lose to run-to-run noise
# short steps of a multi-turn chat (turns of about 200 + 100 tokens) with no think time,
# judged by the curve, not by latency (no profile: the options and markers may add criteria)
SWEEP_DEFAULTS = {"duration": 2.0, "warmup": 0.5, "users": 2, "think_time_scale": 0.0,
                  "input_tokens_mean": 200.0, "output_tokens_mean": 100.0,
                  "generation_mode": "none", "profile": "none", "nvme_capacity_gb": 2.0}
WIDE_DEFAULTS = {**SWEEP_DEFAULTS, "duration": 6.0, "warmup": 1.0}


def _budgets(budgets) -> list:
    return [pytest.param(gb, marks=pytest.mark.kv_settings(cpu_mem_gb=gb), id=f"capacity-sweep-cpu-{gb:g}gb")
            for gb in budgets]


def _step(sweep, kv_tiers, kv_run):
    result = kv_run(kv_tiers, check=False)
    tag(result, sweep, "cpu")
    message = result.failure_message()
    if message:
        pytest.fail(message, pytrace=False)


def _curve(sweep, record_property, kv_session):
    points = curves([r.to_dict() for r in kv_session.results]).get(sweep, [])
    if len(points) < 2:
        pytest.skip(f"needs at least two steps of the {sweep!r} sweep in this session")
    text = curve_text(sweep, points)
    print(text)
    record_property("capacity_curve", text)
    problems = rises_with_budget(points, "tier_hit_rate", TOLERANCE)
    assert not problems, f"the cpu hit rate fell as the budget grew: {'; '.join(problems)}\n{text}"
    rates = [p["tier_hit_rate"] for p in points]
    assert None not in rates, f"a step looked nothing up:\n{text}"
    assert rates[-1] > rates[0] + TOLERANCE, f"the sweep never left the flat part of the curve:\n{text}"


@pytest.mark.kv_defaults(**SWEEP_DEFAULTS)
@pytest.mark.parametrize("budget", _budgets(BUDGETS_GB))
@pytest.mark.parametrize("kv_tiers", ["cpu+storage"], indirect=True)
def test_capacity_sweep(kv_tiers, kv_run, budget):
    """With this CPU budget in front of the drive, how much of each prompt is found in RAM, and how much KV moves through storage?"""
    _step(SWEEP, kv_tiers, kv_run)


@pytest.mark.parametrize("sweep", [pytest.param(SWEEP, id="capacity-sweep-curve")])
def test_capacity_curve(sweep, record_property, kv_session):
    """The sweep's points side by side; the RAM hit rate must fall as the budget shrinks."""
    _curve(sweep, record_property, kv_session)


@pytest.mark.slow
@pytest.mark.kv_defaults(**WIDE_DEFAULTS)
@pytest.mark.parametrize("budget", _budgets(WIDE_BUDGETS_GB))
@pytest.mark.parametrize("kv_tiers", ["cpu+storage"], indirect=True)
def test_capacity_sweep_wide(kv_tiers, kv_run, budget):
    """The same question over ten budgets and longer windows."""
    _step(WIDE_SWEEP, kv_tiers, kv_run)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", [pytest.param(WIDE_SWEEP, id="capacity-sweep-wide-curve")])
def test_capacity_curve_wide(sweep, record_property, kv_session):
    """The wide sweep's points side by side."""
    _curve(sweep, record_property, kv_session)
