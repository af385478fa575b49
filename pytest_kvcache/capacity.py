"""Capacity curves: hit rate and storage load against one tier's budget, for one trace.

"How much memory does this load need?" A capacity sweep runs the same seeded trace on the same
tiers several times, each with a different budget for one tier (the swept tier), and draws the
working-set curve KV-cache testers draw: as the budget shrinks below what the load keeps live,
less of each prompt is found in the swept tier and more of it moves through storage.

A scenario joins a sweep with ``tag(result, sweep, tier)`` (``scenarios/test_capacity.py``),
which writes ``summary.capacity_sweep`` into its result; everything else a point shows is read
back from the scenario's saved figures, so ``curves`` works on a loaded JSON report as well
(``python -m pytest_kvcache report A.json --plots DIR``). A point's figures:

- ``budget_bytes``: the swept tier's budget (``occupancy.<tier>.budget_bytes``);
- ``tier_hit_rate``: looked-up tokens read back from the swept tier ÷ looked-up tokens
  (``cache.tier_hit_rate.<tier>``; the headline lookup kinds); ``hit_rate``: from any tier;
- ``storage_gbps``, ``storage_read_gbps``, ``storage_write_gbps``: the storage tier's window
  GB/s (``storage.gbps`` etc.); ``storage_bytes_per_request``: the storage tier's data-op
  bytes in the window ÷ requests completed in it;
- ``working_set_peak_bytes``: the KV of the users' open conversations at its peak.

Every figure with nothing behind it is None (n/a), never 0.
"""

from __future__ import annotations

from pathlib import Path

from .ops import READ_OPS, WRITE_OPS

SWEEP_KEY = "capacity_sweep"
POINT_KEYS = ("budget_bytes", "tier_hit_rate", "hit_rate", "storage_gbps", "storage_read_gbps",
              "storage_write_gbps", "storage_bytes_per_request", "requests", "working_set_peak_bytes")


def tag(result, sweep: str, tier: str) -> dict:
    """Make ``result`` (a ``ScenarioResult``) a point of capacity sweep ``sweep`` over ``tier``'s
    budget; returns the point. Raises ValueError when the scenario has no such tier."""
    if tier not in result.occupancy:
        raise ValueError(f"capacity sweep {sweep!r}: scenario {result.id} has no {tier} tier "
                         f"(its tiers: {', '.join(result.tiers)})")
    result.summary[SWEEP_KEY] = {"sweep": sweep, "tier": tier}
    return point(result.to_dict())


def point(scenario: dict) -> dict:
    """The curve point of a saved scenario (``ScenarioResult.to_dict()``) tagged by ``tag``."""
    summary, metrics = scenario.get("summary") or {}, scenario.get("metrics") or {}
    tier = summary[SWEEP_KEY]["tier"]
    storage = summary.get("storage_tier")
    requests = metrics.get("requests.completed") or 0
    moved = None
    if storage is not None:
        ops = (summary.get("tiers") or {}).get(storage, {})
        moved = sum(ops[op].get("bytes", 0) for op in (*READ_OPS, *WRITE_OPS) if op in ops)
    return {
        "id": scenario.get("id") or scenario.get("name"),
        "tier": tier,
        "budget_bytes": ((scenario.get("occupancy") or {}).get(tier) or {}).get("budget_bytes"),
        "tier_hit_rate": metrics.get(f"cache.tier_hit_rate.{tier}"),
        "hit_rate": metrics.get("cache.hit_rate"),
        "storage_gbps": metrics.get("storage.gbps"),
        "storage_read_gbps": metrics.get("storage.read_gbps"),
        "storage_write_gbps": metrics.get("storage.write_gbps"),
        "storage_bytes_per_request": moved / requests if moved is not None and requests else None,
        "requests": requests,
        "working_set_peak_bytes": summary.get("kv_working_set_peak_bytes"),
    }


def curves(scenarios: list[dict]) -> dict[str, list[dict]]:
    """The capacity sweeps among saved ``scenarios``: sweep name -> its points, smallest
    budget first. Scenarios not tagged by ``tag`` are left out."""
    out: dict[str, list[dict]] = {}
    for sc in scenarios:
        tagged = (sc.get("summary") or {}).get(SWEEP_KEY)
        if tagged:
            out.setdefault(tagged["sweep"], []).append(point(sc))
    for points in out.values():
        points.sort(key=lambda p: p["budget_bytes"] or 0)
    return out


def rises_with_budget(points: list[dict], key: str = "tier_hit_rate", tolerance: float = 0.0) -> list[str]:
    """Where ``key`` falls by more than ``tolerance`` from a smaller budget to a larger one
    (``points`` smallest budget first); [] when the curve never falls (n/a points skipped).
    A hit rate must not: a larger budget holds at least what a smaller one held."""
    problems = []
    measured = [p for p in points if p[key] is not None]
    for small, large in zip(measured, measured[1:]):
        if large[key] < small[key] - tolerance:
            problems.append(f"{key} {large[key]:.1%} at {_gb(large['budget_bytes'])} GB is below "
                            f"{small[key]:.1%} at {_gb(small['budget_bytes'])} GB")
    return problems


def _gb(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1e9:.3g}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def curve_text(sweep: str, points: list[dict]) -> str:
    """A capacity curve as a table for the terminal, smallest budget first."""
    tier = points[0]["tier"] if points else "?"
    rows = [f"capacity curve {sweep}: the {tier} budget against hit rate and storage load",
            f"  {tier + ' GB':>9}  {tier + ' hit rate':>13}  {'hit rate':>8}  {'storage GB/s':>12}  "
            f"{'storage MB/request':>18}  {'requests':>8}"]
    for p in points:
        gbps = "n/a" if p["storage_gbps"] is None else f"{p['storage_gbps']:.3f}"
        per = "n/a" if p["storage_bytes_per_request"] is None else f"{p['storage_bytes_per_request'] / 1e6:.1f}"
        rows.append(f"  {_gb(p['budget_bytes']):>9}  {_pct(p['tier_hit_rate']):>13}  {_pct(p['hit_rate']):>8}  "
                    f"{gbps:>12}  {per:>18}  {p['requests']:>8}")
    ws = [p["working_set_peak_bytes"] for p in points if p["working_set_peak_bytes"]]
    if ws:
        rows.append(f"  working set of the open conversations at its peak: {_gb(max(ws))} GB")
    return "\n".join(rows)


def plot_curves(sweep: str, runs: list[tuple[str, list[dict]]], path: Path) -> None:
    """A capacity-curve PNG: hit rates (left axis, %) and storage MB per request (right axis)
    against the swept tier's budget (GB, log scale); one line style per report in ``runs``
    ((label, points) pairs). Needs matplotlib."""
    from .plots import _finish, _line_label, _new_axes

    tier = next((p["tier"] for _, pts in runs for p in pts), "tier")
    fig, ax = _new_axes(f"capacity curve {sweep}", f"{tier} budget (GB, log scale)", "hit rate (%)")
    right = ax.twinx()
    right.set_ylabel("storage MB per request")
    multi = len(runs) > 1
    drawn = 0
    styles = ("-", "--", ":", "-.")
    for i, (label, points) in enumerate(runs):
        style = styles[i % len(styles)]
        for key, what, colour in (("tier_hit_rate", f"{tier} hit rate", "C0"), ("hit_rate", "hit rate, any tier", "C2")):
            pts = [(p["budget_bytes"] / 1e9, p[key] * 100) for p in points if p["budget_bytes"] and p[key] is not None]
            if pts:
                ax.plot(*zip(*pts), color=colour, marker="o", linestyle=style, label=_line_label(label, what, multi))
                drawn += 1
        pts = [(p["budget_bytes"] / 1e9, p["storage_bytes_per_request"] / 1e6) for p in points
               if p["budget_bytes"] and p["storage_bytes_per_request"] is not None]
        if pts:
            right.plot(*zip(*pts), color="C1", marker="s", linestyle=style,
                       label=_line_label(label, "storage MB per request", multi))
            drawn += 1
    if drawn:
        ax.set_xscale("log")
        ax.set_ylim(0, 105)
        right.set_ylim(bottom=0)
        handles, labels = (a + b for a, b in zip(ax.get_legend_handles_labels(), right.get_legend_handles_labels(),
                                                  strict=True))
        if drawn > 3:  # several reports: keep the legend off the curves
            fig.legend(handles, labels, fontsize=8, loc="outside right upper")
        else:
            ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.85)
        fig.savefig(path, format="png", metadata={"Software": None})
    else:
        _finish(fig, ax, path, 0)
