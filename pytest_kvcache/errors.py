"""Error types. ``ConfigError`` is bad user input: the plugin turns it into a pytest usage error."""


class ConfigError(ValueError):
    """Bad settings, model, threshold or file given by the user. The message names the fix."""


class BackendError(RuntimeError):
    """A tier backend failed during a run (I/O error, device full, lost file)."""


class BackendFull(BackendError):
    """The tier has no room left (disk full, GPU out of memory): the cache tries the next tier."""


class IOCut(Exception):
    """A backend call stopped between two transfers because the run is ending (design section
    3a, "End of a run"). ``result`` is an ``IOResult`` of the transfers that completed, with
    ``complete=False``; a cut write has removed what it wrote. Not an error: nothing failed."""

    def __init__(self, result):
        super().__init__("I/O cut short: the run is ending")
        self.result = result
