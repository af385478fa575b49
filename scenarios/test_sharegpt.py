"""ShareGPT scenario: what does real conversational traffic cost each tier configuration?

Replays the conversations of ``--kv-sharegpt FILE`` (skipped without it): each user turn is a
request whose prompt is the conversation so far, each assistant reply its output; the
conversations are dealt, in a seeded order, to ``--kv-users`` closed-loop users. Token counts
and ids come from ``--kv-tokenizer`` (an offline tokenizer, or the chars/4 estimate that the
report names). Blocks are keyed by their token ids, so a system prompt that several
conversations share is stored once and a hit for the others, and each later turn finds its
conversation's earlier turns while they are cached.

Figures to read: ``cache.hit_rate.prefix`` (shared system prompts found and read back),
``cache.hit_rate.multi_turn`` (earlier turns found and read back), and the tier table. The
report's ``trace.source`` names the file, its SHA-256, the tokenizer and how many
conversations and requests were used; the terminal prints them with the hit rates. A file
that runs out before the window ends ends the run there (``trace.exhausted``).
"""

import pytest

from pytest_kvcache.tiers import LOCAL_CONFIGS


@pytest.fixture(autouse=True)
def _needs_a_file(kv_session):
    """Runs before ``kv_tiers``, so nothing is provisioned without a file."""
    if not kv_session.settings.sharegpt:
        pytest.skip("no ShareGPT file: give --kv-sharegpt PATH (a JSON list of {id, conversations}) to replay it")


def hit_rates_text(result) -> str:
    """The source line and the hit rates of a ShareGPT run, for the terminal (-rP) and JUnit."""
    source = result.trace.get("source", {})
    rates = result.summary.get("hit_rates", {})
    parts = []
    for kind, label in (("prefix", "shared system prompts"), ("multi_turn", "earlier turns")):
        rate = rates.get(kind, {}).get("tokens")
        parts.append(f"{label} {'n/a' if rate is None else f'{rate:.1%}'}")
    return (f"{source.get('text', 'no source')}\n  hit rates (tokens found and read back): " + ", ".join(parts)
            + f"; requests finished over the run (warm-up included): {result.trace.get('requests_finished')}")


@pytest.mark.kv_settings(workload="sharegpt")
# 64-token chunks unless --kv-chunk-tokens is given: a system prompt or a first turn shorter than
# one chunk fills no whole block, so with 256 most short conversations could never hit
@pytest.mark.kv_defaults(duration=8.0, chunk_tokens=64)
@pytest.mark.parametrize("kv_tiers", list(LOCAL_CONFIGS), indirect=True)
def test_sharegpt(kv_tiers, kv_run, benchmark, record_property):
    """What do the conversations of a ShareGPT file cost this tier configuration, and how much of their prompts do shared system prompts and earlier turns let the cache serve?"""
    result = kv_run(kv_tiers, benchmark=benchmark, check=False)
    text = hit_rates_text(result)
    print(text)
    record_property("kv_sharegpt", text.replace("\n  ", "; "))
    message = result.failure_message()
    if message:
        pytest.fail(message, pytrace=False)
