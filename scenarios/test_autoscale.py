"""Autoscaling: how many users does this drive serve at its SLA (``autoscale-qos``), and where
does its throughput stop growing with users (``autoscale-capacity``)?

The closed-loop user pool changes during the run (``--kv-autoscale``, ``scaling.UserScaler``):
added users start their own conversations of the trace, removed users finish their request
and stop. Each step of ``--kv-autoscale-interval`` seconds is measured on its own (bytes and
latencies completed in it) and recorded in ``summary.autoscale.steps`` with the users in the
pool, the distinct users that finished a request in it, storage GB/s, the SLA metric's p95,
the decision and its reason; the terminal shows the table, ``--kv-plots`` a users/GB/s plot.

- ``autoscale-qos`` holds saturation = step p95 of ``--kv-sla-metric`` ÷ ``--kv-sla-target-ms``
  at ``--kv-autoscale-target`` (up below target-0.1, down above target+0.1, one step of
  cooldown after a change); ``autoscale.users`` is the count it settled on.
- ``autoscale-capacity`` grows users by half while storage GB/s rises by more than 2% and stops
  after two steps that do not; ``autoscale.peak_gbps`` and ``autoscale.users`` (at the peak).

Default sizes keep each run within about 20 s on a 2-core VM (generation none, no think time,
so storage is what limits the users); the ``slow`` variant searches up to 128 users.
"""

import pytest

QOS = {"users": 2, "warmup": 1.0, "duration": 16.0, "autoscale_interval": 1.5, "autoscale_max_users": 32,
       "generation_mode": "none", "think_time_scale": 0.0}
CAPACITY = {"users": 1, "warmup": 1.0, "duration": 24.0, "autoscale_interval": 2.0, "autoscale_max_users": 24,
            "generation_mode": "none", "think_time_scale": 0.0}


def _check_steps(result, key="autoscale"):
    steps = result.summary[key]["steps"]
    assert steps, f"no {key} step was measured"
    pool = 0
    for st in steps:  # a step's users really ran: never more served than were in the pool, this
        # step or the one before (a removed user finishes the request it has in the system)
        assert st["users_served"] <= max(st["users"], pool), st
        pool = st["users"]
    return steps


@pytest.mark.kv_settings(autoscale="qos")
@pytest.mark.kv_defaults(**QOS)
@pytest.mark.kv_criteria("autoscale.users>=1")
@pytest.mark.parametrize("kv_tiers", [pytest.param("storage-only", id="autoscale-qos-storage-only")], indirect=True)
def test_autoscale_qos(kv_tiers, kv_run):
    """How many users can the drive serve while holding a target saturation (step p95 of --kv-sla-metric over --kv-sla-target-ms)?"""
    result = kv_run(kv_tiers)
    _check_steps(result)
    # under mpirun the metric is the ranks' sum and the autoscale block rank 0's: compare rank 0's own
    assert result.summary["autoscale"]["settled_users"] == result.rank0_metrics["autoscale.users"]


@pytest.mark.kv_settings(autoscale="capacity")
@pytest.mark.kv_defaults(**CAPACITY)
@pytest.mark.kv_criteria("autoscale.users>=1", "autoscale.peak_gbps>=0.001GB/s")
@pytest.mark.parametrize("kv_tiers", [pytest.param("storage-only", id="autoscale-capacity-storage-only")],
                         indirect=True)
def test_autoscale_capacity(kv_tiers, kv_run):
    """Where does storage throughput stop growing as users are added?"""
    result = kv_run(kv_tiers)
    steps = _check_steps(result)
    assert len({st["users"] for st in steps}) >= min(3, len(steps)), "the pool did not change"


@pytest.mark.slow
@pytest.mark.kv_settings(autoscale="capacity")
@pytest.mark.kv_defaults(**{**CAPACITY, "duration": 300.0, "autoscale_interval": 5.0, "autoscale_max_users": 128})
@pytest.mark.parametrize("kv_tiers", [pytest.param("storage-only", id="autoscale-capacity-long")], indirect=True)
def test_autoscale_capacity_long(kv_tiers, kv_run):
    """Where does storage throughput stop growing as users are added (long steps, up to 256 users)?"""
    _check_steps(kv_run(kv_tiers))
