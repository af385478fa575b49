"""Settings: one option table, precedence CLI > env > YAML > ini > defaults, and validation."""

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.models import CATALOG, load_models_yaml, resolve_model
from pytest_kvcache.settings import OPTIONS, Settings, build_settings


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
