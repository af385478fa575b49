"""--kv-trials: the confidence-interval math against known values, and several trials of a
scenario run on fresh tiers and combined."""

import math
import os

import pytest

from pytest_kvcache.backends import default_registry
from pytest_kvcache.criteria import Criterion
from pytest_kvcache.engine import provision, run_trials
from pytest_kvcache.models import resolve_model
from pytest_kvcache.settings import build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.trials import combine_metrics, describe, summarize, t975
from pytest_kvcache.workload import WorkloadParams, generate_trace


def settings_for(cache_dir, **extra):
    cli = {"cache_dir": str(cache_dir), "model": "tiny-1b", "duration": "1.0", "warmup": 0, "users": 2,
           "requests_per_user": "3", "think_time_scale": "0", "generation_mode": "none", "nvme_capacity_gb": 0.5,
           "chunk_tokens": 64, "io_block_mb": 1, "profile": "none", **extra}
    return build_settings(cli, {}, {})


def small_trace(s):
    return generate_trace(WorkloadParams(seed=s.seed, users=s.users, requests_per_user=s.requests_per_user,
                                         think_time_scale=s.think_time_scale, max_context_tokens=512))


def test_t_quantiles_are_the_table_values():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(9) == 2.262 and t975(30) == 2.042
    assert t975(45) == 2.021 and t975(100) == 2.000 and t975(500) == 1.980 and t975(10**6) == 1.960
    with pytest.raises(ValueError):
        t975(0)


def test_describe_known_values():
    # 10, 12, 14: mean 12, s = 2, half-width = 4.303 * 2 / sqrt(3) = 4.9687
    d = describe([10.0, 12.0, 14.0])
    assert d["mean"] == 12.0 and d["stdev"] == pytest.approx(2.0)
    half = 4.303 * 2 / math.sqrt(3)
    assert d["ci95"] == pytest.approx([12 - half, 12 + half])
    assert d["cv"] == pytest.approx(2 / 12)


def test_describe_one_trial_has_no_interval_and_a_missing_figure_is_na():
    one = describe([5.0])
    assert one["mean"] == 5.0 and one["ci95"] is None and one["cv"] is None and one["stdev"] is None
    assert describe([1.0, None])["mean"] is None
    assert describe([0.0, 0.0])["cv"] is None and describe([0.0, 0.0])["ci95"] == [0.0, 0.0]


def test_combine_metrics_means_rates_takes_the_worst_fault_count_and_keeps_na():
    out = combine_metrics([{"nvme.read.p95": 0.010, "storage.read_gbps": 1.0, "errors.count": 0, "x": None},
                           {"nvme.read.p95": 0.030, "storage.read_gbps": 3.0, "errors.count": 2, "x": 1.0}])
    assert out["nvme.read.p95"] == pytest.approx(0.020) and out["storage.read_gbps"] == 2.0
    assert out["errors.count"] == 2 and out["x"] is None


def test_summarize_lists_each_trial_and_skips_labels():
    s = summarize([{"status": "passed", "storage_read_gbps": 1.0}, {"status": "failed", "storage_read_gbps": 2.0}], 42)
    assert s["count"] == 2 and s["seed"] == 42 and [t["status"] for t in s["per_trial"]] == ["passed", "failed"]
    assert set(s["figures"]) == {"storage_read_gbps"} and s["figures"]["storage_read_gbps"]["mean"] == 1.5


def test_trials_run_on_fresh_tiers_and_gate_on_the_mean(tmp_path):
    s = settings_for(tmp_path, trials=3, duration="0.5")
    model, trace = resolve_model(s.model), small_trace(s)
    prov = provision(TIER_CONFIGS["storage-only"], s, default_registry())
    dirs = []
    try:
        result = run_trials(prov, s, model, trace, [Criterion.parse("storage.write_gbps>=0.000001GB/s")],
                            default_registry(), on_tick=lambda runner, t: dirs.append(runner.cache))
    finally:
        prov.close()
    trials = result.summary["trials"]
    assert trials["count"] == 3 and len(trials["per_trial"]) == 3 and len(result.run["trials"]) == 3
    writes = [t["storage_write_gbps"] for t in trials["per_trial"]]
    assert all(w is not None and w > 0 for w in writes)
    assert result.summary["headline"]["storage_write_gbps"] == pytest.approx(sum(writes) / 3)
    figure = trials["figures"]["storage_write_gbps"]
    assert figure["ci95"][0] <= figure["mean"] <= figure["ci95"][1] and figure["cv"] is not None
    outcome = result.outcomes[0]
    assert outcome.measured == pytest.approx(result.metrics["storage.write_gbps"]) and outcome.status == "pass"
    assert len({id(c) for c in dirs}) == 3  # a cache (and tiers) per trial
    assert os.listdir(tmp_path) == [], "every trial's run directory is removed"


def test_the_terminal_line_gives_means_intervals_and_cv():
    from pytest_kvcache.report import trials_text

    assert trials_text(None) is None
    line = trials_text(summarize([{"storage_read_gbps": 1.0}, {"storage_read_gbps": 3.0}], 42))
    assert line.startswith("trials 2") and "storage read 2.000 [-10.706, 14.706] GB/s cv 70.7%" in line


def test_a_count_averaged_over_trials_reads_as_a_number_not_a_float_repr():
    from pytest_kvcache.report import format_figure

    assert format_figure(475.6666666666667, "count") == "475.7"
    assert format_figure(1200, "count") == "1,200"
    assert format_figure(None, "count") == "n/a"


def test_a_metric_one_trial_could_not_judge_is_na_with_that_trials_reason():
    from pytest_kvcache.criteria import Criterion
    from pytest_kvcache.engine import combine_trials
    from pytest_kvcache.result import ScenarioResult

    why = "not judged: we read 1.0 MiB in the window, under the 64 MiB needed"
    first = ScenarioResult("storage-only", "q", ["nvme"], metrics={"nvme.read.p95": 0.01},
                           summary={"headline": {}}, absent={"device.read_ratio": why})
    second = ScenarioResult("storage-only", "q", ["nvme"], metrics={"nvme.read.p95": 0.01, "device.read_ratio": 1.0},
                            summary={"headline": {}})
    [outcome] = combine_trials([first, second], [Criterion.parse("device.read_ratio>=0.9")], 42).outcomes
    assert (outcome.status, outcome.reason) == ("n/a", why)
