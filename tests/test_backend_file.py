import os
import stat
from pathlib import Path

import pytest

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.file import FileBackend
from pytest_kvcache.errors import BackendError, ConfigError
from pytest_kvcache.payload import NoiseSource, StagingBuffers


def make(tmp_path, block=1 << 20, **options):
    ctx = BackendContext(
        noise=NoiseSource(seed=1, size=1 << 20), staging=StagingBuffers(block), run_dir=tmp_path
    )
    return FileBackend(TierSpec("nvme", "file", 1 << 30, options), ctx)


def expected_mode(path) -> str:
    """What the probe must say for ``path``: buffered only on a memory file system."""
    from pytest_kvcache.fsinfo import _memory_backed, mount_for

    return "buffered" if _memory_backed(mount_for(path)) else "direct"


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
    path = Path(be.path_of("L0/c1"))
    assert path.parent == tmp_path
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
    assert be.path_of("L0/c1") is None and be.stored_keys() == set()
    be.close()


def test_multi_segment(tmp_path):
    be = make(tmp_path, block=8192)
    assert be.write("big", 20000).nbytes == 20480
    data = Path(be.path_of("big")).read_bytes()
    assert data == expected(be.ctx.noise, "big", 20480, 8192)
    assert be.read("big", 20000).nbytes == 20480
    assert bytes(be.ctx.staging.get()[:4096]) == data[16384:]  # last segment landed last
    be.close()


def test_any_key_is_stored_inside_the_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    be = make(run)
    keys = ["../escape", "/abs/path", "a b", "..", "a_b", "a b/"]
    for k in keys:
        be.write(k, 4096)
    assert len({be.path_of(k) for k in keys}) == len(keys)
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
    os.unlink(be.path_of("a"))
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
        "medium",
        "block_device",
        "block_devices",
        "device_model",
        "free_bytes",
    ):
        assert k in d
    # pytest's tmp dir is on this machine's ext4 work disk, where O_DIRECT works (design section 9)
    assert d["io_mode"] == expected_mode(tmp_path) and d["free_bytes"] > 0
    with pytest.raises(ConfigError):
        make(tmp_path, io_mode="fast")


def test_freed_files_are_overwritten_in_place_by_the_next_writes(tmp_path):
    be = make(tmp_path)
    for key, size in (("a", 8192), ("b", 16384), ("c", 4096)):
        be.write(key, size)
    paths = {k: Path(be.path_of(k)) for k in "abc"}
    inodes = {k: p.stat().st_ino for k, p in paths.items()}
    for k in "abc":
        assert be.delete(k).nbytes == paths[k].stat().st_size
    assert be.path_of("a") is None and be.stored_keys() == set()
    assert all(p.exists() for p in paths.values()) and be.describe()["spare_files"] == 3
    # the same size first, then the nearest larger one cut to size, then the largest, extended
    for key, size, slot in (("x", 8000, "a"), ("y", 12288, "b"), ("z", 20480, "c")):
        be.write(key, size)
        path = Path(be.path_of(key))
        padded = be.footprint(size)
        assert path == paths[slot] and path.stat().st_ino == inodes[slot]
        assert path.read_bytes() == expected(be.ctx.noise, key, padded, be.ctx.staging.block)
        assert be.read(key, size).nbytes == padded
    d = be.describe()
    assert (d["recycle"], d["files_created"], d["files_recycled"], d["spare_files"]) == (True, 3, 3, 0)
    be.write("new", 4096)  # no spare left: a new file
    assert be.describe()["files_created"] == 4
    be.delete("x")
    paths["a"].unlink()  # a spare that vanished is made again when it is reused
    be.write("again", 8192)
    assert be.read("again", 8192).nbytes == 8192
    with pytest.raises(BackendError, match="already stored"):
        be.write("again", 8192)
    be.close()
    assert list(tmp_path.iterdir()) == []


def test_spares_never_take_the_tier_over_its_capacity(tmp_path):
    ctx = BackendContext(noise=NoiseSource(seed=1, size=1 << 20), staging=StagingBuffers(1 << 20),
                         run_dir=tmp_path)
    be = FileBackend(TierSpec("nvme", "file", 6 * 4096), ctx)
    for k in ("a", "b", "c"):
        be.write(k, 4096)
    be.write("d", 3 * 4096)
    for k in ("a", "b", "c", "d"):
        be.delete(k)  # 6 pages of spares: the whole capacity
    assert be.describe()["spare_files"] == 4 and len(list(tmp_path.iterdir())) == 4
    be.write("e", 4 * 4096)  # extends the 3-page spare by one: the largest other spare must go
    be.write("f", 4096)
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk == 6 * 4096 and be.describe()["spare_files"] == 1 and len(list(tmp_path.iterdir())) == 3
    be.close()


def test_recycling_off_unlinks_on_delete(tmp_path):
    be = make(tmp_path, recycle=False)
    be.write("a", 4096)
    path = be.path_of("a")
    be.delete("a")
    assert not os.path.exists(path)
    be.write("b", 4096)
    assert len(list(tmp_path.iterdir())) == 1 and be.describe()["files_recycled"] == 0
    be.close()
    with pytest.raises(ConfigError, match="recycle"):
        make(tmp_path, recycle="yes")


def test_concurrent_writers_and_deletes_keep_disk_content_and_capacity_right(tmp_path):
    import random
    import threading

    from pytest_kvcache.payload import Verifier

    noise = NoiseSource(seed=3, size=1 << 20)
    ctx = BackendContext(noise=noise, staging=StagingBuffers(16384), run_dir=tmp_path,
                         verifier=Verifier(noise, 16384))
    capacity = 64 * 4096
    be = FileBackend(TierSpec("nvme", "file", capacity), ctx)
    live: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            work(t)
        except BaseException as exc:  # a thread's failure must fail the test
            errors.append(exc)

    def work(t: int) -> None:
        rng = random.Random(t)
        mine: list[str] = []
        for i in range(150):
            with lock:
                room = capacity - sum(be.footprint(n) for n in live.values())
            size = rng.choice([4096, 8192, 12000, 40000])
            if mine and (rng.random() < 0.45 or be.footprint(size) > room):
                key = mine.pop(rng.randrange(len(mine)))
                be.delete(key)
                with lock:
                    del live[key]
                continue
            if be.footprint(size) > room:
                continue
            key = f"t{t}.k{i}"
            with lock:  # claim the room first, as the cache's reservation does
                live[key] = size
            be.write(key, size)
            mine.append(key)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert be.stored_keys() == set(live)
    for key, size in live.items():
        assert Path(be.path_of(key)).stat().st_size == be.footprint(size)
        be.read(key, size)
    assert ctx.verifier.mismatches == 0 and ctx.verifier.checked > 0
    files = list(tmp_path.iterdir())
    assert len(files) == len(live) + be.describe()["spare_files"]
    assert sum(p.stat().st_size for p in files) <= capacity
    assert be.describe()["files_recycled"] > 0
    be.close()
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_cannot_be_removed_fails_the_write_and_close_removes_it_later(tmp_path, monkeypatch):
    ctx = BackendContext(noise=NoiseSource(seed=1, size=1 << 20), staging=StagingBuffers(1 << 20),
                         run_dir=tmp_path)
    be = FileBackend(TierSpec("nvme", "file", 4 * 4096), ctx)
    be.write("a", 4096)
    be.write("b", 8192)
    stuck = os.path.basename(be.path_of("a"))
    be.delete("a")
    be.delete("b")
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if os.path.basename(path) == stuck:
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(BackendError, match="Permission denied"):
        be.write("c", 4 * 4096)  # grows b's spare: a's spare must go to stay within capacity
    assert be.stored_keys() == set() and [p.name for p in tmp_path.iterdir()] == [stuck]
    monkeypatch.undo()
    be.close()
    assert list(tmp_path.iterdir()) == []


def _fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))


def test_direct_mode_really_opens_the_chunk_files_with_o_direct(tmp_path, monkeypatch):
    """Read the flags of the file the kernel has open while each pwrite/preadv runs."""
    if expected_mode(tmp_path) != "direct":
        pytest.skip(f"{tmp_path} is on a memory file system: O_DIRECT means nothing there")
    from pytest_kvcache.backends import file as file_mod

    seen = []
    real_pwrite, real_preadv = os.pwrite, os.preadv

    def pwrite(fd, data, off):
        seen.append(("write", _fd_flags(fd)))
        return real_pwrite(fd, data, off)

    def preadv(fd, bufs, off):
        seen.append(("read", _fd_flags(fd)))
        return real_preadv(fd, bufs, off)

    be = make(tmp_path, block=8192)  # before patching: the O_DIRECT probe does I/O too
    assert be.describe()["io_mode"] == "direct"
    monkeypatch.setattr(file_mod.os, "pwrite", pwrite)
    monkeypatch.setattr(file_mod.os, "preadv", preadv)
    be.write("k", 20000)
    be.read("k", 20000)
    be.close()
    assert [op for op, _ in seen] == ["write"] * 3 + ["read"] * 3  # 20 KiB in 8 KiB transfers
    assert all(flags & os.O_DIRECT for _, flags in seen), [oct(f) for _, f in seen]


def test_buffered_mode_fsyncs_every_write_and_drops_the_page_cache_before_every_read(tmp_path, monkeypatch):
    from pytest_kvcache.backends import file as file_mod

    calls = []
    real_fsync, real_fadvise = os.fsync, os.posix_fadvise
    monkeypatch.setattr(file_mod.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(file_mod.os, "posix_fadvise",
                        lambda fd, off, n, advice: (calls.append(("fadvise", advice)), real_fadvise(fd, off, n, advice))[1])
    be = make(tmp_path, io_mode="buffered")
    calls.clear()  # the constructor's probe
    w = be.write("k", 10000)
    assert calls == ["fsync", ("fadvise", os.POSIX_FADV_DONTNEED)]
    # buffered bytes reach the drive at the fsync: one transfer of the whole entry, then
    assert w.transfers == ((w.transfers[0][0], 12288),)
    calls.clear()
    be.read("k", 10000)
    assert calls == [("fadvise", os.POSIX_FADV_DONTNEED)]
    be.close()


def test_direct_writes_report_each_transfer_as_it_completes(tmp_path):
    if expected_mode(tmp_path) != "direct":
        pytest.skip(f"{tmp_path} is on a memory file system")
    be = make(tmp_path, block=8192)
    w = be.write("k", 20000)
    r = be.read("k", 20000)
    be.close()
    for res in (w, r):
        assert [n for _, n in res.transfers] == [8192, 8192, 4096]
        ends = [end for end, _ in res.transfers]
        assert res.start_ns <= ends[0] <= ends[1] <= ends[2] <= res.end_ns


def test_files_in_the_run_dir_that_are_not_ours_are_listed(tmp_path):
    be = make(tmp_path)
    be.write("live", 4096)
    be.write("freed", 8192)
    be.delete("freed")  # kept as a spare: still ours
    assert be.unknown_files() == []
    (tmp_path / "stray.kv").write_bytes(b"x")
    (tmp_path / "slot99999999.kv").write_bytes(b"looks like ours, is not")
    (tmp_path / "a-dir").mkdir()
    assert be.unknown_files() == ["a-dir", "slot99999999.kv", "stray.kv"]
    assert be.stored_keys() == {"live"}
    be.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "slot99999999.kv", "stray.kv"]  # not ours


def test_the_end_of_run_invariant_sees_unknown_files(tmp_path):
    from pytest_kvcache.cache import MultiTierCache
    from pytest_kvcache.recorder import Recorder

    be = make(tmp_path)
    recorder = Recorder()
    recorder.open_window(0)
    cache = MultiTierCache([be], recorder, 16)
    cache.put("a", 1000)
    assert cache.check_invariants() == []
    for i in range(7):
        (tmp_path / f"other{i}").write_bytes(b"")
    assert cache.check_invariants() == [
        "nvme: 7 files in its directory that are not the tier's: other0, other1, other2, other3, other4 and 2 more"]
    be.close()


def test_describe_says_drive_or_memory(tmp_path):
    from pytest_kvcache import fsinfo

    d = make(tmp_path).describe()
    if fsinfo.memory_medium(tmp_path):
        pytest.skip(f"{tmp_path} is memory here")
    assert d["medium"] == "drive" and "medium_note" not in d
    assert d["block_devices"] == list(fsinfo.find_block_devices(tmp_path).devices)
    assert d["block_device"] == "+".join(d["block_devices"])


def test_a_run_dir_on_dev_shm_is_described_as_memory(tmp_path):
    from pytest_kvcache import fsinfo

    if fsinfo.mount_for("/dev/shm").fstype != "tmpfs":
        pytest.skip("no tmpfs /dev/shm")
    run = Path("/dev/shm") / f"kvtest-{os.getpid()}-{tmp_path.name}"
    run.mkdir()
    try:
        be = make(run)
        d = be.describe()
        assert d["medium"] == "memory" and d["medium_note"] == "tmpfs: memory, not a drive"
        assert d["io_mode"] == "buffered" and d["block_device"] is None and d["block_devices"] == []
        be.close()
    finally:
        run.rmdir()


def test_the_run_ending_cuts_a_direct_io_between_transfers_and_removes_a_cut_write(tmp_path):
    """End of a run (design 3a): a many-transfer call stops at the next transfer boundary."""
    from pytest_kvcache.errors import IOCut

    if expected_mode(tmp_path) != "direct":
        pytest.skip(f"{tmp_path} is on a memory file system")
    be = make(tmp_path, block=8192)
    be.write("kept", 20000)
    be.ctx.ending.set()
    with pytest.raises(IOCut) as cut:
        be.write("cut", 20000)
    res = cut.value.result
    assert (res.complete, res.nbytes, [n for _, n in res.transfers]) == (False, 8192, [8192])
    assert be.stored_keys() == {"kept"} and be.unknown_files() == []
    # the cut file is kept as a spare at its real size (unlinking GBs would stall the end)
    assert be.describe()["spare_files"] == 1 and len(os.listdir(tmp_path)) == 2
    assert be.slots.disk_bytes == sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path))
    with pytest.raises(IOCut) as cut:
        be.read("kept", 20000)
    assert cut.value.result.nbytes == 8192 and not cut.value.result.complete
    assert be.stored_keys() == {"kept"}  # a cut read leaves the entry as it was
    assert be.write("small", 4000).complete  # one transfer: nothing to cut between
    be.close()
