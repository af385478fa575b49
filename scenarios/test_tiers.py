"""Tier scenarios: the six questions of the MLPerf KV-cache benchmark's tests 1-6.

Each parameter provisions one tier configuration (see ``pytest_kvcache.tiers.TIER_CONFIGS``
for the question each answers), runs the seeded workload on it for the measurement window,
replays the headline I/O latencies into pytest-benchmark, and fails when a criterion fails.
The drive under test is an option (``--kv-cache-dir``), never a parameter, so test ids match
between drives for ``--benchmark-compare``. The network tiers (redis, object) have their own
scenarios, ``test_remote_tiers.py``.
"""

import pytest

from pytest_kvcache.tiers import LOCAL_CONFIGS


@pytest.mark.parametrize("kv_tiers", list(LOCAL_CONFIGS), indirect=True)
def test_tiers(kv_tiers, kv_run, benchmark):
    kv_run(kv_tiers, benchmark=benchmark)
