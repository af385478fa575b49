"""Reading a user's YAML file safely, with errors that say which file and how to fix it."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import ConfigError


def read_yaml(path: str | Path, role: str):
    """``yaml.safe_load`` of ``path`` (never arbitrary objects); ``role`` names it in errors."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {role} {path}: {exc.strerror}; pass an existing YAML file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{role} {path} is not a text file; pass a YAML file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{role} {path} is not valid YAML; fix its syntax: {exc}") from None
