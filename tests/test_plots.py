"""Plots: PNGs per scenario, the HTML page that links them, and the message without matplotlib."""

from __future__ import annotations

import re
import sys

import pytest

from pytest_kvcache import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tier_figs(scale: float, count: int = 100) -> dict:
    cdf = [round(scale * (0.1 + q / 25), 4) for q in range(101)]
    return {"count": count, "bytes": count * 2**20, "gbps": 0.5 / scale, "latency_cdf_ms": cdf,
            "latency_ms": {"p50": cdf[50], "p95": cdf[95], "p99": cdf[99], "max": cdf[100]}}


def _scenario(name: str, tiers: list[str], scale: float, status: str = "passed") -> dict:
    ops = {t: {"read": _tier_figs(scale), "write": _tier_figs(scale * 2)} for t in tiers}
    return {
        "name": name, "question": f"What does {name} cost?", "tiers": tiers, "status": status,
        "errors": [], "invariant_problems": [],
        "criteria": [
            {"criterion": f"{tiers[-1]}.read.p95 <= 200ms", "metric": f"{tiers[-1]}.read.p95",
             "measured": scale * 0.004, "status": "pass" if status == "passed" else "fail"},
            {"criterion": "cache.hit_rate >= 30%", "metric": "cache.hit_rate",
             "measured": None, "status": "n/a"},
        ],
        "summary": {
            "window_s": 3.5, "total_requests": 42, "storage_throughput_tokens_per_sec": 1234.5,
            "cache_hit_rate": 0.75, "end_to_end_latency_ms": {"p95": 321.0},
            "tiers": ops, "timeline_step_s": 1.0,
            "timeline_bytes": {t: [1e8 * scale, 2e8, 3e8, 1e8] for t in tiers},
            "occupancy_timeline": [{"t_s": float(i), "bytes": {t: 1e8 * (i + 1) for t in tiers}}
                                   for i in range(4)],
            "headline": {"status": status, "requests": 42, "storage_tokens_per_sec": 1234.5,
                         "cache_hit_rate": 0.75, "e2e_p95_ms": 321.0},
        },
    }


def _report(scale: float, status: str = "passed") -> dict:
    return {
        "schema_version": 1, "tool": {"name": "pytest-kvcache", "version": "0.1.0"},
        "complete": True, "created_unix": 1700000000.0, "host": {"node": "box"},
        "model": {"name": "tiny-1b"},
        "scenarios": [_scenario("cpu+storage", ["cpu", "nvme"], scale, status),
                      _scenario("weird <b>name</b> & co", ["cpu"], scale)],
    }


def test_render_plots_writes_pngs_and_index(tmp_path):
    pytest.importorskip("matplotlib")
    reports = [_report(1.0), _report(3.0, status="failed")]
    index = plots.render_plots(reports, tmp_path / "out", labels=["drive-a", "drive-<b>"])

    assert index == tmp_path / "out" / "index.html"
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert len(pngs) == 6  # two scenarios x three plots
    assert "cpu_storage-cdf.png" in pngs
    for name in pngs:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
        data = (index.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000

    page = index.read_text(encoding="utf-8")
    for name in pngs:  # every image linked, relatively
        assert f'src="{name}"' in page
        assert f'href="{name}"' in page
    assert "weird &lt;b&gt;name&lt;/b&gt; &amp; co" in page
    assert "<b>name</b>" not in page
    assert "drive-&lt;b&gt;" in page and "drive-<b>" not in page
    assert "<script" not in page.lower()
    assert "cpu+storage" in page and "1,234.5" in page and "75.0%" in page
    assert "PASS" in page and "FAIL" in page and "failed" in page


def test_single_report_and_missing_data(tmp_path):
    pytest.importorskip("matplotlib")
    rep = _report(1.0)
    rep["label"] = "nightly"
    empty = {"name": "broken", "status": "error", "tiers": ["cpu"], "criteria": [],
             "errors": ["disk full"], "summary": {}}
    rep["scenarios"].append(empty)
    index = plots.render_plots([rep], tmp_path)
    page = index.read_text(encoding="utf-8")
    assert "nightly" in page and "disk full" in page
    for kind in ("cdf", "throughput", "occupancy"):
        assert (tmp_path / f"broken-{kind}.png").read_bytes().startswith(PNG_MAGIC)


def test_scenario_missing_from_one_report(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = _report(1.0), _report(2.0)
    b["scenarios"] = b["scenarios"][:1]
    index = plots.render_plots([a, b], tmp_path, labels=["a", "a"])
    page = index.read_text(encoding="utf-8")
    assert "not in this report" in page
    assert "a (2)" in page  # equal labels kept apart


def test_labels_must_match_reports(tmp_path):
    with pytest.raises(ValueError):
        plots.render_plots([_report(1.0)], tmp_path, labels=["a", "b"])
    with pytest.raises(ValueError):
        plots.render_plots([], tmp_path)


def test_safe_name():
    assert plots.safe_name("cpu+storage") == "cpu_storage"
    assert plots.safe_name("a/../b c") == "a_.._b_c"
    assert plots.safe_name("..") == "scenario"


def test_plots_available_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    msg = plots.plots_available()
    assert msg == "plots need matplotlib: pip install 'pytest-kvcache[plots]'"
    with pytest.raises(ImportError, match=re.escape(msg)):
        plots.render_plots([_report(1.0)], tmp_path)


def test_plots_available_with_matplotlib():
    pytest.importorskip("matplotlib")
    assert plots.plots_available() is None
