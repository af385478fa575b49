"""Trace files (workload/replay.py): Mooncake, BurstGPT and our JSONL read into requests, their
errors, timestamped arrivals (load.trace_arrivals and the runner), saving for exact replay."""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.load import trace_arrivals
from pytest_kvcache.settings import build_settings
from pytest_kvcache.workload import Request, Trace
from pytest_kvcache.workload.blocks import plan_blocks
from pytest_kvcache.workload.replay import (
    TraceFiles,
    TraceOptions,
    check_timed,
    check_trace_settings,
    detect_format,
    file_sha256,
    load_trace,
)
from pytest_kvcache.workload.tracefile import save_jsonl

DATA = Path(__file__).parent / "data"
MOONCAKE = DATA / "mooncake_sample.jsonl"
BURSTGPT = DATA / "burstgpt_sample.csv"


def mooncake(tmp_path, *lines, name="t.jsonl"):
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def line(ts=0, n_in=600, n_out=10, ids=(1, 2)):
    return {"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": list(ids)}


def test_sample_files_are_detected_by_their_first_line(tmp_path):
    assert detect_format(MOONCAKE) == "mooncake"
    assert detect_format(BURSTGPT) == "burstgpt"
    saved = tmp_path / "saved.jsonl"
    save_jsonl(load_trace(TraceOptions(str(MOONCAKE))), saved)
    assert detect_format(saved) == "jsonl"
    other = tmp_path / "x.txt"
    other.write_text("hello\n")
    with pytest.raises(ConfigError, match="cannot tell its format.*--kv-trace-format"):
        detect_format(other)


def test_mooncake_hash_ids_become_prefix_blocks_shared_between_requests(tmp_path):
    path = mooncake(tmp_path, line(0, 1100, 5, (7, 8, 9)), line(2500, 1300, 6, (7, 8, 30)))
    trace = load_trace(TraceOptions(str(path)))
    a, b = (u[0] for u in trace.per_user)
    assert (a.arrival_s, b.arrival_s) == (0.0, 2.5)  # ms -> s from the first request
    assert [(s.kind, s.source, s.tokens) for s in a.segments] == [("prefix", "h7", 512), ("prefix", "h8", 512),
                                                                  ("prefix", "h9", 76)]
    assert a.context_tokens == 1100 and a.generate_tokens == 5 and a.persona == "mooncake" and a.qos == "responsive"
    ka = [blk.key for blk in plan_blocks(a.prompt_segments(), 512, "a")]
    kb = [blk.key for blk in plan_blocks(b.prompt_segments(), 512, "b")]
    assert ka[:2] == kb[:2] and ka[2] != kb[2]  # shared hash ids, shared KV blocks; then they diverge
    assert trace.lookup_kinds() == {"prefix"}
    assert trace.source["format"] == "mooncake" and trace.source["span_s"] == 2.5
    assert trace.source["file_sha256"] == file_sha256(path) and trace.source["requests"] == 2


def test_mooncake_tokens_beyond_the_hash_ids_are_private_new_text(tmp_path):
    trace = load_trace(TraceOptions(str(mooncake(tmp_path, line(0, 700, 1, (4,)))), block_tokens=512))
    segs = trace.per_user[0][0].segments
    assert [(s.kind, s.tokens) for s in segs] == [("prefix", 512), ("new", 188)]


def test_mooncake_lines_are_sorted_by_time_and_can_be_capped(tmp_path):
    path = mooncake(tmp_path, line(300, ids=(1, 2)), line(100, ids=(3, 4)), line(200, ids=(5, 6)))
    trace = load_trace(TraceOptions(str(path), max_requests=2))
    assert [u[0].segments[0].source for u in trace.per_user] == ["h3", "h5"]
    assert [u[0].arrival_s for u in trace.per_user] == [0.0, 0.1]


@pytest.mark.parametrize("bad, needle", [
    ('{"timestamp": 1, "input_length": 5', "line 2: not valid JSON"),
    ("[1, 2]", "line 2: a line must be a JSON object"),
    (json.dumps({"timestamp": 1, "input_length": 5, "output_length": 1}), r"line 2: missing field\(s\) \['hash_ids'\]"),
    (json.dumps(line(n_in="many")), "line 2: field 'input_length' must be an integer >= 1"),
    (json.dumps(line(ts=-5)), "line 2: field 'timestamp' must be a number >= 0"),
    (json.dumps(line(ids=[1, "x"])), "line 2: field 'hash_ids' must be a list of integers"),
    (json.dumps(line(n_in=600, ids=(1, 2, 3))), "3 hash_ids of 512 tokens.*--kv-trace-block-tokens"),
])
def test_malformed_mooncake_lines_name_the_line_the_field_and_the_fix(tmp_path, bad, needle):
    path = mooncake(tmp_path, line(), bad)
    with pytest.raises(ConfigError, match=needle):
        load_trace(TraceOptions(str(path), fmt="mooncake"))


def test_burstgpt_rows_become_timestamped_private_requests_and_filters_apply():
    all_rows = load_trace(TraceOptions(str(BURSTGPT)))
    assert len(all_rows) == 50 and all_rows.source["rows_filtered_out"] == 0
    first = all_rows.per_user[0][0]
    assert first.arrival_s == 0.0 and first.segments == ()  # no prompt content: private new text
    assert first.prompt_segments()[0].kind == "new"
    gpt4 = load_trace(TraceOptions(str(BURSTGPT), model="gpt-4"))
    text = BURSTGPT.read_text().splitlines()[1:]
    assert len(gpt4) == sum(",GPT-4," in row for row in text) and gpt4.source["rows_filtered_out"] == 50 - len(gpt4)
    api = load_trace(TraceOptions(str(BURSTGPT), log_type="API log"))
    assert len(api) == sum(row.endswith(",API log") for row in text)
    assert {u[0].context_tokens for u in api.per_user} == {int(r.split(",")[2]) for r in text if r.endswith("API log")}


@pytest.mark.parametrize("rows, needle", [
    ("Timestamp,Model,Response tokens\n1,ChatGPT,5\n", r"line 1: the header lacks column\(s\) \['Request tokens'\]"),
    ("Timestamp,Model,Request tokens,Response tokens\n1,ChatGPT,abc,5\n", "line 2: field 'Request tokens' must be an integer"),
    ("Timestamp,Model,Request tokens,Response tokens\n1,ChatGPT,5\n", "line 2: 3 fields where the header has 4"),
    ("Timestamp,Model,Request tokens,Response tokens\n1,ChatGPT,5,6,7\n", "line 2: 5 fields where the header has 4"),
])
def test_malformed_burstgpt_rows_name_the_line_and_the_field(tmp_path, rows, needle):
    path = tmp_path / "b.csv"
    path.write_text(rows)
    with pytest.raises(ConfigError, match=needle):
        load_trace(TraceOptions(str(path), fmt="burstgpt"))


def test_a_filter_that_matches_nothing_lists_what_the_file_has():
    with pytest.raises(ConfigError, match=r"no row matches.*models \['ChatGPT', 'GPT-4'\]"):
        load_trace(TraceOptions(str(BURSTGPT), model="claude"))


def test_options_that_do_not_fit_the_format_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="filter BurstGPT rows"):
        load_trace(TraceOptions(str(MOONCAKE), model="GPT-4"))
    saved = tmp_path / "s.jsonl"
    save_jsonl(load_trace(TraceOptions(str(MOONCAKE))), saved)
    with pytest.raises(ConfigError, match="JSONL trace replays whole"):
        load_trace(TraceOptions(str(saved), max_requests=3))
    with pytest.raises(ConfigError, match="is not a file"):
        load_trace(TraceOptions(str(tmp_path / "missing.jsonl")))
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_trace(TraceOptions(str(binary), fmt="mooncake"))


def test_gzip_files_are_read_and_hashed_as_stored(tmp_path):
    gz = tmp_path / "m.jsonl.gz"
    gz.write_bytes(gzip.compress(MOONCAKE.read_bytes()))
    a, b = load_trace(TraceOptions(str(gz))), load_trace(TraceOptions(str(MOONCAKE)))
    assert a.sha256() == b.sha256() and a.source["file_sha256"] == file_sha256(gz) != b.source["file_sha256"]


def test_saved_trace_replays_with_the_same_hash_and_the_same_bytes(tmp_path):
    original = load_trace(TraceOptions(str(MOONCAKE)))
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    save_jsonl(original, first)
    replayed = load_trace(TraceOptions(str(first)))
    assert replayed.sha256() == original.sha256() and replayed.source["format"] == "jsonl"
    assert [r.arrival_s for r in replayed] == [r.arrival_s for r in original]
    save_jsonl(replayed, second)
    assert first.read_bytes() == second.read_bytes()


def test_requests_without_arrival_keep_their_former_lines_and_hashes():
    req = Request(0, 0, "c0", 1, "chatbot", "interactive", 10, 5, 0.5)
    assert "arrival_s" not in req.to_dict()
    timed = Request(0, 0, "c0", 1, "chatbot", "interactive", 10, 5, 0.0, arrival_s=1.25)
    assert timed.to_dict()["arrival_s"] == 1.25 and Request.from_dict(timed.to_dict()) == timed
    with pytest.raises(ConfigError, match="arrival_s must be null or a finite number"):
        Request.from_dict({**timed.to_dict(), "arrival_s": -1})


def test_a_timestamped_trace_needs_every_arrival_and_one_request_per_user():
    def req(u, seq, arrival):
        return Request(u, seq, f"c{u}", seq + 1, "p", "batch", 10, 1, 0.0, arrival_s=arrival)

    assert check_timed(Trace(None, [[req(0, 0, 0.0)], [req(1, 0, 1.0)]]), "t") is True
    assert check_timed(Trace(None, [[req(0, 0, None), req(0, 1, None)]]), "t") is False
    with pytest.raises(ConfigError, match="1 of 2 requests have arrival_s"):
        check_timed(Trace(None, [[req(0, 0, 0.0)], [req(1, 0, None)]]), "t")
    with pytest.raises(ConfigError, match="exactly one request"):
        check_timed(Trace(None, [[req(0, 0, 0.0), req(0, 1, 1.0)]]), "t")


def test_poisson_rates_and_autoscaling_do_not_mix_with_trace_timestamps():
    trace = load_trace(TraceOptions(str(MOONCAKE)))
    with pytest.raises(ConfigError, match="drop --kv-request-rate"):
        check_trace_settings(trace, build_settings({"request_rate": 5}, {}, env={}))
    with pytest.raises(ConfigError, match="drop --kv-autoscale"):
        check_trace_settings(trace, build_settings({"autoscale": "qos"}, {}, env={}))
    check_trace_settings(trace, build_settings({}, {}, env={}))


def test_trace_arrivals_scale_sort_and_stop_at_the_horizon():
    assert trace_arrivals([0.0, 3.0, 1.0, 1.0], 2.0, horizon_s=1.4) == [(0.0, 0), (0.5, 2), (0.5, 3)]
    assert trace_arrivals([0.0, 3.0], 1.0, horizon_s=10) == [(0.0, 0), (3.0, 1)]
    with pytest.raises(ConfigError, match="--kv-trace-speedup must be a positive number"):
        trace_arrivals([0.0], 0, horizon_s=1)


def test_trace_files_load_once_and_save_each_distinct_trace_once(tmp_path):
    files = TraceFiles()
    settings = build_settings({"trace": str(MOONCAKE), "trace_save": str(tmp_path / "out.jsonl")}, {}, env={})
    trace = files.load(settings)
    assert files.load(settings) is trace
    assert files.save(trace, settings) == tmp_path / "out.jsonl" == files.save(trace, settings)
    other = load_trace(TraceOptions(str(BURSTGPT)))
    second = files.save(other, settings)
    assert second == tmp_path / f"out.{other.sha256()[:12]}.jsonl" and second.is_file()
    assert files.save(trace, build_settings({}, {}, env={})) is None


def test_a_copy_of_a_file_has_the_same_trace_and_file_hash(tmp_path):
    copy = tmp_path / "copy.jsonl"
    shutil.copy(MOONCAKE, copy)
    a, b = load_trace(TraceOptions(str(MOONCAKE))), load_trace(TraceOptions(str(copy)))
    assert a.sha256() == b.sha256() and a.source["file_sha256"] == b.source["file_sha256"]
    assert a.source["path"] != b.source["path"]


def _run_timed(trace, latency, **config):
    from pytest_kvcache.backends.base import BackendContext, TierSpec
    from pytest_kvcache.backends.mock import MockBackend
    from pytest_kvcache.cache import MultiTierCache
    from pytest_kvcache.payload import NoiseSource, StagingBuffers
    from pytest_kvcache.recorder import Recorder
    from pytest_kvcache.runner import RunConfig, Runner

    ctx = BackendContext(noise=NoiseSource(1, size=1 << 20), staging=StagingBuffers(1 << 16))
    rec = Recorder()
    cache = MultiTierCache([MockBackend(TierSpec("gpu", "mock", 1 << 40, {"latency_s": latency}), ctx)], rec, 16)
    runner = Runner(cache, trace, rec, RunConfig(**{"duration_s": 30.0, "warmup_s": 0.0, "generation_mode": "none",
                                                    "chunk_tokens": 512, **config}))
    info = runner.run()
    assert cache.check_invariants() == []
    return info, rec, runner


def test_the_runner_sends_each_request_at_its_timestamp_and_ends_when_the_trace_runs_out(tmp_path):
    path = mooncake(tmp_path, line(0, ids=(1, 2)), line(400, ids=(1, 2)), line(800, ids=(1, 3)))
    trace = load_trace(TraceOptions(str(path)))
    info, rec, runner = _run_timed(trace, 0.0, trace_speedup=2.0)
    assert runner.timed and runner.open_loop
    assert info.arrivals == 3 and info.requests_finished == 3 and info.trace_exhausted and info.errors == []
    elapsed = (info.finished_ns - info.started_ns) / 1e9
    assert 0.4 <= elapsed < 10  # the last arrival at 0.8 s / 2; the 30 s window did not wait
    assert rec.window_s < 10
    assert sum(o for o, _ in rec.arrivals.values()) == 3
    hits = rec.lookups["prefix"]
    assert hits[0] >= 2  # the later requests found the shared blocks h1 (and h2): real prefix hits


def test_arrivals_that_find_the_queue_full_are_rejected_counted_and_the_run_still_ends(tmp_path):
    path = mooncake(tmp_path, *[line(0, n_in=2048, ids=(10 * i, 10 * i + 1, 10 * i + 2, 10 * i + 3))
                                for i in range(12)])
    trace = load_trace(TraceOptions(str(path)))
    info, rec, runner = _run_timed(trace, 0.02, max_inflight=1, queue_depth=2)
    offered = sum(o for o, _ in rec.arrivals.values())
    rejected = sum(r for _, r in rec.arrivals.values())
    assert offered == 12 and rejected >= 5 and info.requests_finished == 12 - rejected
    assert info.trace_exhausted and info.errors == []


def test_the_outputs_may_not_overwrite_the_trace_being_replayed(tmp_path):
    with pytest.raises(ConfigError, match="--kv-trace-save .* is the --kv-trace file itself"):
        build_settings({"trace": str(MOONCAKE), "trace_save": str(MOONCAKE)}, {}, env={})
    with pytest.raises(ConfigError, match="--kv-io-trace .* is the --kv-trace file itself"):
        build_settings({"trace": str(MOONCAKE), "io_trace": str(MOONCAKE)}, {}, env={})


def test_a_trace_and_a_sharegpt_file_together_are_a_usage_error():
    sample = Path(__file__).parent / "data" / "sharegpt_sample.json"
    with pytest.raises(ConfigError, match="give one of them"):
        build_settings({"trace": str(MOONCAKE), "sharegpt": str(sample)}, {}, env={})


def test_a_save_that_cannot_be_written_is_a_config_error_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = build_settings({"trace_save": str(tmp_path / "out.jsonl")}, {}, env={})
    settings = settings.replace(trace_save=str(blocker / "out.jsonl"))  # the check at start-up would refuse it
    with pytest.raises(ConfigError, match="--kv-trace-save .*cannot write it"):
        TraceFiles().save(load_trace(TraceOptions(str(MOONCAKE))), settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
