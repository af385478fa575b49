"""The npy backend: the MLPerf reference's file I/O (np.save + fsync, fadvise + np.load)."""

import os

import numpy as np
import pytest

from pytest_kvcache.backends import default_registry
from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.npy import NPY_HEADER_BYTES, NpyBackend
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.errors import BackendError, ConfigError
from pytest_kvcache.models import resolve_model
from pytest_kvcache.payload import NoiseSource, StagingBuffers, Verifier
from pytest_kvcache.settings import build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.workload import WorkloadParams, generate_trace


def make(tmp_path, verify=False, **options):
    noise, block = NoiseSource(seed=1, size=1 << 20), 1 << 16
    ctx = BackendContext(noise=noise, staging=StagingBuffers(block), run_dir=tmp_path,
                         verifier=Verifier(noise, block) if verify else None)
    return NpyBackend(TierSpec("nvme", "npy", 1 << 30, options), ctx)


def test_round_trip_writes_a_real_npy_file_with_the_payload(tmp_path):
    b = make(tmp_path, verify=True)
    nbytes = 200_001  # not a multiple of anything
    w = b.write("k1", nbytes)
    (name,) = os.listdir(tmp_path)
    assert name.endswith(".npy") and w.nbytes == os.path.getsize(tmp_path / name) == nbytes + NPY_HEADER_BYTES
    on_disk = np.load(tmp_path / name)
    assert on_disk.dtype == np.uint8 and on_disk.tobytes() == b.ctx.noise.expected("k1", nbytes).tobytes()
    r = b.read("k1", nbytes)
    assert r.nbytes == w.nbytes and r.dur_ns > 0
    assert b.ctx.verifier.checked > 0 and b.ctx.verifier.mismatches == 0
    assert b.stored_keys() == {"k1"} and b.unknown_files() == []
    b.write("k1", nbytes)  # a rewrite reuses the key's file
    assert len(os.listdir(tmp_path)) == 1
    b.delete("k1")
    assert os.listdir(tmp_path) == [] and b.stored_keys() == set()
    with pytest.raises(BackendError, match="no entry"):
        b.read("k1", nbytes)


def test_a_wrong_size_and_a_foreign_file_are_seen(tmp_path):
    b = make(tmp_path)
    b.write("k", 1000)
    with pytest.raises(BackendError, match="expected 999"):
        b.read("k", 999)
    (tmp_path / "stranger").write_text("x")
    assert b.unknown_files() == ["stranger"]
    b.close()
    assert os.listdir(tmp_path) == ["stranger"]  # ours removed, nothing else


def test_direct_io_is_refused_naming_the_file_backend(tmp_path):
    with pytest.raises(ConfigError, match="--kv-nvme-backend file"):
        make(tmp_path, io_mode="direct")


def test_a_scenario_runs_on_the_npy_backend_and_verifies(tmp_path):
    s = build_settings({"cache_dir": str(tmp_path), "nvme_backend": "npy", "verify": "1", "duration": "0.8",
                        "warmup": 0, "users": 2, "requests_per_user": "3", "think_time_scale": "0",
                        "generation_mode": "none", "nvme_capacity_gb": 0.5, "chunk_tokens": 64, "profile": "none"}, {}, {})
    assert "npy" in default_registry().names()
    trace = generate_trace(WorkloadParams(seed=s.seed, users=2, requests_per_user=3, think_time_scale=0,
                                          max_context_tokens=512))
    prov = provision(TIER_CONFIGS["storage-only"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), trace, [])
    finally:
        prov.close()
    assert result.status == "passed", result.failure_message()
    assert result.backends[0]["backend"] == "npy" and result.backends[0]["io_mode"] == "npy"
    assert result.metrics["nvme.write.count"] > 0 and result.metrics["verify.mismatches"] == 0
    assert os.listdir(tmp_path) == []
