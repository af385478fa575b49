"""Storage saturation: where does the drive saturate — what throughput does it give, and what do
its latencies become, when far more users want KV than it can serve?

The drive alone (``storage-only``), no generation (``generation_mode none``: every request is
pure KV I/O, the most a serving engine could ask of the drive), no think time, llama3.1-8b
(128 KiB of KV per token: 32 MiB chunks), at two fixed user counts: a light load (8 users) and
a high one (64). Past saturation the drive's GB/s stops growing while its p95 latencies and the
requests' queue wait grow with the load: ``test_saturation_table`` prints both loads side by
side (storage GB/s, read / write p95, request e2e p95) after the runs. Criteria: the
``throughput`` profile with its floor lowered to 0.1 GB/s for this scenario (a floor that catches
a broken path: the project's VM disk, shared with other jobs, measured 0.39 GB/s here at times;
latency bounds would only restate that the drive is saturated). The marker's criterion comes
after the command line's (docs/architecture.md, criteria order), so gate on the figures with
other metrics, e.g. ``--kv-threshold 'storage.read_gbps>=2GB/s'``.

Default sizes keep each run about 10 s on a 2-core VM (5 s windows); ``--kv-users``,
``--kv-duration`` or ``--kv-model`` set by the user win over them. The user counts are
parameters, so ``-k saturation`` selects both and ``-k users64`` the high load.
"""

import pytest

SATURATION = {"model": "llama3.1-8b", "generation_mode": "none", "think_time_scale": 0.0, "duration": 5.0,
              "warmup": 1.0, "requests_per_user": 50, "profile": "throughput"}
USERS = (8, 64)
_seen: dict[int, dict] = {}


@pytest.mark.kv_defaults(**SATURATION)
@pytest.mark.kv_criteria("storage.gbps>=0.1GB/s")
@pytest.mark.parametrize("users", [pytest.param(u, id=f"users{u}", marks=pytest.mark.kv_settings(users=u))
                                   for u in USERS])
@pytest.mark.parametrize("kv_tiers", ["storage-only"], indirect=True)
def test_saturation(kv_tiers, kv_run, users):
    """Where does the drive saturate: throughput against latency at a fixed high user count, generation none?"""
    result = kv_run(kv_tiers, check=False)
    m = result.metrics
    _seen[result.settings["users"]] = {
        "gbps": m.get("storage.gbps"), "read_p95_ms": _ms(m.get("nvme.read.p95")),
        "write_p95_ms": _ms(m.get("nvme.write.p95")), "e2e_p95_ms": result.summary["end_to_end_latency_ms"].get("p95"),
        "queue_p95_ms": result.summary["queue_wait_ms"].get("p95")}
    message = result.failure_message()
    if message:
        pytest.fail(message, pytrace=False)


def _ms(seconds):
    return None if seconds is None else seconds * 1e3


def test_saturation_table(record_property):
    """Both loads side by side: throughput against latency."""
    if len(_seen) < 2:
        pytest.skip("needs both test_saturation runs in this session")

    def cell(v, digits):
        return "n/a" if v is None else f"{v:.{digits}f}"

    rows = ["users  storage GB/s  read p95 ms  write p95 ms  e2e p95 ms  queue wait p95 ms"]
    for users, f in sorted(_seen.items()):
        rows.append(f"{users:>5}  {cell(f['gbps'], 3):>12}  {cell(f['read_p95_ms'], 1):>11}  "
                    f"{cell(f['write_p95_ms'], 1):>12}  {cell(f['e2e_p95_ms'], 1):>10}  {cell(f['queue_p95_ms'], 1):>17}")
    print("\n".join(rows))
    record_property("saturation", "; ".join(rows[1:]))
    assert all(f["gbps"] is not None for f in _seen.values()), "a load moved no storage bytes in its window"
