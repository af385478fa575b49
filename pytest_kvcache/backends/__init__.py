"""Backend registry: tier implementations by name, extended through a pluggy hook."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .base import Backend, BackendContext, IOResult, TierSpec

Factory = Callable[[TierSpec, BackendContext], Backend]


class BackendRegistry:
    def __init__(self):
        self._factories: dict[str, Factory] = {}

    def register(self, name: str, factory: Factory) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, spec: TierSpec, ctx: BackendContext) -> Backend:
        try:
            factory = self._factories[spec.backend]
        except KeyError:
            raise ConfigError(
                f"unknown backend {spec.backend!r} for the {spec.tier} tier; known backends: "
                f"{', '.join(self.names())}. A plugin adds one with the pytest_kvcache_register_backends hook."
            ) from None
        return factory(spec, ctx)


def default_registry() -> BackendRegistry:
    from .cpu import CPUBackend
    from .file import FileBackend
    from .gds import GDSBackend
    from .gpu import GPUBackend
    from .mock import MockBackend
    from .npy import NpyBackend
    from .object import ObjectBackend
    from .redis import RedisBackend

    reg = BackendRegistry()
    for cls in (CPUBackend, FileBackend, GDSBackend, GPUBackend, MockBackend, NpyBackend, ObjectBackend, RedisBackend):
        reg.register(cls.name, cls)
    return reg


__all__ = ["Backend", "BackendContext", "BackendRegistry", "IOResult", "TierSpec", "default_registry"]
