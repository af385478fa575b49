"""Production traces: what does this traffic cost on each tier configuration?

Replays the trace given with ``--kv-trace`` (a Mooncake JSONL, a BurstGPT CSV, or our JSONL
saved with ``--kv-trace-save`` for an exact replay on another drive) over the tier
configurations of ``scenarios/test_tiers.py``. Timestamped traces arrive at their own times
(``--kv-trace-speedup``) through the bounded admission queue (``--kv-queue-depth``), so a slow
drive shows as queue wait and rejected requests; requests that share Mooncake hash ids share KV
blocks, so their lookups are real prefix hits. A trace shorter than the window ends the run
when it runs out. The report's ``trace.source`` names the file, its SHA-256 and what was read;
``trace`` and ``summary.arrivals`` say how many requests ran and how many were rejected.
Without ``--kv-trace`` the scenario is skipped.
"""

import pytest

from pytest_kvcache.tiers import LOCAL_CONFIGS


@pytest.fixture(autouse=True)
def _needs_a_trace(kv_session):
    # autouse runs before kv_tiers (which provisions): a skipped scenario makes nothing on the drive
    if not kv_session.settings.trace:
        pytest.skip("no trace to replay: give one with --kv-trace PATH (Mooncake JSONL, BurstGPT CSV or a "
                    "--kv-trace-save file)")


@pytest.mark.parametrize("kv_tiers", list(LOCAL_CONFIGS), indirect=True)
def test_trace(kv_tiers, kv_run):
    """What does the replayed production trace cost on this tier configuration: its latencies, hits, queue wait and rejected requests?"""
    result = kv_run(kv_tiers)
    source = result.trace["source"]
    assert source is not None and len(source["file_sha256"]) == 64
    assert result.trace["requests"] == source["requests"]
