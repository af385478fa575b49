"""Error types. ``ConfigError`` is bad user input: the plugin turns it into a pytest usage error."""


class ConfigError(ValueError):
    """Bad settings, model, threshold or file given by the user. The message names the fix."""


class BackendError(RuntimeError):
    """A tier backend failed during a run (I/O error, device full, lost file)."""


class BackendFull(BackendError):
    """The tier has no room left (disk full, GPU out of memory): the cache tries the next tier."""
