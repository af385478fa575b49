import os
import stat

import pytest

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.file import FileBackend, file_name
from pytest_kvcache.errors import BackendError, ConfigError
from pytest_kvcache.payload import NoiseSource, StagingBuffers


def make(tmp_path, block=1 << 20, **options):
    ctx = BackendContext(
        noise=NoiseSource(seed=1, size=1 << 20), staging=StagingBuffers(block), run_dir=tmp_path
    )
    return FileBackend(TierSpec("nvme", "file", 1 << 30, options), ctx)


def expected(noise, key, padded, block):
    return noise.expected(key, padded).tobytes()


@pytest.mark.parametrize("mode", [None, "buffered"])
def test_round_trip_padding_content_and_mode(tmp_path, mode):
    be = make(tmp_path, **({"io_mode": mode} if mode else {}))
    if mode:
        assert be.describe()["io_mode"] == "buffered"
    w = be.write("L0/c1", 10000)
    assert w.nbytes == 12288 == be.footprint(10000)
    assert w.dur_ns > 0 and w.end_ns > 0
    path = tmp_path / file_name("L0/c1")
    assert path.stat().st_size == 12288
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with open(path, "rb") as f:
        assert f.read() == expected(be.ctx.noise, "L0/c1", 12288, be.ctx.staging.block)
    r = be.read("L0/c1", 10000)
    assert r.nbytes == 12288
    assert bytes(be.ctx.staging.get()[:12288]) == path.read_bytes()
    assert be.stored_keys() == {"L0/c1"}
    d = be.delete("L0/c1")
    assert d.nbytes == 12288
    assert not path.exists() and be.stored_keys() == set()
    be.close()


def test_multi_segment(tmp_path):
    be = make(tmp_path, block=8192)
    assert be.write("big", 20000).nbytes == 20480
    data = (tmp_path / file_name("big")).read_bytes()
    assert data == expected(be.ctx.noise, "big", 20480, 8192)
    assert be.read("big", 20000).nbytes == 20480
    assert bytes(be.ctx.staging.get()[:4096]) == data[16384:]  # last segment landed last
    be.close()


def test_sanitized_names_stay_in_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    be = make(run)
    keys = ["../escape", "/abs/path", "a b", "..", "a_b", "a b/"]
    for k in keys:
        be.write(k, 4096)
    assert len({file_name(k) for k in keys}) == len(keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert len(list(run.iterdir())) == len(keys)
    assert be.stored_keys() == set(keys)
    be.close()
    assert list(run.iterdir()) == []


def test_close_removes_only_own_files(tmp_path):
    be = make(tmp_path)
    (tmp_path / "user.txt").write_text("keep me")
    be.write("a", 5000)
    be.write("b", 100)
    be.delete("b")
    assert be.stored_keys() == {"a"}
    be.close()
    assert [p.name for p in tmp_path.iterdir()] == ["user.txt"]


def test_stored_keys_reflects_disk(tmp_path):
    be = make(tmp_path)
    be.write("a", 4096)
    be.write("b", 4096)
    os.unlink(tmp_path / file_name("a"))
    assert be.stored_keys() == {"b"}
    be.close()


def test_missing_key_raises(tmp_path):
    be = make(tmp_path)
    with pytest.raises(BackendError, match="nothere"):
        be.read("nothere", 4096)
    with pytest.raises(BackendError, match="nothere"):
        be.delete("nothere")
    be.write("short", 4096)
    with pytest.raises(BackendError, match="short"):
        be.read("short", 8192)  # file is shorter than asked: never a fake success
    be.close()


def test_describe_and_bad_option(tmp_path):
    d = make(tmp_path).describe()
    for k in (
        "path",
        "io_mode",
        "io_mode_reason",
        "fstype",
        "mountpoint",
        "block_device",
        "device_model",
        "free_bytes",
    ):
        assert k in d
    assert d["io_mode"] in ("direct", "buffered") and d["free_bytes"] > 0
    with pytest.raises(ConfigError):
        make(tmp_path, io_mode="fast")
