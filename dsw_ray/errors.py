"""Errors that are the user's to fix: the CLI prints them as one paragraph, no traceback."""


class UserError(Exception):
    """A mistake in a job file, a dataset or a run directory, with what would fix it."""


class ConfigError(UserError):
    """A job config that does not validate."""


class DataError(UserError):
    """A dataset file that cannot be read as its task expects."""


class BadRow(DataError):
    """One row of a dataset file that its task cannot use; the message is the reason alone.

    Loaders raise it from the code that reads one row and catch it in their loop, which
    knows the file and line: ``task.bad_rows`` then decides between a DataError naming both
    (``fail``) and a quarantined row (``skip``)."""


class StageFailed(Exception):
    """A stage raised something that is not a UserError (often from inside a Ray worker); the
    cause is chained. The CLI shows the stage and the cause in one paragraph, the trace in the log."""

    def __init__(self, stage: str):
        super().__init__(f"{stage} failed")
        self.stage = stage


_received: list[int] = []  # the signals that asked this process to stop, as the handler saw them


def on_signal(signum, frame) -> None:
    """The SIGINT and SIGTERM handler of a run (SIGTERM: what Kubernetes and ``kill`` send): the
    signal is remembered, then raised as KeyboardInterrupt in the main thread, so that both stop
    the run the same way. Remembered because Ray can swallow the exception inside its own calls:
    the stage then stops when its work returns (``stop_requested``), and the exit status says
    which signal it was."""
    _received.append(signum)
    raise KeyboardInterrupt()


def stop_requested() -> int | None:
    """The last signal that asked the run to stop, or None."""
    return _received[-1] if _received else None


class Interrupted(BaseException):
    """The run was stopped by Ctrl-C or SIGTERM while ``stage`` ran (None: between stages).
    A BaseException, as KeyboardInterrupt is: no handler of errors may swallow it."""

    def __init__(self, stage: str | None):
        super().__init__(f"interrupted in {stage}" if stage else "interrupted")
        self.stage = stage
