"""The compute device (compute.py) on the fake torch of ``fake_cuda``: where a load ends.

With a GPU, a load from cpu or nvme ends in GPU memory (H2D from page-locked staging, its own
``compute.h2d`` I/O beside the tier's ``read``); a gpu-tier hit moves nothing; a demotion out of
the gpu tier is a real D2H copy and copies nothing to the compute device. Without one, loads end
in host staging and nothing is copied.
"""

import sys

import numpy as np
import pytest
from fake_cuda import COPIES, EVENT_MS, fake_torch

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.cpu import CPUBackend
from pytest_kvcache.backends.file import FileBackend
from pytest_kvcache.backends.gpu import GPUBackend
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.compute import GPUCompute, HostCompute, make_compute
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.metrics import compute as compute_metrics
from pytest_kvcache.payload import NoiseSource, StagingBuffers, Verifier
from pytest_kvcache.recorder import Recorder

BLOCK = 4096
SIZE = 3 * BLOCK + 100  # four transfers, the last one short (a file pads it to 4 of 4096)
NOISE = NoiseSource(7, size=1 << 20)


@pytest.fixture
def torch(monkeypatch):
    fake = fake_torch(capacity=1 << 24)
    monkeypatch.setitem(sys.modules, "torch", fake)
    COPIES.clear()
    return fake


def context(compute, verifier=None, run_dir=None):
    staging = StagingBuffers(BLOCK, pin=compute.pin)
    return BackendContext(noise=NOISE, staging=staging, verifier=verifier, compute=compute, run_dir=run_dir)


def window_recorder():
    rec = Recorder()
    rec.open_window()
    return rec


def loaded(compute):
    """The bytes of this thread's GPU destination buffer."""
    return compute._thread_state()[1].arr


def test_a_load_from_cpu_ends_in_gpu_memory_with_its_own_h2d_leg(torch):
    gpu = GPUCompute()
    ctx = context(gpu)
    cache = MultiTierCache([CPUBackend(TierSpec("cpu", "cpu", 1 << 20), ctx)], rec := window_recorder(), 1)
    cache.put("k", SIZE)
    COPIES.clear()
    assert cache.read("k", "prefix") == "cpu"
    assert np.array_equal(loaded(gpu)[:SIZE], NOISE.expected("k", SIZE))  # the KV is in GPU memory
    assert COPIES == [("h2d", BLOCK, True)] * 3 + [("h2d", 100, True)]  # from page-locked staging
    read, h2d = rec.window[("cpu", "read")], rec.window[("compute", "h2d")]
    assert (read.count, read.bytes) == (1, SIZE)  # the storage leg, as before
    assert (h2d.count, h2d.bytes) == (1, SIZE)  # the copy leg, on its own
    assert h2d.latency.stats()["max"] == pytest.approx(4 * EVENT_MS / 1e3)  # CUDA-event time, 4 copies
    assert rec.lookups["prefix"][0] == 1  # one hit


def test_a_load_from_a_file_copies_the_entry_not_its_padding(torch, tmp_path):
    gpu = GPUCompute()
    ctx = context(gpu, run_dir=tmp_path)
    nvme = FileBackend(TierSpec("nvme", "file", 1 << 20, {"io_mode": "buffered"}), ctx)
    cache = MultiTierCache([nvme], rec := window_recorder(), 1)
    cache.put("k", SIZE)
    assert cache.read("k", "prefix") == "nvme"
    assert rec.window[("nvme", "read")].bytes == 4 * BLOCK  # the drive reads whole 4 KiB blocks
    assert rec.window[("compute", "h2d")].bytes == SIZE
    assert np.array_equal(loaded(gpu)[:SIZE], NOISE.expected("k", SIZE))
    nvme.close()


def test_a_gpu_tier_hit_moves_nothing_and_counts_its_lookup(torch):
    gpu = GPUCompute()
    ctx = context(gpu)
    tier = GPUBackend(TierSpec("gpu", "gpu", 1 << 20), ctx)
    cache = MultiTierCache([tier], rec := window_recorder(), 1)
    cache.put("k", SIZE)
    COPIES.clear()
    assert cache.read("k", "prefix") == "gpu"
    assert COPIES == []  # already where compute needs it
    read = rec.window[("gpu", "read")]
    assert (read.count, read.bytes) == (1, 0) and ("compute", "h2d") not in rec.window
    assert rec.lookups["prefix"][0] == 1
    rec.close_window()
    flat, summary = compute_metrics(rec, ["gpu"])
    assert "gpu.read.gbps" not in flat and summary["tiers"]["gpu"]["read"]["gbps"] is None  # n/a, not 0
    assert "gpu.read.p95" in flat  # the lookup's cost
    assert set(gpu.absent([tier])) == {"compute."}  # gpu-only: no load is ever copied


def test_a_gpu_tier_hit_is_still_verified(torch):
    ver = Verifier(NOISE, BLOCK)
    gpu = GPUCompute()
    tier = GPUBackend(TierSpec("gpu", "gpu", 1 << 20), context(gpu, verifier=ver))
    cache = MultiTierCache([tier], window_recorder(), 1)
    cache.put("k", SIZE)
    tier._entries["k"].arr[5] ^= 0xFF
    assert cache.read("k", "prefix") == "gpu"
    assert (ver.checked, ver.mismatches) == (4, 1)


def test_a_demotion_out_of_the_gpu_tier_is_a_d2h_copy_and_no_load(torch):
    gpu = GPUCompute()
    ctx = context(gpu)
    # the gpu tier's high-water mark (80%) holds one entry: the second demotes the first
    tier = GPUBackend(TierSpec("gpu", "gpu", int(SIZE * 1.5)), ctx)
    cpu = CPUBackend(TierSpec("cpu", "cpu", 1 << 20), ctx)
    cache = MultiTierCache([tier, cpu], rec := window_recorder(), 1)
    cache.put("a", SIZE)
    COPIES.clear()
    assert cache.put("b", SIZE) == "gpu"
    assert cpu.stored_keys() == {"a"}
    assert [c for c in COPIES if c[0] == "d2h"] == [("d2h", BLOCK, True)] * 3 + [("d2h", 100, True)]
    assert rec.window[("gpu", "demote_read")].bytes == SIZE
    assert ("compute", "h2d") not in rec.window  # a demotion loads nothing into the compute device


def test_a_demotion_from_cpu_below_copies_nothing_to_the_gpu(torch):
    gpu = GPUCompute()
    ctx = context(gpu)
    cpu = CPUBackend(TierSpec("cpu", "cpu", int(SIZE * 1.9)), ctx)  # 4 pages of 4 KiB: one entry
    below = MockBackend(TierSpec("nvme", "mock", 1 << 20), ctx)
    cache = MultiTierCache([cpu, below], rec := window_recorder(), 1)
    cache.put("a", SIZE)
    cache.put("b", SIZE)
    assert below.stored_keys() == {"a"} and COPIES == []
    assert ("compute", "h2d") not in rec.window


def test_host_compute_leaves_loads_in_staging_and_says_why(torch):
    host = HostCompute(reason="--kv-compute-device host")
    cache = MultiTierCache([CPUBackend(TierSpec("cpu", "cpu", 1 << 20), context(host))], rec := window_recorder(), 1)
    cache.put("k", SIZE)
    assert cache.read("k", "prefix") == "cpu"
    assert COPIES == [] and ("compute", "h2d") not in rec.window
    assert "compute." in host.absent() and host.describe()["legs"]["h2d"] is None


def test_staging_is_page_locked_and_released_at_close(torch):
    gpu = GPUCompute()
    ctx = context(gpu)
    buf = ctx.staging.get()
    assert torch.cudart_state.pinned(buf)
    gpu._destination(SIZE)
    gpu.close()
    assert torch.cudart_state.registered == {}
    assert gpu._buffers == []


def test_describe_says_which_legs_the_figures_include(torch):
    legs = GPUCompute().describe()["legs"]
    assert "storage" in legs["read"] and "GPU memory" in legs["h2d"] and "both" in legs["request"]


def test_make_compute_picks_the_device(monkeypatch, torch):
    assert isinstance(make_compute("auto"), GPUCompute)
    assert type(make_compute("host")) is HostCompute
    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=False))
    auto = make_compute("auto")
    assert type(auto) is HostCompute and "is_available() is False" in auto.reason
    with pytest.raises(ConfigError, match="--kv-compute-device auto"):
        make_compute("gpu")
    with pytest.raises(ConfigError, match="one of auto, host, gpu"):
        make_compute("tpu")


def _run(tmp_path, compute_device):
    from test_engine import settings_for, small_trace

    from pytest_kvcache.backends import default_registry
    from pytest_kvcache.criteria import Criterion
    from pytest_kvcache.engine import provision, run_scenario
    from pytest_kvcache.models import resolve_model
    from pytest_kvcache.tiers import TIER_CONFIGS

    # cpu-only: loads that do not wait on a drive another job may be keeping busy
    s = settings_for(tmp_path, compute_device=compute_device, profile="none", cpu_mem_gb="0.1", duration="3")
    prov = provision(TIER_CONFIGS["cpu-only"], s, default_registry())
    try:
        return run_scenario(prov, s, resolve_model(s.model), small_trace(s), [Criterion.parse("compute.h2d.p95<=1000ms")])
    finally:
        prov.close()


def test_a_scenario_on_a_gpu_records_both_legs_and_says_so(torch, tmp_path):
    torch.capacity = 1 << 28
    result = _run(tmp_path, "auto")
    assert result.summary["compute"]["device"] == "cuda:0"
    assert "h2d" in result.summary["compute"]["legs"]
    run_io = result.summary["run_io"]  # the whole run: a window on a loaded machine may hold no load
    loads = run_io["cpu.read"]["count"]
    assert loads > 0 and run_io["compute.h2d"] == run_io["cpu.read"]  # one copy leg per load, the same bytes
    (outcome,) = result.outcomes
    assert outcome.status != "n/a"  # on a GPU compute.* criteria are judged (host: n/a, below)
    from pytest_kvcache.report import scenario_text

    text = scenario_text(result)
    assert "compute device cuda:0 (Fake GPU): a tier's read row is the storage leg" in text
    assert torch.cudart_state.registered == {}  # staging unregistered at close


def test_a_scenario_on_host_memory_has_no_copy_leg_and_judges_it_na(torch, tmp_path):
    result = _run(tmp_path, "host")
    assert result.summary["compute"]["device"] == "host"
    from pytest_kvcache.report import scenario_text

    assert "storage leg" not in scenario_text(result)  # no legs to tell apart
    assert not any(k.startswith("compute.") for k in result.metrics)
    (outcome,) = result.outcomes
    assert outcome.status == "n/a" and "host memory" in outcome.reason


def test_compute_criteria_without_a_copy_say_why():
    from pytest_kvcache.criteria import Criterion
    from pytest_kvcache.judging import evaluate

    crit = [Criterion.parse("compute.h2d.p95<=10ms"), Criterion.parse("nvme.h2d.p95<=10ms")]
    quiet, impossible = evaluate(crit, {}, ["gpu", "cpu"], {})
    assert quiet.status == "fail" and "no load was copied host-to-device" in quiet.reason  # a user bound
    assert impossible.status == "n/a" and "h2d cannot happen on nvme" not in impossible.reason  # no nvme tier
    (hit,) = evaluate([Criterion.parse("compute.h2d.p95<=10ms")], {"compute.h2d.p95": 0.001}, ["cpu"], {})
    assert hit.status == "pass"
    (no_copy,) = evaluate([Criterion.parse("cpu.h2d.p95<=10ms")], {}, ["cpu"], {})
    assert no_copy.status == "n/a" and "h2d cannot happen on cpu" in no_copy.reason


def test_no_gpu_memory_for_a_load_buffer_ends_the_load_but_keeps_the_entry(torch):
    from pytest_kvcache.compute import ComputeOutOfMemory

    gpu = GPUCompute()
    cache = MultiTierCache([CPUBackend(TierSpec("cpu", "cpu", 1 << 20), context(gpu))], window_recorder(), 1)
    cache.put("k", SIZE)
    torch.capacity = SIZE - 1
    with pytest.raises(ComputeOutOfMemory, match="--kv-gpu-mem-gb"):
        cache.read("k", "prefix")
    assert cache.contains("k") and cache.check_invariants() == []  # not dropped as broken, not pinned


def test_gds_with_host_compute_is_refused_with_the_settings():
    from pytest_kvcache.settings import build_settings

    with pytest.raises(ConfigError, match="--kv-compute-device auto"):
        build_settings({"nvme_backend": "gds", "compute_device": "host"}, {}, {})
    assert build_settings({"nvme_backend": "gds"}, {}, {}).compute_device == "auto"  # a GPU is checked later
