"""Turn a finished run into figures: a flat metric dict for criteria and a report summary.

Throughputs divide the bytes of I/O that *completed* inside the window by the window's length.
The flat dict uses canonical units (seconds, GB/s = 1e9 B/s, fractions); the summary keeps the
MLPerf reference's key names where they mean the same, with latencies in milliseconds.
"""

from __future__ import annotations

from .recorder import Recorder

DATA_OPS = ("read", "write", "demote_read", "demote_write")
MEMORY_TIERS = ("gpu", "cpu")
LATENCY_KEYS = ("mean", "p50", "p95", "p99", "p999", "max")


def storage_tier(tiers: list[str]) -> str | None:
    """The tier whose figures are 'storage': the slowest one that is not memory."""
    below_memory = [t for t in tiers if t not in MEMORY_TIERS]
    return below_memory[-1] if below_memory else None


def _ms(stats: dict) -> dict:
    return {k: round(stats[k] * 1e3, 4) for k in LATENCY_KEYS if k in stats}


def compute(recorder: Recorder, tiers: list[str]) -> tuple[dict, dict]:
    window = recorder.window_s or float("nan")
    flat: dict[str, float] = {"window_s": window}
    per_tier: dict[str, dict] = {}
    tier_bytes: dict[str, int] = {}
    read_tokens = 0
    for (tier, op), w in sorted(recorder.window.items()):
        stats = w.latency.stats()
        prefix = f"{tier}.{op}"
        flat[f"{prefix}.count"] = w.count
        flat[f"{prefix}.bytes"] = w.bytes
        flat[f"{prefix}.gbps"] = w.bytes / window / 1e9
        flat[f"{prefix}.iops"] = w.count / window
        for k in LATENCY_KEYS:
            if k in stats:
                flat[f"{prefix}.{k}"] = stats[k]
        per_tier.setdefault(tier, {})[op] = {
            "count": w.count, "bytes": w.bytes, "tokens": w.tokens,
            "gbps": round(w.bytes / window / 1e9, 6), "iops": round(w.count / window, 3),
            "latency_ms": _ms(stats), "latency_exact": stats.get("exact", True),
            "latency_cdf_ms": w.latency.quantiles_ms(),
        }
        if op in DATA_OPS:
            tier_bytes[tier] = tier_bytes.get(tier, 0) + w.bytes
        if op == "read":
            read_tokens += w.tokens
    for tier, nbytes in tier_bytes.items():
        flat[f"{tier}.gbps"] = nbytes / window / 1e9

    storage = storage_tier(tiers)
    storage_tokens = 0
    if storage is not None:
        ops = {op: recorder.window.get((storage, op)) for op in DATA_OPS}
        rd = sum(ops[o].bytes for o in ("read", "demote_read") if ops[o])
        wr = sum(ops[o].bytes for o in ("write", "demote_write") if ops[o])
        storage_tokens = sum(o.tokens for o in ops.values() if o)
        flat["storage.read_gbps"] = rd / window / 1e9
        flat["storage.write_gbps"] = wr / window / 1e9
        flat["storage.gbps"] = (rd + wr) / window / 1e9
        flat["storage.throughput_tokens_per_sec"] = storage_tokens / window

    # the headline hit rate counts a request's loads, not the reference model's decode re-reads
    # of what it has just loaded (the MLPerf reference inflates its hit rate that way)
    loads = [hm for kind, hm in recorder.lookups.items() if kind != "decode"]
    hits = sum(h for h, _ in loads)
    lookups = sum(h + m for h, m in loads)
    if lookups:
        flat["cache.hit_rate"] = hits / lookups
    for kind, (h, m) in recorder.lookups.items():
        if h + m:
            flat[f"cache.hit_rate.{kind}"] = h / (h + m)

    counters = recorder.counters
    completed = counters.get("requests", 0)
    generated = counters.get("generated_tokens", 0)
    flat["requests.completed"] = completed
    flat["requests.per_sec"] = completed / window
    flat["system.tokens_per_sec"] = generated / window
    if generated:
        flat["read_amplification"] = read_tokens / generated
    flat["errors.count"] = recorder.error_count
    request_stats = {name: s.stats() for name, s in recorder.requests.items()}
    for name, stats in request_stats.items():
        for k in LATENCY_KEYS:
            if k in stats:
                flat[f"{name}.{k}"] = stats[k]

    summary = {
        "window_s": round(window, 3),
        "total_requests": completed,
        "total_tokens_generated": generated,
        "total_tokens_per_sec": round(flat["system.tokens_per_sec"], 3),
        "requests_per_second": round(flat["requests.per_sec"], 3),
        "storage_tier": storage,
        "storage_throughput_tokens_per_sec": round(flat.get("storage.throughput_tokens_per_sec", 0.0), 3),
        "storage_read_gbps": round(flat.get("storage.read_gbps", 0.0), 6),
        "storage_write_gbps": round(flat.get("storage.write_gbps", 0.0), 6),
        "cache_hit_rate": round(flat.get("cache.hit_rate", 0.0), 6),
        "hit_rates": {k: round(v, 6) for k, v in flat.items() if k.startswith("cache.hit_rate.")},
        "cache_lookups": {k: {"hits": h, "misses": m} for k, (h, m) in recorder.lookups.items()},
        "read_amplification": round(flat.get("read_amplification", 0.0), 3),
        "end_to_end_latency_ms": _ms(request_stats.get("e2e", {})),
        "queue_wait_ms": _ms(request_stats.get("queue_wait", {})),
        "storage_io_latency_ms": _ms(request_stats.get("storage_time", {})),
        "generation_latency_ms": _ms(request_stats.get("generation_time", {})),
        "ttft_ms": _ms(request_stats.get("ttft", {})),
        "tiers": per_tier,
        "counters": dict(sorted(counters.items())),
        "run_counters": dict(sorted(recorder.run_counters.items())),
        # every I/O of the run, warm-up and drain included (the window's figures are in tiers)
        "run_io": {f"{tier}.{op}": {"count": c, "bytes": b} for (tier, op), (c, b) in sorted(recorder.total.items())},
        "errors": {"count": recorder.error_count, "first": list(recorder.errors)},
        "timeline_step_s": recorder.timeline_step_ns / 1e9,
        "timeline_bytes": {t: list(v) for t, v in recorder.timeline.items()},
        "occupancy_timeline": [{"t_s": t, "bytes": used} for t, used in recorder.occupancy],
    }
    for tier, ops in per_tier.items():
        for op, figures in ops.items():
            if "p95" in figures["latency_ms"]:
                summary[f"{tier}_{op}_p95_ms"] = figures["latency_ms"]["p95"]
    return flat, summary
