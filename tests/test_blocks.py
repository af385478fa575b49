"""Block model: content-addressed, chained KV block keys and the longest cached prefix."""

from __future__ import annotations

import re

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.workload.blocks import (
    BlockSequence,
    Segment,
    chain_key,
    longest_cached_prefix,
    plan_blocks,
    synthetic_identity,
    tally_hits,
    token_identity,
)

C = 256


def _keys(blocks):
    return [b.key for b in blocks]


def _prompt(prefix: str, user: str, new_tokens: int = 300, system: int = 600, prefix_tokens: int = 700):
    return [Segment("system", "sys", system), Segment("prefix", prefix, prefix_tokens),
            Segment("new", user, new_tokens)]


def test_shared_prefix_shares_keys_then_diverges():
    a = plan_blocks(_prompt("pfx0", "u1"), C, "a")
    b = plan_blocks(_prompt("pfx0", "u2"), C, "b")
    # system (600) + prefix (700) = 1300 tokens = 5 full blocks shared; block 5 holds u1/u2 text
    assert _keys(a[:5]) == _keys(b[:5])
    assert all(x.key != y.key for x, y in zip(a[5:], b[5:]))
    other = plan_blocks(_prompt("pfx1", "u1"), C, "c")
    # blocks 0-1 are pure system prompt; block 2 spans system and prefix, so it differs
    assert _keys(other[:2]) == _keys(a[:2])
    assert other[2].key != a[2].key


def test_divergence_changes_every_later_key():
    # identical identities after block 0, but block 0 differs: chaining makes all keys differ
    a = plan_blocks([Segment("new", "x", C), Segment("prefix", "same", 3 * C)], C, "a")
    b = plan_blocks([Segment("new", "y", C), Segment("prefix", "same", 3 * C)], C, "b")
    assert len(a) == len(b) == 4
    assert all(x.key != y.key for x, y in zip(a, b))


def test_key_is_sha256_chain_and_safe():
    blocks = plan_blocks([Segment("prefix", "p", 2 * C)], C, "o")
    k0 = chain_key("", synthetic_identity("p", 0, C))
    assert blocks[0].key == k0
    assert blocks[1].key == chain_key(k0, synthetic_identity("p", C, 2 * C))
    assert all(re.fullmatch(r"[0-9a-f]{24}", b.key) for b in blocks)


def test_split_of_a_stream_into_segments_does_not_change_keys():
    whole = plan_blocks([Segment("history", "conv", 1000)], C, "a")
    split = plan_blocks([Segment("history", "conv", 300), Segment("history", "conv", 700, start=300)], C, "b")
    assert _keys(whole[:3]) == _keys(split[:3])
    # but a gap in the stream is different content
    gap = plan_blocks([Segment("history", "conv", 300), Segment("history", "conv", 700, start=301)], C, "c")
    assert gap[0].key == whole[0].key and gap[1].key != whole[1].key


def test_conversation_next_turn_finds_full_blocks_only():
    seq = BlockSequence(C, "u0c0")
    seq.begin_turn()
    stored = {b.key for b in seq.extend([Segment("system", "sys", 100), Segment("new", "corpus", 500)])}
    stored |= {b.key for b in seq.extend([Segment("output", "u0c0.o1", 100)])}  # 700 tokens: 2 full + tail
    assert seq.total_tokens == 700 and seq.has_tail
    tail = seq.blocks()[-1]
    assert (tail.key, tail.tokens, tail.closed) == ("u0c0.tail", 700 - 2 * C, False)
    seq.begin_turn()
    seq.extend([Segment("new", "corpus", 200, start=9000)])  # 900 tokens: 3 full + tail
    prompt = seq.blocks()
    hits = longest_cached_prefix(prompt, stored.__contains__)
    assert hits == 2  # block 2 was the partial tail, now full under a content key: a miss
    assert prompt[2].closed and prompt[2].key not in stored
    # the tail key is the same slot: rewriting it replaces the old partial version
    assert prompt[-1].key == "u0c0.tail"


def test_incremental_sequence_equals_one_shot_plan():
    seq = BlockSequence(C, "conv")
    seq.begin_turn()
    seq.extend([Segment("system", "sys", 300), Segment("new", "c", 410)])
    seq.extend([Segment("output", "conv.o1", 90)])
    seq.begin_turn()
    seq.extend([Segment("new", "c", 333, start=5000)])
    once = plan_blocks([Segment("system", "sys", 300), Segment("history", "c", 410),
                        Segment("history", "conv.o1", 90), Segment("new", "c", 333, start=5000)], C, "conv")
    assert _keys(seq.blocks()) == _keys(once)
    assert [b.kind_tokens for b in seq.blocks()] == [b.kind_tokens for b in once]


def test_extend_returns_changed_blocks():
    seq = BlockSequence(C, "s")
    first = seq.extend([Segment("new", "a", 300)])
    assert [(b.index, b.tokens, b.closed) for b in first] == [(0, C, True), (1, 44, False)]
    more = seq.extend([Segment("output", "s.o", 300)])
    # the old tail (index 1) is now closed under a content key, and a new tail follows
    assert [(b.index, b.tokens, b.closed) for b in more] == [(1, C, True), (2, 88, False)]
    assert more[0].key != first[1].key


def test_lookup_kinds_and_turns():
    seq = BlockSequence(C, "k")
    seq.begin_turn()
    seq.extend([Segment("system", "sys", C), Segment("rag", "doc", C), Segment("new", "q", C)])
    seq.extend([Segment("output", "k.o1", C)])
    assert [b.kind for b in seq.blocks()] == ["prefix", "rag", "new", "new"]
    seq.begin_turn()
    seq.extend([Segment("new", "q", C, start=C)])
    assert [b.kind for b in seq.blocks()] == ["prefix", "rag", "multi_turn", "multi_turn", "new"]


def test_chunk_zero_one_block_per_segment():
    segs = [Segment("system", "sys", 100), Segment("history", "c", 5000), Segment("new", "c", 7, start=5000)]
    blocks = plan_blocks(segs, 0, "z")
    assert [(b.tokens, b.closed) for b in blocks] == [(100, True), (5000, True), (7, True)]
    assert blocks[1].key == chain_key(blocks[0].key, synthetic_identity("c", 0, 5000))
    # the next turn lists the same segments as history: same keys, so all are found
    nxt = plan_blocks([Segment("system", "sys", 100), Segment("history", "c", 5000),
                       Segment("history", "c", 7, start=5000), Segment("new", "c", 9, start=5007)], 0, "z")
    assert _keys(nxt[:3]) == _keys(blocks)
    assert longest_cached_prefix(nxt, set(_keys(blocks)).__contains__) == 3


def test_token_ids_hash_content_not_source():
    ids = tuple(range(1000, 1000 + 2 * C))
    a = plan_blocks([Segment("history", "sharegpt1", 2 * C, token_ids=ids)], C, "a")
    b = plan_blocks([Segment("history", "sharegpt2", 2 * C, token_ids=ids)], C, "b")
    assert _keys(a) == _keys(b)
    changed = ids[:C] + (7,) + ids[C + 1:]
    c = plan_blocks([Segment("history", "sharegpt1", 2 * C, token_ids=changed)], C, "c")
    assert c[0].key == a[0].key and c[1].key != a[1].key
    assert token_identity([1, 2]) != token_identity([2, 1])
    with pytest.raises(ConfigError, match="2\\*\\*32"):
        token_identity([-1])


def test_standalone_documents_keep_their_keys_anywhere():
    doc_a = Segment("rag", "docA", 600, standalone=True)
    doc_b = Segment("rag", "docB", 300, standalone=True)
    doc_c = Segment("rag", "docC", 300, standalone=True)
    q = Segment("new", "question", 50)
    ingested_b = plan_blocks([doc_b], C, "ingest")
    assert [b.tokens for b in ingested_b] == [C, 44] and all(b.closed for b in ingested_b)
    p1 = plan_blocks([Segment("system", "sys", 100), doc_a, doc_b, q], C, "q1")
    p2 = plan_blocks([Segment("system", "sys", 100), doc_c, doc_b, q], C, "q2")
    # system tail (100) closed on its own, then A (3 blocks), then B (2 blocks), then q
    assert [b.tokens for b in p1] == [100, C, C, 88, C, 44, 50]
    assert _keys(p1[4:6]) == _keys(ingested_b) == _keys(p2[3:5])
    # the question chains over everything before it: different documents, different key
    assert p1[-1].closed is False and p1[-1].key == "q1.tail"
    p1b = plan_blocks([Segment("system", "sys", 100), doc_a, doc_b, Segment("new", "question", C)], C, "x")
    p2b = plan_blocks([Segment("system", "sys", 100), doc_c, doc_b, Segment("new", "question", C)], C, "x")
    assert p1b[-1].key != p2b[-1].key


def test_longest_cached_prefix_stops_at_first_miss():
    blocks = plan_blocks([Segment("prefix", "p", 5 * C)], C, "o")
    keys = _keys(blocks)
    assert longest_cached_prefix(blocks, set(keys).__contains__) == 5
    assert longest_cached_prefix(blocks, set(keys[:2] + keys[3:]).__contains__) == 2
    assert longest_cached_prefix(blocks, lambda k: False) == 0
    tail = plan_blocks([Segment("prefix", "p", C + 10)], C, "o")
    assert longest_cached_prefix(tail, lambda k: True) == 1  # the open tail is never a hit


def test_tally_hits_exact_per_kind():
    blocks = plan_blocks([Segment("system", "sys", 300), Segment("history", "c", 400), Segment("new", "c", 100, start=400)], C, "t")
    # blocks: [sys 256] [sys 44 + hist 212] [hist 188 + new 68] [new 32, open]
    tally = tally_hits(blocks, 2)
    assert (tally["prefix"].lookup_tokens, tally["prefix"].hit_tokens) == (300, 300)
    assert (tally["multi_turn"].lookup_tokens, tally["multi_turn"].hit_tokens) == (400, 212)
    assert (tally["new"].lookup_tokens, tally["new"].hit_tokens) == (100, 0)
    assert (tally["prefix"].lookup_blocks, tally["prefix"].hit_blocks) == (2, 2)
    assert (tally["multi_turn"].lookup_blocks, tally["multi_turn"].hit_blocks) == (1, 0)
    assert tally["multi_turn"].token_hit_rate() == pytest.approx(212 / 400)
    assert "rag" not in tally
    with pytest.raises(ValueError):
        tally_hits(blocks, 5)


@pytest.mark.parametrize("kw, match", [
    ({"kind": "doc"}, "segment kind"),
    ({"source": "a b"}, "source"),
    ({"tokens": -1}, "tokens"),
    ({"start": -3}, "start"),
    ({"token_ids": (1, 2)}, "token ids"),
])
def test_bad_segments(kw, match):
    base = {"kind": "new", "source": "s", "tokens": 4}
    with pytest.raises(ConfigError, match=match):
        Segment(**{**base, **kw})


def test_bad_sequence_settings():
    with pytest.raises(ConfigError, match="chunk_tokens"):
        BlockSequence(-1, "o")
    with pytest.raises(ConfigError, match="owner"):
        BlockSequence(C, "")
    with pytest.raises(ConfigError, match="Segment"):
        BlockSequence(C, "o").extend([("new", "s", 3)])


def test_chunk_zero_standalone_documents_keep_their_keys():
    doc = Segment("rag", "docA", 5000, standalone=True)
    ingested = plan_blocks([doc], 0, "ingest")
    p1 = plan_blocks([Segment("system", "sys", 100), doc, Segment("new", "q", 40)], 0, "q1")
    p2 = plan_blocks([Segment("system", "sys", 200), doc, Segment("new", "q", 40)], 0, "q2")
    assert p1[1].key == p2[1].key == ingested[0].key
    assert p1[2].key != p2[2].key  # the question still chains over what precedes it
