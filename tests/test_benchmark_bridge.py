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
