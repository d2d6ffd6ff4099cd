"""What ``dsw-ray run`` shows: our stage lines, progress and table on the terminal; everything
else (Ray, Ray Data, Ray Train, DeepSpeed, transformers, the workers' output Ray forwards to
the driver, Ray's own C++ lines) in the run directory's ``dsw-ray.log``.

The split is made at the file descriptors: the process's stdout and stderr (1 and 2) point
at the log, and our lines go to copies of the terminal's descriptors taken first. That
catches what Python logging cannot (prints, C++ log lines, child processes). With
``verbose`` a thread copies everything to the terminal as well. Until the run directory is
known (the config, the data and the model are checked first) the log is a temporary file,
copied into ``dsw-ray.log`` once the run directory is claimed.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import traceback

from dsw_ray import progress
from dsw_ray.errors import UserError
from dsw_ray.rundir import LOG_FILE

_session: Session | None = None


class ConsoleHandler(logging.Handler):
    """Our loggers' records on the terminal, one line each (tracebacks stay in the log), drawn
    above any progress bar."""

    def __init__(self, terminal, level: int):
        super().__init__(level)
        self.terminal = terminal
        self.addFilter(lambda record: record.name.startswith("dsw_ray"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = datetime.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
            level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            text = f"{when} {level}{record.getMessage()}"
            if self.terminal.isatty():
                from tqdm import tqdm

                tqdm.write(text, file=self.terminal)
            else:
                self.terminal.write(text + "\n")
                self.terminal.flush()
        except Exception:
            self.handleError(record)


class Session:
    """For the length of a ``with`` block: the process's output to the log, ours to the terminal."""

    def __init__(self, verbose: bool = False, quiet: bool = False):
        self.verbose, self.quiet = verbose, quiet
        self.log_path: str | None = None
        self.failed = False  # a failure named the log: keep it even when it is still the temporary one
        self.lock = threading.Lock()

    def __enter__(self) -> Session:
        global _session
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.saved = (os.dup(1), os.dup(2))  # restored on exit
        self.stdout = os.fdopen(os.dup(1), "w", buffering=1)  # the table
        self.stderr = os.fdopen(os.dup(2), "w", buffering=1)  # stage lines, bars, errors
        descriptor, self.log_path = tempfile.mkstemp(prefix="dsw-ray-", suffix=".log")
        self.sink = descriptor
        if self.verbose:
            reader, self.writer = os.pipe()
            self.tee = threading.Thread(target=self.copy, args=(reader,), name="dsw-ray-tee", daemon=True)
            self.tee.start()
            target = self.writer
        else:
            target = self.sink
        os.dup2(target, 1)
        os.dup2(target, 2)
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        # Every record in the log (through fd 2), ours also on the terminal unless verbose shows the log.
        file_handler = logging.StreamHandler(sys.stderr)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handlers = [file_handler]
        if not self.verbose:
            self.handlers.append(ConsoleHandler(self.stderr, logging.WARNING if self.quiet else logging.INFO))
        for handler in self.handlers:
            root.addHandler(handler)
        logging.captureWarnings(True)
        if not self.quiet:
            progress.show(self.stderr if self.stderr.isatty() and not self.verbose else None)
        _session = self
        return self

    def copy(self, reader: int) -> None:
        """The verbose tee: the process's output to the terminal and the log."""
        while chunk := os.read(reader, 65536):
            os.write(self.saved[1], chunk)
            with self.lock:
                os.write(self.sink, chunk)

    def attach(self, run_dir: str) -> None:
        """From now on the log is ``run_dir/dsw-ray.log`` (appended to: a rerun keeps the earlier
        runs' logs), holding what was logged before the run directory was known. A session that
        runs several jobs (a study's points) moves from one run's log to the next."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        path = os.path.join(os.path.abspath(run_dir), LOG_FILE)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(descriptor, f"\n==== dsw-ray {' '.join(sys.argv[1:])} ({started}, pid {os.getpid()})\n".encode())
        temporary = os.path.basename(self.log_path) != LOG_FILE  # else the last run's log, which stays
        with self.lock, open(self.log_path if temporary else os.devnull, "rb") as earlier, \
                os.fdopen(os.dup(descriptor), "wb") as log:  # fmt: skip
            shutil.copyfileobj(earlier, log)
            os.close(self.sink)
            if temporary:
                os.remove(self.log_path)
            self.sink, self.log_path = descriptor, path
            if not self.verbose:
                os.dup2(descriptor, 1)
                os.dup2(descriptor, 2)

    def report_failure(self, error: BaseException, stage: str | None) -> None:
        """The whole trace to the log, and one short paragraph on the terminal naming the stage,
        the cause and the log."""
        self.failed = True
        traceback.print_exception(error, file=sys.stderr)
        sys.stderr.flush()
        where = f"{stage} failed" if stage else "the run failed"
        print(f"dsw-ray: {where}: {cause_text(error)}\nThe full trace is in {self.log_path}", file=self.stderr)

    def report_interrupt(self, interrupt: BaseException) -> None:
        """The trace to the log, one line on the terminal: where the run stopped, and that a
        rerun resumes (finished stages are kept; the interrupted one restarts)."""
        self.failed = True
        traceback.print_exception(interrupt, file=sys.stderr)
        sys.stderr.flush()
        print(f"\ndsw-ray: {interrupt}; rerun the same command to resume.", file=self.stderr)

    def __exit__(self, *exc) -> None:
        global _session
        ray = sys.modules.get("ray")  # not imported when the job stopped before Ray
        if ray is not None and ray.is_initialized():
            ray.shutdown()  # now, so that Ray's last lines go to the log too
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
        logging.captureWarnings(False)
        progress.show(None, on=False)
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        if self.verbose:
            os.close(self.writer)  # the tee ends at EOF, once no child process holds the pipe either
            self.tee.join(timeout=5)
        for descriptor in self.saved:
            os.close(descriptor)
        self.stdout.close()
        self.stderr.close()
        os.close(self.sink)
        if os.path.basename(self.log_path) != LOG_FILE and not self.failed and not any(exc):
            os.remove(self.log_path)  # never attached and nothing went wrong: nothing worth keeping
        _session = None


def quiet_worker_logs() -> None:
    """Ray worker set-up hook (``ray_session.SETUP_HOOK``), run at every worker's start, so
    this module imports little. Without the dashboard Ray's state API is unavailable, and Ray
    Train's placement-group cleaner warns about it every second of a fine-tune."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def attach_run_log(run_dir: str) -> None:
    """``Session.attach`` when the CLI runs a session (a library caller keeps its own logging)."""
    if _session is not None:
        _session.attach(run_dir)


def cause_text(error: BaseException) -> str:
    """The innermost exception of a chain on one line. Ray wraps a worker's exception in its own
    (``cause``, or only as text: the remote trace, whose last line names it)."""
    chain = [error]
    while True:
        inner = getattr(chain[-1], "cause", None)
        inner = inner if isinstance(inner, BaseException) else chain[-1].__cause__
        if inner is None or inner in chain:
            break
        chain.append(inner)
    cause = next((e for e in reversed(chain) if str(e).strip()), error)  # Ray Data chains empty markers
    text = ANSI.sub("", str(cause)).strip()
    if "\n" in text:  # a remote trace: its last line is the worker's exception, "module.Type: message"
        text = OUR_ERROR.sub("", text.splitlines()[-1])
    elif not isinstance(cause, UserError):
        text = f"{type(cause).__name__}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:400] + " ..."


OUR_ERROR = re.compile(r"^dsw_ray\.errors\.\w+: ")  # a UserError's message needs no type
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the worker names in forwarded traces
