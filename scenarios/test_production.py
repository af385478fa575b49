"""Realistic production: how does the whole hierarchy serve a normal day's mixed traffic, and
does each QoS class stay inside its target?

The session's model (tiny-1b unless ``--kv-model`` is given: its 6 MiB chunks keep the default
run within the latency profile on a small shared disk; pass ``--kv-model=llama3.1-8b`` for a
realistic size), 16 users with think times, realistic generation (30 ms a token), a shared system
prompt (1,024 tokens) and a pool of 10 shared prefixes (512 tokens each), the personas' QoS
mix (interactive, responsive, batch). ``gpu+cpu+storage`` is the three-tier hierarchy
(skipped without a GPU, like the tier scenarios); ``cpu+storage`` runs the same day with host
RAM in front of the drive, on any machine. The figures to read: the per-class e2e / TTFT p95
and share within target (``qos`` in the JSON, a table in the terminal), the prefix hit rate,
and what falls through to the drive (its GB/s and p95s). Criteria: the ``latency`` profile
plus a prefix hit rate of at least 30% (the shared prefixes are stored once and found).
Options set by the user win over these defaults.
"""

import pytest

PRODUCTION = {"users": 16, "generation_mode": "realistic", "system_prompt_tokens": 1024,
              "prefix_pool": 10, "prefix_tokens": 512, "duration": 8.0, "warmup": 1.0, "requests_per_user": 50,
              "cpu_mem_gb": 0.5}


@pytest.mark.kv_defaults(**PRODUCTION)
@pytest.mark.kv_criteria("cache.hit_rate.prefix>=30%")
@pytest.mark.parametrize("kv_tiers", ["gpu+cpu+storage", "cpu+storage"], indirect=True)
def test_production(kv_tiers, kv_run, benchmark):
    """A normal day on the hierarchy: does each QoS class stay inside its target, and what falls through to the drive?"""
    result = kv_run(kv_tiers, benchmark=benchmark)
    assert any(c["requests"] for c in result.summary["qos"].values()), "no QoS class finished a request"
