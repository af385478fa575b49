"""Run settings: the options of ``options.OPTIONS``, merged CLI > environment > YAML > ini > defaults.

Every value is validated here; a bad one raises ``ConfigError`` whose message names the
option and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import field
from pathlib import Path
from typing import Any

from .compute import check_settings as check_compute
from .errors import ConfigError
from .fsinfo import MOUNTS, memory_medium
from .options import OPTION_BY_NAME, OPTIONS, Option
from .remote import check_remote, redact_url
from .workload.sharegpt import check_sharegpt_settings
from .yamlfile import read_yaml

GB = 10**9


class _SettingsMethods:
    """What every ``Settings`` can do; its fields come from ``options.OPTIONS``."""

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def most_users(self) -> int:
        """The most closed-loop users the run may have: ``--kv-users``, or with --kv-autoscale
        ``--kv-autoscale-max-users`` when larger (the trace holds that many users)."""
        return self.users if self.autoscale == "off" else max(self.users, self.autoscale_max_users)

    @property
    def cache_root(self) -> Path:
        """``--kv-cache-dir``, else ``default_cache_root()`` (which may raise ConfigError)."""
        return Path(self.cache_dir) if self.cache_dir else default_cache_root()

    def check_workload(self) -> None:
        """Checks across the workload options; raises ConfigError naming the fix."""
        if self.prefix_tokens and not self.prefix_pool:
            raise ConfigError(f"--kv-prefix-tokens is {self.prefix_tokens} but the prefix pool is empty (--kv-prefix-pool 0); "
                              "set --kv-prefix-pool to the number of shared prefixes (1 or more), or --kv-prefix-tokens 0 "
                              "for no prefix.")
        if self.prefix_pool and not self.prefix_tokens:
            raise ConfigError(f"--kv-prefix-pool is {self.prefix_pool} but its prefixes have 0 tokens; set --kv-prefix-tokens "
                              "to their length (e.g. 1024), or --kv-prefix-pool 0 for no pool.")
        for side in ("input", "output"):
            if getattr(self, f"{side}_tokens_stddev") and not getattr(self, f"{side}_tokens_mean"):
                raise ConfigError(f"--kv-{side}-tokens-stddev is set but --kv-{side}-tokens-mean is 0 (the personas' "
                                  f"ranges); set --kv-{side}-tokens-mean too, or drop the stddev.")
            if 0 < getattr(self, f"{side}_tokens_mean") < 1:
                raise ConfigError(f"--kv-{side}-tokens-mean must be at least 1 token (or 0 for the personas' ranges).")
        if self.rag_top_k > self.rag_documents:
            raise ConfigError(f"--kv-rag-top-k {self.rag_top_k} is larger than --kv-rag-documents {self.rag_documents}: a "
                              "query cannot retrieve more distinct documents than exist; lower --kv-rag-top-k or raise "
                              "--kv-rag-documents.")
        if self.rag_doc_tokens_min and self.rag_doc_tokens_max and self.rag_doc_tokens_min > self.rag_doc_tokens_max:
            raise ConfigError(f"--kv-rag-doc-tokens-min {self.rag_doc_tokens_min} is above --kv-rag-doc-tokens-max "
                              f"{self.rag_doc_tokens_max}; swap them or raise the maximum.")
        if self.rag_user_share > 1:
            raise ConfigError(f"--kv-rag-user-share {self.rag_user_share} is above 1; give the share of RAG users from 0 "
                              "to 1 (0.25 = every fourth user).")
        check_autoscale({o.name: getattr(self, o.name) for o in OPTIONS})
        from .workload.replay import check_trace_options  # --kv-trace* (issue 12)

        check_trace_options({o.name: getattr(self, o.name) for o in OPTIONS})
        check_remote(self)
        check_sharegpt_settings(self)
        check_compute(self.compute_device, self.nvme_backend)

    def to_dict(self) -> dict:
        out = {o.name: getattr(self, o.name) for o in OPTIONS}
        out["threshold"] = list(self.threshold)
        out["cache_dir"] = str(self.cache_root)
        out["redis_url"] = redact_url(self.redis_url)  # a password in the URL never goes into a report
        out["qos"] = {name: {"p95_ms": round(c.p95_s * 1e3, 6), "p99_ms": None if c.p99_s is None else round(c.p99_s * 1e3, 6),
                             "share": c.share} for name, c in self.qos_classes.items()}
        return out

    @property
    def qos_classes(self) -> dict:
        """The QoS classes (``load.qos.QoSClass``) with the YAML ``qos:`` overrides applied."""
        from .load.qos import load_qos

        return load_qos(self.qos or None)


_KIND_TYPES = {"int": int, "count": int, "posint": int, "nonneg": float, "posfloat": float, "flag": bool,
               "choice": str, "str": str, "path": str, "list": tuple}
_SETTINGS_DOC = """One run's settings (frozen): a field per ``options.OPTIONS`` entry with its default, plus
``models`` (custom models from YAML), ``qos`` (QoS class overrides from YAML), ``threshold_source``
(cli, env, yaml, ini or default) and ``explicit`` (the options the user set, from any source)."""
Settings = dataclasses.make_dataclass(
    "Settings",
    [(o.name, _KIND_TYPES[o.kind], field(default=o.default)) for o in OPTIONS] + [
        ("models", dict, field(default_factory=dict, compare=False)),
        ("qos", dict, field(default_factory=dict)),
        ("threshold_source", str, field(default="default", compare=False)),
        ("explicit", frozenset, field(default=frozenset(), compare=False)),
    ],
    bases=(_SettingsMethods,), frozen=True, namespace={"__module__": __name__, "__doc__": _SETTINGS_DOC})


def default_cache_root(candidates=None, mounts_file: str = MOUNTS) -> Path:
    """Where the run goes without ``--kv-cache-dir``: the first directory of ``candidates``
    (default: the system temp dir, then ``/var/tmp``) that exists and is not memory.

    On many distributions the temp dir is tmpfs, whose "disk" is RAM. Raises ConfigError, naming
    ``--kv-cache-dir``, when every candidate is memory or missing.
    """
    if candidates is None:
        candidates = (tempfile.gettempdir(), "/var/tmp")
    seen = []
    for path in candidates:
        memory = memory_medium(path, mounts_file) if os.path.isdir(path) else None
        if os.path.isdir(path) and memory is None:
            return Path(path)
        seen.append(f"{path} is on {memory}, memory" if memory else f"{path} does not exist")
    raise ConfigError(f"no default cache dir on a drive: {'; '.join(seen)}. Point --kv-cache-dir at a "
                      "directory on the drive under test.")


TRUE_WORDS = ("1", "true", "yes", "on", "y")
FALSE_WORDS = ("0", "false", "no", "off", "n")


def _truth(raw: Any) -> bool | None:
    """A yes/no answer as users write it (YAML/ini boolean, 1/0, or a word such as on, off,
    yes, no), or None when ``raw`` is not one."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    return True if text in TRUE_WORDS else False if text in FALSE_WORDS else None


_YAML_BOOL_HINT = " (YAML reads on, off, yes, no, true and false as booleans; quote the value)"


def _convert(opt: Option, raw: Any, source: str) -> Any:
    """Check and convert one raw value (text from the CLI, env or ini; any YAML scalar or list).

    Accepts what a user naturally writes for the option's kind: YAML booleans (YAML 1.1 reads
    on/off/yes/no as booleans) for a flag and for an on/off choice, numbers as numbers or
    text, a list or one string (lines or ``;``-separated) for criteria. Raises ConfigError.
    """
    where = f"{opt.flag} ({source})"
    if opt.kind == "list":
        if isinstance(raw, str):
            items = [line.strip() for line in raw.replace(";", "\n").splitlines()]
        elif isinstance(raw, (list, tuple)):
            if any(isinstance(x, (dict, list)) for x in raw):
                raise ConfigError(f"{where}: each criterion is one string such as 'nvme.read.p95<=200ms'; in YAML, "
                                  f"quote it if it contains ': ' (a YAML mapping), not {raw!r}.")
            items = [str(x).strip() for x in raw if x is not None]
        else:
            raise ConfigError(f"{where} must be a list of criteria such as 'nvme.read.p95<=200ms'.")
        return tuple(i for i in items if i)
    if opt.kind == "flag":
        truth = _truth(raw) if str(raw).strip() else False
        if truth is None:
            raise ConfigError(f"{where} must be true or false (yes/no, on/off), not {raw!r}.")
        return truth
    if opt.kind in ("str", "path"):
        if raw is None or raw == "" or (raw is False and opt.kind == "path"):  # '' or false: no path
            return None if opt.kind == "path" else opt.default
        if isinstance(raw, (bool, list, dict)):
            raise ConfigError(f"{where} must be a {'path' if opt.kind == 'path' else 'name'}, not {raw!r}"
                              f"{_YAML_BOOL_HINT if isinstance(raw, bool) else ''}.")
        return str(raw)
    if opt.kind == "choice":
        if set(opt.choices) == {"on", "off"}:
            truth = _truth(raw)
            if truth is not None:
                return "on" if truth else "off"
        value = str(raw).strip().lower()
        if isinstance(raw, bool) or value not in opt.choices:
            raise ConfigError(f"{where} must be one of {', '.join(opt.choices)}, not {raw!r}"
                              f"{_YAML_BOOL_HINT if isinstance(raw, bool) else ''}.")
        return value
    if isinstance(raw, bool):
        raise ConfigError(f"{where} must be a number, not {raw!r}.")
    try:
        number = float(str(raw).strip()) if not isinstance(raw, (int, float)) else raw
    except ValueError:
        raise ConfigError(f"{where} must be a number, not {raw!r}; for example {opt.flag} {opt.default}.") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number, not {raw!r}.")
    if opt.kind in ("int", "posint", "count"):
        if number != int(number):
            raise ConfigError(f"{where} must be a whole number, not {raw!r}.")
        number = int(number)
        if opt.kind == "posint" and number < 1:
            raise ConfigError(f"{where} must be at least 1, not {raw!r}; for example {opt.flag} {opt.default}.")
        if (opt.kind == "count" or opt.name in ("chunk_tokens", "max_inflight", "queue_depth", "max_concurrent_allocs")) and number < 0:
            raise ConfigError(f"{where} must be 0 or more, not {raw!r}.")
        return number
    number = float(number)
    if opt.kind == "posfloat" and number <= 0:
        raise ConfigError(f"{where} must be greater than 0, not {raw!r}; for example {opt.flag} {opt.default}.")
    if opt.kind == "nonneg" and number < 0:
        raise ConfigError(f"{where} must be 0 or more, not {raw!r}; for example {opt.flag} {opt.default}.")
    return number


def load_yaml_config(path: str | Path) -> dict:
    """Read a settings YAML: option names as keys (``-`` or ``_``), plus optional ``models:`` and
    ``qos:`` (class name -> ``{p95_ms, p99_ms, share}``, see ``load.qos.load_qos``)."""
    raw = read_yaml(path, "--kv-config")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"--kv-config {path} must be a mapping of option names to values.")
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name.startswith("kv_"):
            name = name[3:]
        if name in ("thresholds", "criteria"):
            name = "threshold"
        if name not in ("models", "qos") and (name not in OPTION_BY_NAME or name == "config"):
            allowed = sorted(n for n in OPTION_BY_NAME if n != "config") + ["models", "qos"]
            raise ConfigError(f"--kv-config {path}: unknown key {key!r}. Allowed keys: {', '.join(allowed)}.")
        out[name] = value
    return out


def build_settings(cli: dict, ini: dict, env: dict | None = None) -> Settings:
    """Merge the sources (each maps option name -> raw value or None) and validate."""
    from .models import load_models_yaml, model_from_dict, resolve_model

    env = os.environ if env is None else env
    env_values = {o.name: env[o.env] for o in OPTIONS if env.get(o.env) not in (None, "")}

    def pick(name: str):
        for source, values in (("command line", cli), ("environment", env_values)):
            if values.get(name) not in (None, (), []):
                return source, values[name]
        return None

    config_path = pick("config")
    config_path = config_path[1] if config_path else ini.get("config")
    yaml_values: dict = load_yaml_config(config_path) if config_path else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        found = pick(opt.name)
        if found is None and yaml_values.get(opt.name) is not None:
            found = (f"--kv-config {config_path}", yaml_values[opt.name])
        if found is None and ini.get(opt.name) not in (None, "", [], ()):
            found = ("ini " + opt.ini, ini[opt.name])
        values[opt.name] = _convert(opt, found[1], found[0]) if found else opt.default
        sources[opt.name] = found[0] if found else "default"

    models = {}
    raw_models = yaml_values.get("models")
    if raw_models is not None:
        if not isinstance(raw_models, dict):
            raise ConfigError(f"--kv-config {config_path}: 'models' must map model names to their architecture.")
        models = {str(k): model_from_dict(str(k), v, str(config_path)) for k, v in raw_models.items()}
    if values["model"] and str(values["model"]).endswith((".yaml", ".yml")):
        models.update(load_models_yaml(values["model"]))
        values["model"] = next(iter(models)) if len(models) == 1 else values["model"]
    resolve_model(values["model"], models)  # unknown model -> ConfigError listing the known ones
    if values["report"] and str(values["report"]).endswith(".csv"):
        raise ConfigError("--kv-report names the JSON report (a CSV is written beside it); give it a .json name.")
    qos = yaml_values.get("qos") or {}
    if qos:
        from .load.qos import load_qos

        try:
            load_qos(qos)
        except ConfigError as exc:
            raise ConfigError(f"--kv-config {config_path}: {exc}") from None
    if values["request_rate"] > 0 and values["queue_depth"] < 1:
        raise ConfigError(f"--kv-queue-depth must be at least 1 with --kv-request-rate {values['request_rate']:g} "
                          "(open-loop arrivals wait in a bounded queue); for example --kv-queue-depth 64.")
    if values["io_block_mb"] < 0.004:
        raise ConfigError("--kv-io-block-mb must be at least 0.004 (one 4 KiB block).")
    source = sources["threshold"]
    label = next((short for prefix, short in (("command line", "cli"), ("environment", "env"), ("--kv-config", "yaml"),
                                              ("ini", "ini")) if source.startswith(prefix)), source)
    explicit = frozenset(n for n, src in sources.items() if src != "default")
    if values["preset"] != "none":
        check_preset(values["preset"], {n: sources[n] for n in explicit}
                     | {f"{k} (a --kv-config section)": f"--kv-config {config_path}" for k in ("models", "qos")
                        if yaml_values.get(k)})
    settings = Settings(**values, models=models, qos=dict(qos), threshold_source=label, explicit=explicit)
    settings.check_workload()
    return settings


def check_autoscale(values: dict) -> None:
    """Checks of the --kv-autoscale options (a dict of option values); raises ConfigError naming the fix."""
    from .load.autoscaler import parse_sla_metric

    parse_sla_metric(values["sla_metric"])  # a bad metric is an error even with autoscale off
    if values["autoscale"] == "off":
        return
    if values["request_rate"] > 0:
        raise ConfigError(f"--kv-autoscale {values['autoscale']} changes the number of closed-loop users, but "
                          f"--kv-request-rate {values['request_rate']:g} makes arrivals open-loop; drop one of them.")
    if values["autoscale_max_users"] < values["users"]:
        raise ConfigError(f"--kv-autoscale-max-users {values['autoscale_max_users']} is below --kv-users "
                          f"{values['users']} (the starting count); raise it or lower --kv-users.")
    if values["autoscale"] == "qos" and values["autoscale_target"] <= 0.1:
        raise ConfigError(f"--kv-autoscale-target {values['autoscale_target']:g} leaves no room below the low mark "
                          "(target - 0.1); give a saturation above 0.1, e.g. 0.8.")


# what the MLPerf Storage rules let a CLOSED submission choose (design section 10): where the
# cache and the results go (and the client topology, which a single-host run has no option
# for). A config file may set these only (its ``models:`` and ``qos:`` are refused: the rules
# allow no config of the workload). The nvme backend is how we do the I/O, not the workload: ``npy`` runs
# the preset with the reference's file I/O for comparison.
PRESET_FREE = frozenset({"preset", "smoke", "config", "cache_dir", "report", "plots", "allow_memory_fs", "nvme_backend",
                         "mpi_timeout"})


def check_preset(preset: str, explicit_sources: dict) -> None:
    """Refuse options a preset fixes (``explicit_sources``: option name -> where it was set).
    Raises ConfigError naming each and why."""
    fixed = sorted(n for n in explicit_sources if n not in PRESET_FREE)
    if fixed:
        where = "; ".join(f"{OPTION_BY_NAME[n].flag if n in OPTION_BY_NAME else n} (from {explicit_sources[n]})"
                          for n in fixed)
        raise ConfigError(f"--kv-preset {preset} fixes every setting of the MLPerf Storage CLOSED options (model, users, "
                          f"tier budgets, allocations, window, seed, trials, criteria ...), so a result stays comparable "
                          f"with other submissions; it refuses {where}. Drop them (only --kv-cache-dir, --kv-report, "
                          "--kv-plots, --kv-allow-memory-fs, --kv-nvme-backend, --kv-mpi-timeout and --kv-smoke may be set, also in a "
                          "--kv-config file, which may not define models or QoS classes), or run without --kv-preset.")


def validate_changes(changes: dict, source: str) -> dict:
    """Check per-scenario setting changes (from a hook) as strictly as the command line."""
    out = {}
    for name, value in changes.items():
        opt = OPTION_BY_NAME.get(name)
        if opt is None or name in ("config", "report"):
            raise ConfigError(f"{source}: {name!r} is not a setting a scenario can change; "
                              f"use one of {', '.join(n for n in OPTION_BY_NAME if n not in ('config', 'report'))}.")
        out[name] = _convert(opt, value, source)
    return out
