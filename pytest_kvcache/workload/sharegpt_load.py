"""Reading a ShareGPT-format file: validation, tokenization and the tokenization cache.

The file is a JSON list of conversations, in either of the two shapes in use::

    [{"id": "a1", "conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}]
    [{"id": "a1", "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}]

(``conversations`` may also hold ``role``/``content`` messages and ``messages`` ``from``/``value``
ones.) Roles: ``human``/``user``; ``gpt``/``assistant`` (and ``chatgpt``, ``bing``, ``bard``, which
the public ShareGPT dumps contain); ``system``. Anything else, an empty message, a wrong type
or a file that is not valid JSON (a cut-off file included) raises ``ConfigError`` naming the
entry index and the field.

``load_conversations`` returns ``Conversations``: every message's token ids in one flat
``uint32`` array with offsets, so a 100 MB file is a few arrays, not millions of objects.
Tokenized files are cached (``--kv-sharegpt-cache``) under a name made of the file's SHA-256
and the tokenizer's key, so a second run reads the arrays back instead of parsing and
tokenizing again; a cache that cannot be read or written is ignored (the run says so in
``cache``), never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .tokenize import Tokenizer, resolve_tokenizer

SYSTEM, USER, ASSISTANT = 0, 1, 2
ROLES = {"system": SYSTEM, "human": USER, "user": USER,
         "gpt": ASSISTANT, "assistant": ASSISTANT, "chatgpt": ASSISTANT, "bing": ASSISTANT, "bard": ASSISTANT}
CACHE_FORMAT = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_ID_CHARS = 40


@dataclass
class Conversations:
    """The conversations of one file, tokenized. Message ``m`` has role ``roles[m]`` and token
    ids ``ids[msg_offsets[m]:msg_offsets[m+1]]``; conversation ``c`` holds messages
    ``conv_offsets[c]..conv_offsets[c+1]`` and has the safe id ``conv_ids[c]``.

    ``file_sha256``: SHA-256 of the file's bytes; ``tokenizer``: the tokenizer's report name;
    ``cache``: what the tokenization cache did (hit, written, off, or why it was not used).
    """

    ids: np.ndarray
    msg_offsets: np.ndarray
    roles: np.ndarray
    conv_offsets: np.ndarray
    conv_ids: list[str]
    file_sha256: str
    tokenizer: str
    cache: str

    def __len__(self) -> int:
        return len(self.conv_ids)

    def tokens(self, m: int) -> int:
        """Tokens of message ``m``."""
        return int(self.msg_offsets[m + 1] - self.msg_offsets[m])


def safe_id(index: int, raw) -> str:
    """The conversation id used in keys, reports and file names: ``c{index:06d}`` plus the
    file's id with every character outside [A-Za-z0-9_-] replaced by ``_`` (no ``.`` or
    ``/``, so ``../../x`` stays harmless), cut to 40 characters. The index keeps ids unique when
    the file repeats one."""
    text = _UNSAFE.sub("_", str(raw))[:_ID_CHARS].strip("_") if raw is not None else ""
    return f"c{index:06d}" + (f"-{text}" if text else "")


def cache_dir(spec: str) -> Path | None:
    """``--kv-sharegpt-cache``: auto = ``$XDG_CACHE_HOME`` (else ``~/.cache``) + ``pytest-kvcache/sharegpt``,
    off = None, else the directory given."""
    if spec == "off":
        return None
    if spec in ("auto", ""):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "pytest-kvcache" / "sharegpt"
    return Path(spec).expanduser()


def _where(path: Path, index: int, field: str = "") -> str:
    return f"--kv-sharegpt {path}: entry {index}" + (f", field {field}" if field else "")


def _json_error(path: Path, exc: json.JSONDecodeError) -> ConfigError:
    # a string that never closes runs to the end of the file; other errors at the very end mean the same
    cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(exc.doc.rstrip())
    hint = ("the file ends in the middle of a value: it looks cut off (an interrupted download or copy); fetch it "
            "again" if cut else "fix the file or export it again")
    return ConfigError(f"--kv-sharegpt {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
                       f"(character {exc.pos} of {len(exc.doc)}); {hint}.")


def parse(path: Path, data: bytes) -> tuple[list[str], list[int], list[int], list[str]]:
    """Validate the file's JSON; returns (message texts, message roles, messages per
    conversation, safe conversation ids). Raises ConfigError naming the entry and the field."""
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--kv-sharegpt {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); give a "
                          "ShareGPT JSON file.") from None
    except json.JSONDecodeError as exc:
        raise _json_error(path, exc) from None
    if not isinstance(doc, list):
        raise ConfigError(f"--kv-sharegpt {path}: the top level is a JSON {type(doc).__name__}, not a list of "
                          'conversations; give [{"id": ..., "conversations": [{"from": "human", "value": ...}, ...]}, ...].')
    if not doc:
        raise ConfigError(f"--kv-sharegpt {path} holds no conversations (an empty list); give a file with some.")
    texts: list[str] = []
    roles: list[int] = []
    counts: list[int] = []
    conv_ids: list[str] = []
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict):
            raise ConfigError(f"{_where(path, i)}: a conversation must be a JSON object with 'id' and 'conversations', "
                              f"not a {type(entry).__name__}.")
        key = "conversations" if "conversations" in entry else "messages" if "messages" in entry else None
        if key is None:
            raise ConfigError(f"{_where(path, i)}: no 'conversations' (or 'messages') list; each entry needs one.")
        messages = entry[key]
        if not isinstance(messages, list) or not messages:
            raise ConfigError(f"{_where(path, i, key)}: must be a non-empty list of messages, not {messages!r:.60}.")
        raw_id = entry.get("id")
        if raw_id is not None and (not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool)):
            raise ConfigError(f"{_where(path, i, 'id')}: must be a string or an integer, not {raw_id!r:.60}.")
        for j, msg in enumerate(messages):
            field = f"{key}[{j}]"
            if not isinstance(msg, dict):
                raise ConfigError(f"{_where(path, i, field)}: a message must be an object "
                                  '{"from": ..., "value": ...} or {"role": ..., "content": ...}.')
            role_key, text_key = ("from", "value") if "from" in msg else ("role", "content")
            if role_key not in msg or text_key not in msg:
                raise ConfigError(f"{_where(path, i, field)}: a message needs 'from' and 'value' (or 'role' and "
                                  f"'content'); it has {sorted(msg)}.")
            role = msg[role_key]
            if role not in ROLES:
                raise ConfigError(f"{_where(path, i, f'{field}.{role_key}')}: unknown role {role!r:.40}; known: "
                                  f"{', '.join(ROLES)}.")
            text = msg[text_key]
            if not isinstance(text, str):
                raise ConfigError(f"{_where(path, i, f'{field}.{text_key}')}: must be a string, not "
                                  f"{type(text).__name__}.")
            if not text.strip():
                raise ConfigError(f"{_where(path, i, f'{field}.{text_key}')}: empty turn; remove the message (or "
                                  "the conversation) or give it its text.")
            texts.append(text)
            roles.append(ROLES[role])
        counts.append(len(messages))
        conv_ids.append(safe_id(i, raw_id))
    return texts, roles, counts, conv_ids


def _cache_file(directory: Path, file_sha: str, tokenizer: Tokenizer) -> Path:
    tok = hashlib.sha256(tokenizer.key.encode()).hexdigest()[:16]
    return directory / f"{file_sha}-{tok}.npz"


def _read_cache(path: Path, file_sha: str, tokenizer: Tokenizer) -> dict | None:
    """The cached arrays, or None when missing, unreadable or not for this file and tokenizer."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("ids", "msg_offsets", "roles", "conv_offsets", "conv_ids", "meta")}
        meta = json.loads(arrays.pop("meta").tobytes())
        ok = (meta == {"format": CACHE_FORMAT, "file_sha256": file_sha, "tokenizer": tokenizer.key}
              and arrays["msg_offsets"][-1] == len(arrays["ids"]) and len(arrays["roles"]) + 1 == len(arrays["msg_offsets"])
              and arrays["conv_offsets"][-1] == len(arrays["roles"]))
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return arrays if ok else None


def _write_cache(path: Path, file_sha: str, tokenizer: Tokenizer, arrays: dict) -> str:
    """Write atomically (a temporary file renamed); returns what happened, for the report."""
    meta = json.dumps({"format": CACHE_FORMAT, "file_sha256": file_sha, "tokenizer": tokenizer.key}).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.frombuffer(meta, dtype=np.uint8), **arrays)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        return f"not written ({path}: {exc.strerror or exc})"
    return f"written ({path})"


def load_conversations(path: str | Path, tokenizer_spec: str, cache_spec: str = "auto") -> Conversations:
    """Read, validate and tokenize a ShareGPT file, or read its tokenization back from the
    cache. Raises ConfigError naming the problem, the entry and the field."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--kv-sharegpt {path}: cannot read it ({exc.strerror}); give an existing ShareGPT JSON "
                          "file.") from None
    tokenizer = resolve_tokenizer(tokenizer_spec)
    file_sha = hashlib.sha256(data).hexdigest()
    directory = cache_dir(cache_spec)
    cached = _read_cache(_cache_file(directory, file_sha, tokenizer), file_sha, tokenizer) if directory else None
    if cached is not None:
        status = f"hit ({_cache_file(directory, file_sha, tokenizer)})"
    else:
        texts, roles, counts, conv_ids = parse(path, data)
        del data
        ids, msg_offsets = tokenizer.encode_batch(texts)
        del texts
        conv_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=conv_offsets[1:])
        cached = {"ids": ids, "msg_offsets": msg_offsets, "roles": np.asarray(roles, dtype=np.uint8),
                  "conv_offsets": conv_offsets,
                  "conv_ids": np.frombuffer("\n".join(conv_ids).encode(), dtype=np.uint8)}
        status = _write_cache(_cache_file(directory, file_sha, tokenizer), file_sha, tokenizer, cached) \
            if directory else "off"
    conv_ids = cached["conv_ids"].tobytes().decode().split("\n")
    return Conversations(cached["ids"], cached["msg_offsets"], cached["roles"], cached["conv_offsets"], conv_ids,
                         file_sha, tokenizer.name, status)
