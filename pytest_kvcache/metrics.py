"""Turn a finished run into figures: a flat metric dict for criteria and a report summary.

Throughputs divide the bytes of transfers that *completed* inside the window by the window's
length; only data ops (``ops.DATA_OPS``) move bytes. The flat dict uses canonical units
(seconds, GB/s = 1e9 B/s, fractions) and holds only figures with something behind them: a hit
rate with no lookups or a latency with no samples is absent from it, and ``None`` (JSON null,
"n/a") in the summary, never 0. The summary keeps the MLPerf reference's key names where they
mean the same, with latencies in milliseconds; ``summary["headline"]`` is the one ordered set of
headline figures that the terminal, CSV, JUnit properties, pytest-benchmark and plots all show.
"""

from __future__ import annotations

from .ops import DATA_OPS, READ_OPS, WRITE_OPS, headline_op, storage_tier
from .recorder import NO_IDLE_USER, QOS_TIMINGS, Recorder

HEADLINE_LOOKUP_KINDS = ("prefix", "multi_turn", "rag")
"""Lookup kinds the headline ``cache.hit_rate`` covers: what a cache could have held."""

LATENCY_KEYS = ("mean", "p50", "p95", "p99", "p999", "max")

EDGE_WARN_FRACTION = 0.05
"""A window whose edge bytes (transfers in flight as it opened or closed) exceed this share of
the bytes it counted is flagged as too short for the load: its byte figures are uncertain by more
than 5%."""

HEADLINE: tuple[tuple[str, str, str], ...] = (
    # (key, label, unit): the figures every renderer shows, in this order
    ("status", "status", ""),
    ("requests", "requests", "count"),
    ("window_s", "window", "s"),
    ("system_tokens_per_sec", "generated", "tok/s"),
    ("storage_tokens_per_sec", "storage", "tok/s"),
    ("storage_read_gbps", "storage read", "GB/s"),
    ("storage_write_gbps", "storage write", "GB/s"),
    ("cache_hit_rate", "hit rate", "%"),
    ("storage_read_tokens_per_generated_token", "storage read tokens per generated token", "x"),
    ("e2e_p95_ms", "e2e p95", "ms"),
    ("ttft_p95_ms", "TTFT p95", "ms"),
    ("queue_wait_p95_ms", "queue wait p95", "ms"),
    ("headline_op", "headline op", ""),
    ("headline_p95_ms", "headline p95", "ms"),
    ("headline_gbps", "headline", "GB/s"),
    ("entries_dropped", "entries dropped", "count"),
    ("window_edge_fraction", "bytes in flight at the window's edges", "%"),
)


def _ms(stats: dict) -> dict:
    return {k: round(stats[k] * 1e3, 4) for k in LATENCY_KEYS if k in stats}


def _round(value, digits: int):
    return None if value is None else round(value, digits)


def compute(recorder: Recorder, tiers: list[str], qos_classes: dict | None = None,
            open_loop: bool = False) -> tuple[dict, dict]:
    """``(flat, summary)`` of a run whose window has closed; ``tiers`` fastest first.

    ``qos_classes`` (name -> ``load.qos.QoSClass``) names the classes of the per-class block
    and their targets; ``open_loop`` says arrivals could be rejected (``requests.rejected``).
    """
    window = recorder.window_s
    rate = (lambda x: x / window) if window > 0 else (lambda x: None)
    flat: dict[str, float] = {"window_s": window}
    per_tier: dict[str, dict] = {}
    tier_bytes: dict[str, int] = {}
    moved = edge = 0
    for (tier, op), w in sorted(recorder.window.items()):
        stats = w.latency.stats()
        prefix = f"{tier}.{op}"
        figures = {"count": w.count, "iops": _round(rate(w.count), 3)}
        flat[f"{prefix}.count"] = w.count
        if rate(w.count) is not None:
            flat[f"{prefix}.iops"] = rate(w.count)
        if op in DATA_OPS:
            # I/Os that moved nothing (a gpu-tier hit with a GPU compute device) have no GB/s
            figures.update(bytes=w.bytes, tokens=round(w.tokens, 3), edge_bytes=w.edge_bytes,
                           gbps=_round(rate(w.bytes / 1e9), 6) if w.bytes else None)
            flat[f"{prefix}.bytes"] = w.bytes
            if rate(w.bytes) is not None and w.bytes:
                flat[f"{prefix}.gbps"] = rate(w.bytes) / 1e9
            tier_bytes[tier] = tier_bytes.get(tier, 0) + w.bytes
            moved += w.bytes
            edge += w.edge_bytes
        for k in LATENCY_KEYS:
            if k in stats:
                flat[f"{prefix}.{k}"] = stats[k]
        figures.update(latency_ms=_ms(stats), latency_exact=stats.get("exact", True),
                       latency_cdf_ms=w.latency.quantiles_ms())
        per_tier.setdefault(tier, {})[op] = figures
    for tier, nbytes in tier_bytes.items():
        if rate(nbytes) is not None:
            flat[f"{tier}.gbps"] = rate(nbytes) / 1e9
    edge_fraction = edge / moved if moved else None
    if edge_fraction is not None:
        flat["window.edge_fraction"] = edge_fraction

    storage = storage_tier(tiers)
    storage_read_tokens = None
    if storage is not None and window > 0:
        ops = {op: recorder.window.get((storage, op)) for op in DATA_OPS}
        rd = sum(ops[o].bytes for o in READ_OPS if ops[o])
        wr = sum(ops[o].bytes for o in WRITE_OPS if ops[o])
        flat["storage.read_gbps"] = rd / window / 1e9
        flat["storage.write_gbps"] = wr / window / 1e9
        flat["storage.gbps"] = (rd + wr) / window / 1e9
        flat["storage.throughput_tokens_per_sec"] = sum(o.tokens for o in ops.values() if o) / window
        storage_read_tokens = ops["read"].tokens if ops["read"] else 0.0

    # Hit rates are hit tokens ÷ looked-up tokens (what LMCache and vLLM report), per lookup
    # kind and, for the headline, over the kinds a cache could have held: shared prefixes,
    # conversation history and RAG documents. This turn's new text (kind "new") and the
    # reference read model's decode re-reads of what a request has just loaded (which inflate
    # the MLPerf reference's hit rate) stay out of the headline.
    loads = [c for kind, c in recorder.lookups.items() if kind in HEADLINE_LOOKUP_KINDS]
    looked_up = sum(c[2] + c[3] for c in loads)
    if looked_up:
        flat["cache.hit_rate"] = sum(c[2] for c in loads) / looked_up
    # the headline hit rate split by the tier each hit was read from (they sum to it)
    tier_hit_rates: dict[str, float | None] = {}
    for tier in tiers:
        served = sum(n for (t, kind), n in recorder.tier_hits.items() if t == tier and kind in HEADLINE_LOOKUP_KINDS)
        tier_hit_rates[tier] = served / looked_up if looked_up else None
        if looked_up:
            flat[f"cache.tier_hit_rate.{tier}"] = served / looked_up
    hit_rates: dict[str, dict] = {}
    for kind, (hb, mb, ht, mt) in sorted(recorder.lookups.items()):
        tokens = ht / (ht + mt) if ht + mt else None
        blocks = hb / (hb + mb) if hb + mb else None
        if tokens is not None:
            flat[f"cache.hit_rate.{kind}"] = tokens
        if blocks is not None:
            flat[f"cache.block_hit_rate.{kind}"] = blocks
        hit_rates[kind] = {"tokens": _round(tokens, 6), "blocks": _round(blocks, 6)}

    counters = recorder.counters
    completed = counters.get("requests", 0)
    generated = counters.get("generated_tokens", 0)
    flat["requests.completed"] = completed
    if window > 0:
        flat["requests.per_sec"] = completed / window
        flat["system.tokens_per_sec"] = generated / window
    if storage_read_tokens is not None and generated:
        # design section 6: storage-tier tokens read per generated token (reads that served
        # requests; writes and other tiers' reads are not part of it)
        flat["storage.read_tokens_per_generated_token"] = storage_read_tokens / generated
    flat["errors.count"] = recorder.error_count
    request_stats = {name: s.stats() for name, s in recorder.requests.items()}
    for name, stats in request_stats.items():
        for k in LATENCY_KEYS:
            if k in stats:
                flat[f"{name}.{k}"] = stats[k]

    def latency_ms(name: str) -> dict:
        return _ms(request_stats.get(name, {}))

    summary = {
        "window_s": round(window, 3),
        "total_requests": completed,
        "total_tokens_generated": generated,
        "total_tokens_per_sec": _round(flat.get("system.tokens_per_sec"), 3),
        "requests_per_second": _round(flat.get("requests.per_sec"), 3),
        "storage_tier": storage,
        "storage_throughput_tokens_per_sec": _round(flat.get("storage.throughput_tokens_per_sec"), 3),
        "storage_read_gbps": _round(flat.get("storage.read_gbps"), 6),
        "storage_write_gbps": _round(flat.get("storage.write_gbps"), 6),
        "cache_hit_rate": _round(flat.get("cache.hit_rate"), 6),
        "hit_rates": hit_rates,
        "tier_hit_rates": {t: _round(v, 6) for t, v in tier_hit_rates.items()},
        "cache_lookups": {k: {"hits": hb, "misses": mb, "hit_tokens": ht, "missed_tokens": mt}
                          for k, (hb, mb, ht, mt) in sorted(recorder.lookups.items())},
        "storage_read_tokens_per_generated_token": _round(flat.get("storage.read_tokens_per_generated_token"), 3),
        "end_to_end_latency_ms": latency_ms("e2e"),
        "queue_wait_ms": latency_ms("queue_wait"),
        "storage_io_latency_ms": latency_ms("storage_time"),
        "generation_latency_ms": latency_ms("generation_time"),
        "ttft_ms": latency_ms("ttft"),
        "retrieval_latency_ms": latency_ms("retrieval"),  # RAG queries: lookup + load of their cached prompt
        "tiers": per_tier,
        "window_bytes": moved,
        "window_edge_bytes": edge,
        "window_edge_fraction": _round(edge_fraction, 4),
        "window_warning": _window_warning(edge_fraction, edge),
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
    summary["qos"], summary["arrivals"] = _qos(recorder, flat, qos_classes or {}, open_loop)
    return flat, summary


def _qos(recorder: Recorder, flat: dict, classes: dict, open_loop: bool) -> tuple[dict, dict]:
    """Per QoS class figures into ``flat`` (``qos.<class>.*``) and the summary's ``qos`` block;
    the open-loop arrival counts into ``requests.offered|rejected`` and the ``arrivals`` block.

    A class's latency (``qos.<class>.p95`` ...) is its end-to-end latency, queue wait included,
    which is what its SLA targets bound (``load.qos``); ``sla_compliance`` is the exact fraction
    of its finished requests whose e2e was within the p95 target.
    """
    block = {}
    for name in [*classes, *sorted(set(recorder.qos_requests) - set(classes))]:
        series = recorder.qos_requests.get(name, {})
        stats = {t: series[t].stats() for t in QOS_TIMINGS if t in series}
        count = stats["e2e"]["count"] if "e2e" in stats else 0
        cls = classes.get(name)
        offered, rejected = recorder.arrivals.get(name, (0, 0))
        compliance = recorder.qos_within.get(name, 0) / count if count and cls is not None else None
        if count:
            flat[f"qos.{name}.requests"] = count
            for k in LATENCY_KEYS:
                if k in stats["e2e"]:
                    flat[f"qos.{name}.{k}"] = stats["e2e"][k]
            for timing in ("queue_wait", "ttft"):
                for k in LATENCY_KEYS:
                    if k in stats.get(timing, {}):
                        flat[f"qos.{name}.{timing}.{k}"] = stats[timing][k]
        if compliance is not None:
            flat[f"qos.{name}.sla_compliance"] = compliance
        if open_loop:
            flat[f"qos.{name}.offered"] = offered
            flat[f"qos.{name}.rejected"] = rejected
        block[name] = {
            "requests": count,
            "p95_target_ms": None if cls is None else round(cls.p95_s * 1e3, 4),
            "p99_target_ms": None if cls is None or cls.p99_s is None else round(cls.p99_s * 1e3, 4),
            "sla_compliance": _round(compliance, 6),
            "e2e_ms": _ms(stats.get("e2e", {})),
            "queue_wait_ms": _ms(stats.get("queue_wait", {})),
            "ttft_ms": _ms(stats.get("ttft", {})),
            "offered": offered if open_loop else None,
            "rejected": rejected if open_loop else None,
        }
    arrivals = {"open_loop": open_loop, "offered": None, "rejected": None, "rejected_no_idle_user": None,
                "rejected_fraction": None}
    if open_loop:
        offered = sum(o for o, _ in recorder.arrivals.values())
        rejected = sum(r for _, r in recorder.arrivals.values())
        flat["requests.offered"] = offered
        flat["requests.rejected"] = rejected
        arrivals.update(offered=offered, rejected=rejected,
                        rejected_no_idle_user=recorder.arrivals.get(NO_IDLE_USER, (0, 0))[1],
                        rejected_fraction=_round(rejected / offered, 6) if offered else None)
    return block, arrivals


def _window_warning(edge_fraction: float | None, edge: int) -> str | None:
    if edge_fraction is None or edge_fraction <= EDGE_WARN_FRACTION:
        return None
    return (f"window too short for this load: {edge / 1e9:.3f} GB ({edge_fraction:.0%} of the bytes counted) "
            "were in flight as the window opened or closed, so byte figures are uncertain by that much; "
            "lengthen --kv-duration")


def headline(summary: dict, tiers: list[str], status: str, extra: dict | None = None) -> dict:
    """The ``HEADLINE`` figures of one scenario as ``{key: value}`` in order; None is n/a.

    ``extra`` supplies figures that are not in the summary (``entries_dropped``).
    """
    by_tier = summary.get("tiers", {})
    picked = headline_op(tiers, lambda t, o: bool(by_tier.get(t, {}).get(o, {}).get("count")))
    op_figures = by_tier[picked[0]][picked[1]] if picked else {}
    values = {
        "status": status,
        "requests": summary.get("total_requests"),
        "window_s": summary.get("window_s"),
        "system_tokens_per_sec": summary.get("total_tokens_per_sec"),
        "storage_tokens_per_sec": summary.get("storage_throughput_tokens_per_sec"),
        "storage_read_gbps": summary.get("storage_read_gbps"),
        "storage_write_gbps": summary.get("storage_write_gbps"),
        "cache_hit_rate": summary.get("cache_hit_rate"),
        "storage_read_tokens_per_generated_token": summary.get("storage_read_tokens_per_generated_token"),
        "e2e_p95_ms": summary.get("end_to_end_latency_ms", {}).get("p95"),
        "ttft_p95_ms": summary.get("ttft_ms", {}).get("p95"),
        "queue_wait_p95_ms": summary.get("queue_wait_ms", {}).get("p95"),
        "headline_op": f"{picked[0]}.{picked[1]}" if picked else None,
        "headline_p95_ms": op_figures.get("latency_ms", {}).get("p95"),
        "headline_gbps": op_figures.get("gbps"),
        "window_edge_fraction": summary.get("window_edge_fraction"),
        **(extra or {}),
    }
    return {key: values.get(key) for key, _, _ in HEADLINE}
