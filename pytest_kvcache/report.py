"""The session report: a JSON file and the terminal tables.

The JSON keeps the MLPerf reference's key names where they mean the same thing, and says
how every figure was measured (file I/O mode, device counters, window).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from . import __version__
from .judging import render_table
from .metrics import HEADLINE
from .ops import DATA_OPS, op_order
from .workload.replay import source_text

SCHEMA_VERSION = 2


def build_report(session, final: bool) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "pytest-kvcache", "version": __version__},
        "complete": final and not session.interrupted,
        "created_unix": round(time.time(), 3),
        "host": {"node": platform.node(), "python": platform.python_version(), "platform": platform.platform()},
        "model": session.model.to_dict(),
        "settings": session.settings.to_dict(),
        "seed": session.settings.seed,
        "criteria": [c.text for c in session.criteria],
        "scenarios": [r.to_dict() for r in session.results],
        "unjudged_criteria": [{"criterion": c.text, "source": c.source, "reasons": reasons}
                              for c, reasons in session.unjudged()],
        **({"cluster": session.cluster.describe()} if getattr(session, "cluster", None) is not None else {}),
    }


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kvcache-report-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_figure(value, unit: str) -> str:
    """One headline figure for people: "n/a" when nothing was measured."""
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "count" and isinstance(value, float):  # a mean over trials
        return f"{value:,.1f}"
    if unit in ("count", ""):
        return f"{value:,}" if isinstance(value, int) else str(value)
    if unit == "x":
        return f"{value:,.3g}"
    if unit == "GB/s":
        return f"{value:.3f} GB/s"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:,.1f} {unit}"


_LATENCY_LINE_FROM = "e2e_p95_ms"  # the headline's second line: latencies and what qualifies them


def headline_text(figures: dict, skip=("status",)) -> list[str]:
    """The headline figures as two lines of 'label value | ...' (``metrics.HEADLINE`` order):
    volumes and rates, then latencies."""
    lines: list[list[str]] = [[]]
    for key, label, unit in HEADLINE:
        if key == _LATENCY_LINE_FROM:
            lines.append([])
        if key in figures and key not in skip:
            lines[-1].append(f"{label} {format_figure(figures[key], unit)}")
    return [" | ".join(parts) for parts in lines if parts]


def tier_table(summary: dict) -> str:
    """Every (tier, op) of the window: data ops with bytes and GB/s, deletes and evictions
    with counts and latencies only."""
    rows = []
    for tier, ops in summary.get("tiers", {}).items():
        for op in sorted(ops, key=op_order):
            f = ops[op]
            lat = f["latency_ms"]
            moving = op in DATA_OPS
            rows.append([tier, op, f["count"], f"{f['bytes'] / 1e9:.3f}" if moving else "-",
                         (f"{f['gbps']:.3f}" if f.get("gbps") is not None else "n/a") if moving else "-",
                         _ms(lat.get("p50")), _ms(lat.get("p95")), _ms(lat.get("p99")), _ms(lat.get("max"))])
    return tabulate(rows, headers=["tier", "op", "count", "GB", "GB/s", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                    tablefmt="simple")


def qos_table(summary: dict) -> str:
    """Per QoS class: requests, rejections (open loop), e2e / queue wait / TTFT percentiles and
    the share within the class's p95 target; empty when no class had a request."""
    classes = summary.get("qos") or {}
    arrivals = summary.get("arrivals") or {}
    open_loop = arrivals.get("open_loop")
    if not any(c["requests"] or c.get("offered") for c in classes.values()):
        return ""
    rows = []
    for name, c in classes.items():
        e2e, wait, ttft = c["e2e_ms"], c["queue_wait_ms"], c["ttft_ms"]
        rows.append([name, c["requests"], *([c["offered"], c["rejected"]] if open_loop else []),
                     _ms(e2e.get("p50")), _ms(e2e.get("p95")), _ms(e2e.get("p99")), _ms(wait.get("p95")),
                     _ms(ttft.get("p95")), _ms(c["p95_target_ms"]), format_figure(c["sla_compliance"], "%")])
    headers = ["class", "requests", *(["offered", "rejected"] if open_loop else []), "e2e p50 ms", "e2e p95 ms",
               "e2e p99 ms", "queue p95 ms", "TTFT p95 ms", "p95 target ms", "within target"]
    return tabulate(rows, headers=headers, tablefmt="simple")


def _s_ms(seconds) -> str:
    return _ms(None if seconds is None else seconds * 1e3)


def _users(n) -> str:
    return f"{n} user" if n == 1 else f"{n} users"


def scaling_text(summary: dict) -> str:
    """The autoscaler's or SLA search's steps as a table under its outcome; empty without one."""
    block, kind = summary.get("autoscale"), "autoscale"
    if not block:
        block, kind = summary.get("sla_search"), "sla_search"
    if not block:
        return ""
    if kind == "sla_search":
        knee = block.get("knee_users")
        head = (f"SLA search ({block['sla_metric']} <= {block['sla_target_s'] * 1e3:g} ms): "
                + (f"knee at {_users(knee)}, p95 {_s_ms(block['knee_p95_s'])} ms" if knee else "no user count met the target"))
    elif block["mode"] == "capacity":
        head = (f"autoscale capacity: peak {format_figure(block.get('peak_gbps'), 'GB/s')} at "
                f"{_users(block.get('peak_users'))}")
    else:
        head = (f"autoscale qos (target saturation {block['target_saturation']:g} = step p95 of {block['sla_metric']} / "
                f"{block['sla_target_s'] * 1e3:g} ms): settled at {_users(block.get('settled_users'))}")
    rows = [[f"{st['t_s']:.1f}", st["users"], st["users_served"], st["requests"],
             "n/a" if st["storage_gbps"] is None else f"{st['storage_gbps']:.3f}", _s_ms(st["sla_p95_s"]),
             *([("n/a" if st.get("saturation") is None else f"{st['saturation']:.2f}")] if "saturation" in st else []),
             st["decision"], st["reason"]] for st in block["steps"]]
    headers = ["t s", "users", "served", "requests", "GB/s", "SLA p95 ms",
               *(["saturation"] if block["steps"] and "saturation" in block["steps"][0] else []), "decision", "reason"]
    table = tabulate(rows, headers=headers, tablefmt="simple") if rows else "(no step was measured)"
    return f"  {head}; stopped: {block['stopped']}\n{table}"


def arrivals_text(summary: dict) -> str | None:
    """One line on open-loop arrivals and rejections, or None for closed-loop users."""
    a = summary.get("arrivals") or {}
    if not a.get("open_loop"):
        return None
    return (f"open-loop arrivals in the window: {a['offered']:,} offered, {a['rejected']:,} rejected "
            f"({format_figure(a['rejected_fraction'], '%')}; {a['rejected_no_idle_user']:,} found every user busy)")


def _ratio(dev: dict, kind: str, of: str = "") -> str:
    """``x1.002``, or n/a, and whether it was too small to judge (devstats.compare_with_ours)."""
    value = dev.get(f"{kind}_ratio")
    text = ("x n/a" if value is None else f"x{value:.3f}") + of
    if dev.get(f"{kind}_ratio_reason"):
        text += f"; {dev[f'{kind}_ratio_reason']}"
    return text


TRIAL_FIGURES = (("storage_read_gbps", "storage read", "GB/s", 3), ("storage_write_gbps", "storage write", "GB/s", 3),
                 ("storage_tokens_per_sec", "storage", "tok/s", 0), ("headline_p95_ms", "headline p95", "ms", 2))


def trials_text(trials: dict | None) -> str | None:
    """``summary.trials`` in one line: per figure, mean [95% CI] and CV; None without trials."""
    if not trials:
        return None
    parts = []
    for key, label, unit, digits in TRIAL_FIGURES:
        f = trials["figures"].get(key)
        if f is None or f["mean"] is None:
            continue
        ci = "" if f["ci95"] is None else f" [{f['ci95'][0]:.{digits}f}, {f['ci95'][1]:.{digits}f}]"
        cv = "" if f["cv"] is None else f" cv {f['cv']:.1%}"
        parts.append(f"{label} {f['mean']:.{digits}f}{ci} {unit}{cv}")
    return (f"trials {trials['count']} (figures above are means; 95% CI in brackets): " +
            (" | ".join(parts) if parts else "no figure in every trial"))


CLUSTER_FIGURES = (("storage_read_gbps", "read GB/s", 3), ("storage_write_gbps", "write GB/s", 3),
                   ("storage_tokens_per_sec", "storage tok/s", 0), ("requests", "requests", 0),
                   ("headline_p95_ms", "headline p95 ms", 3), ("e2e_p95_ms", "e2e p95 ms", 3))


def cluster_text(cluster: dict, trials: int = 1) -> str:
    """An MPI run's per-rank headline figures under the aggregate's (``aggregate.aggregate``;
    with ``trials`` > 1 the last trial's), then the pooled percentiles, labelled as not the
    rules' figure."""
    def cell(value, digits):
        return "n/a" if value is None else f"{value:,.{digits}f}"

    rows = [[f"rank {r['rank']}", r.get("host") or "", r["status"],
             *(cell(r["headline"].get(key), d) for key, _, d in CLUSTER_FIGURES)] for r in cluster["per_rank"]]
    lines = [f"  {cluster['ranks']} MPI ranks: {cluster['rule']}" + (f"; per rank and pooled: the last of {trials} trials"
                                                                      if trials > 1 else ""),
             tabulate(rows, headers=["rank", "host", "status", *(label for _, label, _ in CLUSTER_FIGURES)],
                      tablefmt="simple")]
    pooled = cluster.get("pooled") or {}
    if pooled:
        lines.append(f"  pooled over {cluster['ranks']} ranks (all samples merged, not the rules' p95): " + " | ".join(
            f"{key} p95 {p['p95_ms']:.3f} ms ({p['count']:,} I/Os{'' if p['exact'] else ', reservoirs'})"
            for key, p in pooled.items()))
    return "\n".join(lines)


def scenario_text(result) -> str:
    s = result.summary
    lines = [f"{result.id} [{result.status.upper()}] tiers: {' > '.join(result.tiers)}",
             f"  {result.question}"]
    no_storage = () if s.get("storage_tier") else (
        "storage_tokens_per_sec", "storage_read_gbps", "storage_write_gbps", "storage_read_tokens_per_generated_token")
    ranks = (s.get("cluster") or {}).get("ranks")
    beside = f"[{ranks} ranks, aggregate] " if ranks else ""  # the rank count beside every headline line
    lines += ["  " + beside + text for text in headline_text(s.get("headline", {}), ("status", *no_storage))]
    trials = trials_text(s.get("trials"))
    if trials:
        lines.append(f"  {trials}")
    peak = s.get("kv_working_set_peak_bytes")
    if peak is not None:
        lines.append(f"  working set peak {peak / 1e9:.2f} GB (the KV all open conversations held at once)")
    if s.get("window_warning"):
        lines.append(f"  ! {s['window_warning']}")
    fix = s.get("entries_dropped", {}).get("fix")
    if fix:
        lines.append(f"  ! {fix}")
    whose = "rank 0's " if ranks else ""  # backends and device counters are rank 0's (aggregate.RANK0_SECTIONS)
    compute = s.get("compute") or {}
    if compute.get("legs", {}).get("h2d"):  # a GPU: say which rows are which leg
        lines.append(f"  compute device {compute['device']} ({compute.get('device_name')}): a tier's read row is the "
                     "storage leg, the compute h2d row the copy into GPU memory; request figures include both")
    for b in result.backends:
        if b.get("medium") == "network":
            lines.append(f"  {b['tier']}: {b.get('location')} (network, not a block device)")
        if "io_mode" in b:
            where = "memory, not a drive" if b.get("medium") == "memory" else b.get("block_device") or "no block device"
            lines.append(f"  {whose}{b['tier']}: {b.get('path')} ({b.get('fstype')}, {where}), "
                         f"I/O mode {b['io_mode']}: {b.get('io_mode_reason', '')}")
            if "recycle" in b:
                lines.append(f"  {b['tier']} files: {b.get('files_created', 0)} created, "
                             f"{b.get('files_recycled', 0)} recycled (recycling {'on' if b['recycle'] else 'off'})")
    dev = result.device_counters
    if dev.get("available"):
        lines.append(f"  {whose}device {dev['device']} over the window: read {dev['read_bytes'] / 1e9:.3f} GB "
                     f"({_ratio(dev, 'read', ' of ours')}), write {dev['write_bytes'] / 1e9:.3f} GB "
                     f"({_ratio(dev, 'write')}), busy {format_figure(dev.get('utilization'), '%')}")
    elif result.backends and any("io_mode" in b or b.get("medium") == "network" for b in result.backends):
        lines.append(f"  device counters: {dev.get('reason', 'unavailable')}")
    table = tier_table(s)
    if table:
        lines.append(table)
    if ranks:
        lines.append(cluster_text(s["cluster"], (s.get("trials") or {}).get("count", 1)))
    arrivals = arrivals_text(s)
    if arrivals:
        lines.append(f"  {arrivals}")
    replayed = source_text(result.trace, s.get("arrivals"))  # --kv-trace, --kv-sharegpt
    if replayed:
        lines.append(f"  {replayed}")
    table = qos_table(s)
    if table:
        lines.append(table)
    table = scaling_text(s)
    if table:
        lines.append(table)
    if result.outcomes:
        lines.append(render_table(result.outcomes))
    for problem in result.invariant_problems + result.errors:
        lines.append(f"  ! {problem}")
    return "\n".join(lines)
