"""One scenario's results from several MPI ranks (clients) combined into one, as the MLPerf
Storage KV-cache rules score a scale-out run (design section 10, after mlcommons/storage
``Rules.md`` section 6): bandwidth and storage tokens/s are **summed** across the ranks within a
trial, and the P95 is the **maximum of the ranks' P95s**; the rank count goes with the headline.

Pure functions of the ranks' results (no MPI here; ``cluster.py`` moves the data). The rule per
flat metric (``metric_rule``):

- ``sum``: bytes, counts, GB/s, IOPS, tokens/s, requests/s (every kind that adds up across clients);
- ``max``: every latency statistic (p50 ... max, mean): the worst rank's, as the rules' P95;
- ``lookups``: hit rates from the ranks' lookup counts added up (hit tokens ÷ looked-up tokens);
- weighted means: ``qos.<class>.sla_compliance`` by the class's requests,
  ``storage.read_tokens_per_generated_token`` by generated tokens, ``window.edge_fraction`` by bytes;
- ``device``: the drive's counters ÷ our bytes per (host, device) group, the group's device bytes
  counted once (ranks on one drive each see all of its I/O); the lowest group's ratio;
- ``same``: anything else (labels) only when every rank has the same value, else n/a.

A rank without a figure adds nothing to a sum or a maximum; a figure no rank has stays n/a.
A **pooled** percentile of every rank's samples merged is reported beside them
(``summary.cluster.pooled``), labelled as such: it is not the rules' figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .criteria import Criterion, metric_kind
from .judging import evaluate
from .metrics import HEADLINE_LOOKUP_KINDS, LATENCY_KEYS, _window_warning, headline
from .result import ScenarioResult

RULE = ("aggregate of the ranks (MLPerf Storage KV-cache scale-out rules): GB/s, bytes, counts and tokens/s "
        "summed within the trial; every latency statistic (p95 included) the maximum of the ranks'; hit rates "
        "from the ranks' lookups added up; device ratios per drive; the pooled percentiles (summary.cluster.pooled) "
        "merge every rank's samples and are not the rules' figure")
SUM_KINDS = frozenset({"count", "bytes", "throughput", "per_second", "tokens_per_second"})
RANK0_SECTIONS = ("counters", "run_counters", "run_io", "timeline_bytes", "occupancy_timeline", "autoscale",
                  "sla_search", "verify")
"""Summary sections taken from rank 0 as they are, like the result's backends, occupancy, device
counters and trace (every rank's headline and metrics are in ``summary.cluster.per_rank``)."""


def metric_rule(name: str) -> str:
    """How flat metric ``name`` combines over ranks (see the module docstring)."""
    if name == "window_s":
        return "max"
    if name.startswith(("cache.hit_rate", "cache.block_hit_rate")):
        return "lookups"
    if name in ("device.read_ratio", "device.write_ratio"):
        return "device"
    if name == "window.edge_fraction":
        return "edge"
    if name == "storage.read_tokens_per_generated_token":
        return "per_generated_token"
    if name.startswith("qos.") and name.endswith(".sla_compliance"):
        return "per_request"
    kind = metric_kind(name)
    if kind == "latency":
        return "max"
    if kind in SUM_KINDS:
        return "sum"
    return "same"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _weighted(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Mean of values weighted by their weights; None when the weights add up to nothing."""
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def pooled_lookups(summaries: Sequence[Mapping]) -> dict[str, dict]:
    """The ranks' ``summary.cache_lookups`` added up per lookup kind."""
    out: dict[str, dict] = {}
    for s in summaries:
        for kind, c in (s.get("cache_lookups") or {}).items():
            acc = out.setdefault(kind, {"hits": 0, "misses": 0, "hit_tokens": 0, "missed_tokens": 0})
            for k in acc:
                acc[k] += c.get(k, 0)
    return out


def hit_rate_metrics(lookups: Mapping[str, Mapping]) -> dict[str, float]:
    """``cache.hit_rate`` (over ``metrics.HEADLINE_LOOKUP_KINDS``), ``cache.hit_rate.<kind>`` in
    tokens and ``cache.block_hit_rate.<kind>`` in blocks, from lookup counts (as metrics.compute)."""
    out = {}
    loads = [c for kind, c in lookups.items() if kind in HEADLINE_LOOKUP_KINDS]
    looked_up = sum(c["hit_tokens"] + c["missed_tokens"] for c in loads)
    if looked_up:
        out["cache.hit_rate"] = sum(c["hit_tokens"] for c in loads) / looked_up
    for kind, c in lookups.items():
        if c["hit_tokens"] + c["missed_tokens"]:
            out[f"cache.hit_rate.{kind}"] = c["hit_tokens"] / (c["hit_tokens"] + c["missed_tokens"])
        if c["hits"] + c["misses"]:
            out[f"cache.block_hit_rate.{kind}"] = c["hits"] / (c["hits"] + c["misses"])
    return out


def device_ratios(ranks: Sequence[Mapping]) -> tuple[dict[str, float], dict[str, str]]:
    """``device.<read|write>_ratio`` over the ranks: per (host, device label) group, the most
    bytes any of its ranks' counters saw (each saw the whole drive's I/O over nearly the same
    window) ÷ the group's bytes of ours; the lowest group's. A direction is judged only when
    every rank could judge its own (``devstats.compare_with_ours``); otherwise n/a with the
    first rank's reason. Returns ``(metrics, absent)``."""
    metrics, absent = {}, {}
    for kind in ("read", "write"):
        name = f"device.{kind}_ratio"
        missing = [(i, r) for i, r in enumerate(ranks) if r["metrics"].get(name) is None]
        if missing:
            i, r = missing[0]
            why = (r.get("absent") or {}).get(name) or (r.get("device_counters") or {}).get(f"{kind}_ratio_reason")
            absent[name] = f"rank {r.get('rank', i)}: {why or 'no device figure'}"
            continue
        groups: dict[tuple, list] = {}
        for r in ranks:
            dev = r["device_counters"]
            groups.setdefault((r.get("host"), dev.get("device")), []).append(dev)
        metrics[name] = min(max(d[f"{kind}_bytes"] for d in devs) / sum(d[f"app_{kind}_bytes"] for d in devs)
                            for devs in groups.values())
    return metrics, absent


def combine_metrics(ranks: Sequence[Mapping]) -> tuple[dict, dict[str, str]]:
    """The flat metrics criteria are judged on, from every rank's (``metric_rule``).

    ``ranks``: per rank a mapping with ``metrics`` and ``summary`` (and, for the device ratios,
    ``device_counters``, ``host``, ``absent``, ``rank``). Returns ``(metrics, absent)``, absent
    naming the metrics the ranks cannot be combined into (metric -> reason).
    """
    keys = list(dict.fromkeys(k for r in ranks for k in r["metrics"]))
    out: dict = {}
    absent: dict[str, str] = {}
    summaries = [r["summary"] for r in ranks]
    for key in keys:
        rule = metric_rule(key)
        have = [(r, r["metrics"][key]) for r in ranks if r["metrics"].get(key) is not None]
        values = [v for _, v in have]
        if rule != "same" and not all(_number(v) for v in values):
            rule = "same"
        if rule == "sum":
            out[key] = sum(values)
        elif rule == "max":
            out[key] = max(values)
        elif rule == "per_generated_token":
            value = _weighted([(v, r["summary"].get("total_tokens_generated") or 0) for r, v in have])
            if value is not None:
                out[key] = value
        elif rule == "per_request":
            requests = key.rsplit(".", 1)[0] + ".requests"
            value = _weighted([(v, r["metrics"].get(requests) or 0) for r, v in have])
            if value is not None:
                out[key] = value
        elif rule == "same":
            if len(have) == len(ranks) and all(v == values[0] for v in values):
                out[key] = values[0]
            else:
                absent[key] = f"the ranks' values differ ({', '.join(map(str, values))}) and there is no rule to combine them"
    out.update(hit_rate_metrics(pooled_lookups(summaries)))
    moved = sum(s.get("window_bytes") or 0 for s in summaries)
    if moved:
        out["window.edge_fraction"] = sum(s.get("window_edge_bytes") or 0 for s in summaries) / moved
    ratios, why = device_ratios(ranks)
    out.update(ratios)
    absent.update(why)
    return out, absent


def _opt_sum(values):
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def _opt_max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _latency_max(blocks: Sequence[Mapping]) -> dict:
    """Per statistic (ms) the largest of the ranks' (the rules' max of the ranks' P95)."""
    return {k: _opt_max([b.get(k) for b in blocks]) for k in LATENCY_KEYS if any(k in b for b in blocks)}


def pooled_latency(samples: Sequence[Mapping[str, Sequence[float]]], exact: Mapping[str, bool] | None = None) -> dict:
    """Per ``"tier.op"``: percentiles (ms) of every rank's latency samples (seconds) merged.

    Exact when every rank kept every sample (``exact[key]``); otherwise it merges the ranks'
    reservoirs, each a uniform sample of its own rank, not weighted by the ranks' counts."""
    keys = sorted({k for s in samples for k in s})
    out = {}
    for key in keys:
        arr = np.concatenate([np.asarray(s[key], dtype=float) for s in samples if len(s.get(key, ()))] or [np.zeros(0)])
        if not arr.size:
            continue
        ms = arr * 1e3
        out[key] = {"count": int(arr.size), "p50_ms": round(float(np.percentile(ms, 50)), 4),
                    "p95_ms": round(float(np.percentile(ms, 95)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
                    "max_ms": round(float(ms.max()), 4), "exact": bool((exact or {}).get(key, False)),
                    "cdf_ms": [round(float(v), 4) for v in np.percentile(ms, np.linspace(0, 100, 101))]}
    return out


def combine_tiers(summaries: Sequence[Mapping], pooled: Mapping[str, dict]) -> dict:
    """``summary.tiers`` over the ranks: counts, bytes, tokens, IOPS and GB/s summed, latency
    statistics the worst rank's; the CDF is the pooled one (``pooled_latency``)."""
    out: dict = {}
    for s in summaries:
        for tier, ops in (s.get("tiers") or {}).items():
            for op in ops:
                out.setdefault(tier, {}).setdefault(op, None)
    for tier, ops in out.items():
        for op in ops:
            figs = [s["tiers"][tier][op] for s in summaries if op in (s.get("tiers") or {}).get(tier, {})]
            merged = {k: _opt_sum([f.get(k) for f in figs]) for k in ("count", "iops", "bytes", "tokens", "edge_bytes", "gbps")
                      if any(k in f for f in figs)}
            merged["latency_ms"] = _latency_max([f.get("latency_ms") or {} for f in figs])
            merged["latency_exact"] = all(f.get("latency_exact", True) for f in figs)
            merged["latency_cdf_ms"] = (pooled.get(f"{tier}.{op}") or {}).get("cdf_ms", [])
            ops[op] = merged
    return out


def combine_qos(summaries: Sequence[Mapping], metrics: Mapping) -> dict:
    """``summary.qos`` over the ranks: per class requests, offered and rejected summed, each
    latency statistic the worst rank's, the SLA compliance over every rank's requests."""
    out: dict = {}
    for name in dict.fromkeys(n for s in summaries for n in (s.get("qos") or {})):
        blocks = [s["qos"][name] for s in summaries if name in (s.get("qos") or {})]
        out[name] = {**blocks[0], "requests": _opt_sum([b.get("requests") for b in blocks]) or 0,
                     "offered": _opt_sum([b.get("offered") for b in blocks]),
                     "rejected": _opt_sum([b.get("rejected") for b in blocks]),
                     "sla_compliance": metrics.get(f"qos.{name}.sla_compliance"),
                     **{k: _latency_max([b.get(k) or {} for b in blocks]) for k in ("e2e_ms", "queue_wait_ms", "ttft_ms")}}
    return out


def combine_arrivals(summaries: Sequence[Mapping]) -> dict:
    """``summary.arrivals`` (open loop) over the ranks: the counts summed, the share recomputed."""
    blocks = [s.get("arrivals") or {} for s in summaries]
    out = dict(blocks[0]) if blocks else {}
    if out.get("open_loop"):
        for key in ("offered", "rejected", "rejected_no_idle_user"):
            out[key] = _opt_sum([b.get(key) for b in blocks])
        out["rejected_fraction"] = out["rejected"] / out["offered"] if out.get("offered") else None
    return out


def combine_summary(summaries: Sequence[Mapping], metrics: Mapping, pooled: Mapping[str, dict]) -> dict:
    """The report summary of the aggregate: rank 0's, with every figure that has a rule
    recomputed over the ranks (``RANK0_SECTIONS`` stay rank 0's)."""
    first = summaries[0]
    out = dict(first)
    tiers = combine_tiers(summaries, pooled)
    window_bytes = _opt_sum([s.get("window_bytes") for s in summaries]) or 0
    edge = _opt_sum([s.get("window_edge_bytes") for s in summaries]) or 0
    out.update({
        "window_s": _opt_max([s.get("window_s") for s in summaries]),
        "total_requests": _opt_sum([s.get("total_requests") for s in summaries]),
        "total_tokens_generated": _opt_sum([s.get("total_tokens_generated") for s in summaries]),
        **{k: _opt_sum([s.get(k) for s in summaries])
           for k in ("total_tokens_per_sec", "requests_per_second", "storage_throughput_tokens_per_sec",
                     "storage_read_gbps", "storage_write_gbps", "kv_working_set_peak_bytes")},
        "cache_hit_rate": metrics.get("cache.hit_rate"),
        "storage_read_tokens_per_generated_token": metrics.get("storage.read_tokens_per_generated_token"),
        "tiers": tiers,
        "window_bytes": window_bytes,
        "window_edge_bytes": edge,
        "window_edge_fraction": metrics.get("window.edge_fraction"),
        "window_warning": _window_warning(metrics.get("window.edge_fraction"), edge),
        "errors": {"count": _opt_sum([(s.get("errors") or {}).get("count") for s in summaries]) or 0,
                   "first": [f"rank {i}: {e}" for i, s in enumerate(summaries) for e in (s.get("errors") or {}).get("first", [])][:10]},
    })
    lookups = pooled_lookups(summaries)
    out["cache_lookups"] = lookups
    out["hit_rates"] = {kind: {"tokens": metrics.get(f"cache.hit_rate.{kind}"), "blocks": metrics.get(f"cache.block_hit_rate.{kind}")}
                        for kind in lookups}
    for key in ("end_to_end_latency_ms", "queue_wait_ms", "storage_io_latency_ms", "generation_latency_ms", "ttft_ms",
                "retrieval_latency_ms"):
        out[key] = _latency_max([s.get(key) or {} for s in summaries])
    for key in [k for k in first if k.endswith("_p95_ms") and k not in ("headline_p95_ms",)]:
        out[key] = _opt_max([s.get(key) for s in summaries])
    for key in [k for k in first if k.endswith("_entries")]:
        out[key] = _opt_sum([s.get(key) for s in summaries])
    out["qos"] = combine_qos(summaries, metrics)
    out["arrivals"] = combine_arrivals(summaries)
    dropped = [s.get("entries_dropped") or {} for s in summaries]
    out["entries_dropped"] = {**dropped[0], **{k: _opt_sum([d.get(k) for d in dropped]) for k in ("count", "too_big", "no_room")},
                              "largest_bytes": _opt_max([d.get("largest_bytes") for d in dropped]),
                              "fix": next((f"rank {i}: {d['fix']}" for i, d in enumerate(dropped) if d.get("fix")), None)}
    return out


def aggregate(ranks: Sequence[Mapping], criteria: Sequence[Criterion]) -> tuple[ScenarioResult, dict[str, str]]:
    """One ``ScenarioResult`` of a scenario run on every rank at once, judged on the aggregate.

    ``ranks``: per rank (in rank order) ``{"rank", "host", "result": ScenarioResult.to_dict(),
    "absent": {metric: reason}, "samples": {"tier.op": [seconds]}}``. Returns the result (its
    ``summary.cluster`` holds the rank count, the rule, the per-rank figures and the pooled
    percentiles; ``samples`` every rank's merged) and the absent map it was judged with.
    """
    results = [ScenarioResult.from_dict(r["result"]) for r in ranks]
    views = [{"rank": r["rank"], "host": r.get("host"), "metrics": res.metrics, "summary": res.summary,
              "device_counters": res.device_counters, "absent": r.get("absent") or {}} for r, res in zip(ranks, results)]
    metrics, why = combine_metrics(views)
    absent: dict[str, str] = {}
    for r in ranks:
        for key, reason in (r.get("absent") or {}).items():
            absent.setdefault(key, reason)
    absent.update(why)
    tiers_of = [res.summary.get("tiers") or {} for res in results]
    keys = {key for r in ranks for key in (r.get("samples") or {})}
    exact = {key: all(t.get(key.split(".", 1)[0], {}).get(key.split(".", 1)[1], {}).get("latency_exact", True)
                      for t in tiers_of) for key in keys}
    pooled = pooled_latency([r.get("samples") or {} for r in ranks], exact)
    first = results[0]
    summary = combine_summary([res.summary for res in results], metrics, pooled)
    summary["cluster"] = {
        "ranks": len(ranks), "rule": RULE, "rank0_sections": list(RANK0_SECTIONS),
        "pooled": {k: {f: v for f, v in p.items() if f != "cdf_ms"} for k, p in pooled.items()},
        "pooled_note": "percentiles of every rank's latency samples merged (not the rules' figure, which is the "
                       "maximum of the ranks' percentiles); exact only when every rank kept all its samples",
        "per_rank": [{"rank": r["rank"], "host": r.get("host"), "status": res.status,
                      "headline": res.summary.get("headline", {}), "metrics": res.metrics,
                      "trace_sha256": res.trace.get("sha256"), "seed": res.settings.get("seed"),
                      "cache_dir": res.settings.get("cache_dir"), "errors": res.errors,
                      "invariant_problems": res.invariant_problems}
                     for r, res in zip(ranks, results)],
    }
    result = ScenarioResult(
        name=first.name, question=first.question, tiers=first.tiers, metrics=metrics, summary=summary,
        outcomes=evaluate(criteria, metrics, first.tiers, absent),
        invariant_problems=[f"rank {r['rank']}: {p}" for r, res in zip(ranks, results) for p in res.invariant_problems],
        errors=[f"rank {r['rank']}: {e}" for r, res in zip(ranks, results) for e in res.errors],
        backends=first.backends, occupancy=first.occupancy, device_counters=first.device_counters,
        trace=first.trace, settings=first.settings, model=first.model, nodeid=first.nodeid,
        run={**first.run, "aborted": any(res.run.get("aborted") for res in results),
             "ranks": [{"rank": r["rank"], **res.run} for r, res in zip(ranks, results)]},
        samples={tuple(k.split(".", 1)): list(v) for k, v in _merged_samples(ranks).items()},
        absent=absent,
    )
    dropped = summary["entries_dropped"].get("count")
    summary["headline"] = headline(summary, first.tiers, result.status, {"entries_dropped": dropped})
    return result, absent


def _merged_samples(ranks: Sequence[Mapping]) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in ranks:
        for key, values in (r.get("samples") or {}).items():
            out.setdefault(key, []).extend(float(v) for v in values)
    return out
