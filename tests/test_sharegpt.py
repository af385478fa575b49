"""ShareGPT replay (workload/sharegpt.py, sharegpt_load.py, tokenize.py): files the tests write."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.settings import build_settings
from pytest_kvcache.workload.blocks import plan_blocks
from pytest_kvcache.workload.sharegpt import (
    ShareGPTParams,
    ShareGPTRequest,
    generate_sharegpt,
    sharegpt_params,
)
from pytest_kvcache.workload.sharegpt_load import load_conversations, safe_id
from pytest_kvcache.workload.tokenize import EstimateTokenizer, resolve_tokenizer
from pytest_kvcache.workload.tracefile import load_jsonl, save_jsonl

SYSTEM = "You answer questions about storage drives in plain words. " * 12  # 696 chars = 174 estimate tokens


def conv(cid, *turns, system=None, fmt="sharegpt"):
    """A conversation entry: ``turns`` alternate user and assistant texts."""
    roles = ("human", "gpt") if fmt == "sharegpt" else ("user", "assistant")
    msgs = ([("system", system)] if system else []) + [(roles[i % 2], t) for i, t in enumerate(turns)]
    if fmt == "sharegpt":
        return {"id": cid, "conversations": [{"from": r, "value": t} for r, t in msgs]}
    return {"id": cid, "messages": [{"role": r, "content": t} for r, t in msgs]}


def write(tmp_path, entries, name="sg.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(entries) if not isinstance(entries, str) else entries)
    return path


def params(path, tokenizer="estimate", users=2, cache="off", **kw) -> ShareGPTParams:
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return ShareGPTParams(str(path), sha, tokenizer, kw.pop("seed", 7), users, cache=cache, **kw)


def sample(fmt="sharegpt"):
    return [conv("a", "q1 " * 40, "a1 " * 60, "q2 " * 20, "a2 " * 30, system=SYSTEM, fmt=fmt),
            conv("b", "other question " * 10, "reply " * 50, system=SYSTEM, fmt=fmt),
            conv("c", "no system here " * 8, "ok " * 12, fmt=fmt)]


def requests_of(trace):
    return sorted(trace.requests(), key=lambda r: (r.conversation_id, r.turn))


def test_both_formats_give_the_same_trace(tmp_path):
    a = generate_sharegpt(params(write(tmp_path, sample("sharegpt"), "a.json")))
    b = generate_sharegpt(params(write(tmp_path, sample("openai"), "b.json")))
    assert a.sha256() == b.sha256() and len(a) == 4


def test_turns_prompts_and_outputs(tmp_path):
    trace = generate_sharegpt(params(write(tmp_path, sample())))
    a1, a2, b1, c1 = requests_of(trace)
    est = EstimateTokenizer()
    ids, off = est.encode_batch([SYSTEM, "q1 " * 40, "a1 " * 60, "q2 " * 20, "a2 " * 30])
    # turn 1: the system prompt, then the user's text; the reply is the output with its own ids
    assert [s.kind for s in a1.segments] == ["system", "new"]
    assert a1.segments[0].token_ids == tuple(ids[off[0]:off[1]].tolist())
    assert a1.context_tokens == 30 and a1.generate_tokens == 45  # ceil(120/4), ceil(180/4)
    assert isinstance(a1, ShareGPTRequest) and a1.output_segment().token_ids == tuple(ids[off[2]:off[3]].tolist())
    # turn 2 adds only its own text: the earlier turn is already in the conversation's blocks
    assert a2.turn == 2 and [s.kind for s in a2.segments] == ["new"] and a2.context_tokens == 15
    assert c1.conversation_id.startswith("c000002") and [s.kind for s in c1.segments] == ["new"]
    assert trace.lookup_kinds() == {"prefix", "multi_turn"}
    assert b1.persona == "chatbot" and b1.qos == "interactive"


def test_unanswered_message_is_dropped_and_a_later_system_message_is_turn_text(tmp_path):
    entry = {"id": "x", "conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi there"},
                                          {"from": "system", "value": "be brief"}, {"from": "human", "value": "why"},
                                          {"from": "gpt", "value": "because"}, {"from": "human", "value": "left open"}]}
    trace = generate_sharegpt(params(write(tmp_path, [entry])))
    first, second = requests_of(trace)
    assert len(trace) == 2 and [s.kind for s in second.segments] == ["new", "new"]
    assert second.context_tokens == 2 + 1  # "be brief" (8 chars) + "why" (3)
    assert trace.source["unanswered_messages_dropped"] == 1


def test_shared_system_prompt_gives_the_same_block_keys(tmp_path):
    trace = generate_sharegpt(params(write(tmp_path, sample())))
    a1, _, b1, c1 = requests_of(trace)
    ka, kb, kc = (plan_blocks(r.segments, 16, r.conversation_id) for r in (a1, b1, c1))
    shared = 174 // 16  # whole blocks of system prompt
    assert [b.key for b in ka[:shared]] == [b.key for b in kb[:shared]]
    assert ka[shared].key != kb[shared].key  # the block where the user's text starts differs
    assert {b.key for b in kc}.isdisjoint(b.key for b in ka)
    assert trace.source["conversations_sharing_a_system_prompt"] == 2 and trace.source["system_prompts"] == 1


def test_output_cap_cuts_replies_and_the_next_turn_history(tmp_path):
    trace = generate_sharegpt(params(write(tmp_path, sample()), max_output_tokens=20))
    a1 = requests_of(trace)[0]
    assert a1.generate_tokens == 20 and len(a1.output_segment().token_ids) == 20
    assert trace.source["replies_cut_to_max_output_tokens"] == 3  # a1 (45), a2 (23), b (75); c's 9 stays


def test_input_cap_ends_a_conversation_before_the_turn_over_it(tmp_path):
    # a: turn 1 prompt 174 + 30 = 204; turn 2 prompt 204 + 45 + 15 = 264
    trace = generate_sharegpt(params(write(tmp_path, sample()), max_input_tokens=250))
    assert [(r.conversation_id[:7], r.turn) for r in requests_of(trace)] == [
        ("c000000", 1), ("c000001", 1), ("c000002", 1)]
    assert trace.source["turns_over_max_input_tokens"] == 1
    with pytest.raises(ConfigError, match="max-input-tokens 10; raise it"):
        generate_sharegpt(params(write(tmp_path, sample(), "b.json"), max_input_tokens=10))


def test_conversation_cap_takes_the_first_of_the_seeded_order(tmp_path):
    path = write(tmp_path, [conv(f"k{i}", f"question {i}", f"answer {i}") for i in range(20)])
    full = generate_sharegpt(params(path, users=3))
    some = generate_sharegpt(params(path, users=3, conversations=5))
    order = [r.conversation_id for r in full.requests()]
    assert len(some) == 5 and sorted(r.conversation_id for r in some.requests()) == sorted(order[:5])
    assert some.source["conversations"] == 5 and some.source["conversations_in_file"] == 20


def test_same_inputs_same_hash_and_the_seed_moves_the_order(tmp_path):
    path = write(tmp_path, [conv(f"k{i}", f"question {i}", f"answer {i}") for i in range(12)])
    a, b = generate_sharegpt(params(path)), generate_sharegpt(params(path))
    c = generate_sharegpt(params(path, seed=8))
    assert a.sha256() == b.sha256() != c.sha256()
    assert [r.conversation_id for r in a.requests()] != [r.conversation_id for r in c.requests()]
    assert sorted(r.conversation_id for r in a.requests()) == sorted(r.conversation_id for r in c.requests())
    # dealt round-robin: 12 conversations of one turn over 2 users
    assert [len(u) for u in a.per_user] == [6, 6]


@pytest.mark.parametrize("raw, needle", [
    ('{"id": 1}', "the top level is a JSON dict, not a list"),
    ("[]", "holds no conversations"),
    ('[{"id": "a", "conversations": [{"from": "human", "value": "hi"}', "cut off"),
    ('[{"id": "a", "conversations": [{"from": "human", "value": "hi', "cut off"),
    ('[{"id": "a",, "conversations": []}]', "not valid JSON: Expecting property name"),
    ('[[1, 2]]', "entry 0: a conversation must be a JSON object"),
    ('[{"id": "a", "turns": []}]', "entry 0: no 'conversations' (or 'messages') list"),
    ('[{"id": "a", "conversations": []}]', "entry 0, field conversations: must be a non-empty list"),
    ('[{"id": [1], "conversations": [{"from": "human", "value": "x"}]}]', "entry 0, field id: must be a string"),
    ('[{"conversations": [{"from": "human", "value": "x"}]}, {"conversations": [{"from": "robot", "value": "x"}]}]',
     "entry 1, field conversations[0].from: unknown role 'robot'"),
    ('[{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}]',
     "entry 0, field messages[1].content: empty turn"),
    ('[{"conversations": [{"from": "human", "value": 5}]}]', "entry 0, field conversations[0].value: must be a string"),
    ('[{"conversations": [{"from": "human"}]}]', "entry 0, field conversations[0]: a message needs 'from' and 'value'"),
    ('[{"conversations": [{"from": "gpt", "value": "only a reply"}, {"from": "human", "value": "q"}]}]', None),
])
def test_malformed_files_name_the_problem_and_where(tmp_path, raw, needle):
    path = write(tmp_path, raw)
    if needle is None:  # valid shape, but a reply with no prompt before it is a turn of 0 new tokens
        trace = generate_sharegpt(params(path))
        assert [(r.context_tokens, r.generate_tokens) for r in trace.requests()] == [(0, 3)]
        return
    with pytest.raises(ConfigError) as err:
        load_conversations(path, "estimate", "off")
    assert needle in str(err.value) and str(path) in str(err.value)


def test_not_utf8_and_missing_file(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(b'[{"id": "\xff"}]')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_conversations(path, "estimate", "off")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_conversations(tmp_path / "nope.json", "estimate", "off")


@pytest.mark.parametrize("raw, expected", [("../../x", "c000003-x"), ("a/b\\c d", "c000003-a_b_c_d"),
                                           (None, "c000003"), ("..", "c000003"), (17, "c000003-17")])
def test_ids_are_sanitized(raw, expected):
    assert safe_id(3, raw) == expected


def test_hostile_ids_never_reach_a_key_unsanitized(tmp_path):
    path = write(tmp_path, [conv("../../etc/passwd", "q " * 30, "a " * 30, "q2", "a2"), conv("../../etc/passwd", "x", "y")])
    trace = generate_sharegpt(params(path))
    ids = {r.conversation_id for r in trace.requests()}
    assert ids == {"c000000-etc_passwd", "c000001-etc_passwd"}  # unique although the file repeats the id
    for r in trace.requests():
        for seg in (*r.segments, r.output_segment()):
            assert "/" not in seg.source and ".." not in seg.source


def test_estimate_tokenizer_counts_and_ids():
    ids, off = EstimateTokenizer().encode_batch(["abcdefgh", "abcdefghi", "", "abcd"])
    assert off.tolist() == [0, 2, 5, 5, 6]
    assert ids[0:2].tolist() == ids[2:4].tolist() == [ids[5]] + [ids[1]]  # equal text at the start, equal ids
    assert ids[0] != ids[1] and ids.dtype == np.uint32


def test_quicktok_encoding_gives_real_ids(tmp_path):
    pytest.importorskip("quicktok")
    tok = resolve_tokenizer("cl100k")
    ids, off = tok.encode_batch(["hello world", "a<|endoftext|>b"])
    assert ids[:2].tolist() == [15339, 1917]  # tiktoken's cl100k_base ids
    assert off[2] - off[1] > 1  # a special token in the text is text, not the special id
    convs = load_conversations(write(tmp_path, sample()), "llama3", "off")
    assert convs.tokenizer.startswith("llama3 (quicktok")


def test_tokenizer_json_through_hf_tokenizers(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = resolve_tokenizer(str(tmp_path / "tokenizer.json"))
    ids, off = tok.encode_batch(["hello world", "world zzz hello"])
    assert ids.tolist() == [1, 2, 2, 0, 1] and off.tolist() == [0, 2, 5]
    assert "tokenizer.json (tokenizers" in tok.name
    assert resolve_tokenizer(str(tmp_path)).key == tok.key  # a directory holding tokenizer.json
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a tokenizer.json"):
        resolve_tokenizer(str(tmp_path / "bad.json"))


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(ConfigError, match="not a known tokenizer: give estimate"):
        resolve_tokenizer("gpt-17")


def test_tokenization_cache_is_keyed_on_file_and_tokenizer(tmp_path):
    path = write(tmp_path, sample())
    cache = tmp_path / "cache"
    first = load_conversations(path, "estimate", str(cache))
    second = load_conversations(path, "estimate", str(cache))
    assert first.cache.startswith("written") and second.cache.startswith("hit")
    assert np.array_equal(first.ids, second.ids) and first.conv_ids == second.conv_ids
    assert np.array_equal(first.msg_offsets, second.msg_offsets) and np.array_equal(first.roles, second.roles)
    (only,) = cache.iterdir()
    assert only.name.startswith(first.file_sha256)
    only.write_bytes(b"not an npz")  # a broken cache is a miss, written again
    assert load_conversations(path, "estimate", str(cache)).cache.startswith("written")
    path.write_text(json.dumps(sample()[:2]))  # another file: another entry
    assert load_conversations(path, "estimate", str(cache)).cache.startswith("written")
    assert len(list(cache.iterdir())) == 2
    assert load_conversations(path, "estimate", "off").cache == "off"
    (tmp_path / "file").write_text("")
    assert load_conversations(path, "estimate", str(tmp_path / "file" / "x")).cache.startswith("not written")


def test_cached_and_fresh_tokenization_give_the_same_trace(tmp_path):
    path = write(tmp_path, sample())
    fresh = generate_sharegpt(params(path, cache="off")).sha256()
    generate_sharegpt(params(path, cache=str(tmp_path / "c")))
    from pytest_kvcache.workload import sharegpt

    sharegpt._LOADED.clear()  # read back from the disk cache this time
    cached = generate_sharegpt(params(path, cache=str(tmp_path / "c")))
    assert cached.source["tokenization_cache"].startswith("hit") and cached.sha256() == fresh


def test_saved_trace_replays_with_the_same_hash_and_output_ids(tmp_path):
    trace = generate_sharegpt(params(write(tmp_path, sample())))
    save_jsonl(trace, tmp_path / "t.jsonl")
    back = load_jsonl(tmp_path / "t.jsonl")
    assert back.sha256() == trace.sha256() and isinstance(back.params, ShareGPTParams)
    first = next(iter(back.requests()))
    assert isinstance(first, ShareGPTRequest) and first.output_segment().token_ids is not None
    assert back.lookup_kinds() == trace.lookup_kinds()


def test_settings_need_a_file_for_the_sharegpt_workload(tmp_path):
    with pytest.raises(ConfigError, match="give it with --kv-sharegpt PATH"):
        build_settings({"workload": "sharegpt"}, {}, env={})
    path = write(tmp_path, sample())
    s = build_settings({"workload": "sharegpt", "sharegpt": str(path), "sharegpt_max_output_tokens": "9",
                        "sharegpt_cache": "off", "users": "3"}, {}, env={})
    p = sharegpt_params(s)
    assert (p.max_output_tokens, p.users, p.file_sha256) == (9, 3, hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.parametrize("spec", ["estimate", "cl100k"])
def test_a_lone_surrogate_in_the_json_is_tokenized_not_a_crash(tmp_path, spec):
    if spec != "estimate":
        pytest.importorskip("quicktok")
    path = write(tmp_path, '[{"conversations": [{"from": "human", "value": "bad \\ud800 text"}, '
                           '{"from": "gpt", "value": "fine"}]}]')
    convs = load_conversations(path, spec, "off")
    assert convs.tokens(0) > 0 and convs.tokens(1) > 0
