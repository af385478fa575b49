"""Aggregation of MPI ranks' results (aggregate.py) and the rank's side of the cluster (cluster.py)
with a stand-in communicator: sums, maxima, pooled figures, device ratios per drive, the
verdict judged on the aggregate, barriers that time out or find the ranks out of step."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_kvcache.aggregate import (
    aggregate,
    combine_metrics,
    combine_qos,
    device_ratios,
    metric_rule,
    pooled_latency,
)
from pytest_kvcache.cluster import Cluster, connect, launched_under_mpi, rank_dir, rank_seed
from pytest_kvcache.criteria import Criterion
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.result import ScenarioResult


def _lookups(hit_tokens, missed_tokens):
    return {"multi_turn": {"hits": hit_tokens // 10, "misses": missed_tokens // 10,
                           "hit_tokens": hit_tokens, "missed_tokens": missed_tokens}}


def _view(metrics, rank=0, lookups=None, host="h", device="sda", dev=None, **summary):
    return {"rank": rank, "host": host, "metrics": metrics,
            "summary": {"cache_lookups": lookups or {}, **summary},
            "device_counters": {"available": True, "device": device, **(dev or {})}, "absent": {}}


@pytest.mark.parametrize("name, rule", [
    ("nvme.read.gbps", "sum"), ("storage.read_gbps", "sum"), ("storage.throughput_tokens_per_sec", "sum"),
    ("nvme.write.bytes", "sum"), ("requests.completed", "sum"), ("nvme.read.iops", "sum"),
    ("nvme.read.p95", "max"), ("e2e.p99", "max"), ("qos.batch.queue_wait.p95", "max"), ("window_s", "max"),
    ("cache.hit_rate", "lookups"), ("cache.block_hit_rate.prefix", "lookups"), ("device.read_ratio", "device"),
    ("qos.batch.sla_compliance", "per_request"), ("storage.read_tokens_per_generated_token", "per_generated_token"),
    ("window.edge_fraction", "edge"), ("something.unknown", "same"),
])
def test_metric_rules_follow_the_scale_out_rules(name, rule):
    assert metric_rule(name) == rule


def test_bandwidth_is_summed_and_p95_is_the_worst_ranks():
    metrics, absent = combine_metrics([
        _view({"storage.read_gbps": 1.25, "nvme.read.p95": 0.010, "requests.completed": 7}),
        _view({"storage.read_gbps": 0.5, "nvme.read.p95": 0.030, "requests.completed": 5}, rank=1),
    ])
    assert metrics["storage.read_gbps"] == pytest.approx(1.75)
    assert metrics["nvme.read.p95"] == 0.030
    assert metrics["requests.completed"] == 12
    assert "storage.read_gbps" not in absent


def test_a_figure_only_some_ranks_have_adds_only_theirs_and_none_stays_absent():
    metrics, _ = combine_metrics([_view({"nvme.demote_write.count": 3}), _view({}, rank=1)])
    assert metrics["nvme.demote_write.count"] == 3
    assert "nvme.demote_write.p95" not in metrics


def test_hit_rate_is_pooled_from_lookups_not_the_mean_of_the_ranks_rates():
    # rank 0: 10 of 20 tokens hit (50%); rank 1: 10 of 80 (12.5%); pooled 20 of 100, mean would be 31.25%
    metrics, _ = combine_metrics([_view({"cache.hit_rate": 0.5}, lookups=_lookups(10, 10)),
                                  _view({"cache.hit_rate": 0.125}, rank=1, lookups=_lookups(10, 70))])
    assert metrics["cache.hit_rate"] == pytest.approx(0.2)
    assert metrics["cache.hit_rate.multi_turn"] == pytest.approx(0.2)


def test_weighted_figures_weigh_by_requests_and_generated_tokens():
    metrics, _ = combine_metrics([
        _view({"qos.batch.sla_compliance": 1.0, "qos.batch.requests": 1,
               "storage.read_tokens_per_generated_token": 2.0}, total_tokens_generated=100),
        _view({"qos.batch.sla_compliance": 0.0, "qos.batch.requests": 3,
               "storage.read_tokens_per_generated_token": 4.0}, rank=1, total_tokens_generated=300),
    ])
    assert metrics["qos.batch.sla_compliance"] == pytest.approx(0.25)
    assert metrics["storage.read_tokens_per_generated_token"] == pytest.approx(3.5)


def test_differing_labels_without_a_rule_are_absent_with_the_values():
    metrics, absent = combine_metrics([_view({"something.unknown": 1}), _view({"something.unknown": 2}, rank=1)])
    assert "something.unknown" not in metrics
    assert "1, 2" in absent["something.unknown"]


def test_qos_classes_add_requests_and_keep_the_worst_latency():
    block = {"p95_target_ms": 50.0, "p99_target_ms": 100.0, "offered": None, "rejected": None, "sla_compliance": 1.0}
    qos = combine_qos([{"qos": {"interactive": {**block, "requests": 3, "e2e_ms": {"p95": 40.0}, "ttft_ms": {"p95": 5.0}}}},
                       {"qos": {"interactive": {**block, "requests": 1, "e2e_ms": {"p95": 90.0}, "ttft_ms": {}}}}],
                      {"qos.interactive.sla_compliance": 0.75})
    c = qos["interactive"]
    assert (c["requests"], c["e2e_ms"]["p95"], c["ttft_ms"]["p95"], c["sla_compliance"]) == (4, 90.0, 5.0, 0.75)
    assert c["p95_target_ms"] == 50.0


def _dev(read_bytes, app_read):
    return {"read_bytes": read_bytes, "app_read_bytes": app_read, "write_bytes": read_bytes, "app_write_bytes": app_read}


def test_ranks_on_one_drive_count_its_bytes_once():
    # both ranks' counters saw the whole drive (1 GB) while they read 1 GB each: the page cache
    # served half. Per rank the ratio looks like 1.0; over the drive it is 0.5
    both = {"device.read_ratio": 1.0, "device.write_ratio": 1.0}
    ranks = [_view(dict(both), dev=_dev(int(1e9), int(1e9))), _view(dict(both), rank=1, dev=_dev(int(1e9), int(1e9)))]
    metrics, absent = device_ratios(ranks)
    assert metrics["device.read_ratio"] == pytest.approx(0.5)
    assert not absent


def test_ranks_on_different_drives_are_judged_by_the_lowest_drive():
    ranks = [_view({"device.read_ratio": 1.0, "device.write_ratio": 1.0}, host="a", dev=_dev(int(1e9), int(1e9))),
             _view({"device.read_ratio": 0.6, "device.write_ratio": 0.6}, rank=1, host="b", dev=_dev(int(6e8), int(1e9)))]
    metrics, _ = device_ratios(ranks)
    assert metrics["device.read_ratio"] == pytest.approx(0.6)


def test_a_rank_that_could_not_judge_its_drive_makes_the_ratio_absent_with_its_reason():
    ranks = [_view({"device.read_ratio": 1.0}, dev=_dev(int(1e9), int(1e9))),
             _view({}, rank=1, dev={"read_ratio_reason": "not judged: we read 1.0 MiB"})]
    metrics, absent = device_ratios(ranks)
    assert "device.read_ratio" not in metrics
    assert absent["device.read_ratio"] == "rank 1: not judged: we read 1.0 MiB"


def test_pooled_percentiles_merge_every_sample():
    a, b = [0.001] * 90, [0.1] * 10
    pooled = pooled_latency([{"nvme.read": a}, {"nvme.read": b}], {"nvme.read": True})
    expected = float(np.percentile(np.array(a + b) * 1e3, 95))
    assert pooled["nvme.read"]["p95_ms"] == pytest.approx(expected)
    assert pooled["nvme.read"]["count"] == 100
    assert pooled["nvme.read"]["exact"] is True
    assert len(pooled["nvme.read"]["cdf_ms"]) == 101


def _result(rank, gbps, p95_s, samples):
    tiers = {"nvme": {"read": {"count": len(samples), "iops": 10.0, "bytes": int(gbps * 1e9), "tokens": 100.0,
                               "edge_bytes": 0, "gbps": gbps,
                               "latency_ms": {"p50": p95_s * 500, "p95": p95_s * 1e3, "max": p95_s * 1e3},
                               "latency_exact": True}}}
    summary = {"window_s": 1.0, "total_requests": 4, "total_tokens_generated": 100, "storage_read_gbps": gbps,
               "storage_write_gbps": 0.0, "storage_throughput_tokens_per_sec": 100.0, "tiers": tiers,
               "window_bytes": int(gbps * 1e9), "window_edge_bytes": 0, "cache_lookups": {},
               "end_to_end_latency_ms": {"p95": 50.0 * (rank + 1)}, "nvme_read_p95_ms": p95_s * 1e3,
               "entries_dropped": {"count": 0}, "errors": {"count": 0, "first": []}}
    result = ScenarioResult(name="storage-only", question="q", tiers=["nvme"],
                            metrics={"storage.read_gbps": gbps, "nvme.read.gbps": gbps, "nvme.read.p95": p95_s,
                                     "requests.completed": 4, "window_s": 1.0},
                            summary=summary, settings={"seed": rank}, trace={"sha256": f"t{rank}"})
    return {"rank": rank, "host": "h", "result": result.to_dict(), "absent": {},
            "samples": {"nvme.read": samples}}


CRITERIA = [Criterion.parse("storage.read_gbps>=1.5GB/s"), Criterion.parse("nvme.read.p95<=200ms")]


def test_the_verdict_is_judged_on_the_aggregate():
    # each rank alone reads 1 GB/s (fails >= 1.5 GB/s) and one rank's p95 is 250 ms (fails <= 200 ms):
    # together they read 2 GB/s (pass) and the p95 is the worst rank's 250 ms (fail)
    result, _ = aggregate([_result(0, 1.0, 0.05, [0.05] * 4), _result(1, 1.0, 0.25, [0.25] * 4)], CRITERIA)
    by_metric = {o.criterion.metric: o for o in result.outcomes}
    assert by_metric["storage.read_gbps"].status == "pass"
    assert by_metric["storage.read_gbps"].measured == pytest.approx(2.0)
    assert by_metric["nvme.read.p95"].status == "fail"
    assert by_metric["nvme.read.p95"].measured == pytest.approx(0.25)
    assert result.status == "failed"
    headline = result.summary["headline"]
    assert headline["storage_read_gbps"] == pytest.approx(2.0)
    assert headline["headline_p95_ms"] == pytest.approx(250.0)
    assert headline["e2e_p95_ms"] == pytest.approx(100.0)
    cluster = result.summary["cluster"]
    assert cluster["ranks"] == 2
    assert [r["trace_sha256"] for r in cluster["per_rank"]] == ["t0", "t1"]
    assert [r["status"] for r in cluster["per_rank"]] == ["passed", "passed"]  # each rank's own, unjudged here
    assert cluster["pooled"]["nvme.read"]["count"] == 8
    assert result.summary["tiers"]["nvme"]["read"]["count"] == 8
    assert len(result.samples[("nvme", "read")]) == 8
    assert result.headline()["kv_ranks"] == 2


def test_errors_name_their_rank():
    bad = _result(1, 1.0, 0.05, [0.05])
    bad["result"]["errors"] = ["disk gone"]
    result, _ = aggregate([_result(0, 1.0, 0.05, [0.05]), bad], CRITERIA)
    assert result.errors == ["rank 1: disk gone"]
    assert result.status == "error"


# ------------------------------------------------------------------------------ cluster.py


def test_mpi_is_detected_only_from_a_launchers_environment():
    assert not launched_under_mpi({})
    assert launched_under_mpi({"OMPI_COMM_WORLD_SIZE": "2"})
    assert launched_under_mpi({"PMI_SIZE": "4"})


def test_rank_seeds_rank_0_keeps_the_root_and_the_others_differ():
    seeds = [rank_seed(42, r) for r in range(4)]
    assert seeds[0] == 42
    assert len(set(seeds)) == 4
    assert seeds == [rank_seed(42, r) for r in range(4)]
    assert rank_seed(43, 1) != seeds[1]


def test_rank_dir():
    assert str(rank_dir("/data/kv", 3)) == "/data/kv/rank_3"


class _Done:
    def __init__(self, done=True):
        self.done = done

    def Test(self):
        return self.done


class FakeComm:
    """One rank alone, or a rank whose peers answer ``where`` at a barrier."""

    def __init__(self, where=None, barrier_done=True):
        self.where, self.barrier_done, self.aborted = where, barrier_done, None

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1 if self.where is None else len(self.where)

    def Ibarrier(self):
        return _Done(self.barrier_done)

    def allgather(self, value):
        return [value] if self.where is None or isinstance(value, str) else self.where

    def gather(self, value, root=0):
        return [value]

    def bcast(self, value, root=0):
        return value

    def Abort(self, code):
        self.aborted = code
        raise SystemExit(code)


def test_combine_returns_the_aggregate_judged_on_rank_0():
    comm = FakeComm()
    cluster = Cluster(comm, timeout_s=5, root_seed=42)
    cluster.begin("test_tiers[storage-only]")
    raw = _result(0, 2.0, 0.05, [0.05] * 3)
    mine = ScenarioResult.from_dict(raw["result"])
    mine.samples = {("nvme", "read"): [0.05] * 3}
    out = cluster.combine(mine, CRITERIA)
    assert out.summary["cluster"]["ranks"] == 1
    assert [o.status for o in out.outcomes] == ["pass", "pass"]
    assert out.summary["cluster"]["barrier_waits_s"][0]["waits"][-1]["stage"] == "result"


def test_ranks_out_of_step_end_the_job_naming_both(capsys):
    comm = FakeComm(where=[("test_a", "warm-up"), ("test_b", "warm-up")])
    cluster = Cluster(comm, timeout_s=5, root_seed=42)
    cluster.begin("test_a")
    with pytest.raises(SystemExit):
        cluster.sync("warm-up")
    assert comm.aborted == 1
    err = capsys.readouterr().err
    assert "rank 0 at 'warm-up' of test_a" in err and "rank 1 at 'warm-up' of test_b" in err


def test_a_rank_that_never_arrives_ends_the_job_after_the_timeout(capsys):
    comm = FakeComm(barrier_done=False)
    cluster = Cluster(comm, timeout_s=0.05, root_seed=42)
    with pytest.raises(SystemExit):
        cluster.sync("window", extra_s=0.0)
    assert "did not reach 'window'" in capsys.readouterr().err


def test_mpirun_without_mpi4py_is_a_usage_error_naming_the_fix(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mpi4py", None)  # import mpi4py raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'pytest-kvcache\[mpi\]'"):
        connect(60, 42)


def test_a_plain_run_never_imports_mpi4py():
    import subprocess
    import sys

    code = ("import sys, pytest_kvcache.plugin, pytest_kvcache.cluster; "
            "sys.exit('mpi4py' in sys.modules)")
    env = {"PATH": "/usr/bin:/bin"}  # no launcher's variables
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_rank0_metrics_are_rank_0s_own_beside_the_summed_aggregate():
    # a user count sums over the ranks, while the autoscale/sla_search blocks are rank 0's
    result, _ = aggregate([_result(0, 1.0, 0.05, [0.05] * 4), _result(1, 2.0, 0.05, [0.05] * 4)], CRITERIA)
    assert result.metrics["storage.read_gbps"] == pytest.approx(3.0)
    assert result.rank0_metrics["storage.read_gbps"] == pytest.approx(1.0)
    plain = ScenarioResult(name="storage-only", question="q", tiers=["nvme"], metrics={"storage.read_gbps": 1.0})
    assert plain.rank0_metrics is plain.metrics
