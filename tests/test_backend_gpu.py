"""GPUBackend on the CPU: the tiny fake ``torch`` of ``fake_cuda`` stands in for CUDA.

Device memory is numpy arrays with a byte capacity (past it, ``OutOfMemoryError``). A
``non_blocking`` copy only runs when an event is synchronised, as a real async copy may, so
a backend that reused its pinned buffer or read it before synchronising would see wrong bytes.
"""

import sys

import numpy as np
import pytest
from fake_cuda import EVENT_MS, PENDING, fake_torch

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.gpu import GPUBackend, gpu_unavailable_reason
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.errors import BackendFull, ConfigError
from pytest_kvcache.payload import NoiseSource, StagingBuffers, Verifier
from pytest_kvcache.recorder import Recorder

BLOCK = 4096  # the staging block: entries below span several segments
SIZE = 3 * BLOCK + 100  # four segments, the last one short
NOISE = NoiseSource(7, size=1 << 20)


@pytest.fixture
def torch(monkeypatch):
    fake = fake_torch()
    monkeypatch.setitem(sys.modules, "torch", fake)
    return fake


def make(verifier=None, capacity=1 << 30):
    ctx = BackendContext(noise=NOISE, staging=StagingBuffers(BLOCK), verifier=verifier)
    return GPUBackend(TierSpec("gpu", "gpu", capacity), ctx)


class Capture:
    """A verifier stand-in that keeps a copy of the pinned buffer after every read segment."""

    def __init__(self):
        self.parts = []

    def check(self, key, offset, data):
        self.parts.append((offset, data.copy()))
        return True


def test_write_then_read_round_trips_the_keys_bytes(torch):
    cap = Capture()
    be = make(verifier=cap)
    res = be.write("conv.k00001", SIZE)
    assert res.nbytes == SIZE and res.end_ns > 0
    expected = NOISE.expected("conv.k00001", SIZE)
    assert np.array_equal(be._entries["conv.k00001"].arr, expected)  # on the device

    rd = be.read("conv.k00001", SIZE)
    assert rd.nbytes == SIZE
    assert [off for off, _ in cap.parts] == [0, BLOCK, 2 * BLOCK, 3 * BLOCK]
    for off, data in cap.parts:
        assert np.array_equal(data, expected[off : off + BLOCK])
    assert not PENDING


def test_without_verify_the_staging_noise_is_filled_once_per_thread(torch, monkeypatch):
    calls = []
    fill = NoiseSource.fill
    monkeypatch.setattr(NoiseSource, "fill", lambda self, *a, **k: calls.append(a[1]) or fill(self, *a, **k))
    be = make()
    for key in ("a", "b", "c"):
        be.write(key, SIZE)
    assert calls == ["gpu.staging"]  # GPU memory cannot deduplicate: no per-key stamp needed
    assert be._entries["c"].arr.any()  # noise, not zeros
    assert "--kv-verify" in be.describe()["payload"]


def test_dur_ns_is_the_sum_of_the_event_times(torch):
    be = make()
    segments = 4  # SIZE spans four staging blocks
    assert be.write("a", SIZE).dur_ns == segments * EVENT_MS * 1e6
    assert be.read("a", SIZE).dur_ns == segments * EVENT_MS * 1e6
    assert be.write("b", 0).dur_ns == 0


def test_verify_counts_no_mismatch_and_catches_a_corrupted_device_byte(torch):
    ver = Verifier(NOISE, BLOCK)
    be = make(verifier=ver)
    be.write("a", SIZE)
    be.read("a", SIZE)
    assert (ver.checked, ver.mismatches) == (4, 0)

    be._entries["a"].arr[BLOCK + 5] ^= 0xFF
    be.read("a", SIZE)
    assert (ver.checked, ver.mismatches) == (8, 1)
    assert ver.first == [f"a: byte {BLOCK + 5} differs from what was written"]


def test_delete_frees_device_memory_and_stored_keys_follow(torch):
    be = make()
    be.write("a", SIZE)
    be.write("b", 100)
    assert be.stored_keys() == {"a", "b"}
    assert be.delete("a").nbytes == SIZE
    assert be.stored_keys() == {"b"}
    assert sum(t.numel() for t in torch.live) == 100
    be.close()
    assert be.stored_keys() == set() and len(torch.live) == 0


def test_out_of_memory_is_backend_full(torch):
    torch.capacity = 2 * SIZE
    be = make()
    be.write("a", SIZE)
    be.write("b", SIZE)
    with pytest.raises(BackendFull, match="out of memory"):
        be.write("c", 1)
    assert be.stored_keys() == {"a", "b"}
    be.delete("a")
    be.write("c", SIZE)  # the freed memory is usable again


def test_a_full_gpu_falls_through_to_the_next_tier(torch):
    torch.capacity = SIZE  # the device holds one entry, though the cache's budget allows more
    gpu = make(capacity=10 * SIZE)
    cpu = MockBackend(TierSpec("cpu", "mock", 10 * SIZE), gpu.ctx)
    rec = Recorder()
    cache = MultiTierCache([gpu, cpu], rec, bytes_per_token=1)
    assert cache.put("a", SIZE) == "gpu"
    assert cache.put("b", SIZE) == "cpu"
    assert rec.run_counters["full.gpu"] == 1
    assert gpu.stored_keys() == {"a"} and cpu.stored_keys() == {"b"}
    assert [t.used for t in cache.tiers] == [SIZE, SIZE]  # the failed reservation was returned
    assert cache.read("b", "prefix") == "cpu"


def test_describe_names_the_device(torch):
    d = make().describe()
    assert d["backend"] == "gpu" and d["device"] == "cuda:0" and d["device_name"] == "Fake GPU"


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert "torch is not installed" in gpu_unavailable_reason()
    with pytest.raises(ConfigError, match="torch is not installed"):
        make()

    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=False))
    assert "is_available() is False" in gpu_unavailable_reason()

    monkeypatch.setitem(sys.modules, "torch", fake_torch())
    assert gpu_unavailable_reason() is None
