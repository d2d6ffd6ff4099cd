"""Errors that are the user's to fix: the CLI prints them as one paragraph, no traceback."""


class UserError(Exception):
    """A mistake in a job file, a dataset or a run directory, with what would fix it."""


class ConfigError(UserError):
    """A job config that does not validate."""


class DataError(UserError):
    """A dataset file that cannot be read as its task expects."""
