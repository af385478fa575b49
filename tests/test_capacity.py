"""Capacity curves (capacity.py): points from saved scenarios, the monotonicity check, the
table, the plot, and a small real sweep whose RAM hit rate falls as the budget shrinks."""

import pytest
from test_engine import settings_for, small_trace

from pytest_kvcache import plots
from pytest_kvcache.backends import default_registry
from pytest_kvcache.capacity import SWEEP_KEY, curve_text, curves, point, rises_with_budget, tag
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.models import resolve_model
from pytest_kvcache.tiers import TIER_CONFIGS

GB = 10**9


def saved(budget_gb, tier_rate, requests=10, storage_bytes=(4_000_000, 1_000_000), sweep="s"):
    """A saved scenario of cpu+storage as ScenarioResult.to_dict() writes it."""
    read, write = storage_bytes
    metrics = {"requests.completed": requests, "cache.hit_rate": 0.9, "storage.gbps": 0.25}
    if tier_rate is not None:
        metrics["cache.tier_hit_rate.cpu"] = tier_rate
    return {
        "id": f"test_capacity_sweep[{budget_gb}]", "name": "cpu+storage", "tiers": ["cpu", "nvme"],
        "metrics": metrics,
        "occupancy": {"cpu": {"budget_bytes": int(budget_gb * GB)}, "nvme": {"budget_bytes": 2 * GB}},
        "summary": {SWEEP_KEY: {"sweep": sweep, "tier": "cpu"}, "storage_tier": "nvme",
                    "kv_working_set_peak_bytes": 120_000_000,
                    "tiers": {"cpu": {"read": {"bytes": 9 * GB}},
                              "nvme": {"read": {"bytes": read}, "demote_write": {"bytes": write},
                                       "evict": {"count": 3}}}},
    }


def test_a_point_reads_the_saved_figures():
    p = point(saved(0.05, 0.5, requests=10))
    assert p["budget_bytes"] == 50_000_000 and p["tier"] == "cpu"
    assert p["tier_hit_rate"] == 0.5 and p["hit_rate"] == 0.9 and p["storage_gbps"] == 0.25
    assert p["storage_bytes_per_request"] == 500_000  # nvme read + demote_write, not the cpu's reads
    assert p["working_set_peak_bytes"] == 120_000_000


def test_figures_with_nothing_behind_them_are_na():
    p = point(saved(0.05, None, requests=0))
    assert p["tier_hit_rate"] is None and p["storage_bytes_per_request"] is None
    assert "n/a" in curve_text("s", [p])


def test_curves_group_by_sweep_sort_by_budget_and_skip_untagged():
    untagged = saved(0.3, 0.9)
    del untagged["summary"][SWEEP_KEY]
    found = curves([saved(0.2, 0.8), saved(0.01, 0.1), untagged, saved(0.1, 0.5, sweep="other")])
    assert list(found) == ["s", "other"]
    assert [p["budget_bytes"] for p in found["s"]] == [10_000_000, 200_000_000]


def test_rises_with_budget_flags_a_fall_beyond_the_tolerance():
    points = [point(saved(gb, r)) for gb, r in ((0.01, 0.1), (0.02, 0.5), (0.05, 0.47), (0.1, None), (0.2, 0.4))]
    assert rises_with_budget(points, tolerance=0.05) == [
        "tier_hit_rate 40.0% at 0.2 GB is below 47.0% at 0.05 GB"]  # n/a skipped; 0.5 -> 0.47 is noise
    assert len(rises_with_budget(points, tolerance=0.0)) == 2


def test_tag_refuses_a_tier_the_scenario_does_not_have():
    class Result:
        occupancy, tiers, id, summary = {"nvme": {}}, ["nvme"], "x", {}

    with pytest.raises(ValueError, match="no cpu tier"):
        tag(Result(), "s", "cpu")


def test_the_plots_page_has_a_capacity_curve(tmp_path):
    pytest.importorskip("matplotlib")
    report = {"scenarios": [saved(gb, r) for gb, r in ((0.01, 0.1), (0.2, 0.9))]}
    index = plots.render_plots([report], tmp_path, labels=["run"])
    png = tmp_path / "capacity-s.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = index.read_text()
    assert "<h2>Capacity curves</h2>" in page and 'src="capacity-s.png"' in page


def test_a_small_sweep_loses_ram_hits_as_the_budget_shrinks(tmp_path):
    """Three RAM budgets in front of an in-memory storage tier (the mock backend, so a busy
    disk cannot slow it), one trace replayed whole at each: well below, near and above what
    the users keep live (about 0.24 GB)."""
    model = resolve_model("tiny-1b")
    points = []
    for gb in (0.004, 0.04, 0.4):
        s = settings_for(tmp_path, cpu_mem_gb=gb, requests_per_user=20, duration=30, nvme_backend="mock")
        prov = provision(TIER_CONFIGS["cpu+storage"], s, default_registry())
        try:
            result = run_scenario(prov, s, model, small_trace(s), [])
        finally:
            prov.close()
        assert result.errors == [] and result.invariant_problems == [], result.failure_message()
        assert result.trace["exhausted"], "the whole trace must be replayed at every budget"
        points.append(tag(result, "small", "cpu"))
    assert [p["budget_bytes"] for p in points] == [4_000_000, 40_000_000, 400_000_000]
    text = curve_text("small", points)
    assert rises_with_budget(points, tolerance=0.0) == [], text
    assert points[0]["tier_hit_rate"] < 0.1 and points[-1]["tier_hit_rate"] > 0.9, text
    assert len({p["hit_rate"] for p in points}) == 1, text  # storage holds what RAM does not: same hits
    loads = [p["storage_bytes_per_request"] for p in points]
    assert loads == sorted(loads, reverse=True) and loads[-1] < loads[0] / 3, text
