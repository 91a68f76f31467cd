"""Built-in ops. Importing this package registers them (see engine.registry)."""

from . import core, eels, replicas  # noqa: F401
