"""The mixed (kitchen-sink) workload: RAG users and chat users in one trace."""

from __future__ import annotations

import math

import pytest

from pytest_kvcache.backends import default_registry
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.models import resolve_model
from pytest_kvcache.session import workload_params
from pytest_kvcache.settings import build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.workload import (
    MixedParams,
    PromptParams,
    RagParams,
    Trace,
    generate_mixed,
    generate_prompts,
    generate_rag_trace,
    is_rag_user,
    load_jsonl,
    save_jsonl,
)


def _params(users=8, share=0.25, system=64, pool=2, requests=6, **chat):
    common = {"seed": 5, "users": users, "requests_per_user": requests, "system_prompt_tokens": system,
              "think_time_scale": 0.0}
    return MixedParams(PromptParams(prefix_pool=pool, prefix_tokens=64 if pool else 0, **common, **chat),
                       RagParams(documents=4, doc_tokens=(100, 300), top_k=2, **common), share)


@pytest.mark.parametrize("share", [0.1, 0.25, 0.3, 0.5, 1 / 3, 0.75])
def test_the_split_is_a_fixed_stride_and_users_keep_their_kind(share):
    for n in range(1, 41):
        assert sum(is_rag_user(u, share) for u in range(n)) == math.ceil(n * share), (share, n)
    assert is_rag_user(0, share)  # the first user is a RAG user whenever the share is above 0
    few, many = _params(users=5, share=share).rag_users(), _params(users=40, share=share).rag_users()
    assert few == [u for u in many if u < 5]  # adding users never changes an existing user's kind


def test_share_025_makes_every_fourth_user_a_rag_user_and_0_and_1_are_all_one_kind():
    assert _params(users=10).rag_users() == [0, 4, 8]
    assert _params(users=10, share=0).rag_users() == []
    assert _params(users=10, share=1).rag_users() == list(range(10))


def test_each_user_gets_its_own_generators_requests():
    p = _params()
    trace = generate_mixed(p)
    docs, rag = generate_rag_trace(p.rag)
    chat = generate_prompts(p.chat)
    assert trace.documents == tuple(d.segment() for d in docs) and len(trace.documents) == 4
    for u in range(p.users):
        expected = rag.per_user[u] if u in (0, 4) else chat.per_user[u]
        assert list(trace.per_user[u]) == list(expected), u
    assert all(r.rag_chunk_ids for r in trace.per_user[4]) and not any(r.rag_chunk_ids for r in trace.per_user[1])


def test_lists_are_generated_only_as_far_as_read():
    trace = generate_mixed(_params(requests=50))
    assert [lst.generated for lst in trace.per_user] == [0] * 8
    trace.per_user[1][0]
    assert trace.per_user[1].generated == 1 and trace.per_user[0].generated == 0


def test_hash_is_stable_and_moves_with_the_share(tmp_path):
    a, b = generate_mixed(_params()), generate_mixed(_params())
    assert a.sha256() == b.sha256()
    assert generate_mixed(_params(share=0.5)).sha256() != a.sha256()
    save_jsonl(a, tmp_path / "t.jsonl")
    loaded = load_jsonl(tmp_path / "t.jsonl")
    assert loaded.sha256() == a.sha256()
    assert isinstance(loaded.params, MixedParams) and loaded.params.to_dict() == a.params.to_dict()


@pytest.mark.parametrize(("kw", "kinds"), [
    ({}, {"prefix", "multi_turn", "rag"}),
    ({"system": 0, "pool": 0}, {"multi_turn", "rag"}),
    ({"share": 0}, {"prefix", "multi_turn"}),
    ({"share": 1}, {"prefix", "rag"}),
    ({"share": 1, "system": 0}, {"rag"}),
    ({"requests": 1, "system": 0, "pool": 0}, {"rag"}),
])
def test_lookup_kinds_from_params_match_the_requests(kw, kinds):
    trace = generate_mixed(_params(**kw))
    assert trace.lookup_kinds() == kinds
    assert Trace(None, [list(x) for x in trace.per_user], trace.documents).lookup_kinds() == kinds  # by reading


@pytest.mark.parametrize(("share", "match"), [(1.5, "0 to 1"), (-0.1, "0 to 1"), (float("nan"), "0 to 1"),
                                              (True, "0 to 1")])
def test_bad_share_names_the_option(share, match):
    with pytest.raises(ConfigError, match=match) as err:
        _params(share=share)
    assert "--kv-rag-user-share" in str(err.value)


def test_parameter_sets_must_agree():
    p = _params()
    with pytest.raises(ConfigError, match="users differ"):
        MixedParams(p.chat, RagParams(seed=5, users=9, requests_per_user=6, documents=4, doc_tokens=(100, 300),
                                      system_prompt_tokens=64, think_time_scale=0.0))


def test_settings_build_mixed_params_for_the_most_users():
    s = build_settings({"workload": "mixed", "users": 2, "autoscale": "capacity", "autoscale_max_users": 12,
                        "rag_user_share": "0.5", "system_prompt_tokens": 32, "prefix_pool": 3,
                        "prefix_tokens": 16}, {}, {})
    p = workload_params(s)
    assert isinstance(p, MixedParams) and p.users == 12 and p.rag_user_share == 0.5
    assert p.chat.prefix_pool == 3 and p.rag.system_prompt_tokens == 32 and p.rag.documents == s.rag_documents
    with pytest.raises(ConfigError, match="--kv-rag-user-share 1.5 is above 1"):
        build_settings({"workload": "mixed", "rag_user_share": "1.5"}, {}, {})


def test_a_short_run_hits_all_three_lookup_kinds(tmp_path):
    # a 60 s bound, not a 1 s window: the 24 requests run out long before it (the run then ends), so
    # every user reaches its later turns however loaded the machine is
    s = build_settings({"cache_dir": str(tmp_path), "model": "tiny-1b", "duration": "60", "warmup": 0,
                        "users": 4, "requests_per_user": "6", "think_time_scale": "0", "generation_mode": "none",
                        "cpu_mem_gb": "0.2", "chunk_tokens": 64, "io_block_mb": 1, "profile": "none"}, {}, {})
    trace = generate_mixed(_params(users=4))
    prov = provision(TIER_CONFIGS["cpu-only"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), trace, [])
    finally:
        prov.close()
    assert result.status == "passed", result.failure_message()
    assert result.trace["exhausted"]
    for kind in ("prefix", "multi_turn", "rag"):
        assert result.metrics[f"cache.hit_rate.{kind}"] > 0, kind
