"""Saved reports: CSV, side-by-side table and the `python -m pytest_kvcache report` command."""

import csv
import io
import json

import pytest

from pytest_kvcache.__main__ import main
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.export import load_report, side_by_side, to_csv


def report(label, p95, status="passed"):
    return {
        "schema_version": 1, "label": label, "model": {"name": "tiny-1b"},
        "scenarios": [{
            "name": "storage-only", "tiers": ["nvme"], "status": status,
            "summary": {"total_requests": 10, "window_s": 5.0, "total_tokens_per_sec": 100.0,
                        "storage_throughput_tokens_per_sec": 2000.0, "cache_hit_rate": 0.5,
                        "end_to_end_latency_ms": {"p95": 40.0},
                        "tiers": {"nvme": {"read": {"latency_ms": {"p95": p95}, "gbps": 1.5}}}},
            "device_counters": {"available": True, "read_ratio": 1.001, "write_ratio": 0.999},
        }],
    }


def test_csv_has_one_row_per_scenario_and_report():
    rows = list(csv.DictReader(io.StringIO(to_csv([report("a", 3.0), report("b", 9.0)]))))
    assert [r["report"] for r in rows] == ["a", "b"]
    assert rows[1]["nvme_read_p95_ms"] == "9.0" and rows[0]["device_read_ratio"] == "1.001"


def test_side_by_side_puts_reports_in_columns():
    text = side_by_side([report("driveA", 3.0), report("driveB", 9.0, "failed")])
    assert "storage-only" in text and "driveA" in text and "driveB" in text
    line = next(line for line in text.splitlines() if line.startswith("nvme_read_p95_ms"))
    assert "3" in line and "9" in line


def test_bad_reports_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not a JSON report"):
        load_report(bad)
    with pytest.raises(ConfigError, match="cannot read report"):
        load_report(tmp_path / "missing.json")
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"schema_version": 99, "scenarios": []}))
    with pytest.raises(ConfigError, match="upgrade"):
        load_report(newer)


def test_report_command(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report("x", 3.0)))
    b.write_text(json.dumps(report("y", 9.0)))
    out_csv = tmp_path / "out.csv"
    assert main(["report", str(a), str(b), "--label", "old", "--label", "new", "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "old" in printed and "new" in printed
    assert out_csv.read_text().count("\n") == 3
    assert main(["report", str(tmp_path / "missing.json")]) == 2


def test_scenarios_of_one_tier_configuration_pair_up_by_their_test_id():
    """test_tiers[storage-only] and test_rag[storage-only] run the same tiers: they are two
    scenarios in the side-by-side table and the CSV, not one."""
    two = report("a", 3.0)
    rag = json.loads(json.dumps(two["scenarios"][0]))
    two["scenarios"][0]["nodeid"] = "scenarios/test_tiers.py::test_tiers[storage-only]"
    rag["nodeid"] = "scenarios/test_rag.py::test_rag[storage-only]"
    two["scenarios"].append(rag)
    table = side_by_side([two, two])
    assert "test_tiers[storage-only]\n" in table and "test_rag[storage-only]\n" in table
    assert [r["scenario"] for r in csv.DictReader(io.StringIO(to_csv([two])))] == [
        "test_tiers[storage-only]", "test_rag[storage-only]"]
    assert "storage-only\n" in side_by_side([report("old", 1.0)])  # a report without node ids
