"""The MLPerf CLOSED preset end to end (its smoke form, through pytester): three options, each
with its trials combined, scored side by side; the preset refuses what it fixes; without it the
options skip. Plus the preset's option table against the rules (design section 10)."""

import json
from pathlib import Path

import pytest

from pytest_kvcache import mlperf

SCENARIO = (Path(__file__).parent.parent / "scenarios" / "test_mlperf.py").read_text()


@pytest.fixture
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_the_options_are_the_rules():
    assert mlperf.COMMON["gpu_mem_gb"] == 0 and mlperf.COMMON["generation_mode"] == "none"
    assert mlperf.COMMON["duration"] == 300 and mlperf.COMMON["seed"] == 42 and mlperf.COMMON["trials"] == 3
    assert mlperf.pause_s(False) == 90
    rules = {"option1": ("llama3.1-8b", 200, 0.0, 16), "option2": ("llama3.1-8b", 100, 4.0, 16),
             "option3": ("llama3.1-70b-instruct", 70, 0.0, 4)}
    for option, (model, users, cpu, allocs) in rules.items():
        tiers, s = mlperf.option_settings(option, smoke=False)
        assert (s["model"], s["users"], s["cpu_mem_gb"], s["max_concurrent_allocs"]) == (model, users, cpu, allocs)
        assert tiers == ("cpu+storage" if cpu else "storage-only")
        smoke_tiers, smoke = mlperf.option_settings(option, smoke=True)
        assert smoke_tiers == tiers and smoke["trials"] >= 2 and smoke["duration"] <= 2
        assert smoke["max_concurrent_allocs"] == allocs  # the shape is kept


def test_smoke_form_runs_three_options_with_trials_combined(pytester, cache_dir):
    pytester.makepyfile(test_closed=SCENARIO)
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", "--kv-preset", "mlperf-closed", "--kv-smoke",
                                "-p", "no:cacheprovider", "-s")
    failed = [line for line in result.outlines if "failed" in line or "FAIL" in line]
    assert result.ret == 0, failed
    result.stdout.fnmatch_lines(["*preset mlperf-closed (smoke)*", "*option * read GB/s*", "option1 *tiny-1b*", "option2 *", "option3 *",
                                 "*trials 2 (figures above are means*"])
    data = json.loads((pytester.path / "kvcache-report.json").read_text())
    scenarios = {s["id"]: s for s in data["scenarios"]}
    assert sorted(scenarios) == ["test_mlperf[option1]", "test_mlperf[option2]", "test_mlperf[option3]"]
    for option, s in ((k[len("test_mlperf["):-1], v) for k, v in scenarios.items()):
        trials = s["summary"]["trials"]
        assert trials["count"] == mlperf.SMOKE["trials"] == len(s["run"]["trials"])
        assert s["settings"]["users"] == mlperf.SMOKE_USERS[option] and s["settings"]["max_concurrent_allocs"] in (16, 4)
        for key in ("storage_read_gbps", "storage_write_gbps", "storage_tokens_per_sec"):
            figure = trials["figures"][key]
            if figure["mean"] is not None:
                assert figure["mean"] == pytest.approx(sum(figure["values"]) / len(figure["values"]))
                assert figure["ci95"][0] <= figure["mean"] <= figure["ci95"][1]
        assert s["summary"]["mlperf"]["option"] == option
    assert scenarios["test_mlperf[option2]"]["tiers"] == ["cpu", "nvme"]
    assert list(cache_dir.iterdir()) == []


def test_the_preset_refuses_an_override(pytester, cache_dir):
    pytester.makepyfile(test_closed=SCENARIO)
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", "--kv-preset", "mlperf-closed", "--kv-users", "8")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kv-preset mlperf-closed fixes*refuses --kv-users (from command line)*"])


def test_without_the_preset_the_options_skip_saying_why(pytester, cache_dir):
    pytester.makepyfile(test_closed=SCENARIO)
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*only with --kv-preset mlperf-closed*"])


def test_under_the_preset_other_scenarios_skip(pytester, cache_dir):
    pytester.makepyfile(test_other="""
import pytest

@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_tiers(kv_tiers, kv_run):
    kv_run(kv_tiers)
""")
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", "--kv-preset", "mlperf-closed", "-p", "no:cacheprovider",
                                "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*runs only its own tests*"])


def _one_trial(metrics: dict):
    from types import SimpleNamespace

    return SimpleNamespace(summary={"headline": {"storage_read_gbps": 0.2}}, tiers=["cpu", "nvme"], metrics=metrics,
                           model={"name": "llama3.1-8b"}, settings={"users": 100}, status="passed")


def test_the_write_p95_is_of_demotions_when_every_drive_write_is_one():
    """Option 2 writes to its CPU tier; the drive sees only demotions, whose p95 is the device's write p95."""
    behind_cpu = mlperf.score("option2", _one_trial({"nvme.read.p95": 0.5, "nvme.demote_write.p95": 2.0}))
    assert behind_cpu["device_write_op"] == "demote_write" and behind_cpu["device_write_p95_ms"]["mean"] == 2000.0
    direct = mlperf.score("option1", _one_trial({"nvme.write.p95": 1.0, "nvme.demote_write.p95": 9.0}))
    assert direct["device_write_op"] == "write" and direct["device_write_p95_ms"]["mean"] == 1000.0
    nothing = mlperf.score("option1", _one_trial({"nvme.read.p95": 0.5}))
    assert nothing["device_write_p95_ms"]["mean"] is None  # n/a, never 0
