"""User-facing errors.

Anything a user can fix by changing a setting or a path raises :class:`DpgdError`. The CLI
prints its message and exits with status 2, with no traceback; every other exception is a
bug and keeps its traceback.
"""


class DpgdError(Exception):
    """A problem with the user's input: config, data location, budget plan."""


class ConfigError(DpgdError):
    """A setting is invalid or inconsistent with another one."""


class DataNotFoundError(DpgdError):
    """A data set is not where the config says; the message says where and how to get it."""


class BudgetError(DpgdError):
    """A privacy plan cannot meet its target; raised before any private data is read."""
