"""RAG workload: documents as standalone block chains, Zipf-skewed top-k queries."""

from __future__ import annotations

from collections import Counter

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.models import CATALOG
from pytest_kvcache.workload.blocks import (
    BlockSequence,
    longest_cached_prefix,
    plan_blocks,
    tally_hits,
)
from pytest_kvcache.workload.rag import (
    LARGE_MODEL_DOC_TOKENS,
    SMALL_MODEL_DOC_TOKENS,
    RagParams,
    doc_token_range,
    generate_rag_trace,
    make_documents,
    rag_segments,
    zipf_top_k,
)


def _params(**kw):
    return RagParams(**{"seed": 5, "users": 4, "requests_per_user": 25, **kw})


def test_same_params_same_documents_and_queries():
    d1, t1 = generate_rag_trace(_params())
    d2, t2 = generate_rag_trace(_params())
    assert d1 == d2 and t1.sha256() == t2.sha256()
    assert generate_rag_trace(_params(seed=6))[1].sha256() != t1.sha256()
    assert len(d1) == 10 and all(4000 <= d.tokens <= 12000 for d in d1)
    assert len({d.tokens for d in d1}) > 5


def test_document_sizes_by_model():
    assert doc_token_range(CATALOG["llama3.1-8b"].layers) == SMALL_MODEL_DOC_TOKENS
    assert doc_token_range(CATALOG["deepseek-v3"].layers) == SMALL_MODEL_DOC_TOKENS  # 61 layers
    assert doc_token_range(CATALOG["qwen3-32b"].layers) == LARGE_MODEL_DOC_TOKENS
    assert doc_token_range(CATALOG["llama3.1-70b-instruct"].layers) == LARGE_MODEL_DOC_TOKENS
    docs = make_documents(_params(documents=50, doc_tokens=LARGE_MODEL_DOC_TOKENS))
    assert all(1024 <= d.tokens <= 4096 for d in docs)


def test_queries_retrieve_k_distinct_documents_zipf_skewed():
    docs, trace = generate_rag_trace(_params(users=20, requests_per_user=100, top_k=3))
    counts = Counter()
    for r in trace.requests():
        assert len(r.rag_chunk_ids) == 3 == len(set(r.rag_chunk_ids))
        assert 50 <= r.context_tokens <= 150 and r.turn == 1
        counts.update(r.rag_chunk_ids)
    ranked = [counts[d.doc_id] for d in docs]
    assert ranked[0] > ranked[2] > ranked[5] > ranked[9]
    _, flat = generate_rag_trace(_params(users=20, requests_per_user=100, top_k=1, zipf_s=0))
    flat_counts = Counter(r.rag_chunk_ids[0] for r in flat.requests())
    assert max(flat_counts.values()) < 1.5 * min(flat_counts.values())


def test_zipf_top_k_is_a_permutation_when_k_is_n():
    raws = [0, 1 << 63, (1 << 64) - 1, 12345, 1 << 62]
    assert sorted(zipf_top_k(raws, 5, 1.0)) == [0, 1, 2, 3, 4]
    assert zipf_top_k([0], 5, 1.0) == [0]  # u = 0 picks the most popular
    assert zipf_top_k([(1 << 64) - 1], 5, 1.0) == [4]


def test_ingested_documents_are_what_queries_load():
    params = _params(top_k=2, system_prompt_tokens=300)
    docs, trace = generate_rag_trace(params)
    by_id = {d.doc_id: d for d in docs}
    stored = set()
    for d in docs:  # ingestion before the window
        stored.update(b.key for b in plan_blocks([d.segment()], 256, f"ingest-{d.doc_id}"))
    for req in list(trace.requests())[:20]:
        seq = BlockSequence(256, req.conversation_id)
        prompt = seq.extend(rag_segments(req, by_id, 300))
        # the system prompt: one full block, then its 44-token tail, closed by the first
        # document; both are shared by every query (the first query stores them)
        assert [b.tokens for b in prompt[:2]] == [256, 44] and prompt[1].closed
        stored.update(b.key for b in prompt[:2])
        hits = longest_cached_prefix(prompt, stored.__contains__)
        tally = tally_hits(prompt, hits)
        doc_tokens = sum(by_id[d].tokens for d in req.rag_chunk_ids)
        assert tally["rag"].lookup_tokens == tally["rag"].hit_tokens == doc_tokens
        assert tally["prefix"].hit_tokens == 300
        assert tally["new"].hit_tokens == 0


@pytest.mark.parametrize("kw, match", [
    ({"top_k": 11}, "larger than the document count .* lower --kv-rag-top-k or raise --kv-rag-documents"),
    ({"top_k": 0}, "--kv-rag-top-k"),
    ({"documents": 0}, "--kv-rag-documents"),
    ({"doc_tokens": (5000, 4000)}, "doc_tokens"),
    ({"doc_tokens": (0, 10)}, "doc_tokens"),
    ({"question_tokens": [50, 150]}, "question_tokens"),
    ({"zipf_s": -1}, "zipf_s"),
    ({"system_prompt_tokens": -1}, "system_prompt_tokens"),
])
def test_bad_params_name_the_fix(kw, match):
    with pytest.raises(ConfigError, match=match):
        _params(**kw)
