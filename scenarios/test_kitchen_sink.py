"""Kitchen sink: how many users can this box serve when RAG queries, shared prefixes and
multi-turn conversations arrive together, and does each kind of reuse still hit?

``--kv-workload mixed``: every fourth user (``--kv-rag-user-share`` 0.25, users 0, 4, 8, ...)
sends single-turn RAG queries that load their top-k documents (stored before the window);
the others hold the personas' multi-turn conversations behind a shared system prompt and a
pool of shared prefixes. The pool of users grows as in ``autoscale-capacity`` (by half while
storage GB/s rises by more than 2%, stopping after two steps that do not), so the answer is
the user count at the peak GB/s of this mix (``autoscale.users``, ``autoscale.peak_gbps``).

Figures to read: the three hit rates side by side (``cache.hit_rate.prefix`` for the system
prompt and the pool, ``.multi_turn`` for a conversation's earlier turns, ``.rag`` for the
documents), ``retrieval.p95``, and the steps table. Criteria: each of the three hit rates at
least 50% (each kind of reuse really happened and was found in the cache), at least one user at
the peak and a measurable peak (0.001 GB/s). Default sizes (eight documents of 1,000-3,000
tokens, a 0.1 GB cpu tier so the documents and conversations spill to the drive, a 16 s window,
generation none, no think time, at most 12 users) keep the run within about 25 s on a 2-core
VM; the project's VM measured hit rates of 99% (prefix), 97% (multi-turn) and 100% (RAG) and a
peak of 1.3 GB/s storage reads at 12 users (still rising: the cap, not the drive, ended it).
"""

import pytest

KITCHEN_SINK = {"users": 2, "warmup": 1.0, "duration": 16.0, "autoscale_interval": 2.0, "autoscale_max_users": 12,
                "generation_mode": "none", "think_time_scale": 0.0, "system_prompt_tokens": 512,
                "prefix_pool": 4, "prefix_tokens": 256, "rag_documents": 8, "rag_doc_tokens_min": 1000,
                "rag_doc_tokens_max": 3000, "requests_per_user": 500, "cpu_mem_gb": 0.1}
KITCHEN_SINK_CRITERIA = ("cache.hit_rate.prefix>=50%", "cache.hit_rate.multi_turn>=50%", "cache.hit_rate.rag>=50%",
                         "autoscale.users>=1", "autoscale.peak_gbps>=0.001GB/s")


@pytest.mark.kv_settings(workload="mixed", autoscale="capacity")
@pytest.mark.kv_defaults(**KITCHEN_SINK)
@pytest.mark.kv_criteria(*KITCHEN_SINK_CRITERIA)
@pytest.mark.parametrize("kv_tiers", [pytest.param("cpu+storage", id="kitchen-sink-cpu+storage")], indirect=True)
def test_kitchen_sink(kv_tiers, kv_run):
    """Everything at once: RAG users, shared prefixes and multi-turn conversations while the user pool grows: does every kind of hit still come off the drive, and where does throughput peak?"""
    result = kv_run(kv_tiers)
    steps = result.summary["autoscale"]["steps"]
    assert steps, "no autoscale step was measured"
    assert len({st["users"] for st in steps}) >= min(3, len(steps)), "the pool did not change"
    for kind in ("prefix", "multi_turn", "rag"):  # all three kinds of reuse in the one run
        assert result.metrics[f"cache.hit_rate.{kind}"] > 0, kind
