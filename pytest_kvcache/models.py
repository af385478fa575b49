"""Model catalog: the architecture facts that decide how many bytes of KV one token needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .yamlfile import read_yaml

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    kv_heads: int = 0
    head_dim: int = 0
    dtype: str = "fp16"
    attention: str = "gqa"  # "gqa"/"mha" (K and V per head) or "mla" (one compressed latent)
    kv_lora_rank: int = 0
    rope_dim: int = 0

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        if self.attention == "mla":
            return self.layers * (self.kv_lora_rank + self.rope_dim) * self.dtype_bytes
        return self.layers * 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "dtype": self.dtype,
            "attention": self.attention,
            "kv_lora_rank": self.kv_lora_rank,
            "rope_dim": self.rope_dim,
            "bytes_per_token": self.bytes_per_token,
        }


def _gqa(name, layers, kv_heads, head_dim):
    return ModelSpec(name=name, layers=layers, kv_heads=kv_heads, head_dim=head_dim)


CATALOG: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _gqa("tiny-1b", 12, 4, 128),
        _gqa("mistral-7b", 32, 8, 128),
        ModelSpec("llama2-7b", layers=32, kv_heads=32, head_dim=128, attention="mha"),
        _gqa("llama3.1-8b", 32, 8, 128),
        _gqa("llama3.1-70b-instruct", 80, 8, 128),
        _gqa("qwen3-32b", 64, 8, 128),
        _gqa("gpt-oss-20b", 24, 8, 64),
        _gqa("gpt-oss-120b", 36, 8, 64),
        ModelSpec("deepseek-v3", layers=61, attention="mla", kv_lora_rank=512, rope_dim=64),
    )
}

_FIELDS = {"layers", "kv_heads", "head_dim", "dtype", "attention", "kv_lora_rank", "rope_dim"}


def model_from_dict(name: str, raw: dict, source: str = "model YAML") -> ModelSpec:
    """Validate one user-defined model; every error names the field to fix."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: model {name!r} must be a mapping of {sorted(_FIELDS)}.")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(
            f"{source}: model {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(_FIELDS)}."
        )
    attention = raw.get("attention", "gqa")
    if attention not in ("gqa", "mha", "mla"):
        raise ConfigError(f"{source}: model {name!r}: attention must be gqa, mha or mla, not {attention!r}.")
    dtype = raw.get("dtype", "fp16")
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"{source}: model {name!r}: dtype must be one of {sorted(DTYPE_BYTES)}, not {dtype!r}.")
    needed = ("layers", "kv_lora_rank", "rope_dim") if attention == "mla" else ("layers", "kv_heads", "head_dim")
    values = {}
    for key in ("layers", "kv_heads", "head_dim", "kv_lora_rank", "rope_dim"):
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{source}: model {name!r}: {key} must be a non-negative integer, not {value!r}.")
        if key in needed and value <= 0:
            raise ConfigError(f"{source}: model {name!r}: {key} is required and must be positive for {attention} attention.")
        values[key] = value
    return ModelSpec(name=name, dtype=dtype, attention=attention, **values)


def load_models_yaml(path: str | Path) -> dict[str, ModelSpec]:
    """Read ``{models: {name: {layers: .., kv_heads: .., head_dim: ..}}}`` (or the bare mapping)."""
    raw = read_yaml(path, "model file")
    if isinstance(raw, dict) and "models" in raw:
        raw = raw["models"]
    if not isinstance(raw, dict):
        raise ConfigError(f"model file {path} must map model names to their architecture.")
    return {name: model_from_dict(str(name), spec, str(path)) for name, spec in raw.items()}


def resolve_model(name: str, extra: dict[str, ModelSpec] | None = None) -> ModelSpec:
    known = {**CATALOG, **(extra or {})}
    try:
        return known[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}. Known models: {', '.join(sorted(known))}. "
            "Pass one of them to --kv-model, or define yours under 'models:' in a --kv-config YAML file."
        ) from None
