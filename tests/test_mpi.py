"""``mpirun -n 2 pytest scenarios/ -k storage-only``: one aggregated report with both ranks.

Runs the real thing in a subprocess (a short window, the tiny model); skipped only when
``mpirun`` or ``mpi4py`` is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = shutil.which("mpirun")

pytestmark = pytest.mark.skipif(MPIRUN is None or importlib.util.find_spec("mpi4py") is None,
                                reason="needs mpirun (apt-get install openmpi-bin) and mpi4py (pip install '.[mpi]')")


def _verdicts(path: Path) -> dict:
    cases = ET.parse(path).getroot().iter("testcase")
    return {c.get("name"): "failed" if c.find("failure") is not None or c.find("error") is not None else
            "skipped" if c.find("skipped") is not None else "passed" for c in cases}


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KVCACHE_", "PYTEST_"))}


def _launcher(n: int) -> list[str]:
    return [MPIRUN, "--oversubscribe", "-n", str(n)] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def _pytest(cache: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "scenarios/", "-p", "no:cacheprovider", "-q", f"--kv-cache-dir={cache}",
            "--kv-duration", "2", "--kv-warmup", "0.5", "--kv-users", "2", "--kv-model", "tiny-1b",
            "--kv-profile", "none", "--kv-mpi-timeout", "120", *args]


def test_two_ranks_write_one_aggregated_report(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cmd = _launcher(2) + _pytest(cache, "-k", "test_tiers and storage-only", f"--kv-report={tmp_path / 'report.json'}",
                                 f"--junitxml={tmp_path / 'junit.xml'}")
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    reports = sorted(p.name for p in tmp_path.glob("report*.json"))
    assert reports == ["report.json"], out  # rank 0 alone writes the report
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["cluster"]["ranks"] == 2
    assert data["cluster"]["rank_seeds"][0] == data["seed"] == 42
    [scenario] = data["scenarios"]
    cluster = scenario["summary"]["cluster"]
    ranks = cluster["per_rank"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["trace_sha256"] != ranks[1]["trace_sha256"], "the ranks ran the same users"
    assert [Path(r["cache_dir"]).name for r in ranks] == ["rank_0", "rank_1"]
    # the rules' aggregation: write GB/s summed over the ranks, the p95 the worst rank's
    writes = [r["metrics"].get("storage.write_gbps") for r in ranks]
    assert all(w is not None and w > 0 for w in writes), writes
    assert scenario["metrics"]["storage.write_gbps"] == pytest.approx(sum(writes))
    p95s = [r["metrics"]["nvme.write.p95"] for r in ranks if "nvme.write.p95" in r["metrics"]]
    assert scenario["metrics"].get("nvme.write.p95") == (max(p95s) if p95s else None)
    assert scenario["metrics"]["requests.completed"] == sum(r["metrics"]["requests.completed"] for r in ranks)
    assert "nvme.write" in cluster["pooled"]
    assert "[2 ranks, aggregate]" in out and "pooled over 2 ranks" in out
    # the same verdict on every rank: pytest's outcomes, and the job's exit code, agree with the report
    rank0, rank1 = _verdicts(tmp_path / "junit.xml"), _verdicts(tmp_path / "junit.rank1.xml")
    assert rank0 == rank1 == {"test_tiers[storage-only]": scenario["status"]}, out
    assert (proc.returncode == 0) == (scenario["status"] == "passed"), out
    assert list(cache.iterdir()) == [], "the ranks' directories were left behind"


def test_ranks_out_of_step_end_the_job_with_the_reason_and_leave_no_files(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    # MPMD: rank 0 runs storage-only, rank 1 cpu-only, so they meet at different scenarios
    cmd = (_launcher(1) + _pytest(cache, "-k", "test_tiers and storage-only", "--kv-report=")
           + [":", "-n", "1"] + _pytest(cache, "-k", "test_tiers and cpu-only", "--kv-report="))
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "the ranks are out of step: rank 0 at 'warm-up' of scenarios/test_tiers.py::test_tiers[storage-only]" in out
    assert list(cache.iterdir()) == [], "run files or rank directories were left behind"
