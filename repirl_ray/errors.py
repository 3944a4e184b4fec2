"""The two kinds of user-facing error: a bad setting and bad input data. Each message is one
line naming the key or the file and row, and what to do.

At the bottom of the import order (tests/unit/test_layering.py), so that every room can raise
them: the sandbox says which `code.sandbox` setting cannot run, a task which problem is unusable.
"""


class ConfigError(ValueError):
    """A one-line, user-facing configuration error (names the config key)."""


class DataError(ValueError):
    """Bad input data: the message names the file, row and field, and what to do."""
