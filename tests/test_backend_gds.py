"""The gds nvme backend (backends/gds.py) on the fake torch and fake kvikio of ``fake_cuda``.

Reads go from the chunk file straight into the GPU memory the load ends in (no h2d leg);
writes go from GPU memory to the file, with the key's own bytes; the report says whether
kvikio ran GDS or its compatibility mode; without a GPU or kvikio it is a usage error.
"""

import os
import sys

import numpy as np
import pytest
from fake_cuda import COPIES, fake_kvikio, fake_torch

from pytest_kvcache.backends import default_registry
from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.cpu import CPUBackend
from pytest_kvcache.backends.gds import GDSBackend, kvikio_unavailable_reason
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.compute import GPUCompute, HostCompute
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.payload import NoiseSource, StagingBuffers, Verifier
from pytest_kvcache.recorder import Recorder

BLOCK = 4096
SIZE = 3 * BLOCK + 100  # padded to 4 blocks on the drive
NOISE = NoiseSource(7, size=1 << 20)


@pytest.fixture
def cuda(monkeypatch):
    torch = fake_torch(capacity=1 << 24)
    monkeypatch.setitem(sys.modules, "torch", torch)
    kvikio = fake_kvikio(compat=True)
    monkeypatch.setitem(sys.modules, "kvikio", kvikio)
    monkeypatch.setitem(sys.modules, "kvikio.defaults", kvikio.defaults)
    COPIES.clear()
    return torch, kvikio


def make(tmp_path, compute=None, verifier=None, capacity=1 << 20):
    compute = compute or GPUCompute()
    ctx = BackendContext(noise=NOISE, staging=StagingBuffers(BLOCK, pin=compute.pin), run_dir=tmp_path,
                         verifier=verifier, compute=compute)
    return GDSBackend(TierSpec("nvme", "gds", capacity, {"recycle": True}), ctx)


def recorder():
    rec = Recorder()
    rec.open_window()
    return rec


def test_a_load_reads_the_file_straight_into_gpu_memory(cuda, tmp_path):
    gds = make(tmp_path)
    cache = MultiTierCache([gds], rec := recorder(), 1)
    assert cache.put("k", SIZE) == "nvme"
    with open(gds.path_of("k"), "rb") as f:  # the key's own bytes reached the file
        assert np.array_equal(np.frombuffer(f.read(), np.uint8), NOISE.expected("k", 4 * BLOCK))
    COPIES.clear()
    assert cache.read("k", "prefix") == "nvme"
    assert COPIES == []  # no bounce through host memory, no h2d
    assert ("compute", "h2d") not in rec.window
    assert rec.window[("nvme", "read")].bytes == 4 * BLOCK
    dst = gds.ctx.compute._thread_state()[1].arr
    assert np.array_equal(dst[:SIZE], NOISE.expected("k", SIZE))
    assert set(gds.ctx.compute.absent([gds])) == {"compute."}
    gds.close()


def test_a_load_from_cpu_in_front_still_has_its_h2d_leg(cuda, tmp_path):
    gds = make(tmp_path)
    cpu = CPUBackend(TierSpec("cpu", "cpu", 1 << 20), gds.ctx)
    cache = MultiTierCache([cpu, gds], rec := recorder(), 1)
    cache.put("k", SIZE)
    assert cache.read("k", "prefix") == "cpu"
    assert rec.window[("compute", "h2d")].bytes == SIZE
    assert gds.ctx.compute.absent([cpu, gds]) == {}
    gds.close()


def test_verify_catches_a_corrupted_file(cuda, tmp_path):
    ver = Verifier(NOISE, BLOCK)
    gds = make(tmp_path, verifier=ver)
    gds.write("k", SIZE)
    gds.read("k", SIZE)
    assert (ver.checked, ver.mismatches) == (4, 0)
    with open(gds.path_of("k"), "r+b") as f:
        f.seek(BLOCK + 9)
        f.write(b"\x00" if NOISE.expected("k", BLOCK + 10)[BLOCK + 9] else b"\x01")
    gds.read("k", SIZE)
    assert ver.mismatches == 1 and ver.first == [f"k: byte {BLOCK + 9} differs from what was written"]
    gds.close()


def test_a_recycled_file_is_overwritten_in_place(cuda, tmp_path):
    gds = make(tmp_path)
    gds.write("a", 2 * SIZE)
    name = gds.path_of("a")
    gds.delete("a")
    gds.write("b", SIZE)  # reuses a's larger file, cut to b's size
    assert gds.path_of("b") == name and os.path.getsize(name) == 4 * BLOCK
    assert gds.stored_keys() == {"b"} and gds.unknown_files() == []
    gds.read("b", SIZE)
    gds.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("compat, mode", [(True, "kvikio-compat"), (False, "gds")])
def test_describe_says_whether_gds_or_compat_mode_ran(cuda, tmp_path, monkeypatch, compat, mode):
    kvikio = fake_kvikio(compat=compat)
    monkeypatch.setitem(sys.modules, "kvikio", kvikio)
    monkeypatch.setitem(sys.modules, "kvikio.defaults", kvikio.defaults)
    d = make(tmp_path).describe()
    assert d["backend"] == "gds" and d["io_mode"] == mode and d["gds_used"] is (not compat)
    assert d["kvikio_compat_mode"] == ("CompatMode.ON" if compat else "CompatMode.OFF")
    assert "is_compat_mode_preferred() is " + str(compat) in d["io_mode_reason"]


def test_gds_is_a_registered_nvme_backend(cuda, tmp_path):
    ctx = BackendContext(noise=NOISE, staging=StagingBuffers(BLOCK), run_dir=tmp_path, compute=GPUCompute())
    assert isinstance(default_registry().create(TierSpec("nvme", "gds", 1 << 20), ctx), GDSBackend)


def test_without_a_gpu_or_kvikio_it_is_a_usage_error(cuda, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="compute device is host memory.*--kv-nvme-backend file"):
        make(tmp_path, compute=HostCompute(reason="--kv-compute-device host"))
    monkeypatch.setitem(sys.modules, "kvikio", None)  # import kvikio raises ImportError
    assert "pip install 'pytest-kvcache[gds]'" in kvikio_unavailable_reason()
    with pytest.raises(ConfigError, match=r"pytest-kvcache\[gds\]"):
        make(tmp_path)
    assert os.listdir(tmp_path) == []  # nothing made
