"""Disaggregated phases (--kv-phase) and preconditioning (--kv-precondition-gb) on real files."""

import os

import pytest

from pytest_kvcache.backends import default_registry
from pytest_kvcache.criteria import Criterion
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.models import resolve_model
from pytest_kvcache.settings import build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.workload import WorkloadParams, generate_trace


def run(tmp_path, criteria=(), **extra):
    cli = {"cache_dir": str(tmp_path), "model": "tiny-1b", "duration": "1.0", "warmup": 0, "users": 2,
           "requests_per_user": "4", "think_time_scale": "0", "generation_mode": "none", "nvme_capacity_gb": 0.5,
           "chunk_tokens": 64, "io_block_mb": 1, "profile": "none", **extra}
    s = build_settings(cli, {}, {})
    trace = generate_trace(WorkloadParams(seed=s.seed, users=s.users, requests_per_user=s.requests_per_user,
                                          think_time_scale=s.think_time_scale, max_context_tokens=512))
    prov = provision(TIER_CONFIGS["storage-only"], s, default_registry())
    try:
        return run_scenario(prov, s, resolve_model(s.model), trace, [Criterion.parse(c) for c in criteria])
    finally:
        prov.close()


def test_prefill_stores_and_never_loads(tmp_path):
    result = run(tmp_path, ("nvme.read.p95<=10s", "cache.hit_rate>=30%", "nvme.write.p95<=60s"), phase="prefill")
    m = result.metrics
    assert [o.status for o in result.outcomes] == ["n/a", "n/a", "pass"]  # nothing to load is not a failure
    assert result.status == "passed", result.failure_message()
    assert m["nvme.write.count"] > 0 and m.get("nvme.read.count", 0) == 0
    assert m.get("cache.hit_rate") is None  # nothing was looked up: n/a, not 0
    assert result.run["phase"] == "prefill" and result.run["decode_populate"] is None


def test_decode_populates_first_then_only_loads(tmp_path):
    result = run(tmp_path, ("nvme.write.p95<=60s", "nvme.read.p95<=60s"), phase="decode")
    m = result.metrics
    assert [o.status for o in result.outcomes] == ["n/a", "pass"]
    assert result.status == "passed", result.failure_message()
    populated = result.run["decode_populate"]
    assert populated["requests"] > 0 and populated["bytes"] > 0 and populated["bytes"] <= populated["bound_bytes"] + 10**8
    assert m["nvme.read.count"] > 0 and m.get("nvme.write.count", 0) == 0  # the populate writes are outside the window
    assert m["cache.hit_rate"] > 0


def test_mixed_both_loads_and_stores(tmp_path):
    m = run(tmp_path).metrics
    assert m["nvme.write.count"] > 0 and m["nvme.read.count"] > 0


def test_precondition_fills_outside_every_window_and_is_removed(tmp_path):
    result = run(tmp_path, phase="decode", precondition_gb="0.05")
    pre = result.run["precondition"]
    assert pre["bytes"] == 50_000_000 and pre["files"] == 1 and pre["seconds"] is not None and pre["removed"] is True
    assert result.metrics.get("nvme.write.count", 0) == 0  # 50 MB written, none of it in the window
    assert os.listdir(tmp_path) == []


def test_precondition_that_does_not_fit_names_the_largest(tmp_path):
    with pytest.raises(ConfigError, match="use at most --kv-precondition-gb"):
        run(tmp_path, precondition_gb="1000000")
    assert os.listdir(tmp_path) == []


def test_precondition_on_a_scenario_without_a_drive_is_skipped(tmp_path):
    cli = {"cache_dir": str(tmp_path), "duration": "0.3", "warmup": 0, "users": 1, "requests_per_user": "2",
           "generation_mode": "none", "cpu_mem_gb": "0.05", "precondition_gb": "0.01", "profile": "none"}
    s = build_settings(cli, {}, {})
    trace = generate_trace(WorkloadParams(seed=s.seed, users=1, requests_per_user=2, max_context_tokens=256))
    prov = provision(TIER_CONFIGS["cpu-only"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), trace, [])
    finally:
        prov.close()
    assert "skipped" in result.run["precondition"]
