"""pytest-benchmark bridge: exact replay of our samples, drive comparison, machine_info, disable."""

import json
import os
import subprocess
import sys

import pytest

CONFTEST = """
import os
from pytest_kvcache.backends.mock import MockBackend

class Drive(MockBackend):
    '''A stand-in drive whose latency the test sets through the environment.'''
    name = "testdrive"

    def __init__(self, spec, ctx):
        spec.options["latency_s"] = float(os.environ["KV_TEST_LATENCY_S"])
        super().__init__(spec, ctx)

def pytest_kvcache_register_backends(registry):
    registry.register("testdrive", Drive)
"""

SCENARIO = """
import pytest

@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_tiers(kv_tiers, kv_run, benchmark):
    kv_run(kv_tiers, benchmark=benchmark)
"""

ARGS = ["--kv-duration=1", "--kv-warmup=0", "--kv-users=2", "--kv-requests-per-user=20",
        "--kv-think-time-scale=0", "--kv-generation-mode=none", "--kv-nvme-capacity-gb=1",
        "--kv-nvme-backend=testdrive", "--kv-profile=none", "-p", "no:cacheprovider"]


@pytest.fixture
def suite(pytester, tmp_path_factory):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_scn=SCENARIO)
    cache = tmp_path_factory.mktemp("drive")
    return pytester, f"--kv-cache-dir={cache}"


def test_benchmark_stats_are_our_samples(suite, monkeypatch):
    pytester, cache = suite
    monkeypatch.setenv("KV_TEST_LATENCY_S", "0.0005")
    result = pytester.runpytest(cache, *ARGS, "--benchmark-json=bm.json")
    result.assert_outcomes(passed=1)
    bm = json.loads((pytester.path / "bm.json").read_text())
    stats = bm["benchmarks"][0]["stats"]
    ours = json.loads((pytester.path / "kvcache-report.json").read_text())["scenarios"][0]["metrics"]
    assert stats["rounds"] == ours["nvme.read.count"]
    assert stats["max"] == ours["nvme.read.max"]
    assert stats["mean"] == pytest.approx(ours["nvme.read.mean"], rel=1e-12)
    assert stats["median"] == pytest.approx(ours["nvme.read.p50"], rel=1e-12)
    assert bm["benchmarks"][0]["extra_info"]["kv_headline"].startswith("nvme.read")
    assert "nvme.write" in bm["benchmarks"][0]["extra_info"]
    drive = bm["machine_info"]["kvcache"]["drive"]
    assert drive["path"] == cache.split("=", 1)[1] and "fstype" in drive


def test_compare_two_drives_and_fail_on_regression(suite, monkeypatch):
    pytester, cache = suite
    storage = f"--benchmark-storage=file://{pytester.path / 'saved'}"
    monkeypatch.setenv("KV_TEST_LATENCY_S", "0.0005")
    pytester.runpytest(cache, *ARGS, storage, "--benchmark-save=driveA").assert_outcomes(passed=1)
    monkeypatch.setenv("KV_TEST_LATENCY_S", "0.004")
    result = pytester.runpytest(cache, *ARGS, storage, "--benchmark-compare=0001",
                                "--benchmark-compare-fail=median:10%")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*0001_driveA*", "*test_tiers?storage-only?*NOW*"])
    assert "Performance has regressed" in result.stdout.str() + result.stderr.str()
    # the stand-alone command reads the saved runs unchanged
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "pytest-benchmark"),
                           storage.replace("--benchmark-storage", "--storage"), "list"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "0001_driveA" in done.stdout


def test_scenarios_run_with_benchmark_disabled(suite, monkeypatch):
    pytester, cache = suite
    monkeypatch.setenv("KV_TEST_LATENCY_S", "0")
    result = pytester.runpytest(cache, *ARGS, "--benchmark-disable")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*kvcache session report*"])
    assert json.loads((pytester.path / "kvcache-report.json").read_text())["scenarios"][0]["status"] == "passed"


def test_compare_two_drives_with_storage_outside_the_working_dir(suite, monkeypatch, tmp_path_factory):
    """pytest-benchmark bug #217 (its machine_info warning needs the storage under the cwd) must
    not end a drive comparison in INTERNALERROR: CI keeps saved runs on a shared path."""
    pytester, cache = suite
    saved = tmp_path_factory.mktemp("shared-benchmarks")
    assert not saved.is_relative_to(pytester.path)
    storage = f"--benchmark-storage=file://{saved}"
    monkeypatch.setenv("KV_TEST_LATENCY_S", "0.0005")
    pytester.runpytest(cache, *ARGS, storage, "--benchmark-save=driveA").assert_outcomes(passed=1)
    first = json.loads(next(saved.rglob("0001_driveA.json")).read_text())
    assert first["machine_info"]["kvcache"]["drive"]["path"] == cache.split("=", 1)[1]
    other = tmp_path_factory.mktemp("driveB")  # a different drive description: machine_info differs
    monkeypatch.setenv("KV_TEST_LATENCY_S", "0.004")
    result = pytester.runpytest_subprocess(f"--kv-cache-dir={other}", *ARGS, storage, "--benchmark-compare=0001",
                                           "--benchmark-compare-fail=median:5%")
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "ValueError" not in out
    assert "Comparing against benchmarks from: Linux" in out and "0001_driveA.json" in out
    pytest.LineMatcher(out.splitlines()).fnmatch_lines([
        "*test_tiers?storage-only?*NOW*", "*test_tiers?storage-only? (0001_driveA) - Field 'median' has failed*"])
    assert result.ret != 0  # the regression fails the run, as pytest-benchmark does under the cwd
    # the comparison says that the drives differ, naming both, and where the saved run lives
    warning = next(line for line in out.splitlines() if "Benchmark machine_info is different" in line)
    assert f"(location: {saved})" in warning
    assert str(other) in warning and cache.split("=", 1)[1] in warning
