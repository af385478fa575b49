"""Trace files: save a trace as JSONL and read it back, so two drives replay byte-identical
request lists (``Trace.sha256`` is the hash of the lines after the header).

Format: a header line ``{"kvcache_trace": FORMAT, "generator": name, "params": {...}}``, the
RAG documents as ``{"document": ...}`` lines, then one canonical request per line. Every error
names the file, the line and the fix (``ConfigError``). The trace itself is ``trace.Trace``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from .blocks import Segment
from .trace import Request, Trace, WorkloadParams, _canonical_json, segment_from_dict

TRACE_FORMAT = 2
"""Format 2 adds each request's prompt ``segments`` and the trace's RAG ``documents``; format 1
files (no segments: each turn's new text is private, as before) still load."""
_READABLE_FORMATS = (1, 2)


def save_jsonl(trace: Trace, path: str | Path) -> None:
    """Header line, then the canonical lines: ``tail -n +2 FILE | sha256sum`` is the trace hash."""
    path = Path(path)
    params = trace.params.to_dict() if trace.params is not None else None
    try:
        with path.open("w", encoding="utf-8", newline="\n") as f:
            generator = type(trace.params).__name__ if trace.params is not None else None
            f.write(_canonical_json({"kvcache_trace": TRACE_FORMAT, "generator": generator, "params": params}) + "\n")
            f.writelines(trace.lines())
    except OSError as exc:
        raise ConfigError(f"cannot write trace file {path}: {exc.strerror}; choose a writable path") from exc


def jsonl_objects(lines, label: str, fix: str):
    """``(line number, where, object)`` for each non-blank line of a JSONL text stream, ``where`` being
    ``"<label>, line N"``; a line that is not JSON raises ConfigError naming it and ``fix``."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{label}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); {fix}") from None
        yield lineno, where, obj


def load_jsonl(path: str | Path) -> Trace:
    """Read a file written by ``save_jsonl``; every error names the file, the line and the fix."""
    path = Path(path)
    header: dict | None = None
    documents: list[Segment] = []
    found: dict[tuple[int, int], tuple[int, Request]] = {}
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, where, obj in jsonl_objects(f, f"trace file {path}",
                                            "each line must be one JSON object: fix the line or regenerate the trace"):
                if header is None:
                    if not isinstance(obj, dict) or "kvcache_trace" not in obj:
                        raise ConfigError(f'{where}: the first line must be the header {{"kvcache_trace": {TRACE_FORMAT}, "params": ...}}; '
                                          "write traces with save_jsonl or add the header")
                    if obj["kvcache_trace"] not in _READABLE_FORMATS:
                        raise ConfigError(f"{where}: trace format {obj['kvcache_trace']!r} is not supported; "
                                          f"this version reads formats {list(_READABLE_FORMATS)}: regenerate the trace")
                    header = obj
                    try:
                        params = _params_from_header(obj.get("generator"), obj.get("params"))
                    except (ConfigError, TypeError) as exc:
                        raise ConfigError(f"{where}: bad header params: {exc}") from None
                    continue
                if isinstance(obj, dict) and set(obj) == {"document"}:
                    if found:
                        raise ConfigError(f"{where}: a document line after the requests; documents come first")
                    try:
                        documents.append(segment_from_dict(obj["document"]))
                    except ConfigError as exc:
                        raise ConfigError(f"{where}: {exc}") from None
                    continue
                try:
                    req = Request.from_dict(obj)
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
                key = (req.user_id, req.seq)
                if key in found:
                    raise ConfigError(f"{where}: user_id {key[0]} seq {key[1]} repeats line {found[key][0]}; "
                                      "each (user_id, seq) must appear once")
                found[key] = (lineno, req)
    except OSError as exc:
        raise ConfigError(f"cannot read trace file {path}: {exc.strerror}; pass an existing JSONL trace file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"trace file {path} is not UTF-8 text ({exc.reason}); pass a JSONL trace file") from None
    if header is None or not found:
        raise ConfigError(f"trace file {path} holds no requests; pass a trace written by save_jsonl")
    users = 1 + max(u for u, _ in found)
    per_user: list[list[Request]] = [[] for _ in range(users)]
    for (u, _), (_, req) in sorted(found.items()):
        per_user[u].append(req)
    for u, reqs in enumerate(per_user):
        for i, req in enumerate(reqs):
            if req.seq != i:
                raise ConfigError(f"trace file {path}: user_id {u} has no request with seq {i}; "
                                  "seq must run 0, 1, 2, ... for each user and user_ids 0, 1, 2, ...")
        if not reqs:
            raise ConfigError(f"trace file {path}: user_id {u} has no requests; user_ids must run 0, 1, 2, ...")
    return Trace(params, per_user, tuple(documents))


def _params_from_header(generator: str | None, raw) -> object | None:
    """The generator's params from a trace header (format 1 headers name no generator)."""
    if raw is None:
        return None
    if generator in (None, "WorkloadParams"):
        return WorkloadParams.from_dict(raw)
    if not isinstance(raw, dict):
        raise ConfigError("params must be a JSON object")
    if generator == "PromptParams":
        from .prompts import PromptParams
        return PromptParams(**raw)
    if generator == "RagParams":
        from .rag import RagParams
        return RagParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if generator == "MixedParams":
        from .mixed import MixedParams
        return MixedParams.from_dict(raw)
    if generator == "ShareGPTParams":
        from .sharegpt import ShareGPTParams
        return ShareGPTParams.from_dict(raw)
    raise ConfigError(f"unknown generator {generator!r}; known: WorkloadParams, PromptParams, RagParams, MixedParams, "
                      "ShareGPTParams")
