"""Prompt generator after seed 000: named streams, prefix pool, and its validation tests."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.workload import PERSONAS
from pytest_kvcache.workload.blocks import BlockSequence, longest_cached_prefix, tally_hits
from pytest_kvcache.workload.prompts import (
    PromptParams,
    PromptRequest,
    generate_prompts,
    output_segment,
    positive_normal_int,
    prompt_segments,
)

C = 256


def _params(**kw):
    base = {"seed": 42, "users": 6, "requests_per_user": 20, "input_mean": 512, "input_stddev": 100,
            "output_mean": 64, "output_stddev": 16, "system_prompt_tokens": 512,
            "prefix_pool": 5, "prefix_tokens": 256}
    return PromptParams(**{**base, **kw})


def _strip(trace, *fields):
    return [tuple(getattr(r, f) for f in fields) for r in trace.requests()]


def _replay(params, chunk=C):
    """Serve the trace in order against an unbounded cache; return per-kind tallies per request."""
    trace = generate_prompts(params)
    stored: set[str] = set()
    seqs: dict[str, BlockSequence] = {}
    out = []
    for req in trace.requests():
        seq = seqs.setdefault(req.conversation_id, BlockSequence(chunk, req.conversation_id))
        seq.begin_turn()
        seq.extend(prompt_segments(req, params))
        prompt = seq.blocks()
        hits = longest_cached_prefix(prompt, stored.__contains__)
        out.append((req, tally_hits(prompt, hits)))
        stored.update(b.key for b in prompt if b.closed)
        stored.update(b.key for b in seq.extend([output_segment(req)]) if b.closed)
    return out


def test_same_seed_same_prompts():
    a, b = generate_prompts(_params()), generate_prompts(_params())
    assert a.sha256() == b.sha256() and list(a.requests()) == list(b.requests())
    assert generate_prompts(_params(seed=43)).sha256() != a.sha256()
    assert all(isinstance(r, PromptRequest) for r in a.requests())


def test_changing_one_stream_never_shifts_the_others():
    base = generate_prompts(_params())
    plan = ("conversation_id", "turn", "persona", "qos", "think_time_s")
    # input stddev: only input lengths move
    other = generate_prompts(_params(input_stddev=300))
    assert _strip(other, *plan, "generate_tokens", "prefix_id") == _strip(base, *plan, "generate_tokens", "prefix_id")
    assert _strip(other, "context_tokens") != _strip(base, "context_tokens")
    # output mean: only output lengths move
    other = generate_prompts(_params(output_mean=500))
    assert _strip(other, *plan, "context_tokens", "prefix_id") == _strip(base, *plan, "context_tokens", "prefix_id")
    assert _strip(other, "generate_tokens") != _strip(base, "generate_tokens")
    # pool size: only the prefix choice moves
    other = generate_prompts(_params(prefix_pool=50))
    assert _strip(other, *plan, "context_tokens", "generate_tokens") == _strip(base, *plan, "context_tokens", "generate_tokens")
    assert _strip(other, "prefix_id") != _strip(base, "prefix_id")
    # corpus on: positions appear, nothing else moves
    other = generate_prompts(_params(corpus_tokens=10_000))
    assert _strip(other, *plan, "context_tokens", "generate_tokens", "prefix_id") == \
        _strip(base, *plan, "context_tokens", "generate_tokens", "prefix_id")
    assert all(0 <= r.corpus_start < 10_000 for r in other.requests())


def test_adding_users_keeps_existing_users():
    four, six = generate_prompts(_params(users=4)), generate_prompts(_params(users=6))
    assert six.per_user[:4] == four.per_user


def test_prefix_is_chosen_per_conversation():
    trace = generate_prompts(_params(prefix_pool=100))
    by_conv: dict[str, set] = {}
    for r in trace.requests():
        by_conv.setdefault(r.conversation_id, set()).add(r.prefix_id)
    assert all(len(ids) == 1 for ids in by_conv.values())
    assert len({next(iter(ids)) for ids in by_conv.values()}) > 5


def test_validation_pool_of_one_every_later_request_hits_its_prefix():
    # seed 000 "Validation Testing": pool of 1, every request after the first reuses the prefix
    params = _params(prefix_pool=1, system_prompt_tokens=300, prefix_tokens=724)  # 1024 = 4 blocks
    served = _replay(params)
    assert {r.prefix_id for r, _ in served} == {"pfx0"}
    first, later = served[0], served[1:]
    assert first[1]["prefix"].hit_tokens == 0
    for _req, tally in later:
        assert tally["prefix"].hit_tokens >= 1024, tally
    # the first two prompts share more than 100 tokens (seed 000's assertion)
    trace = generate_prompts(params)
    r0, r1 = list(trace.requests())[:2]
    k0 = BlockSequence(C, "a").extend(prompt_segments(r0, params))
    k1 = BlockSequence(C, "b").extend(prompt_segments(r1, params))
    shared = sum(x.tokens for x, y in zip(k0, k1) if x.key == y.key and x.closed)
    assert shared > 100


def test_larger_pool_more_distinct_prefixes_and_lower_prefix_hit_rate():
    distinct, rates = [], []
    for pool in (1, 10, 100):
        params = _params(users=20, requests_per_user=5, prefix_pool=pool, prefix_tokens=512,
                         system_prompt_tokens=0, persona_mix={"document": 1.0})
        served = _replay(params)
        distinct.append(len({r.prefix_id for r, _ in served}))
        hit = sum(t["prefix"].hit_tokens for _, t in served)
        looked = sum(t["prefix"].lookup_tokens for _, t in served)
        rates.append(hit / looked)
    assert distinct[0] == 1 < distinct[1] <= 10 < distinct[2]
    assert rates[0] > rates[1] > rates[2]


def test_shared_corpus_position_shares_content():
    # seed 000: the same corpus start position gives the same prompt text, so blocks are shared
    params = _params(prefix_pool=1, corpus_tokens=1, system_prompt_tokens=256, prefix_tokens=256,
                     input_mean=600, input_stddev=0, persona_mix={"document": 1.0})
    trace = generate_prompts(params)
    assert {r.corpus_start for r in trace.requests()} == {0}
    firsts = [r for r in trace.requests() if r.turn == 1][:2]
    a = BlockSequence(C, "a").extend(prompt_segments(firsts[0], params))
    b = BlockSequence(C, "b").extend(prompt_segments(firsts[1], params))
    # 256 + 256 + 600 = 1112 tokens: 4 closed blocks shared, the private tails differ
    assert [x.key for x in a[:4]] == [y.key for y in b[:4]]
    assert a[4].key != b[4].key


def test_private_text_without_corpus():
    params = _params(prefix_pool=0, prefix_tokens=0, system_prompt_tokens=0)
    trace = generate_prompts(params)
    r = next(iter(trace.requests()))
    assert r.corpus_start is None and r.prefix_id is None
    assert prompt_segments(r, params)[-1].source == f"{r.conversation_id}.in1"
    assert output_segment(r).source == f"{r.conversation_id}.out1"


def test_positive_normal_int():
    rng = __import__("numpy").random.PCG64(7)
    raws = rng.random_raw(40_000).tolist()
    draws = [positive_normal_int(raws[2 * i], raws[2 * i + 1], 1024, 200) for i in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(1024, rel=0.01)
    assert statistics.pstdev(draws) == pytest.approx(200, rel=0.03)
    assert {positive_normal_int(a, b, 512, 0) for a, b in zip(raws[:100], raws[100:200])} == {512}
    assert min(positive_normal_int(a, b, 1, 100) for a, b in zip(raws[:2000], raws[2000:4000])) == 1


def test_lengths_follow_normal_or_persona_ranges():
    trace = generate_prompts(_params(users=10, requests_per_user=50, input_mean=2000, input_stddev=0))
    assert {r.context_tokens for r in trace.requests()} == {2000}
    trace = generate_prompts(_params(input_mean=None, input_stddev=0, output_mean=None, output_stddev=0))
    for r in trace.requests():
        p = PERSONAS[r.persona]
        assert p.context_tokens[0] <= r.context_tokens <= p.context_tokens[1]
        assert p.generate_tokens[0] <= r.generate_tokens <= p.generate_tokens[1]


def test_qos_mix():
    trace = generate_prompts(_params(users=50, requests_per_user=100,
                                     qos_mix={"interactive": 0.15, "responsive": 0.35, "batch": 0.5}))
    counts = Counter(r.qos for r in trace.requests())
    n = sum(counts.values())
    assert counts["interactive"] / n == pytest.approx(0.15, abs=0.03)
    assert counts["batch"] / n == pytest.approx(0.5, abs=0.03)
    # without a mix, the persona's class
    assert all(r.qos == {"chatbot": "interactive", "coding": "responsive", "document": "batch"}[r.persona]
               for r in generate_prompts(_params()).requests())


@pytest.mark.parametrize("kw, match", [
    ({"prefix_pool": 0, "prefix_tokens": 128}, "--kv-prefix-pool"),
    ({"prefix_pool": 3, "prefix_tokens": 0}, "--kv-prefix-tokens"),
    ({"prefix_pool": -1}, "prefix_pool must be an integer >= 0"),
    ({"input_mean": -5}, "input_mean"),
    ({"input_mean": 0}, "input_mean"),
    ({"output_stddev": -1}, "output_stddev"),
    ({"input_stddev": float("nan")}, "input_stddev"),
    ({"input_mean": None, "input_stddev": 10}, "input_mean is unset"),
    ({"system_prompt_tokens": -1}, "system_prompt_tokens"),
    ({"users": 0}, "users"),
    ({"qos_mix": {"gold": 1.0}}, "known: \\['batch', 'interactive', 'responsive'\\]"),
    ({"persona_mix": {"chatbot": 0}}, "must not all be zero"),
    ({"think_time_scale": -1}, "think_time_scale"),
])
def test_bad_params_name_the_fix(kw, match):
    with pytest.raises(ConfigError, match=match):
        _params(**kw)


@pytest.mark.parametrize("kw", [
    {}, {"system_prompt_tokens": 64}, {"prefix_pool": 3, "prefix_tokens": 32}, {"user_context_tokens": 16},
    {"requests_per_user": 1}, {"persona_mix": {"document": 1.0}}, {"persona_mix": {"chatbot": 0.0, "coding": 1.0}},
])
def test_lookup_kinds_from_the_parameters_match_the_generated_prompts(kw):
    """The trace answers lookup_kinds from its parameters (a large trace costs seconds to generate):
    the answer must be what scanning every request finds."""
    from pytest_kvcache.workload.trace import Trace

    params = PromptParams(**{"seed": 3, "users": 4, "requests_per_user": 30, **kw})
    trace = generate_prompts(params)
    scanned = Trace(None, [list(r) for r in trace.per_user]).lookup_kinds()
    assert trace.lookup_kinds() == scanned
