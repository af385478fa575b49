"""State of one pytest session: settings, model, backends, workload traces and results."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .backends import BackendRegistry
from .criteria import Criterion, builtin_criteria, merge, profile_criteria
from .errors import ConfigError
from .export import to_csv
from .iotrace import check_io_trace_path
from .judging import unjudged
from .models import ModelSpec, resolve_model
from .report import build_report, write_json
from .result import ScenarioResult
from .settings import Settings
from .workload import (
    MixedParams,
    PromptParams,
    RagParams,
    Trace,
    doc_token_range,
    generate_mixed,
    generate_prompts,
    generate_rag_trace,
)
from .workload.replay import TraceFiles
from .workload.sharegpt import ShareGPTParams, generate_sharegpt, sharegpt_params


def workload_params(settings: Settings) -> PromptParams | RagParams | MixedParams | ShareGPTParams:
    """The generator parameters the workload options give (see ``trace_for``)."""
    if settings.workload == "sharegpt":
        return sharegpt_params(settings)
    if settings.workload == "mixed":
        return MixedParams(chat=_chat_params(settings), rag=_rag_params(settings),
                           rag_user_share=settings.rag_user_share)
    return _rag_params(settings) if settings.workload == "rag" else _chat_params(settings)


def _common_params(settings: Settings) -> dict:
    # with --kv-autoscale the trace holds the most users the pool may reach: user k's requests
    # are the same whatever the pool's size when k joins
    return {"seed": settings.seed, "users": settings.most_users, "requests_per_user": settings.requests_per_user,
            "system_prompt_tokens": settings.system_prompt_tokens, "think_time_scale": settings.think_time_scale}


def _rag_params(settings: Settings) -> RagParams:
    lo, hi = doc_token_range(resolve_model(settings.model, settings.models).layers)
    lo, hi = settings.rag_doc_tokens_min or lo, settings.rag_doc_tokens_max or hi
    if settings.rag_doc_tokens_min and not settings.rag_doc_tokens_max:
        hi = max(hi, lo)  # only a minimum given: the default maximum, or the minimum if above it
    elif settings.rag_doc_tokens_max and not settings.rag_doc_tokens_min:
        lo = min(lo, hi)
    return RagParams(documents=settings.rag_documents, doc_tokens=(lo, hi), top_k=settings.rag_top_k,
                     **_common_params(settings))


def _chat_params(settings: Settings) -> PromptParams:
    return PromptParams(input_mean=settings.input_tokens_mean or None, input_stddev=settings.input_tokens_stddev,
                        output_mean=settings.output_tokens_mean or None, output_stddev=settings.output_tokens_stddev,
                        prefix_pool=settings.prefix_pool, prefix_tokens=settings.prefix_tokens,
                        **_common_params(settings))


def check_output_path(path: Path, option: str, is_dir: bool = False) -> None:
    """Raise ConfigError, naming the fix, unless this process can write a file (or, with
    ``is_dir``, fill a directory) at ``path``.

    A file's path must not be a directory, a directory's must not be a file, and the nearest
    existing ancestor must be a directory this process can create files in (missing
    directories are made when the output is written). Tried with an anonymous temporary
    file, so nothing is left behind.
    """
    if is_dir and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a directory (it is created if missing).")
    if not is_dir and path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file name, such as {path / 'kvcache-report.json'}.")
    parent = path if is_dir else path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a directory (a file stands where a directory of the path "
                          f"should be); choose another path.")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create files in {parent} ({exc.strerror}); choose a directory "
                          f"you can write to, or fix its permissions.") from None


def check_report_path(path: Path) -> None:
    """``--kv-report``: the JSON report and the CSV beside it can be written (ConfigError if not)."""
    check_output_path(path, "--kv-report")
    csv = path.with_suffix(".csv")
    if csv.is_dir():
        raise ConfigError(f"--kv-report {path}: the CSV written beside it, {csv}, is a directory; "
                          f"choose another report name or move that directory.")


class KVSession:
    def __init__(self, settings: Settings, registry: BackendRegistry, report_path: Path | None):
        self.settings = settings
        self.registry = registry
        self.report_path = report_path
        self.report_error: str | None = None  # where and why the last write of the report failed
        self.model: ModelSpec = resolve_model(settings.model, settings.models)
        self.criteria: list[Criterion] = self.criteria_for(settings)
        self.results: list[ScenarioResult] = []
        self.interrupted = False
        self.open_tiers: list = []  # provisioned and not yet closed: closed at session end
        self._traces: dict[str, Trace] = {}
        self.trace_files = TraceFiles()  # --kv-trace read, --kv-trace-save written (workload/replay.py)
        for option, path in (("--kv-trace-save", settings.trace_save), ("--kv-io-trace", settings.io_trace)):
            if path:
                check_output_path(Path(path), option)
        if settings.io_trace:
            check_io_trace_path(settings.io_trace)
        if settings.trace:  # a malformed file is a usage error before any scenario runs
            self.trace_files.load(settings)
        self.suite_properties_recorded = False
        self.cluster = None  # cluster.Cluster under mpirun: this rank; None in a plain run

    def suite_properties(self) -> dict:
        """JUnit testsuite properties: what was tested, with what, from which seed."""
        s = self.settings
        return {"kv_model": self.model.name, "kv_bytes_per_token": self.model.bytes_per_token,
                "kv_cache_dir": str(s.cache_root), "kv_seed": s.seed, "kv_users": s.users,
                "kv_duration_s": s.duration, "kv_generation_mode": s.generation_mode,
                "kv_chunk_tokens": s.chunk_tokens, "kv_profile": s.profile}

    @staticmethod
    def criteria_for(settings: Settings) -> list[Criterion]:
        """Built-in defaults (dropped entries, memory and page cache never passed as a drive),
        the profile's, the user's thresholds and, with --kv-verify, zero mismatches (a user's
        criterion on a default's metric and direction replaces it)."""
        return merge(builtin_criteria() + profile_criteria(settings.profile),
                     [Criterion.parse(t, settings.threshold_source) for t in settings.threshold]
                     + ([Criterion.parse("verify.mismatches==0", "verify")] if settings.verify else []))

    def trace_for(self, settings: Settings) -> Trace:
        """The seeded trace of ``settings`` (a pure function of them; cached per parameters):
        ``--kv-workload chat`` runs the prompt generator (personas' conversations with the
        optional system prompt, prefix pool and length distributions), ``rag`` the RAG
        workload, ``mixed`` both (``workload.mixed``: RAG and chat users by
        ``--kv-rag-user-share``), ``sharegpt`` the conversations of ``--kv-sharegpt``
        (``workload.sharegpt``); ``--kv-trace`` replays a file instead (``workload.replay``).
        ``--kv-trace-save`` writes the trace. Raises ConfigError naming the fix."""
        if settings.trace:
            trace = self.trace_files.load(settings)
        else:
            params = workload_params(settings)
            key = type(params).__name__ + json.dumps(params.to_dict(), sort_keys=True)
            if key not in self._traces:
                self._traces[key] = (generate_rag_trace(params)[1] if isinstance(params, RagParams)
                                     else generate_mixed(params) if isinstance(params, MixedParams)
                                     else generate_sharegpt(params) if isinstance(params, ShareGPTParams)
                                     else generate_prompts(params))
            trace = self._traces[key]
        self.trace_files.save(trace, settings)
        return trace

    def unjudged(self) -> list[tuple[Criterion, list[str]]]:
        """The user's criteria that no scenario of this session could judge, with the reasons;
        each fails the session (a gate that judged nothing must not pass)."""
        return unjudged(self.criteria, [r.outcomes for r in self.results])

    def close_all(self) -> None:
        """Remove every run directory still open (after Ctrl-C pytest may skip teardown)."""
        while self.open_tiers:
            self.open_tiers.pop().close()

    def add(self, result: ScenarioResult) -> None:
        """Keep a result and rewrite the report at once, so a crash later loses nothing."""
        self.results.append(result)
        self.write_report(final=False)

    def write_report(self, final: bool) -> Path | None:
        """Write the JSON report and the CSV beside it; returns the path, or None if not written.

        A failed write never raises (the results stay in memory for the terminal summary):
        ``report_error`` says where and why; a later successful write clears it.
        """
        if self.report_path is None or not self.results:
            return None
        data = build_report(self, final)
        try:
            write_json(self.report_path, data)
            self.report_path.with_suffix(".csv").write_text(to_csv([data]))
        except OSError as exc:
            try:
                check_report_path(self.report_path)  # names the cause and the fix where it can
                where = exc.filename2 or exc.filename
                self.report_error = (f"cannot write {self.report_path}: {exc.strerror or exc}"
                                     + (f" ({where})." if where else "."))
            except ConfigError as cause:
                self.report_error = str(cause)
            return None
        self.report_error = None
        return self.report_path
