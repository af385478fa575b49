"""Prefix scenarios: how much does prefix reuse save, and what does losing it cost?

``test_prefix`` (default run): every request starts with one shared system prompt
(``--kv-system-prompt-tokens``, default here 1,024) and a prefix drawn from a pool of 10
(``--kv-prefix-pool`` x ``--kv-prefix-tokens``, default here 10 x 1,024), on the drive alone.
The shared blocks are stored once and every later request that starts with them loads them
from the drive: ``cache.hit_rate.prefix`` (tokens) and ``cache.block_hit_rate.prefix`` say
how much of the prefix was found and read back.

``test_prefix_pool_sweep`` (``-m slow``): on one drive, pools of 1, 5, 10, 50 and 100
prefixes of 2,048 tokens and no system prompt (defaults here), so the prefix hit rate is the
pool's alone. As the pool grows fewer conversations start with a prefix that is already
stored, so the prefix hit rate falls, more prefill is written and less is read, and the TTFT
moves with what the drive does for a hit vs a miss. Later turns of a conversation find their
own prefix again (it is part of their history), so the rate does not fall to 0. ``test_prefix_pool_sweep_table`` prints the
table (pool size, prefix hit rate, storage read/write GB/s, TTFT p95) after the sweep.
"""

import pytest

POOLS = (1, 5, 10, 50, 100)
PREFIX_DEFAULTS = {"system_prompt_tokens": 1024, "prefix_tokens": 1024, "duration": 8.0}
# the sweep shares nothing but the pool, so its prefix hit rate is the pool's alone
SWEEP_DEFAULTS = {"system_prompt_tokens": 0, "prefix_tokens": 2048, "duration": 8.0}
_sweep: dict[int, dict] = {}


@pytest.mark.kv_defaults(**PREFIX_DEFAULTS, prefix_pool=10)
@pytest.mark.kv_criteria("cache.hit_rate.prefix>=50%")
@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_prefix(kv_tiers, kv_run, benchmark):
    """With a shared system prompt and a pool of shared prefixes, how much of each prompt is found on the drive and read back instead of recomputed?"""
    kv_run(kv_tiers, benchmark=benchmark)


@pytest.mark.slow
@pytest.mark.kv_defaults(**SWEEP_DEFAULTS)
@pytest.mark.parametrize("pool", [pytest.param(p, marks=pytest.mark.kv_settings(prefix_pool=p)) for p in POOLS])
@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_prefix_pool_sweep(kv_tiers, kv_run, pool):
    """As the prefix pool grows, how fast does the prefix hit rate fall, and what does that cost in reads, writes and TTFT?"""
    result = kv_run(kv_tiers, check=False)
    summary = result.summary
    _sweep[pool] = {"prefix_hit_rate": summary["hit_rates"].get("prefix", {}).get("tokens"),
                    "read_gbps": summary["storage_read_gbps"], "write_gbps": summary["storage_write_gbps"],
                    "ttft_p95_ms": summary["ttft_ms"].get("p95")}
    message = result.failure_message()
    if message:
        pytest.fail(message, pytrace=False)


@pytest.mark.slow
def test_prefix_pool_sweep_table(record_property):
    """The sweep's figures side by side; the smallest pool must hit its prefix at least as
    often as the largest (a shared prefix that is stored is found)."""
    if len(_sweep) < 2:
        pytest.skip("needs at least two test_prefix_pool_sweep results in this session")
    rows = ["pool  prefix hit rate  read GB/s  write GB/s  TTFT p95 ms"]
    for pool, f in sorted(_sweep.items()):
        rate = "n/a" if f["prefix_hit_rate"] is None else f"{f['prefix_hit_rate']:.1%}"
        ttft = "n/a" if f["ttft_p95_ms"] is None else f"{f['ttft_p95_ms']:.1f}"
        read, write = (("n/a" if v is None else f"{v:.3f}") for v in (f["read_gbps"], f["write_gbps"]))
        rows.append(f"{pool:>4}  {rate:>15}  {read:>9}  {write:>10}  {ttft:>11}")
    print("\n".join(rows))
    record_property("prefix_pool_sweep", "; ".join(rows[1:]))
    smallest, largest = min(_sweep), max(_sweep)
    low, high = _sweep[largest]["prefix_hit_rate"], _sweep[smallest]["prefix_hit_rate"]
    assert low is not None and high is not None
    assert high >= low, f"pool {smallest} hit its prefix less often ({high:.1%}) than pool {largest} ({low:.1%})"
