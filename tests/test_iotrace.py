"""The I/O trace (iotrace.py): compact records, the reference's columns, safe keys, files."""

import csv
import gzip
import io

import pytest

from pytest_kvcache import iotrace
from pytest_kvcache.backends.base import IOResult
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.iotrace import (
    COLUMNS,
    IOLog,
    check_io_trace_path,
    output_path,
    sanitize_key,
    write_io_trace,
)
from pytest_kvcache.recorder import Recorder


@pytest.mark.parametrize("key, safe", [
    ("3de00dda20b9c57967d9fe4d", "3de00dda20b9c57967d9fe4d"), ("u0001c0002.tail", "u0001c0002.tail"),
    ("../../etc/passwd", ".._.._etc_passwd"), ("..", "k.."), (".", "k."), ("", "k"), ("-rf", "k-rf"),
    ("a,b\nc=1", "a_b_c_1"), ("é", "_"),
])
def test_keys_are_safe_as_file_names_and_csv_fields(key, safe):
    assert sanitize_key(key) == safe


def _log():
    log = IOLog()
    log.offset_ns = 1_000_000_000_000_000_000  # a fixed wall clock: 1e9 s
    log.add("nvme", "write", IOResult(4096, end_ns=300, dur_ns=100, start_ns=200), "k1")
    log.add("cpu", "read", IOResult(8192, end_ns=150, dur_ns=50), "k2")  # started at 100 ns: first row
    log.add("nvme", "delete", IOResult(4096, end_ns=900, dur_ns=10), "k1")
    log.add("cpu", "demote_read", IOResult(8192, end_ns=500, dur_ns=20, start_ns=480), "../k2")
    log.add("gpu", "demote_write", IOResult(8192, end_ns=520, dur_ns=20, start_ns=500), "k2")
    log.add("object", "write", IOResult(1, end_ns=600, dur_ns=1, start_ns=599), "k3")
    return log


def test_rows_follow_the_reference_columns_in_start_order_with_the_window_rule():
    rows = list(_log().rows(window_start_ns=200, window_end_ns=550))
    assert rows[0] == ("1000000000.000000", "Read", 8192, "Tier-1", "k2", "Decode", "warmup")  # ended at 150 < 200
    assert rows[1] == ("1000000000.000000", "Write", 4096, "Tier-2", "k1", "Prefill", "window")
    assert [r[1:6] for r in rows[2:]] == [("Read", 8192, "Tier-1", ".._k2", "Evict"), ("Write", 8192, "Tier-0", "k2", "Evict"),
                                          ("Write", 1, "object", "k3", "Prefill"),
                                          ("Delete", 0, "Tier-2", "k1", "Evict")]
    assert [r[6] for r in rows] == ["warmup", "window", "window", "window", "drain", "drain"]
    assert len(COLUMNS) == 7 and COLUMNS[:6] == ("Timestamp", "Operation", "Object_Size_Bytes", "Tier", "Key", "Phase")


def test_the_log_is_capped_and_counts_what_it_dropped():
    log = IOLog(cap=2)
    for i in range(5):
        log.add("nvme", "read", IOResult(1, end_ns=i + 1, dur_ns=1), f"k{i}")
    assert len(log) == 2 and log.dropped == 3


def test_the_recorder_feeds_the_log_with_every_io_whatever_the_window():
    rec = Recorder()
    rec.io_log = IOLog()
    rec.io("nvme", "write", IOResult(4096, end_ns=10, dur_ns=5), 16, "before-window")
    rec.open_window(100)
    rec.io("nvme", "read", IOResult(4096, end_ns=110, dur_ns=5), 16, "inside")
    assert rec.io_log.keys == ["before-window", "inside"]
    assert rec.window[("nvme", "read")].count == 1 and ("nvme", "write") not in rec.window


def test_output_names_carry_the_scenario_and_never_overwrite_this_sessions_files(tmp_path, monkeypatch):
    monkeypatch.setattr(iotrace, "_written", set())
    assert output_path(tmp_path / "io.csv.gz", "storage-only") == tmp_path / "io.storage-only.csv.gz"
    assert output_path(tmp_path / "io", "gpu+cpu") == tmp_path / "io.gpu+cpu"
    assert output_path(tmp_path / "io.csv", "a/b") == tmp_path / "io.a_b.csv"
    first = write_io_trace(_log(), tmp_path / "io.csv.gz", "storage-only", 200, 550)
    second = write_io_trace(_log(), tmp_path / "io.csv.gz", "storage-only", 200, 550)
    assert first["path"].endswith("io.storage-only.csv.gz") and second["path"].endswith("io.storage-only-2.csv.gz")
    with gzip.open(first["path"], "rt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(COLUMNS) and len(rows) == 7 and first["records"] == 6 and first["complete"]
    plain = write_io_trace(_log(), tmp_path / "plain.csv", "x", None, None)
    text = (tmp_path / "plain.x.csv").read_text()
    assert plain["error"] is None and list(csv.reader(io.StringIO(text)))[1][6] == "warmup"


def test_a_failed_write_is_reported_and_leaves_no_partial_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    info = write_io_trace(_log(), blocker / "io.csv", "s", None, None)
    assert info["path"] is None and "cannot write the I/O trace" in info["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_zstd_needs_its_package():
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install zstandard.*csv.gz"):
            check_io_trace_path("io.csv.zst")
    else:
        check_io_trace_path("io.csv.zst")
    check_io_trace_path("io.csv.gz")
