"""Saved reports, re-rendered: the per-scenario CSV and a side-by-side table of several reports.

Works on the JSON files alone, so results from different machines or drives compare without
rerunning anything.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tabulate import tabulate

from .errors import ConfigError
from .metrics import HEADLINE
from .report import SCHEMA_VERSION
from .result import scenario_id


def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read report {path}: {exc.strerror}; pass a JSON report written by --kv-report.") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not a JSON report (line {exc.lineno}: {exc.msg}).") from None
    if not isinstance(data, dict) or "scenarios" not in data:
        raise ConfigError(f"{path} is not a pytest-kvcache report (no 'scenarios').")
    if data.get("schema_version", 0) > SCHEMA_VERSION:
        raise ConfigError(f"{path} has schema_version {data['schema_version']}, newer than this version reads "
                          f"({SCHEMA_VERSION}); upgrade pytest-kvcache.")
    data.setdefault("label", path.stem)
    return data


def scenario_row(report: dict, scn: dict) -> dict:
    """One CSV row: the summary's headline figures (``metrics.HEADLINE``), then per-tier p95s."""
    s = scn.get("summary", {})
    row = {"report": report.get("label", ""), "model": report.get("model", {}).get("name", ""),
           "scenario": scenario_id(scn), "tiers": ">".join(scn.get("tiers", []))}
    figures = s.get("headline") or {}
    for key, _, _ in HEADLINE:
        row[key] = scn.get("status") if key == "status" else figures.get(key)
    for tier, ops in s.get("tiers", {}).items():
        for op in ("read", "write", "demote_write"):
            if op in ops:
                row[f"{tier}_{op}_p95_ms"] = ops[op]["latency_ms"].get("p95")
                row[f"{tier}_{op}_gbps"] = ops[op].get("gbps")
    dev = scn.get("device_counters", {})
    if dev.get("available"):
        row["device_read_ratio"], row["device_write_ratio"] = dev.get("read_ratio"), dev.get("write_ratio")
    return row


def rows(reports: list[dict]) -> list[dict]:
    return [scenario_row(r, scn) for r in reports for scn in r["scenarios"]]


def to_csv(reports: list[dict]) -> str:
    table = rows(reports)
    columns: list[str] = []
    for row in table:
        columns += [c for c in row if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


def side_by_side(reports: list[dict]) -> str:
    """One table per scenario, one column per report: the comparison a reader wants."""
    names: list[str] = []
    for r in reports:
        names += [scenario_id(s) for s in r["scenarios"] if scenario_id(s) not in names]
    blocks = []
    for name in names:
        per = [next((scenario_row(r, s) for s in r["scenarios"] if scenario_id(s) == name), {}) for r in reports]
        keys: list[str] = []
        for row in per:
            keys += [k for k in row if k not in keys and k not in ("report", "scenario")]
        table = [[k] + [_fmt(row.get(k)) for row in per] for k in keys]
        blocks.append(f"{name}\n" + tabulate(table, headers=["figure"] + [r["label"] for r in reports], tablefmt="simple"))
    return "\n\n".join(blocks)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)
