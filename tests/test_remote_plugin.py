"""The network tiers through the plugin (pytester): a local server started for a scenario, the
report's network medium, a skip with the reason, and a server killed mid-run."""

import json
import signal

import pytest

from pytest_kvcache.servers import LocalRedis, redis_unavailable_reason

pytest.importorskip("redis", reason="the redis tier tests need the redis client (pip install '.[redis]')")

LOAD = ["--kv-warmup", "0", "--kv-users", "2", "--kv-think-time-scale", "0", "--kv-generation-mode", "none",
        "--kv-cpu-mem-gb", "0.1", "--kv-redis-mem-gb", "0.2", "--kv-profile", "none", "-p", "no:cacheprovider"]
FAST = ["--kv-requests-per-user", "4", *LOAD]

SCENARIO = """
import pytest

@pytest.mark.parametrize("kv_tiers", ["redis-only"], indirect=True)
def test_tiers(kv_tiers, kv_run):
    kv_run(kv_tiers)
"""


def report(pytester):
    return json.loads((pytester.path / "kvcache-report.json").read_text())


def test_without_a_url_the_scenario_runs_on_a_local_redis_server(pytester, tmp_path):
    if redis_unavailable_reason(local=True):
        pytest.skip(redis_unavailable_reason(local=True))
    pytester.makepyfile(test_scn=SCENARIO)
    result = pytester.runpytest(f"--kv-cache-dir={tmp_path}", "--kv-duration", "0.6", *FAST, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*redis: redis at redis://127.0.0.1:*/0 (network, not a block device)*"])
    (scn,) = report(pytester)["scenarios"]
    assert scn["settings"]["redis_url"].startswith("redis://127.0.0.1:")
    (b,) = scn["backends"]
    assert b["medium"] == "network" and b["location"] == f"redis at {scn['settings']['redis_url']}"
    assert scn["device_counters"]["available"] is False
    assert "over the network, no block device" in scn["device_counters"]["reason"]
    assert scn["metrics"]["redis.write.bytes"] > 0


def test_without_redis_server_the_scenario_skips_with_the_reason(pytester, tmp_path, monkeypatch):
    import pytest_kvcache.servers as servers

    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    pytester.makepyfile(test_scn=SCENARIO)
    result = pytester.runpytest(f"--kv-cache-dir={tmp_path}", *FAST, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*redis-only: no redis-server binary on PATH*apt-get install redis-server*"])


def test_a_server_killed_mid_run_is_an_error_with_the_partial_report(pytester, tmp_path, monkeypatch):
    if redis_unavailable_reason(local=True):
        pytest.skip(redis_unavailable_reason(local=True))
    server = LocalRedis()
    try:
        monkeypatch.setenv("KVCACHE_TEST_REDIS_PID", str(server.proc.pid))
        pytester.makeconftest("""
import os, signal, threading
import pytest

@pytest.fixture(autouse=True)
def kill_the_server_soon():
    timer = threading.Timer(2.0, os.kill, (int(os.environ["KVCACHE_TEST_REDIS_PID"]), signal.SIGKILL))
    timer.start()
    yield
    timer.cancel()
""")
        pytester.makepyfile(test_scn=SCENARIO)
        result = pytester.runpytest(f"--kv-cache-dir={tmp_path}", f"--kv-redis-url={server.url}", "--kv-duration", "60",
                                    "--kv-requests-per-user", "200", "--kv-remote-timeout", "3",
                                    *LOAD, "-W", "ignore::UserWarning")
        result.assert_outcomes(failed=1)
        data = report(pytester)
        (scn,) = data["scenarios"]
        assert scn["status"] == "error"
        assert any("redis tier" in e and server.url in e for e in scn["errors"]), scn["errors"]
        assert scn["metrics"]["redis.write.bytes"] > 0  # measured before the server died
        assert scn["run"]["finished_unix"] - scn["run"]["started_unix"] < 40  # ended by the death, not the 60 s window
    finally:
        server.stop()
    assert server.proc.returncode == -signal.SIGKILL
