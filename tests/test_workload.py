"""Workload: determinism of the trace, trace files, and the chunk layout of a conversation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.workload import (
    PERSONAS,
    QOS_CLASSES,
    TRACE_FORMAT,
    ConversationLayout,
    Entry,
    WorkloadParams,
    generate_trace,
    load_jsonl,
    save_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]


def _trace(**kw):
    base = {"seed": 7, "users": 4, "requests_per_user": 12}
    return generate_trace(WorkloadParams(**{**base, **kw}))


def test_same_params_same_trace():
    a, b = _trace(), _trace()
    assert a.sha256() == b.sha256()
    assert list(a.requests()) == list(b.requests())
    assert _trace(seed=8).sha256() != a.sha256()


def test_mix_dict_order_does_not_matter():
    a = _trace(persona_mix={"chatbot": 0.6, "coding": 0.25, "document": 0.15})
    b = _trace(persona_mix={"document": 0.15, "coding": 0.25, "chatbot": 0.6})
    assert a.sha256() == b.sha256()


def test_adding_users_keeps_existing_users():
    four, six = _trace(users=4), _trace(users=6)
    assert six.per_user[:4] == four.per_user
    assert len(six) == 6 * 12


def test_think_time_scale_changes_only_think_time():
    a, b = _trace(), _trace(think_time_scale=3.0)
    strip = [(r.conversation_id, r.turn, r.context_tokens, r.generate_tokens) for r in a.requests()]
    assert strip == [(r.conversation_id, r.turn, r.context_tokens, r.generate_tokens) for r in b.requests()]
    assert [r.think_time_s for r in a.requests()] != [r.think_time_s for r in b.requests()]


def test_requests_ranges_and_turns():
    trace = _trace(users=5, requests_per_user=37)
    assert len(trace) == 5 * 37
    for u, reqs in enumerate(trace.per_user):
        assert len(reqs) == 37
        assert [r.seq for r in reqs] == list(range(37))
        prev = None
        for r in reqs:
            assert r.user_id == u and r.qos in QOS_CLASSES
            p = PERSONAS[r.persona]
            assert p.context_tokens[0] <= r.context_tokens <= p.context_tokens[1]
            assert p.generate_tokens[0] <= r.generate_tokens <= p.generate_tokens[1]
            assert p.think_time_s[0] <= r.think_time_s <= p.think_time_s[1]
            if prev is not None and prev.conversation_id == r.conversation_id:
                assert r.turn == prev.turn + 1 and r.persona == prev.persona
            else:
                assert r.turn == 1
                assert prev is None or r.conversation_id > prev.conversation_id
            prev = r


def test_canonical_order_is_round_robin():
    trace = _trace(users=3, requests_per_user=2)
    assert [(r.seq, r.user_id) for r in trace.requests()] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_persona_mix_roughly_respected():
    s = _trace(users=20, requests_per_user=100).summary()
    assert s["requests"] == 2000
    assert 0.5 <= s["personas"]["chatbot"] / 2000 <= 0.7
    only = _trace(persona_mix={"document": 1.0, "chatbot": 0.0}).summary()
    assert set(only["personas"]) == {"document"} and set(only["qos"]) == {"batch"}


def test_max_context_tokens_clamps():
    trace = _trace(persona_mix={"document": 1}, max_context_tokens=1000)
    assert {r.context_tokens for r in trace.requests()} == {1000}


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"users": 0}, "users"),
        ({"requests_per_user": 0}, "requests_per_user"),
        ({"persona_mix": {"chatbot": -1}}, ">= 0"),
        ({"persona_mix": {"chatbot": 0, "coding": 0}}, "all be zero"),
        ({"persona_mix": {"gamer": 1}}, "unknown persona"),
        ({"think_time_scale": -1}, "think_time_scale"),
        ({"max_context_tokens": -5}, "max_context_tokens"),
    ],
)
def test_bad_params(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        WorkloadParams(**{"seed": 1, "users": 2, "requests_per_user": 3, **kw})


def test_save_load_round_trip(tmp_path):
    trace = _trace(think_time_scale=1.7)
    path = tmp_path / "t.jsonl"
    save_jsonl(trace, path)
    loaded = load_jsonl(path)
    assert loaded.sha256() == trace.sha256()
    assert loaded.per_user == trace.per_user and loaded.params == trace.params
    lines = path.read_text().splitlines(keepends=True)
    assert json.loads(lines[0])["kvcache_trace"] == TRACE_FORMAT == 2
    assert hashlib.sha256("".join(lines[1:]).encode()).hexdigest() == trace.sha256()


def _write_bad(tmp_path, lineno, text):
    path = tmp_path / "bad.jsonl"
    save_jsonl(_trace(users=2, requests_per_user=3), path)
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def _request_line(**changes):
    r = _trace(users=1, requests_per_user=1).per_user[0][0].to_dict()
    r.update(changes)
    return json.dumps({k: v for k, v in r.items() if v is not ...})


@pytest.mark.parametrize(
    "lineno, text, fragment",
    [
        (3, "{not json", "line 3: not valid JSON"),
        (4, _request_line(context_tokens=-1), "line 4: context_tokens must be an integer >= 0"),
        (2, _request_line(qos="urgent"), "line 2: qos must be one of"),
        (5, _request_line(turn=...), "line 5: request is missing field"),
        (5, _request_line(colour="red"), "line 5: unknown request field"),
        (1, _request_line(), "line 1: the first line must be the header"),
        (1, '{"kvcache_trace": 99}', "format 99 is not supported"),
    ],
)
def test_malformed_files(tmp_path, lineno, text, fragment):
    path = _write_bad(tmp_path, lineno, text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_jsonl(path)
    assert str(path) in str(info.value)


def test_missing_file_and_gaps(tmp_path):
    with pytest.raises(ConfigError, match="cannot read trace file"):
        load_jsonl(tmp_path / "nope.jsonl")
    path = tmp_path / "gap.jsonl"
    save_jsonl(_trace(users=1, requests_per_user=3), path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[3]]) + "\n")  # drop seq 1
    with pytest.raises(ConfigError, match="no request with seq 1"):
        load_jsonl(path)
    path.write_text("\n".join([lines[0], lines[1], lines[1]]) + "\n")
    with pytest.raises(ConfigError, match="line 3: user_id 0 seq 0 repeats line 2"):
        load_jsonl(path)


def test_hash_stable_across_processes():
    code = (
        "from pytest_kvcache.workload import WorkloadParams, generate_trace;"
        "print(generate_trace(WorkloadParams(seed=42, users=3, requests_per_user=9,"
        " persona_mix={'document': 1, 'coding': 2, 'chatbot': 3})).sha256())"
    )
    hashes = set()
    for hashseed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        hashes.add(out.stdout.strip())
    here = generate_trace(
        WorkloadParams(seed=42, users=3, requests_per_user=9, persona_mix={"document": 1, "coding": 2, "chatbot": 3})
    ).sha256()
    assert hashes == {here}


def test_layout_chunked():
    lay = ConversationLayout("u0001c0002", 256)
    assert lay.append(300) == [Entry("u0001c0002.k00000", 256), Entry("u0001c0002.k00001", 44)]
    assert lay.append(300) == [Entry("u0001c0002.k00001", 256), Entry("u0001c0002.k00002", 88)]
    assert lay.entries() == [
        Entry("u0001c0002.k00000", 256),
        Entry("u0001c0002.k00001", 256),
        Entry("u0001c0002.k00002", 88),
    ]
    assert lay.total_tokens == 600
    assert lay.append(0) == []
    assert lay.append(168) == [Entry("u0001c0002.k00002", 256)]  # exactly fills the block
    assert lay.append(1) == [Entry("u0001c0002.k00003", 1)]


def test_layout_segments():
    lay = ConversationLayout("conv-1", 0)
    assert lay.entries() == []
    assert lay.append(300) == [Entry("conv-1.s0000", 300)]
    assert lay.append(0) == []
    assert lay.append(5) == [Entry("conv-1.s0001", 5)]
    assert lay.entries() == [Entry("conv-1.s0000", 300), Entry("conv-1.s0001", 5)]
    assert lay.total_tokens == 305


def test_layout_rejects_bad_input():
    with pytest.raises(ConfigError):
        ConversationLayout("a/b", 256)
    with pytest.raises(ConfigError):
        ConversationLayout("ok", -1)
    with pytest.raises(ValueError):
        ConversationLayout("ok", 16).append(-1)


def test_format_1_files_still_load_with_their_hash(tmp_path):
    """Format 1 had no segments: each turn's new text is private, which is what a request
    without segments means now, so the lines and the hash are unchanged."""
    trace = _trace()
    path = tmp_path / "old.jsonl"
    save_jsonl(trace, path)
    lines = path.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    lines[0] = json.dumps({"kvcache_trace": 1, "params": header["params"]}) + "\n"
    path.write_text("".join(lines))
    back = load_jsonl(path)
    assert back.sha256() == trace.sha256() and back.params.to_dict() == trace.params.to_dict()
    first = next(iter(back))
    assert [s.source for s in first.prompt_segments()] == [f"{first.conversation_id}.in{first.turn}"]
