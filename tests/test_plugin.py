"""End-to-end tests of the plugin through pytester: options, errors, report, cleanup, determinism."""

import json
import os

import pytest

from pytest_kvcache.fsinfo import _memory_backed, mount_for

FAST = ["--kv-duration", "0.6", "--kv-warmup", "0", "--kv-users", "2", "--kv-requests-per-user", "4",
        "--kv-think-time-scale", "0", "--kv-generation-mode", "none", "--kv-cpu-mem-gb", "0.5",
        "--kv-nvme-capacity-gb", "1", "-p", "no:cacheprovider"]

SCENARIO = """
import pytest

@pytest.mark.parametrize("kv_tiers", {configs!r}, indirect=True)
def test_tiers(kv_tiers, kv_run):
    kv_run(kv_tiers)
"""


@pytest.fixture
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def run(pytester, cache_dir, *args, configs=("cpu-only", "storage-only")):
    pytester.makepyfile(test_scn=SCENARIO.format(configs=list(configs)))
    return pytester.runpytest(f"--kv-cache-dir={cache_dir}", *FAST, *args)


def report(pytester):
    return json.loads((pytester.path / "kvcache-report.json").read_text())


def test_options_are_listed_in_help(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*KV-cache storage benchmark*", "*--kv-model*", "*--kv-cache-dir*", "*--kv-threshold*"])


def test_scenarios_run_report_and_clean_up(pytester, cache_dir):
    (cache_dir / "users-own-file.npy").write_bytes(b"keep me")
    result = run(pytester, cache_dir)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*kvcache session report*", "test_tiers[[]storage-only] [[]PASSED]*",
                                 "*nvme files: * created, * recycled (recycling on)", "*JSON report:*"])
    data = report(pytester)
    assert data["schema_version"] == 2 and data["complete"] is True
    assert [s["name"] for s in data["scenarios"]] == ["cpu-only", "storage-only"]
    storage = data["scenarios"][1]
    for key in ("storage_throughput_tokens_per_sec", "cache_hit_rate", "end_to_end_latency_ms", "nvme_entries"):
        assert key in storage["summary"]
    # the cache dir is on this machine's ext4 work disk, where O_DIRECT works
    memory = _memory_backed(mount_for(cache_dir))
    assert storage["backends"][0]["io_mode"] == ("buffered" if memory else "direct")
    assert storage["backends"][0]["recycle"] is True
    assert len(storage["trace"]["sha256"]) == 64
    assert storage["settings"]["seed"] == 42
    assert "device_counters" in storage
    assert os.listdir(cache_dir) == ["users-own-file.npy"]
    assert (pytester.path / "kvcache-report.csv").read_text().count("\n") == 3  # header + 2 scenarios


def test_failing_threshold_fails_the_storage_scenario_with_a_table(pytester, cache_dir):
    result = run(pytester, cache_dir, "--kv-threshold", "nvme.read.p95<=1us")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_tiers[[]storage-only]: 1 of * criteria failed*", "*nvme.read.p95 <= 1us*FAIL*cli*"])
    assert report(pytester)["scenarios"][1]["status"] == "failed"


def test_ini_settings_and_thresholds(pytester, cache_dir):
    pytester.makeini("[pytest]\nkv_model = llama3.1-8b\nkv_thresholds =\n    cache.hit_rate>=0%\n")
    result = run(pytester, cache_dir, configs=["cpu-only"])
    result.assert_outcomes(passed=1)
    data = report(pytester)
    assert data["model"]["bytes_per_token"] == 131072
    crit = data["scenarios"][0]["criteria"]
    assert [c["source"] for c in crit if c["metric"] == "cache.hit_rate"] == ["ini"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--kv-model", "gpt-5"], "unknown model 'gpt-5'. Known models: deepseek-v3"),
        (["--kv-users", "-3"], "--kv-users (command line) must be at least 1"),
        (["--kv-users", "0"], "--kv-users (command line) must be at least 1"),
        (["--kv-chunk-tokens", "-256"], "--kv-chunk-tokens (command line) must be 0 or more"),
        (["--kv-gpu-mem-gb", "lots"], "--kv-gpu-mem-gb (command line) must be a number"),
        (["--kv-users", "many"], "--kv-users (command line) must be a number"),
        (["--kv-duration", "0"], "--kv-duration (command line) must be greater than 0"),
        (["--kv-cpu-mem-gb", "-1"], "--kv-cpu-mem-gb (command line) must be 0 or more"),
        (["--kv-chunk-tokens", "1.5"], "must be a whole number"),
        (["--kv-threshold", "nvme.read.p95<=fast"], "bad threshold 'nvme.read.p95<=fast'"),
        (["--kv-threshold", "nvme.reed.p95<=2ms"], "nvme.read.p95"),
        (["--kv-threshold", "nvme.read.p95<=2parsecs"], "unit"),
        (["--kv-profile", "fastest"], "--kv-profile (command line) must be one of latency, throughput, none"),
        (["--kv-nvme-capacity-gb", "1e9"], "free"),
        (["--kv-report", "out.csv"], "give it a .json name"),
        (["--kv-request-rate", "-2"], "--kv-request-rate (command line) must be 0 or more"),
        (["--kv-request-rate", "5", "--kv-queue-depth", "0"], "--kv-queue-depth must be at least 1 with --kv-request-rate"),
        (["--kv-threshold", "qos.realtime.p95<=50ms"], "unknown metric 'qos.realtime.p95'"),
    ],
)
def test_bad_input_is_a_usage_error(pytester, cache_dir, args, needle):
    result = run(pytester, cache_dir, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert needle in result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_bad_cache_dirs_are_usage_errors(pytester, tmp_path):
    missing = tmp_path / "nope"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for path, needle in ((missing, "does not exist"), (a_file, "is not a directory")):
        result = run(pytester, path)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert needle in result.stderr.str()


def test_bad_yaml_config_is_a_usage_error(pytester, cache_dir):
    bad = pytester.path / "bad.yaml"
    bad.write_text("users: [1, 2\n")
    result = run(pytester, cache_dir, "--kv-config", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "not valid YAML" in result.stderr.str()
    unknown = pytester.path / "unknown.yaml"
    unknown.write_text("userz: 3\n")
    result = run(pytester, cache_dir, "--kv-config", str(unknown))
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "unknown key 'userz'" in result.stderr.str()


def test_yaml_config_sets_values_and_custom_models(pytester, cache_dir):
    cfg = pytester.path / "kv.yaml"
    cfg.write_text("model: my-model\nseed: 7\nmodels:\n  my-model: {layers: 2, kv_heads: 2, head_dim: 64}\n")
    result = run(pytester, cache_dir, "--kv-config", str(cfg), configs=["cpu-only"])
    result.assert_outcomes(passed=1)
    data = report(pytester)
    assert data["model"]["bytes_per_token"] == 2 * 2 * 2 * 64 * 2
    assert data["seed"] == 7


def test_gpu_scenarios_skip_without_cuda(pytester, cache_dir):
    from pytest_kvcache.backends.gpu import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is None:
        pytest.skip("a CUDA device is present here")
    result = run(pytester, cache_dir, "-rs", configs=["gpu-only", "gpu+cpu+storage"])
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines([f"*gpu-only: {reason.split(':')[0]}*"])


def _mock_run(pytester, cache_dir, seed):
    pytester.makepyfile(test_scn=SCENARIO.format(configs=["cpu+storage"]))
    args = [*FAST, "--kv-users", "1", "--kv-duration", "30", "--kv-nvme-backend", "mock",
            "--kv-seed", str(seed), "--kv-report", f"r{seed}.json"]
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", *args)
    result.assert_outcomes(passed=1)
    scn = json.loads((pytester.path / f"r{seed}.json").read_text())["scenarios"][0]
    assert scn["trace"]["exhausted"] is True
    counts = {(t, op): f["count"] for t, ops in scn["summary"]["tiers"].items() for op, f in ops.items()}
    return scn["trace"]["sha256"], counts


def test_same_seed_same_trace_and_op_counts_on_mock(pytester, cache_dir):
    h1, c1 = _mock_run(pytester, cache_dir, 5)
    (pytester.path / "r5.json").rename(pytester.path / "first.json")
    h2, c2 = _mock_run(pytester, cache_dir, 5)
    h3, _ = _mock_run(pytester, cache_dir, 6)
    assert h1 == h2 and c1 == c2 and c1
    assert h3 != h1


def test_backend_hook_and_criteria_marker(pytester, cache_dir):
    pytester.makeconftest("""
from pytest_kvcache.backends.mock import MockBackend

class SlowDrive(MockBackend):
    name = "slowdrive"

def pytest_kvcache_register_backends(registry):
    registry.register("slowdrive", SlowDrive)

def pytest_kvcache_adjust_settings(settings, scenario):
    return {"users": 3}
""")
    pytester.makepyfile(test_scn="""
import pytest

@pytest.mark.kv_criteria("requests.completed>=1000000")
@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_tiers(kv_tiers, kv_run):
    kv_run(kv_tiers)
""")
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", *FAST, "--kv-nvme-backend", "slowdrive")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*requests.completed >= 1000000*FAIL*marker*"])
    scn = report(pytester)["scenarios"][0]
    assert scn["backends"][0]["backend"] == "slowdrive"
    assert scn["trace"]["users"] == 3


def test_junit_properties(pytester, cache_dir):
    result = run(pytester, cache_dir, "--junitxml=out.xml", configs=["storage-only"])
    result.assert_outcomes(passed=1)
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="kv_headline_op" value="nvme.read"' in xml and 'name="kv_headline_p95_ms"' in xml
    assert 'name="kv_trace_sha256"' in xml and 'name="kv_workload_sha256"' in xml
    assert 'name="kv_model" value="tiny-1b"' in xml and 'name="kv_seed" value="42"' in xml  # suite level
    assert 'name="kv_criterion nvme.read.p95 &lt;= 200ms"' in xml


def test_no_report_without_scenarios(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert not (pytester.path / "kvcache-report.json").exists()


def test_xdist_runs_scenarios_one_at_a_time_and_collects_every_result(pytester, cache_dir):
    pytest.importorskip("xdist")
    result = run(pytester, cache_dir, "-n", "2", configs=["cpu-only", "storage-only", "cpu+storage"])
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*kvcache session report*", "*test_tiers[[]storage-only] [[]PASSED]*"])
    scenarios = report(pytester)["scenarios"]
    assert sorted(s["name"] for s in scenarios) == ["cpu+storage", "cpu-only", "storage-only"]
    spans = sorted((s["run"]["started_unix"], s["run"]["finished_unix"]) for s in scenarios)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans


def test_plots_option_renders_or_explains(pytester, cache_dir):
    from pytest_kvcache.plots import plots_available

    result = run(pytester, cache_dir, "--kv-plots=plots", configs=["cpu-only"])
    result.assert_outcomes(passed=1)
    if plots_available() is None:
        assert (pytester.path / "plots" / "index.html").exists()
    else:
        result.stdout.fnmatch_lines(["*no plots: plots need matplotlib*"])


def test_warns_when_rootdir_is_filesystem_root(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest("--rootdir=/", "-p", "no:cacheprovider", "-W", "default")
    result.stdout.fnmatch_lines(["*rootdir is '/'*--kv-cache-dir=PATH*"])


def test_hook_changes_are_validated(pytester, cache_dir):
    pytester.makeconftest("def pytest_kvcache_adjust_settings(settings, scenario):\n    return {'users': -1}\n")
    result = run(pytester, cache_dir, configs=["cpu-only"])
    result.stdout.fnmatch_lines(["*--kv-users (pytest_kvcache_adjust_settings) must be at least 1*"])
    assert result.ret != 0 and "Traceback" not in result.stdout.str()


def test_a_criterion_no_scenario_can_judge_fails_the_session(pytester, cache_dir):
    """Issue 9's case: a RAG hit-rate gate on a session without RAG passed as n/a."""
    result = run(pytester, cache_dir, "--kv-threshold", "cache.hit_rate.rag>=0.5", configs=["storage-only"])
    result.assert_outcomes(passed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*FAILED criterion cache.hit_rate.rag >= 0.5 (cli): no scenario of this session "
                                 "could judge it (this workload has no RAG documents)*"])
    data = report(pytester)
    assert data["unjudged_criteria"] == [{"criterion": "cache.hit_rate.rag >= 0.5", "source": "cli",
                                          "reasons": ["this workload has no RAG documents"]}]


def test_a_hit_rate_with_no_lookups_is_na_everywhere(pytester, cache_dir):
    """One request per user: no history to look up, so no hit rate (not 0%)."""
    result = run(pytester, cache_dir, "--kv-requests-per-user", "1", "--kv-profile", "none",
                 "--junitxml=out.xml", configs=["cpu-only"])
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*| hit rate n/a*"])
    scenario = report(pytester)["scenarios"][0]
    assert scenario["summary"]["cache_hit_rate"] is None and scenario["summary"]["headline"]["cache_hit_rate"] is None
    assert "cache.hit_rate" not in scenario["metrics"]
    assert 'name="kv_cache_hit_rate" value="n/a"' in (pytester.path / "out.xml").read_text()
    assert ",cache_hit_rate," in (pytester.path / "kvcache-report.csv").read_text().splitlines()[0] + ","


def test_a_cache_dir_on_memory_needs_the_option_and_then_fails_as_memory(pytester, tmp_path):
    from pytest_kvcache.fsinfo import mount_for

    if mount_for("/dev/shm").fstype != "tmpfs":
        pytest.skip("no tmpfs /dev/shm on this machine")
    shm = f"/dev/shm/kvtest-{os.getpid()}-{tmp_path.name}"
    os.mkdir(shm)
    try:
        result = run(pytester, shm, configs=["storage-only"])
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "is on tmpfs: memory, not a drive" in result.stderr.str()
        assert "--kv-allow-memory-fs" in result.stderr.str()
        result = run(pytester, shm, "--kv-allow-memory-fs", configs=["storage-only"])
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*nvme: /dev/shm/kvtest-*(tmpfs, memory, not a drive)*",
                                     "*storage.memory_tiers == 0*1*FAIL*built-in*"])
        nvme = report(pytester)["scenarios"][0]["backends"][-1]
        assert nvme["medium"] == "memory"
        assert os.listdir(shm) == []
    finally:
        os.rmdir(shm)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory this process cannot create files in, even as root (chmod, else chattr +i)."""
    import subprocess

    path = tmp_path / "locked"
    path.mkdir()
    path.chmod(0o555)
    undo = ["chmod", "755", str(path)]
    if os.access(path, os.W_OK):  # root: permissions do not stop it; the immutable attribute does
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode:
            path.chmod(0o755)
            pytest.skip(f"cannot make an unwritable directory here: {done.stderr.decode().strip()}")
        undo = ["chattr", "-i", str(path)]
    yield path
    subprocess.run(undo, check=False)


def _report_usage_error(pytester, cache_dir, report, needle):
    result = run(pytester, cache_dir, f"--kv-report={report}", configs=["cpu-only"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:]
    err = result.stderr.str()
    assert needle in err and "Traceback" not in err + result.stdout.str()
    return err


def test_report_path_that_is_a_directory_is_a_usage_error(pytester, cache_dir):
    (pytester.path / "reports").mkdir()
    err = _report_usage_error(pytester, cache_dir, "reports", "is a directory")
    assert "--kv-report" in err and "reports/kvcache-report.json" in err
    (pytester.path / "r.csv").mkdir()  # where the CSV beside the JSON report would go
    _report_usage_error(pytester, cache_dir, "r.json", "r.csv, is a directory")


def test_report_path_under_a_file_is_a_usage_error(pytester, cache_dir):
    (pytester.path / "notes").write_text("a file, not a directory")
    err = _report_usage_error(pytester, cache_dir, "notes/deeper/r.json", "is not a directory")
    assert str(pytester.path / "notes") in err


def test_plots_path_that_is_a_file_is_a_usage_error(pytester, cache_dir):
    (pytester.path / "plots.png").write_text("x")
    result = run(pytester, cache_dir, "--kv-plots=plots.png", configs=["cpu-only"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--kv-plots" in result.stderr.str() and "is a file; give a directory" in result.stderr.str()


def test_report_in_an_unwritable_directory_is_a_usage_error(pytester, cache_dir, unwritable_dir):
    before = sorted(os.listdir(unwritable_dir))
    err = _report_usage_error(pytester, cache_dir, unwritable_dir / "sub" / "r.json", "cannot create files in")
    assert str(unwritable_dir) in err
    assert sorted(os.listdir(unwritable_dir)) == before


def test_report_check_leaves_nothing_behind(pytester, cache_dir):
    result = run(pytester, cache_dir, "--kv-report=out/r.json", "--co")
    assert result.ret == pytest.ExitCode.OK
    assert not (pytester.path / "out").exists()  # missing directories are made when a report is written
    assert sorted(set(os.listdir(pytester.path)) - {".benchmarks"}) == ["test_scn.py"]


LOSE_REPORT = """
import os, shutil, pytest

def test_a_first(kv_session):
    '''The report's place becomes unwritable after configure (before any scenario wrote it).'''
    {how}

@pytest.mark.parametrize("kv_tiers", ["cpu-only"], indirect=True)
def test_tiers(kv_tiers, kv_run):
    kv_run(kv_tiers)
"""


@pytest.mark.parametrize(("how", "needle"), [
    ("os.mkdir(kv_session.report_path)", "is a directory"),  # a directory took the report's name
    ("os.rmdir(kv_session.report_path.parent); kv_session.report_path.parent.write_text('x')",
     "is not a directory"),  # a file took its directory's name
])
def test_report_write_failure_keeps_the_terminal_summary(pytester, cache_dir, how, needle):
    (pytester.path / "out").mkdir()
    pytester.makepyfile(test_scn=LOSE_REPORT.format(how=how))
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", *FAST, "--kv-report=out/r.json")
    result.assert_outcomes(passed=2)
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out and "INTERNALERROR" not in out
    result.stdout.fnmatch_lines(["*kvcache session report*", "test_tiers[[]cpu-only] [[]PASSED]*",
                                 f"JSON report NOT written: *{pytester.path / 'out'}*{needle}*"])
    assert "JSON report: " not in out


def more_memory_than_this_machine_has_gb() -> float:
    """Twice RAM plus swap: never allocatable here (a check that fails must not try it)."""
    info = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    kb = int(info["MemTotal"].split()[0]) + int(info.get("SwapTotal", "0 kB").split()[0])
    return round(2 * kb * 1024 / 1e9, 1)


def test_cpu_budget_above_host_memory_is_a_usage_error_before_anything_runs(pytester, cache_dir):
    huge = more_memory_than_this_machine_has_gb()
    result = run(pytester, cache_dir, f"--kv-cpu-mem-gb={huge}", configs=["cpu-only", "storage-only"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "scenario cpu-only needs" in err and "lower --kv-cpu-mem-gb to" in err and "MemAvailable" in err
    assert "storage-only" not in err and "Traceback" not in err + result.stdout.str()
    assert list(cache_dir.iterdir()) == [] and not (pytester.path / "kvcache-report.json").exists()
    # only the scenarios that will run count: storage-only has no CPU tier to allocate
    run(pytester, cache_dir, f"--kv-cpu-mem-gb={huge}", "-k", "storage", configs=["cpu-only", "storage-only"]
        ).assert_outcomes(passed=1, deselected=1)


def test_failed_cpu_tier_allocation_is_a_scenario_error_and_the_report_is_kept(pytester, cache_dir):
    pytester.makeconftest("""
import errno
import pytest

@pytest.fixture(autouse=True)
def no_memory_for_the_arena(monkeypatch):
    def enomem(nbytes):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")
    monkeypatch.setattr("pytest_kvcache.backends.cpu.aligned_buffer", enomem)
""")
    result = run(pytester, cache_dir, configs=["storage-only", "cpu-only"])
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "Traceback" not in out and "Errno 12" not in out
    assert "During handling of the above exception" not in out  # said once, without a chained copy
    result.stdout.fnmatch_lines(["*cpu tier: cannot allocate its 0.50 GB arena in host memory (Cannot allocate memory);"
                                 " lower --kv-cpu-mem-gb or free memory.*",
                                 "*kvcache session report*", "test_tiers[[]storage-only] [[]PASSED]*", "*JSON report:*"])
    assert [s["name"] for s in report(pytester)["scenarios"]] == ["storage-only"]
    assert list(cache_dir.iterdir()) == []


WORKLOAD_SCENARIOS = """
import pytest

@pytest.mark.kv_defaults(system_prompt_tokens=512, prefix_pool=1, prefix_tokens=512)
@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_chat(kv_tiers, kv_run):
    kv_run(kv_tiers)

@pytest.mark.kv_settings(workload="rag", rag_documents=3, rag_doc_tokens_max=1024)
@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_rag(kv_tiers, kv_run):
    kv_run(kv_tiers)

@pytest.mark.slow
def test_sweep():
    pass
"""


def test_shared_prefix_hits_are_real_reads_and_rag_runs_for_its_scenario_only(pytester, cache_dir):
    pytester.makepyfile(test_scn=WORKLOAD_SCENARIOS)
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", *FAST, "--kv-requests-per-user", "6",
                                "--kv-profile", "none", "--kv-users", "2", "--kv-duration", "2")
    result.assert_outcomes(passed=2, skipped=1)  # the slow one is skipped without -m
    chat, rag = report(pytester)["scenarios"]
    bpt = chat["model"]["bytes_per_token"]
    hits = chat["summary"]["cache_lookups"]["prefix"]
    assert hits["hit_tokens"] > 0 and chat["summary"]["hit_rates"]["prefix"]["tokens"] > 0
    # a hit is a read of a stored block: the nvme reads in the window hold at least the hit tokens
    assert chat["summary"]["tiers"]["nvme"]["read"]["bytes"] >= hits["hit_tokens"] * bpt
    dev = chat["device_counters"]
    if dev.get("read_ratio") is not None and dev.get("read_ratio_reason") is None:
        assert dev["read_ratio"] >= 0.9  # the device saw those reads (O_DIRECT or page cache dropped)
    assert "rag" not in chat["summary"]["hit_rates"] and chat["settings"]["workload"] == "chat"
    assert rag["settings"]["workload"] == "rag" and rag["summary"]["hit_rates"]["rag"]["tokens"] > 0
    assert rag["summary"]["retrieval_latency_ms"]["p95"] > 0
    assert rag["trace"]["sha256"] != chat["trace"]["sha256"]


def test_rag_hit_rate_criterion_is_na_for_chat_and_judged_for_rag(pytester, cache_dir):
    pytester.makepyfile(test_scn=WORKLOAD_SCENARIOS)
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", *FAST, "--kv-profile", "none",
                                "--kv-threshold", "cache.hit_rate.rag>=1%", "--kv-threshold", "cache.hit_rate.prefix>=1%",
                                "-m", "not slow")
    result.assert_outcomes(passed=2, deselected=1)
    chat, rag = report(pytester)["scenarios"]
    status = {s["nodeid"].split("::")[1]: {o["metric"]: o["status"] for o in s["criteria"]} for s in (chat, rag)}
    assert status["test_chat[storage-only]"]["cache.hit_rate.rag"] == "n/a"
    assert status["test_chat[storage-only]"]["cache.hit_rate.prefix"] == "pass"
    assert status["test_rag[storage-only]"]["cache.hit_rate.rag"] == "pass"
    assert status["test_rag[storage-only]"]["cache.hit_rate.prefix"] == "n/a"


QOS_SCENARIO = """
import pytest

@pytest.mark.kv_settings(request_rate=200, queue_depth=2, max_inflight=1, users=20)
@pytest.mark.kv_criteria("qos.interactive.p95<=60s", "requests.offered>=1")
@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_qos(kv_tiers, kv_run):
    kv_run(kv_tiers)
"""


def test_an_open_loop_scenario_reports_classes_and_rejections(pytester, cache_dir):
    """The kv_settings marker gives the scenario its own open-loop load; the report, the
    terminal and JUnit carry per-class figures and the rejected requests."""
    pytester.makepyfile(test_qos_scn=QOS_SCENARIO)
    # a 2 s window: the interactive gate needs a finished interactive request even on a loaded machine
    result = pytester.runpytest(f"--kv-cache-dir={cache_dir}", *FAST, "--kv-duration", "2", "--kv-profile", "none",
                                "--junitxml", "junit.xml", "-rA")
    result.assert_outcomes(passed=1)
    scn = report(pytester)["scenarios"][0]
    assert scn["settings"]["request_rate"] == 200 and scn["settings"]["users"] == 20
    arrivals = scn["summary"]["arrivals"]
    assert arrivals["open_loop"] and arrivals["offered"] > 0 and arrivals["rejected"] > 0  # 200/s into 1 worker
    assert scn["metrics"]["requests.rejected"] == arrivals["rejected"]
    interactive = scn["summary"]["qos"]["interactive"]
    assert interactive["p95_target_ms"] == 50 and interactive["offered"] >= interactive["requests"]
    assert scn["run"]["workers"] == 1 and scn["run"]["peak_in_service"] == 1
    out = result.stdout.str()
    assert "open-loop arrivals in the window" in out and "within target" in out
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="kv_requests_rejected"' in junit and "kv_qos_" in junit


def test_unknown_qos_class_in_yaml_is_a_usage_error(pytester, cache_dir):
    cfg = pytester.path / "kv.yaml"
    cfg.write_text("qos:\n  premium: {p95_ms: 10}\n")
    result = run(pytester, cache_dir, "--kv-config", str(cfg))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown QoS class 'premium'" in result.stderr.str()
