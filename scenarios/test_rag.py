"""RAG scenario: what does a retrieval-augmented workload cost the drive?

Before any user starts (outside the window) the documents are stored as KV blocks
(``--kv-rag-documents``, sized by ``--kv-rag-doc-tokens-min/max`` or the model's default). Each
query then retrieves ``--kv-rag-top-k`` distinct documents, Zipf-skewed (popular documents
come back often), loads their blocks as its prompt's prefix, and asks a question. Only this
scenario runs that workload (its ``kv_settings`` marker); the tier scenarios keep theirs.

Figures to read: ``cache.hit_rate.rag`` (document tokens found and read back ÷ document tokens
looked up; below 1 when documents were evicted and had to be recomputed), ``retrieval.p95``
(per query: lookup + load of its cached prompt blocks, i.e. what a RAG query waits on before
prefill), and the storage read GB/s those loads drive.

Default criteria (a ``--kv-threshold`` on the same metric and direction replaces them):
retrieval p95 within 3 s (two documents of 4,000-12,000 tokens of tiny-1b KV are about 0.4 GB
a query; the project's 2-core VM measured 1.4 s with 4 users), a read floor of 0.02 GB/s from
the storage tier (the documents really come off the drive, at a measurable rate; that VM
measured 0.3-0.5 GB/s), and a RAG hit rate of at least 50% (documents stay stored).
"""

import pytest

RAG_CRITERIA = ("retrieval.p95<=3s", "storage.read_gbps>=0.02GB/s", "cache.hit_rate.rag>=50%")


@pytest.mark.kv_settings(workload="rag")
@pytest.mark.kv_defaults(duration=8.0)
@pytest.mark.kv_criteria(*RAG_CRITERIA)
@pytest.mark.parametrize("kv_tiers", ["storage-only", "cpu+storage"], indirect=True)
def test_rag(kv_tiers, kv_run, benchmark):
    """What does a RAG workload cost: how long does a query wait for its documents, at what read rate, and do they stay stored?"""
    kv_run(kv_tiers, benchmark=benchmark)
