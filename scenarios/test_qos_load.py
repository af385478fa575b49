"""QoS under open-loop load: does the drive keep each class inside its SLA when requests keep
arriving whatever it does?

Requests arrive at a seeded Poisson rate (``request_rate``) into a bounded admission queue
(``queue_depth``) that serves interactive before responsive before batch (batch ages up, so it
cannot starve); an arrival that finds the queue full is rejected and counted. With generation
``none`` a request's end-to-end latency is its queue wait plus its storage time: what the
drive adds. The report gives, per class, requests, rejections, e2e / queue-wait / TTFT
percentiles and the share of requests within the class's p95 target (``qos`` in the JSON
summary, a table in the terminal, ``kv_qos_*`` JUnit properties); criteria such as
``qos.interactive.p95<=50ms`` or ``qos.batch.sla_compliance>=95%`` gate on them. The scenario's
load is its ``kv_defaults`` marker: an option the user sets (``--kv-request-rate``,
``--kv-queue-depth``, ``--kv-users``, ...) wins over it.
"""

import pytest

QOS_LOAD = {"request_rate": 8, "queue_depth": 4, "max_inflight": 2, "users": 64, "generation_mode": "none"}


@pytest.mark.kv_defaults(**QOS_LOAD)
@pytest.mark.kv_criteria("requests.offered>=1")
@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_qos_open_loop(kv_tiers, kv_run):
    """When requests keep arriving whatever the drive does, does each QoS class stay inside its SLA, and how many requests are turned away?"""
    result = kv_run(kv_tiers)
    arrivals = result.summary["arrivals"]
    assert arrivals["open_loop"] and arrivals["offered"] >= 1
    assert arrivals["rejected"] is not None  # a figure, 0 or more
    served = {name: c for name, c in result.summary["qos"].items() if c["requests"]}
    assert served, "no class finished a request in the window"
    for c in served.values():
        assert c["sla_compliance"] is not None and c["e2e_ms"]["p95"] is not None
