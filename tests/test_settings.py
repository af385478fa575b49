"""Settings: one option table, precedence CLI > env > YAML > ini > defaults, and validation."""

from pathlib import Path

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.models import CATALOG, load_models_yaml, resolve_model
from pytest_kvcache.options import OPTION_BY_NAME, OPTIONS
from pytest_kvcache.settings import Settings, build_settings


def test_dataclass_defaults_match_the_option_table():
    defaults = Settings()
    for opt in OPTIONS:
        assert getattr(defaults, opt.name) == opt.default, opt.name
    assert build_settings({}, {}, {}) == defaults


def test_precedence_cli_env_yaml_ini(tmp_path):
    cfg = tmp_path / "kv.yaml"
    cfg.write_text("users: 3\nseed: 3\nduration: 3\n")
    ini = {"users": "4", "seed": "4", "duration": "4", "warmup": "4", "config": str(cfg)}
    env = {"KVCACHE_USERS": "2", "KVCACHE_SEED": "2"}
    s = build_settings({"users": "1"}, ini, env)
    assert (s.users, s.seed, s.duration, s.warmup) == (1, 2, 3.0, 4.0)


def test_threshold_source_is_recorded():
    assert build_settings({"threshold": ["cache.hit_rate>=1%"]}, {}, {}).threshold_source == "cli"
    assert build_settings({}, {"threshold": ["cache.hit_rate>=1%"]}, {}).threshold_source == "ini"


@pytest.mark.parametrize(("name", "value"), [("verify", "true"), ("verify", "yes"), ("verify", True)])
def test_flags(name, value):
    assert getattr(build_settings({name: value}, {}, {}), name) is True


def test_bad_flag():
    with pytest.raises(ConfigError, match="true or false"):
        build_settings({"verify": "maybe"}, {}, {})


@pytest.mark.parametrize(
    ("name", "expected"),
    [("tiny-1b", 24_576), ("gpt-oss-20b", 49_152), ("deepseek-v3", 70_272), ("gpt-oss-120b", 73_728),
     ("mistral-7b", 131_072), ("llama3.1-8b", 131_072), ("qwen3-32b", 262_144),
     ("llama3.1-70b-instruct", 327_680), ("llama2-7b", 524_288)],
)
def test_catalog_bytes_per_token(name, expected):
    assert CATALOG[name].bytes_per_token == expected


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        resolve_model("gpt-9")
    assert "llama3.1-8b" in str(err.value) and "--kv-config" in str(err.value)


def test_custom_models_from_yaml(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  mla-small: {layers: 4, attention: mla, kv_lora_rank: 64, rope_dim: 16}\n")
    assert load_models_yaml(path)["mla-small"].bytes_per_token == 4 * 80 * 2
    path.write_text("models:\n  broken: {layers: 4, kv_heads: -1, head_dim: 64}\n")
    with pytest.raises(ConfigError, match="kv_heads"):
        load_models_yaml(path)
    path.write_text("models:\n  typo: {layerz: 4}\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_models_yaml(path)


@pytest.mark.parametrize("value, recycle", [("on", True), ("off", False)])
def test_file_recycle_reaches_the_file_tier_only(value, recycle):
    from pytest_kvcache.tiers import TIER_CONFIGS, tier_specs

    s = build_settings({"file_recycle": value, "nvme_capacity_gb": "1"}, {}, {})
    specs = {spec.tier: spec for spec in tier_specs(TIER_CONFIGS["cpu+storage"], s)}
    assert specs["nvme"].options == {"recycle": recycle} and specs["cpu"].options == {}
    mock = tier_specs(TIER_CONFIGS["storage-only"], s.replace(nvme_backend="mock"))
    assert mock[0].options == {}
    with pytest.raises(ConfigError, match="on, off"):
        build_settings({"file_recycle": "maybe"}, {}, {})


def test_the_default_cache_dir_is_on_a_drive(tmp_path):
    from pytest_kvcache.settings import default_cache_root

    shm, disk, spare = (tmp_path / n for n in ("shm", "disk", "spare"))
    for d in (shm, disk, spare):
        d.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\ntmpfs {shm} tmpfs rw 0 0\ntmpfs {spare} tmpfs rw 0 0\n")
    assert default_cache_root([str(disk), str(spare)], str(mounts)) == disk
    assert default_cache_root([str(shm), str(disk)], str(mounts)) == disk  # temp dir is memory: /var/tmp
    with pytest.raises(ConfigError) as err:
        default_cache_root([str(shm), str(tmp_path / "gone")], str(mounts))
    assert str(err.value) == (f"no default cache dir on a drive: {shm} is on tmpfs, memory; {tmp_path / 'gone'} "
                              "does not exist. Point --kv-cache-dir at a directory on the drive under test.")


def test_the_default_cache_dir_on_this_machine():
    import tempfile
    from pathlib import Path

    from pytest_kvcache.fsinfo import memory_medium

    temp = tempfile.gettempdir()
    expected = Path(temp) if memory_medium(temp) is None else Path("/var/tmp")
    assert Settings().cache_root == expected
    assert memory_medium(Settings().cache_root) is None
    assert Settings(cache_dir="/dev/shm").cache_root == Path("/dev/shm")  # explicit: checked later


@pytest.mark.parametrize("source", ["cli", "env", "yaml", "ini"])
def test_allow_memory_fs_from_every_source(tmp_path, source):
    cfg = tmp_path / "kv.yaml"
    cfg.write_text("allow_memory_fs: yes\n")  # YAML 1.1 reads yes as true
    cli, ini, env = {}, {}, {}
    if source == "cli":
        cli["allow_memory_fs"] = True
    elif source == "env":
        env["KVCACHE_ALLOW_MEMORY_FS"] = "1"
    elif source == "yaml":
        cli["config"] = str(cfg)
    else:
        ini["allow_memory_fs"] = True
    assert build_settings(cli, ini, env).allow_memory_fs is True
    assert build_settings({}, {}, {}).allow_memory_fs is False
    with pytest.raises(ConfigError, match="--kv-allow-memory-fs"):
        build_settings({}, {}, {"KVCACHE_ALLOW_MEMORY_FS": "maybe"})


SHAREGPT_SAMPLE = Path(__file__).resolve().parent / "data" / "sharegpt_sample.json"  # read when configured
# What a user naturally writes for each option in a --kv-config YAML file, as YAML text, and the
# setting it must give. Every option has an entry (a new option without one fails below).
NATURAL_YAML = {
    "model": ("llama3.1-8b", "llama3.1-8b"),
    "cache_dir": ("/var/tmp", "/var/tmp"),
    "gpu_mem_gb": ("2", 2.0),
    "cpu_mem_gb": ("0.25", 0.25),
    "nvme_capacity_gb": ("8", 8.0),
    "nvme_backend": ("mock", "mock"),
    "users": ("8", 8),
    "duration": ("30", 30.0),
    "warmup": ("0.5", 0.5),
    "seed": ("7", 7),
    "generation_mode": ("realistic", "realistic"),
    "read_model": ("reference", "reference"),
    "chunk_tokens": ("0", 0),
    "requests_per_user": ("20", 20),
    "think_time_scale": ("0", 0.0),
    "max_inflight": ("16", 16),
    "request_rate": ("12.5", 12.5),
    "queue_depth": ("8", 8),
    "max_concurrent_allocs": ("4", 4),
    "qos_aging": ("0", 0.0),
    "io_block_mb": ("1", 1.0),
    "file_io_mode": ("buffered", "buffered"),
    "file_recycle": ("off", "off"),  # YAML reads off as the boolean false
    "profile": ("none", "none"),
    "threshold": ("[nvme.read.p95<=200ms, cache.hit_rate>=50%]", ("nvme.read.p95<=200ms", "cache.hit_rate>=50%")),
    "report": ("out/kv.json", "out/kv.json"),
    "plots": ("plots", "plots"),
    "verify": ("yes", True),  # YAML reads yes as the boolean true
    "allow_memory_fs": ("on", True),  # YAML reads on as the boolean true
    "workload": ("rag", "rag"),
    "system_prompt_tokens": ("2048", 2048),
    "prefix_pool": ("5", 5),
    "prefix_tokens": ("1024", 1024),
    "input_tokens_mean": ("300", 300.0),
    "input_tokens_stddev": ("50.5", 50.5),
    "output_tokens_mean": ("128", 128.0),
    "output_tokens_stddev": ("16", 16.0),
    "rag_documents": ("20", 20),
    "rag_doc_tokens_min": ("1000", 1000),
    "rag_doc_tokens_max": ("3000", 3000),
    "rag_top_k": ("4", 4),
    "rag_user_share": ("0.5", 0.5),
    "autoscale": ("capacity", "capacity"),
    "autoscale_interval": ("1.5", 1.5),
    "autoscale_max_users": ("64", 64),
    "autoscale_target": ("0.6", 0.6),
    "sla_metric": ("qos.interactive.p95", "qos.interactive.p95"),
    "sla_target_ms": ("50", 50.0),
    "trials": ("3", 3),
    "precondition_gb": ("2.5", 2.5),
    "phase": ("decode", "decode"),
    "preset": ("mlperf-closed", "mlperf-closed"),
    "smoke": ("yes", True),
    "trace": ("trace.jsonl", "trace.jsonl"),
    "trace_format": ("mooncake", "mooncake"),
    "trace_block_tokens": ("256", 256),
    "trace_speedup": ("2.5", 2.5),
    "trace_model": ("GPT-4", "GPT-4"),
    "trace_log_type": ("API log", "API log"),
    "trace_qos": ("batch", "batch"),
    "trace_max_requests": ("100", 100),
    "trace_save": ("saved.jsonl", "saved.jsonl"),
    "io_trace": ("io.csv.gz", "io.csv.gz"),
    # the network tiers (options.REMOTE_OPTIONS)
    "redis_url": ("redis://cache-host:6380/1", "redis://cache-host:6380/1"),
    "redis_mem_gb": ("4", 4.0),
    "s3_endpoint": ("http://minio:9000", "http://minio:9000"),
    "s3_bucket": ("kv-bench", "kv-bench"),
    "s3_region": ("eu-west-1", "eu-west-1"),
    "s3_profile": ("lab", "lab"),
    "object_capacity_gb": ("16", 16.0),
    "object_part_mb": ("16", 16.0),
    "remote_timeout": ("2.5", 2.5),
    "sharegpt": (str(SHAREGPT_SAMPLE), str(SHAREGPT_SAMPLE)),
    "tokenizer": ("llama3", "llama3"),
    "sharegpt_conversations": ("100", 100),
    "sharegpt_max_input_tokens": ("4096", 4096),
    "sharegpt_max_output_tokens": ("512", 512),
    "sharegpt_cache": ("'off'", "off"),  # quoted: YAML reads a bare off as the boolean false
    "mpi_timeout": ("90", 90.0),
    "compute_device": ("host", "host"),
    "eviction": ("s3fifo", "s3fifo"),
    "promotion": ("on-hit", "on-hit"),
}
# options that are valid only with another one set (checked across options): that one's value
COMPANIONS = {
    "prefix_pool": {"prefix_tokens": "1024"},
    "prefix_tokens": {"prefix_pool": "5"},
    "input_tokens_stddev": {"input_tokens_mean": "300"},
    "output_tokens_stddev": {"output_tokens_mean": "128"},
}
YAML_OPTIONS = [o for o in OPTIONS if o.name != "config"]  # the config file cannot name itself


def _from_yaml(tmp_path, text: str):
    cfg = tmp_path / "kv.yaml"
    cfg.write_text(text)
    return build_settings({"config": str(cfg)}, {}, {})


@pytest.mark.parametrize("opt", YAML_OPTIONS, ids=lambda o: o.name)
def test_every_option_accepts_its_natural_yaml_value(tmp_path, opt):
    text, expected = NATURAL_YAML[opt.name]
    assert expected != opt.default, "pick a value that differs from the default"
    extra = "".join(f"{k}: {v}\n" for k, v in COMPANIONS.get(opt.name, {}).items())
    assert getattr(_from_yaml(tmp_path, f"{opt.name}: {text}\n{extra}"), opt.name) == expected


@pytest.mark.parametrize("opt", YAML_OPTIONS, ids=lambda o: o.name)
@pytest.mark.parametrize("null", ["null", "~", ""])
def test_yaml_null_leaves_an_option_unset(tmp_path, opt, null):
    ini = {opt.name: {"list": ["cache.hit_rate>=1%"], "flag": True}.get(opt.kind, NATURAL_YAML[opt.name][0]),
           **COMPANIONS.get(opt.name, {})}
    cfg = tmp_path / "kv.yaml"
    cfg.write_text(f"{opt.name}: {null}\n")
    s = build_settings({"config": str(cfg)}, ini, {})
    assert getattr(s, opt.name) == getattr(build_settings({}, ini, {}), opt.name)  # the ini value counts


@pytest.mark.parametrize(("text", "expected"), [("off", "off"), ("on", "on"), ("false", "off"), ("true", "on"),
                                                ("no", "off"), ("yes", "on"), ("'off'", "off"), ("OFF", "off")])
def test_file_recycle_from_yaml(tmp_path, text, expected):
    assert _from_yaml(tmp_path, f"file_recycle: {text}\n").file_recycle == expected


@pytest.mark.parametrize(("text", "expected"), [("yes", True), ("on", True), ("true", True), ("1", True),
                                                ("no", False), ("off", False), ("false", False), ("0", False)])
def test_verify_from_yaml(tmp_path, text, expected):
    assert _from_yaml(tmp_path, f"verify: {text}\n").verify is expected


def test_yaml_thresholds_as_one_string_or_a_block_list(tmp_path):
    assert _from_yaml(tmp_path, "threshold: nvme.read.p95<=200ms\n").threshold == ("nvme.read.p95<=200ms",)
    s = _from_yaml(tmp_path, "thresholds:\n  - nvme.read.p95<=200ms\n  - cache.hit_rate>=50%\n")
    assert s.threshold == ("nvme.read.p95<=200ms", "cache.hit_rate>=50%") and s.threshold_source == "yaml"


@pytest.mark.parametrize(("text", "needle"), [
    ("users: yes", "--kv-users (--kv-config "),
    ("generation_mode: off", "YAML reads"),
    ("verify: maybe", "true or false"),
    ("file_recycle: sometimes", "on, off"),
    ("threshold:\n  - nvme.read.p95: <=200ms", "quote it"),
])
def test_bad_yaml_values_name_the_option_and_the_file(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        _from_yaml(tmp_path, text + "\n")
    assert needle in str(err.value) and "kv.yaml" in str(err.value)


@pytest.mark.parametrize(("value", "expected"), [("off", "off"), ("false", "off"), ("no", "off"), ("on", "on")])
def test_on_off_choice_from_the_command_line_and_environment(value, expected):
    assert build_settings({"file_recycle": value}, {}, {}).file_recycle == expected
    assert build_settings({}, {}, {"KVCACHE_FILE_RECYCLE": value}).file_recycle == expected


def test_yaml_false_for_an_output_path_means_none(tmp_path):
    assert _from_yaml(tmp_path, "report: false\nplots: false\n").report is None
    with pytest.raises(ConfigError, match="must be a path, not True"):
        _from_yaml(tmp_path, "report: yes\n")


# What a user naturally writes for each option in an ini file (text; the ini type of flags is bool).
NATURAL_INI = {**{name: text for name, (text, _) in NATURAL_YAML.items()},
               "threshold": "\n    nvme.read.p95<=200ms\n    cache.hit_rate>=50%", "sharegpt_cache": "off"}


def test_every_option_accepts_its_natural_ini_value(pytester):
    """Through pytest's own ini parsing (linelist and bool types), as a user's pytest.ini is read."""
    from pytest_kvcache.fixtures import SESSION_KEY

    # the cache dir must exist (below); autoscaling conflicts with request_rate's open loop (its own
    # test); a preset refuses the other options (test_a_preset_refuses_...); a trace file is read at
    # start-up and must fit the other options (tests/test_replay.py)
    names = [o.name for o in YAML_OPTIONS if o.name not in ("cache_dir", "autoscale", "preset", "trace")]
    lines = [f"{OPTION_BY_NAME[n].ini} = {NATURAL_INI[n]}" for n in names]
    pytester.makeini("[pytest]\n" + "\n".join(lines) + f"\nkv_cache_dir = {pytester.path}\n")
    settings = pytester.parseconfigure("-p", "no:cacheprovider").stash[SESSION_KEY].settings
    for name in names:
        assert getattr(settings, name) == NATURAL_YAML[name][1], name
    assert settings.cache_dir == str(pytester.path) and settings.threshold_source == "ini"


def test_autoscale_from_ini(pytester):
    from pytest_kvcache.fixtures import SESSION_KEY

    pytester.makeini(f"[pytest]\nkv_autoscale = capacity\nkv_cache_dir = {pytester.path}\n")
    assert pytester.parseconfigure().stash[SESSION_KEY].settings.autoscale == "capacity"


@pytest.mark.parametrize(("text", "expected"), [("off", "off"), ("false", "off"), ("no", "off"), ("on", "on")])
def test_file_recycle_from_ini(pytester, text, expected):
    from pytest_kvcache.fixtures import SESSION_KEY

    pytester.makeini(f"[pytest]\nkv_file_recycle = {text}\nkv_cache_dir = {pytester.path}\n")
    assert pytester.parseconfigure().stash[SESSION_KEY].settings.file_recycle == expected


def test_a_bad_ini_flag_names_its_key(pytester):
    pytester.makeini(f"[pytest]\nkv_verify = maybe\nkv_cache_dir = {pytester.path}\n")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--kv-verify (ini kv_verify) must be true or false" in result.stderr.str()


@pytest.mark.parametrize(("cli", "match"), [
    ({"prefix_tokens": "512"}, "--kv-prefix-pool to the number of shared prefixes"),
    ({"prefix_pool": "4"}, "set --kv-prefix-tokens"),
    ({"prefix_pool": "-1"}, "--kv-prefix-pool .* must be 0 or more"),
    ({"system_prompt_tokens": "-5"}, "--kv-system-prompt-tokens .* must be 0 or more"),
    ({"rag_top_k": "11"}, "lower --kv-rag-top-k or raise --kv-rag-documents"),
    ({"rag_top_k": "3", "rag_documents": "2"}, "larger than --kv-rag-documents 2"),
    ({"input_tokens_stddev": "10"}, "set --kv-input-tokens-mean too"),
    ({"output_tokens_mean": "-1"}, "--kv-output-tokens-mean .* must be 0 or more"),
    ({"rag_doc_tokens_min": "5000", "rag_doc_tokens_max": "100"}, "swap them"),
    ({"workload": "podcast"}, "must be one of chat, rag"),
    ({"workload": "sharegpt"}, "give it with --kv-sharegpt PATH"),
])
def test_bad_workload_options_name_the_fix(cli, match):
    with pytest.raises(ConfigError, match=match):
        build_settings(cli, {}, {})


# -- the load options and the qos: mapping (issue 10 parts 3 and 4) ---------------------------


@pytest.mark.parametrize(("cli", "match"), [
    ({"request_rate": "-1"}, "--kv-request-rate .* must be 0 or more"),
    ({"request_rate": "5", "queue_depth": "0"}, "--kv-queue-depth must be at least 1 with --kv-request-rate"),
    ({"queue_depth": "-2"}, "--kv-queue-depth .* must be 0 or more"),
    ({"max_concurrent_allocs": "-1"}, "--kv-max-concurrent-allocs .* must be 0 or more"),
    ({"qos_aging": "-0.5"}, "--kv-qos-aging .* must be 0 or more"),
])
def test_bad_load_options_are_usage_errors_naming_the_fix(cli, match):
    with pytest.raises(ConfigError, match=match):
        build_settings(cli, {}, {})


def test_qos_classes_from_yaml(tmp_path):
    s = _from_yaml(tmp_path, "qos:\n  interactive: {p95_ms: 20, p99_ms: 40}\n  batch: {share: 0}\n")
    assert s.qos_classes["interactive"].p95_s == pytest.approx(0.02)
    assert s.qos_classes["batch"].share == 0 and s.qos_classes["responsive"].p95_s == pytest.approx(0.1)
    assert s.to_dict()["qos"]["interactive"] == {"p95_ms": 20.0, "p99_ms": 40.0, "share": 0.15}
    assert build_settings({}, {}, {}).qos_classes["interactive"].p95_s == pytest.approx(0.05)


@pytest.mark.parametrize(("text", "match"), [
    ("qos:\n  realtime: {p95_ms: 10}\n", "unknown QoS class 'realtime'.*rename it"),
    ("qos:\n  batch: {p95_ms: -1}\n", "positive number of milliseconds"),
    ("qos: [interactive]\n", "must be a mapping"),
])
def test_bad_qos_yaml_is_a_usage_error(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        _from_yaml(tmp_path, text)


@pytest.mark.parametrize(("cli", "ini", "named"), [
    ({"preset": "mlperf-closed", "users": "8"}, {}, "--kv-users (from command line)"),
    ({"preset": "mlperf-closed"}, {"duration": "30"}, "--kv-duration (from ini kv_duration)"),
    ({"preset": "mlperf-closed", "threshold": ["nvme.read.p95<=1s"]}, {}, "--kv-threshold"),
])
def test_a_preset_refuses_the_options_it_fixes(cli, ini, named):
    with pytest.raises(ConfigError, match="--kv-preset mlperf-closed fixes") as err:
        build_settings(cli, ini, {})
    assert named in str(err.value) and "--kv-cache-dir" in str(err.value)


def test_a_preset_refuses_models_from_a_config_file(tmp_path):
    cfg = tmp_path / "kv.yaml"
    cfg.write_text("preset: mlperf-closed\nmodels:\n  llama3.1-8b: {layers: 1, kv_heads: 1, head_dim: 8}\n")
    with pytest.raises(ConfigError, match="refuses models"):
        build_settings({"config": str(cfg)}, {}, {})


def test_a_preset_takes_where_the_cache_and_results_go(tmp_path):
    s = build_settings({"preset": "mlperf-closed", "smoke": "1", "cache_dir": str(tmp_path), "report": "r.json",
                        "plots": "p"}, {}, {})
    assert s.preset == "mlperf-closed" and s.smoke and s.report == "r.json"
