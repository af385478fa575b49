"""Production traces and exact replay (``--kv-trace``, ``--kv-trace-save``; design.md section 3).

Three file formats become one ``trace.Trace`` (a ``ReplayTrace``, which also says where it came
from: ``source``):

- **jsonl**: our own trace file (``tracefile.save_jsonl``, versioned). Replayed exactly: the same
  requests, so the same trace hash (``Trace.sha256``) on any drive.
- **mooncake**: the Mooncake traces' JSONL (FAST'25 release): one request a line with
  ``timestamp`` (ms), ``input_length``, ``output_length`` and ``hash_ids``. A hash id is a
  content-addressed KV block of ``--kv-trace-block-tokens`` tokens (512 in Mooncake), so each
  id becomes one prompt segment of kind ``prefix`` with source ``h<id>``: requests that share
  leading hash ids share those blocks' cache keys (``blocks.chain_key``) and their lookups are
  real prefix hits. Prompt tokens beyond the hash ids are the request's private new text; a
  last hash id may cover a partial block (input_length not a multiple of the block size).
- **burstgpt**: the BurstGPT CSV (``Timestamp`` in s, ``Model``, ``Request tokens``,
  ``Response tokens``, ``Total tokens``, ``Log Type``); rows may be filtered by model and log
  type. It carries no prompt content, so each request's prompt is private: its figures are the
  arrival pattern and the writes it causes, not hits.

A Mooncake or BurstGPT request is one single-turn conversation of its own user
(``user_id`` = its place in arrival order) with ``arrival_s`` = its timestamp less the
first one's, in seconds. The runner sends timestamped requests at ``arrival_s /
--kv-trace-speedup`` into the bounded admission queue (``load.arrivals.trace_arrivals``); a
request that finds the queue full is rejected and counted. Timestamped requests must each be
their own user (a later turn cannot arrive before its conversation's earlier turn is served).

Every malformed input is a ``ConfigError`` that names the file, the line (and the field) and
the fix; files are read as UTF-8 text, ``.gz`` through gzip.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .blocks import Segment
from .trace import Request, Trace
from .tracefile import jsonl_objects, load_jsonl, save_jsonl

FORMATS = ("jsonl", "mooncake", "burstgpt")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type")
_BURSTGPT_NEEDED = ("Timestamp", "Request tokens", "Response tokens")
_MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(eq=False)
class ReplayTrace(Trace):
    """A trace read from a file; ``source`` says which file and what was read (the report's
    ``trace.source``): path, format, the file's SHA-256 and size, requests, rows left out."""

    source: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TraceOptions:
    """What reading a trace file depends on (the ``--kv-trace*`` options)."""

    path: str
    fmt: str = "auto"
    block_tokens: int = 512
    model: str = ""
    log_type: str = ""
    qos: str = "responsive"
    max_requests: int = 0

    @classmethod
    def from_settings(cls, settings) -> TraceOptions:
        return cls(str(settings.trace), settings.trace_format, settings.trace_block_tokens, settings.trace_model,
                   settings.trace_log_type, settings.trace_qos, settings.trace_max_requests)


def _open(path: Path):
    """The file as UTF-8 text lines (gzip when it ends in .gz)."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes as stored (compressed or not)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detect_format(path: Path) -> str:
    """``jsonl``, ``mooncake`` or ``burstgpt`` from the file's first non-empty line."""
    with _open(path) as f:
        first = next((line for line in f if line.strip()), "")
    text = first.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "kvcache_trace" in obj:
            return "jsonl"
        if isinstance(obj, dict) and "hash_ids" in obj:
            return "mooncake"
    elif "Timestamp" in text and "Request tokens" in text:
        return "burstgpt"
    raise ConfigError(f"--kv-trace {path}: cannot tell its format from the first line ({text[:80]!r}): expected our "
                      'JSONL header {"kvcache_trace": ...}, a Mooncake line with "hash_ids", or the BurstGPT CSV header '
                      f"({', '.join(BURSTGPT_COLUMNS)}); fix the file or pass --kv-trace-format jsonl|mooncake|burstgpt.")


def _number(where: str, name: str, value, low: float, integer: bool, fix: str):
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= low
    if ok and integer and value != int(value):
        ok = False
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: field {name!r} must be {kind} >= {low:g}, not {value!r}; {fix}")
    return int(value) if integer else float(value)


def _request(index: int, arrival_s: float, context: int, generate: int, persona: str, qos: str,
             segments: tuple[Segment, ...] = ()) -> Request:
    return Request(user_id=index, seq=0, conversation_id=f"r{index:07d}", turn=1, persona=persona, qos=qos,
                   context_tokens=context, generate_tokens=generate, think_time_s=0.0, segments=segments,
                   arrival_s=round(arrival_s, 6))


def read_mooncake(path: Path, opts: TraceOptions) -> tuple[list[tuple], int]:
    """Rows (timestamp s, input, output, hash ids) of a Mooncake JSONL file, and lines skipped (none)."""
    rows = []
    fix = "fix the line (Mooncake lines are {\"timestamp\": ms, \"input_length\": n, \"output_length\": n, \"hash_ids\": [...]})"
    B = opts.block_tokens
    with _open(path) as f:
        for _, where, obj in jsonl_objects(f, f"Mooncake trace {path}", fix):
            if not isinstance(obj, dict):
                raise ConfigError(f"{where}: a line must be a JSON object, not {type(obj).__name__}; {fix}")
            missing = [k for k in _MOONCAKE_FIELDS if k not in obj]
            if missing:
                raise ConfigError(f"{where}: missing field(s) {missing}; {fix}")
            ts = _number(where, "timestamp", obj["timestamp"], 0, False, fix)
            n_in = _number(where, "input_length", obj["input_length"], 1, True, fix)
            n_out = _number(where, "output_length", obj["output_length"], 0, True, fix)
            ids = obj["hash_ids"]
            if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0
                                                    for h in ids):
                raise ConfigError(f"{where}: field 'hash_ids' must be a list of integers >= 0, not {ids!r}; {fix}")
            if ids and (len(ids) - 1) * B >= n_in:
                raise ConfigError(f"{where}: {len(ids)} hash_ids of {B} tokens need more than the input_length of "
                                  f"{n_in} tokens; give --kv-trace-block-tokens the trace's block size (Mooncake: 512) "
                                  "or fix the line.")
            rows.append((ts / 1000.0, n_in, n_out, tuple(ids)))
    return rows, 0


def read_burstgpt(path: Path, opts: TraceOptions) -> tuple[list[tuple], int]:
    """Rows (timestamp s, request tokens, response tokens, ()) of a BurstGPT CSV that pass the
    model and log-type filters, and how many rows the filters left out."""
    rows, skipped = [], 0
    models, log_types = set(), set()
    want_model, want_log = opts.model.strip().lower(), opts.log_type.strip().lower()
    with _open(path) as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        needed = list(_BURSTGPT_NEEDED) + (["Model"] if want_model else []) + (["Log Type"] if want_log else [])
        missing = [c for c in needed if c not in header]
        if missing:
            raise ConfigError(f"BurstGPT trace {path}, line 1: the header lacks column(s) {missing} (it has {header}); "
                              f"BurstGPT's columns are {', '.join(BURSTGPT_COLUMNS)}: fix the header.")
        fix = "fix the row (BurstGPT rows: Timestamp s, Model, Request tokens, Response tokens, Total tokens, Log Type)"
        for row in reader:
            where = f"BurstGPT trace {path}, line {reader.line_num}"
            extra, short = row.get(None) or [], [c for c in header if row.get(c) is None]
            if extra or short:
                raise ConfigError(f"{where}: {len(header) - len(short) + len(extra)} fields where the header has "
                                  f"{len(header)}; {fix}")
            model, log_type = (row.get("Model") or "").strip(), (row.get("Log Type") or "").strip()
            models.add(model)
            log_types.add(log_type)
            if (want_model and model.lower() != want_model) or (want_log and log_type.lower() != want_log):
                skipped += 1
                continue
            values = []
            for name, low, integer in (("Timestamp", 0, False), ("Request tokens", 0, True), ("Response tokens", 0, True)):
                raw = row[name].strip()
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
                values.append(_number(where, name, value, low, integer, fix))
            rows.append((values[0], values[1], values[2], ()))
    if not rows and skipped:
        raise ConfigError(f"BurstGPT trace {path}: no row matches --kv-trace-model {opts.model!r} / --kv-trace-log-type "
                          f"{opts.log_type!r}; the file has models {sorted(models)} and log types {sorted(log_types)}.")
    return rows, skipped


def _from_rows(rows: list[tuple], fmt: str, opts: TraceOptions) -> list[Request]:
    """One request per row, in arrival order (stable for equal times), times from the first."""
    rows = sorted(rows, key=lambda r: r[0])
    if opts.max_requests:
        rows = rows[:opts.max_requests]
    t0 = rows[0][0] if rows else 0.0
    B = opts.block_tokens
    out = []
    for i, (ts, n_in, n_out, ids) in enumerate(rows):
        segments: tuple[Segment, ...] = ()
        if ids:
            segs = [Segment("prefix", f"h{h}", min(B, n_in - k * B)) for k, h in enumerate(ids)]
            if n_in > len(ids) * B:
                segs.append(Segment("new", f"r{i:07d}.in1", n_in - len(ids) * B))
            segments = tuple(segs)
        out.append(_request(i, ts - t0, n_in, n_out, fmt, opts.qos, segments))
    return out


def check_timed(trace: Trace, where: str) -> bool:
    """Whether ``trace`` is timestamped (``arrival_s`` set); ConfigError unless all or none of its
    requests are and each timestamped user has exactly one request."""
    reqs = [r for user in trace.per_user for r in user]
    timed = sum(r.arrival_s is not None for r in reqs)
    if timed and timed != len(reqs):
        raise ConfigError(f"{where}: {timed} of {len(reqs)} requests have arrival_s; give every request one "
                          "(a timestamped trace) or none (closed-loop users).")
    if timed and any(len(user) != 1 for user in trace.per_user):
        raise ConfigError(f"{where}: a timestamped trace must give each user_id exactly one request (a later turn "
                          "cannot arrive before the earlier one is served); split the users or drop arrival_s.")
    return bool(timed)


def load_trace(opts: TraceOptions) -> ReplayTrace:
    """Read ``opts.path`` in its format (``auto``: ``detect_format``). Raises ConfigError naming
    the file, line, field and fix for anything malformed, and for options that do not fit the
    format (filters on a non-BurstGPT file, a request cap on an exact-replay JSONL)."""
    path = Path(opts.path)
    if not path.is_file():
        raise ConfigError(f"--kv-trace {path} is not a file; pass the path of a trace file (our JSONL, a Mooncake "
                          "JSONL or a BurstGPT CSV).")
    try:
        fmt = detect_format(path) if opts.fmt == "auto" else opts.fmt
        if fmt != "burstgpt" and (opts.model or opts.log_type):
            raise ConfigError(f"--kv-trace-model / --kv-trace-log-type filter BurstGPT rows, but {path} is a {fmt} "
                              "trace; drop them or pass a BurstGPT CSV.")
        if fmt == "jsonl":
            if opts.max_requests:
                raise ConfigError("--kv-trace-max-requests cuts Mooncake and BurstGPT traces; a JSONL trace replays "
                                  "whole (exact replay): drop it, or save a shorter trace.")
            base, skipped = load_jsonl(path), 0
            trace = ReplayTrace(base.params, base.per_user, base.documents)
        else:
            rows, skipped = (read_mooncake if fmt == "mooncake" else read_burstgpt)(path, opts)
            if not rows:
                raise ConfigError(f"--kv-trace {path} holds no requests; pass a non-empty {fmt} trace.")
            trace = ReplayTrace(None, [[r] for r in _from_rows(rows, fmt, opts)])
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--kv-trace {path} is not UTF-8 text ({exc.reason}); pass a JSONL or CSV trace "
                          "(gzip-compressed files must end in .gz).") from None
    except (OSError, EOFError, csv.Error) as exc:
        raise ConfigError(f"--kv-trace {path}: cannot read it ({exc}); pass a readable, complete trace file.") from None
    timed = check_timed(trace, f"--kv-trace {path}")
    arrivals = [u[0].arrival_s for u in trace.per_user] if timed else []
    trace.source = {
        "path": str(path.resolve()), "format": fmt, "file_sha256": file_sha256(path), "file_bytes": path.stat().st_size,
        "requests": len(trace), "rows_filtered_out": skipped, "timestamped": timed,
        "span_s": round(max(arrivals), 6) if arrivals else None,
        "block_tokens": opts.block_tokens if fmt == "mooncake" else None,
        "filters": {"model": opts.model or None, "log_type": opts.log_type or None} if fmt == "burstgpt" else None,
        "max_requests": opts.max_requests or None,
    }
    return trace


def check_trace_options(values: dict) -> None:
    """Checks across the ``--kv-trace*`` options (option name -> value); ConfigError naming the fix."""
    source = values.get("trace")
    if source and values.get("sharegpt"):
        raise ConfigError(f"--kv-trace {source} and --kv-sharegpt {values['sharegpt']} each replace the generated "
                          "workload; give one of them (a ShareGPT run saved with --kv-trace-save replays with "
                          "--kv-trace alone).")
    for name in ("trace_save", "io_trace"):
        out = values.get(name)
        if source and out and Path(out).resolve() == Path(source).resolve():
            flag = "--kv-" + name.replace("_", "-")
            raise ConfigError(f"{flag} {out} is the --kv-trace file itself: writing it would destroy the trace being "
                              f"replayed; give {flag} another path.")


def check_trace_settings(trace: Trace, settings) -> None:
    """Options that do not fit a timestamped trace; ConfigError naming the fix."""
    if not check_timed(trace, "--kv-trace"):
        return
    if settings.request_rate > 0:
        raise ConfigError(f"--kv-request-rate {settings.request_rate:g} sets Poisson arrivals, but the trace brings its "
                          "own timestamps; drop --kv-request-rate (use --kv-trace-speedup to replay faster).")
    if settings.autoscale != "off":
        raise ConfigError(f"--kv-autoscale {settings.autoscale} grows closed-loop users, but the trace's requests "
                          "arrive at their timestamps; drop --kv-autoscale.")


class TraceFiles:
    """The session's trace files: traces read from ``--kv-trace`` (cached per options) and traces
    written to ``--kv-trace-save`` (once per distinct trace)."""

    def __init__(self) -> None:
        self._loaded: dict[TraceOptions, ReplayTrace] = {}
        self.saved: dict[str, Path] = {}  # trace sha256 -> file written

    def load(self, settings) -> ReplayTrace:
        """The trace ``--kv-trace`` names, read once per options. Raises ConfigError."""
        opts = TraceOptions.from_settings(settings)
        if opts not in self._loaded:
            self._loaded[opts] = load_trace(opts)
        trace = self._loaded[opts]
        check_trace_settings(trace, settings)
        return trace

    def save(self, trace: Trace, settings) -> Path | None:
        """With ``--kv-trace-save PATH`` write ``trace`` there (our JSONL) unless written already;
        a second, different trace of the session goes to ``PATH`` with its hash's first 12
        digits before the suffix. Returns the file, or None without the option."""
        if not settings.trace_save:
            return None
        sha = trace.sha256()
        if sha not in self.saved:
            path = Path(settings.trace_save)
            if self.saved:
                path = path.with_name(f"{path.stem}.{sha[:12]}{path.suffix}")
            part = path.with_name(f"{path.name}.{os.getpid()}.part")  # renamed when whole: xdist workers
            try:                                                      # may write the same file at once
                save_jsonl(trace, part)
                os.replace(part, path)
            except (ConfigError, OSError) as exc:
                with contextlib.suppress(OSError):
                    part.unlink(missing_ok=True)
                raise ConfigError(f"--kv-trace-save {path}: cannot write it ({exc}); choose a writable path.") from None
            self.saved[sha] = path
        return self.saved[sha]


def source_text(trace_identity: dict, arrivals: dict | None) -> str | None:
    """One line for the terminal: the replayed file (``--kv-trace``, or ``--kv-sharegpt`` whose
    source gives its own ``text``), its hash, requests run and rejected (``arrivals``: the
    summary's open-loop arrivals)."""
    src = trace_identity.get("source")
    if not src:
        return None
    rejected = (arrivals or {}).get("rejected")
    text = src.get("text") or (f"trace {src['path']} ({src['format']}, file sha256 {src['file_sha256'][:16]}...): "
                               f"{src['requests']} requests")
    text += (f", {trace_identity.get('requests_started')} started and {trace_identity.get('requests_finished')} "
             "finished over the run (warm-up included)"
             + ("" if rejected is None else f", {rejected} rejected in the window"))
    if trace_identity.get("exhausted"):
        text += "; the trace ran out before the window's end (figures cover the window up to then)"
    return text
