"""SLA search: what is the most users this drive serves with the p95 of a chosen latency inside
a target (``sla-search``), as AIPerf's max-concurrency-under-SLA search answers for a server?

``--kv-autoscale sla-search`` (``load.autoscaler.SlaSearch``): starting at ``--kv-users``, each
step runs one user count for ``--kv-autoscale-interval`` seconds (after half as long to settle)
and measures the step p95 of ``--kv-sla-metric`` (default ``storage.read.p95``: the storage
tier's read latency) against ``--kv-sla-target-ms``; the count doubles until a step misses the
target, then bisects between the last count that met it and the first that missed. The knee,
``sla_search.users`` and ``sla_search.p95``, is the largest count that met it and its p95;
every step is in ``summary.sla_search.steps``. One provisioned tier serves every step; each
step's figures come from its own window. The ``slow`` variant searches up to 256 users.
"""

import pytest

SEARCH = {"users": 2, "warmup": 1.0, "duration": 24.0, "autoscale_interval": 1.5, "autoscale_max_users": 16,
          "generation_mode": "none", "think_time_scale": 0.0, "sla_target_ms": 100.0}


@pytest.mark.kv_settings(autoscale="sla-search")
@pytest.mark.kv_defaults(**SEARCH)
@pytest.mark.kv_criteria("sla_search.users>=1")
@pytest.mark.parametrize("kv_tiers", [pytest.param("storage-only", id="sla-search-storage-only")], indirect=True)
def test_sla_search(kv_tiers, kv_run):
    """What is the most users whose p95 of a chosen latency meets its target (the knee)?"""
    result = kv_run(kv_tiers)
    block = result.summary["sla_search"]
    # under mpirun the metric is the ranks' sum and the sla_search block rank 0's: compare rank 0's own
    assert block["steps"] and block["knee_users"] == result.rank0_metrics["sla_search.users"]
    assert block["knee_p95_s"] <= block["sla_target_s"]


@pytest.mark.slow
@pytest.mark.kv_settings(autoscale="sla-search")
@pytest.mark.kv_defaults(**{**SEARCH, "duration": 600.0, "autoscale_interval": 10.0, "autoscale_max_users": 256})
@pytest.mark.parametrize("kv_tiers", [pytest.param("storage-only", id="sla-search-long")], indirect=True)
def test_sla_search_long(kv_tiers, kv_run):
    """What is the most users whose p95 of a chosen latency meets its target (long steps, up to 128 users)?"""
    kv_run(kv_tiers)
