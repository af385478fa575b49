"""pytest entry point: options, ini keys, markers, hooks and the session report.

Options and ini keys come from ``settings.OPTIONS``; fixtures live in ``fixtures.py`` and are
exposed here so pytest finds them through the ``pytest11`` entry point.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
from pathlib import Path

import pytest

from . import hookspec
from .backends import default_registry
from .backends.gpu import gpu_unavailable_reason
from .capacity import curve_text, curves
from .cluster import connect, launched_under_mpi, rank_dir, rank_seed
from .errors import ConfigError
from .fixtures import (  # noqa: F401  (fixtures are found by name in the plugin module)
    SESSION_KEY,
    adjusted_settings,
    kv_model,
    kv_run,
    kv_session,
    kv_settings,
    kv_tiers,
    kv_workload,
)
from .fsinfo import describe_drive
from .memory import check_host_memory
from .options import OPTIONS
from .plots import plots_available, render_plots
from .remote_fixtures import kv_redis_server, kv_s3_server  # noqa: F401  (fixtures, found by name)
from .report import build_report, scenario_text
from .result import ScenarioResult
from .rundir import check_cache_dir
from .session import KVSession, check_output_path, check_report_path
from .settings import GB, build_settings
from .tiers import TIER_CONFIGS
from .workload.sharegpt import preload as preload_sharegpt

_OLD_SIGTERM = pytest.StashKey[object]()
_RANK_DIR_MADE = pytest.StashKey[Path]()


def _is_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: collect the results a worker measured into this session's report."""
    kv = node.config.stash.get(SESSION_KEY, None)
    results = getattr(node, "workeroutput", {}).get("kvcache_results")
    if kv is not None and results:
        for raw in results:
            kv.results.append(ScenarioResult.from_dict(raw))
        kv.write_report(final=False)


def pytest_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser):
    group = parser.getgroup("kvcache", "KV-cache storage benchmark (pytest-kvcache)")
    for opt in OPTIONS:
        kwargs = {"dest": "kv_" + opt.name, "default": None, "help": f"{opt.help} (ini {opt.ini}, env {opt.env})"}
        if opt.kind == "list":
            kwargs["action"] = "append"
        elif opt.kind == "flag":
            kwargs["action"] = "store_true"
        if opt.choices:
            kwargs["metavar"] = "{" + ",".join(opt.choices) + "}"
        group.addoption(opt.flag, **kwargs)
        ini_type = "linelist" if opt.kind == "list" else "string"  # settings._convert checks and names the key
        parser.addini(opt.ini, help=opt.help, type=ini_type)
    parser.addini("kv_thresholds", help="alias of kv_threshold: one criterion per line", type="linelist")


def _ini_values(config) -> dict:
    values = {opt.name: config.getini(opt.ini) for opt in OPTIONS}
    values["threshold"] = list(values["threshold"]) + list(config.getini("kv_thresholds"))
    return values


def pytest_configure(config):
    config.addinivalue_line("markers", "kv_settings(**settings): this scenario's own settings (its workload or load), "
                                       "applied over the session's, e.g. @pytest.mark.kv_settings(request_rate=20, queue_depth=8)")
    config.addinivalue_line("markers", "kv_defaults(**settings): this scenario's values for the options the user did "
                                       "not set, e.g. @pytest.mark.kv_defaults(duration=8)")
    config.addinivalue_line("markers", "kv_preset(name): a test of the preset `name` (--kv-preset); under a preset, "
                                       "scenarios without this marker are skipped")
    config.addinivalue_line("markers", "kv_criteria(*thresholds): extra pass/fail criteria for this scenario, "
                                       "e.g. @pytest.mark.kv_criteria('nvme.read.p95<=100ms')")
    config.addinivalue_line("markers", "slow: a long scenario (a sweep), skipped unless selected with -m, "
                                       "e.g. pytest scenarios/ -m slow")
    cli = {opt.name: config.getoption("kv_" + opt.name) for opt in OPTIONS}
    try:
        settings = build_settings(cli, _ini_values(config))
        cluster = None
        if launched_under_mpi():
            settings, cluster = _join_cluster(config, settings)
        check_cache_dir(settings.cache_root, settings.nvme_capacity_gb * GB, allow_memory=settings.allow_memory_fs)
        registry = default_registry()
        config.hook.pytest_kvcache_register_backends(registry=registry)
        if settings.nvme_backend not in registry.names():
            raise ConfigError(f"--kv-nvme-backend {settings.nvme_backend!r} is not a known backend; "
                              f"known: {', '.join(registry.names())}.")
        writes = not _is_xdist_worker(config) and (cluster is None or cluster.rank == 0)  # one report per run
        report = Path(settings.report) if settings.report and writes else None
        if report is not None and not report.is_absolute():
            report = Path(config.invocation_params.dir) / report
        if report is not None:
            check_report_path(report)
        if settings.plots and writes:
            check_output_path(Path(config.invocation_params.dir) / settings.plots, "--kv-plots", is_dir=True)
        preload_sharegpt(settings)
        kv = config.stash[SESSION_KEY] = KVSession(settings, registry, report)
        kv.cluster = cluster
        if cluster is not None:
            cluster.before_abort = functools.partial(_before_abort, config)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if str(config.rootpath) == "/":
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            "pytest's rootdir is '/': a path given as '--kv-cache-dir PATH' counts when pytest picks its "
            "rootdir. Write '--kv-cache-dir=PATH' so test ids and saved benchmarks stay stable."), stacklevel=2)


def _join_cluster(config, settings):
    """Under mpirun: this rank's ``cluster.Cluster``, and its settings: the rank's own seed
    (``cluster.rank_seed``) and directory ``<cache dir>/rank_<r>`` (made here if missing,
    removed at the end if it is then empty). A JUnit XML file of rank r > 0 is written as
    ``<name>.rank<r>.xml`` (every rank writes one; their verdicts are the same). Raises
    ConfigError naming the fix."""
    if config.getoption("numprocesses", None) or _is_xdist_worker(config):
        raise ConfigError("pytest-xdist (-n) cannot run under mpirun: the MPI ranks are the parallel clients, each "
                          "running every scenario; drop -n, or run without mpirun.")
    root = settings.cache_root
    check_cache_dir(root, allow_memory=settings.allow_memory_fs)
    cluster = connect(settings.mpi_timeout, settings.seed)
    directory = rank_dir(root, cluster.rank)
    try:
        directory.mkdir()
        config.stash[_RANK_DIR_MADE] = directory
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create this MPI rank's directory {directory} in --kv-cache-dir {root}: "
                          f"{exc.strerror}; choose a directory every rank can write to.") from None
    xml = getattr(config.option, "xmlpath", None)
    if xml and cluster.rank:
        path = Path(xml)
        config.option.xmlpath = str(path.with_name(f"{path.stem}.rank{cluster.rank}{path.suffix}"))
    return settings.replace(seed=rank_seed(settings.seed, cluster.rank), cache_dir=str(directory)), cluster


def _remove_rank_dir(config) -> None:
    made = config.stash.get(_RANK_DIR_MADE, None)
    if made is not None:
        try:
            made.rmdir()  # only when empty: files another run or a user left stay
        except OSError:
            pass


def _before_abort(config, message: str) -> None:
    """``Cluster.abort`` is about to end the job: say why past pytest's output capture, and
    remove this rank's run files and directory (MPI_Abort skips every teardown)."""
    capman = config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    kv = config.stash.get(SESSION_KEY, None)
    if kv is not None:
        kv.close_all()
    _remove_rank_dir(config)


def pytest_collection_modifyitems(config, items):
    """Skip ``slow`` scenarios unless a ``-m`` expression selects tests by marker."""
    if config.getoption("markexpr", ""):
        return
    skip = pytest.mark.skip(reason="slow scenario: run it with -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """Before anything runs: each collected scenario must fit in the host memory there is.

    Checked here, not at configure time, because only the scenarios that will run count (a
    storage-only run needs no CPU tier budget); ``engine.provision`` checks again per scenario.
    """
    config = session.config
    kv = config.stash.get(SESSION_KEY, None)
    if kv is None or _is_xdist_worker(config) or config.option.collectonly:
        return
    problems = []
    for item in session.items:
        name = getattr(item, "callspec", None) and item.callspec.params.get("kv_tiers")
        if name not in TIER_CONFIGS or ("gpu" in TIER_CONFIGS[name].tiers and gpu_unavailable_reason()):
            continue  # not a scenario, or skipped when it runs
        try:
            settings = adjusted_settings(config, name, item)
        except ConfigError:
            continue  # a marker's or hook's bad change fails that scenario when it runs, naming it
        try:
            check_host_memory(name, TIER_CONFIGS[name].tiers, settings)
        except ConfigError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    if problems:
        raise pytest.UsageError("\n".join(problems))


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def pytest_sessionstart(session):
    """SIGTERM ends the session like Ctrl-C: partial report kept, run files removed."""
    if threading.current_thread() is threading.main_thread():
        session.config.stash[_OLD_SIGTERM] = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def pytest_unconfigure(config):
    kv = config.stash.get(SESSION_KEY, None)
    if kv is not None and kv.cluster is not None and not kv.interrupted:
        kv.cluster.finish()  # no rank leaves before rank 0 has written its report and summary
    old = config.stash.get(_OLD_SIGTERM, None)
    if old is not None:
        signal.signal(signal.SIGTERM, old)
    _remove_rank_dir(config)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """The drive under test goes into every saved benchmark, beside the CPU and Python."""
    kv = config.stash.get(SESSION_KEY, None)
    if kv is None:
        return
    try:
        drive = describe_drive(kv.settings.cache_root)
        drive.pop("free_bytes")  # changes every run; would make every comparison warn
    except OSError as exc:
        drive = {"path": str(kv.settings.cache_root), "error": str(exc)}
    machine_info["kvcache"] = {"model": kv.model.name, "drive": drive}


@pytest.hookimpl(optionalhook=True, wrapper=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    """Keep a drive comparison working wherever ``--benchmark-storage`` points.

    Comparing two drives always differs in ``machine_info["kvcache"]["drive"]``, and
    pytest-benchmark's warning about a difference names its storage relative to the current
    directory, which raises ValueError when the storage is elsewhere (its open bug #217,
    INTERNALERROR). In that one case the same warning is given here with the absolute path.
    """
    try:
        return (yield)
    except ValueError:
        storage = Path(str(benchmarksession.storage))
        if storage.is_relative_to(Path.cwd()):
            raise  # not bug #217: not ours to hide
        benchmarksession.logger.warning(
            f"Benchmark machine_info is different. Current: {_json_line(machine_info)} VS saved: "
            f"{_json_line(compared_benchmark.get('machine_info'))} (location: {storage}).")
        return None


def _json_line(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def pytest_report_header(config):
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return None
    s, m = session.settings, session.model
    return (f"kvcache: model {m.name} ({m.bytes_per_token:,} B/token), cache dir {s.cache_root}, seed {s.seed}, "
            f"{s.users} users, {s.duration:g} s window after {s.warmup:g} s warm-up, generation {s.generation_mode}, "
            f"chunk {s.chunk_tokens} tokens, profile {s.profile}" +
            (f", {s.trials} trials per scenario" if s.trials > 1 else "") +
            (f"; preset {s.preset}{' (smoke)' if s.smoke else ''}: its tests set their own options" if s.preset != "none" else ""))


def pytest_sessionfinish(session, exitstatus):
    kv = session.config.stash.get(SESSION_KEY, None)
    if kv is None:
        return
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        kv.interrupted = True
    kv.close_all()
    if _is_xdist_worker(session.config):
        session.config.workeroutput["kvcache_results"] = [r.to_dict() for r in kv.results]
        return
    kv.write_report(final=True)
    if kv.unjudged() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    kv = config.stash.get(SESSION_KEY, None)
    if kv is None or not kv.results:
        return
    tr = terminalreporter
    if kv.cluster is not None and kv.cluster.rank:
        tr.write_line(f"kvcache: MPI rank {kv.cluster.rank} of {kv.cluster.size}: its figures are in rank 0's report "
                      "(summary.cluster.per_rank); the verdicts above are the aggregate's")
        return
    tr.write_sep("=", "kvcache session report" + (f" ({kv.cluster.size} MPI ranks)" if kv.cluster else ""))
    for result in kv.results:
        tr.write_line(scenario_text(result))
        tr.write_line("")
    for sweep, points in curves([r.to_dict() for r in kv.results]).items():
        tr.write_line(curve_text(sweep, points))
        tr.write_line("")
    for criterion, reasons in kv.unjudged():
        tr.write_line(f"FAILED criterion {criterion.text} ({criterion.source}): no scenario of this session could judge "
                      f"it ({'; '.join(reasons)}); select a scenario that produces {criterion.metric} or remove it",
                      red=True)
    s = kv.results[0]
    source = s.trace.get("source")  # --kv-trace
    origin = f"replayed from {source['path']}" if source else f"seed {kv.settings.seed}"
    tr.write_line(f"trace sha256 {s.trace.get('sha256')} (the request list; {origin}, "
                  f"{s.trace.get('requests')} requests); each scenario's workload_sha256 adds its tiers, model and I/O settings")
    for path in kv.trace_files.saved.values():  # --kv-trace-save
        tr.write_line(f"trace saved to {path}: replay it exactly with --kv-trace {path}")
    if kv.report_error is not None:
        tr.write_line(f"JSON report NOT written: {kv.report_error} The figures above are all that is kept "
                      f"of this run.", red=True, bold=True)
    elif kv.report_path is not None:
        tr.write_line(f"JSON report: {kv.report_path} (CSV: {kv.report_path.with_suffix('.csv').name})")
    if kv.settings.plots:
        missing = plots_available()
        if missing:
            tr.write_line(f"no plots: {missing}")
        else:
            data = build_report(kv, final=True)
            data["label"] = kv.settings.cache_root.name or "run"
            target = Path(config.invocation_params.dir) / kv.settings.plots
            try:
                tr.write_line(f"plots: {render_plots([data], target)}")
            except OSError as exc:
                tr.write_line(f"plots NOT written: cannot write in {target}: {exc.strerror or exc}"
                              f"{f' ({exc.filename})' if exc.filename else ''}.", red=True, bold=True)
