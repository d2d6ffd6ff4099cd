"""Progress of the stage running now, in its own units: a bar on a terminal, a few plain lines
elsewhere; and how long its actors computed, for its manifest.

The work happens in Ray actors (generation, scoring and evaluation pools, training workers),
so they report to ``Tally``, a small named actor of the driver's job, and a thread of the
driver reads it twice a second. ``pool_map`` wraps a pool's class in ``counted`` while a
stage is tracked, and each call reports its rows and when it ran; rank 0 of a fine-tune
reports its optimizer steps. Without ``show`` (a library caller, a test calling ``run_job``)
nothing is displayed, but pool stages still report their calls' times: the wall time in
which some actor computed is the stage's ``busy_seconds``, and the rest of the stage's wall
time is its fixed cost (actor start, model loads, Ray Data's planning and reading).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import TextIO

from dsw_ray.stages import BY_NAME

log = logging.getLogger(__name__)

TALLY = "dsw-ray-progress"  # the named actor, in the driver's job namespace
POLL_SECONDS = 0.5
QUIET_SECONDS = 3.0  # a stage shorter than this shows no bar and no progress line
LINE_EVERY_SECONDS = 60.0  # a plain line at least this often while a long stage advances

_display: dict = {"terminal": None, "on": False}
_current: Tracker | None = None
_kept: dict = {}


def show(terminal: TextIO | None, on: bool = True) -> None:
    """Track stages from now on (until ``on`` is False): bars on ``terminal`` (a tty), or plain
    log lines when None."""
    _display.update(terminal=terminal, on=on)


class Tally:
    """Counts the actors add up, values the last report sets (a fine-tune's step and loss), and
    the start and end of every call the pool's actors made."""

    def __init__(self):
        self.counts: dict = {}
        self.calls: list[tuple[float, float]] = []

    def reset(self) -> None:
        self.counts, self.calls = {}, []

    def add(self, started: float, ended: float, **counts) -> None:
        self.calls.append((started, ended))
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def set(self, **values) -> None:
        self.counts.update(values)

    def read(self) -> dict:
        return self.counts

    def read_calls(self) -> list[tuple[float, float]]:
        return self.calls


def busy_seconds(calls: list[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals: the wall time in which at least one
    actor was inside a call (two actors computing side by side count once)."""
    total, reached = 0.0, float("-inf")
    for start, end in sorted(calls):
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total


def tally():
    """The job's Tally, or None when no stage is tracked (looked up from any worker)."""
    import ray

    try:
        return ray.get_actor(TALLY)
    except ValueError:
        return None


def counted(actor_class):
    """``actor_class`` reporting when each call ran and the rows it read (``done``) and wrote (``out``)."""

    class Counted(actor_class):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.tally = tally()

        def __call__(self, batch):
            started, loaded = time.time(), getattr(self, "load_seconds", 0.0)
            out = super().__call__(batch)
            if self.tally is not None:
                # A model the call loaded (an evaluation pool's next model) is a fixed cost, not work.
                started += getattr(self, "load_seconds", 0.0) - loaded
                self.tally.add.remote(
                    started, time.time(), done=len(next(iter(batch.values()))), out=len(next(iter(out.values())))
                )
            return out

    Counted.__name__ = Counted.__qualname__ = actor_class.__name__  # Ray Data names the operator after it
    return Counted


def tracking_pools() -> bool:
    """Whether a pool built now should report (a stage with a unit is tracked)."""
    return _current is not None


@dataclasses.dataclass
class Measured:
    """What a tracked stage's actors reported, once it ends: the wall time in which some actor
    computed (None for a stage whose actors report no calls, such as a fine-tune)."""

    busy_seconds: float | None = None


def expect(total: int) -> None:
    """The current stage's total, where it is not the stage's rows in (scoring reads the valid set
    and the majority candidates only)."""
    if _current is not None:
        _current.total = total


@contextlib.contextmanager
def tracking(name: str, stage: str, total: int | None):
    """Track stage ``stage`` (display name ``name``) while the block runs: its actors report, and
    its progress shows if ``show`` asked for it. Yields a ``Measured``, filled in at the end."""
    global _current
    measured = Measured()
    import ray

    if stage not in BY_NAME or BY_NAME[stage].progress is None or not ray.is_initialized():
        yield measured
        return
    handle = tally()
    if handle is None:
        # num_cpus=0: it must never hold a CPU that Ray Data's tasks need.
        handle = ray.remote(num_cpus=0)(Tally).options(name=TALLY, lifetime=None).remote()
        # The creating handle owns the actor (one found by name does not): held for the
        # driver's life, or the Tally dies when a stage ends while the next, started at once,
        # still finds it by name.
        _kept["tally"] = handle
    ray.get(handle.reset.remote())
    tracker = Tracker(name, BY_NAME[stage].progress, BY_NAME[stage].progress_rows, total, _display["terminal"])
    stop = threading.Event()

    def read() -> None:
        try:
            tracker.update(ray.get(handle.read.remote(), timeout=10))
        except Exception:  # a slow or restarting actor: the next poll tries again
            log.debug("progress poll failed", exc_info=True)

    def poll():
        while not stop.wait(POLL_SECONDS):
            read()

    thread = threading.Thread(target=poll, name="dsw-ray-progress", daemon=True)
    _current = tracker
    if _display["on"]:
        thread.start()
    try:
        yield measured
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        _current = None
        if _display["on"]:
            read()  # the last batches can land between two polls: the bar ends at what was really done
            tracker.close()
        try:
            calls = ray.get(handle.read_calls.remote(), timeout=10)
            measured.busy_seconds = round(busy_seconds(calls), 2) if calls else None
        except Exception:  # the measurement is a report, never a reason to fail a stage
            log.debug("reading the stage's call times failed", exc_info=True)


class Tracker:
    """One stage's display: a tqdm bar on a terminal, else a line at each quarter (and at least
    every minute), none before the stage has run ``QUIET_SECONDS``."""

    def __init__(self, name: str, unit: str, out_unit: str | None, total: int | None, terminal: TextIO | None):
        self.name, self.unit, self.out_unit, self.total = name, unit, out_unit, total
        self.terminal, self.bar = terminal, None
        self.started = self.last_line = time.time()
        self.quarters_shown = 0
        self.first: tuple[float, int] | None = None  # when work was first seen done, and how much

    def update(self, counts: dict) -> None:
        done = counts.get("step", counts.get("done", 0))
        self.total = counts.get("total", self.total)
        extra = {}
        if self.out_unit and "out" in counts:
            extra[self.out_unit] = counts["out"]
        if "loss" in counts:
            extra["loss"] = f"{counts['loss']:.4f}"
        if self.terminal is not None:
            self.draw(done, extra)
        else:
            self.line(done, extra)

    def draw(self, done: int, extra: dict) -> None:
        from tqdm import tqdm

        if self.bar is None:
            if time.time() - self.started < QUIET_SECONDS:
                return
            self.bar = tqdm(
                desc=self.name, total=self.total, unit=f" {self.unit}", file=self.terminal, leave=False,
                mininterval=POLL_SECONDS, smoothing=0,  # the average rate: work arrives in batches
            )  # fmt: skip
        if self.total is not None and self.bar.total != self.total:
            self.bar.total = self.total
        self.bar.set_postfix(extra, refresh=False)
        self.bar.update(done - self.bar.n)

    def line(self, done: int, extra: dict) -> None:
        now = time.time()
        if now - self.started < QUIET_SECONDS:
            return
        if done and self.first is None:
            self.first = (now, done)
        quarters = 4 * done // self.total if self.total else 0
        if quarters <= self.quarters_shown and now - self.last_line < LINE_EVERY_SECONDS:
            return
        if quarters >= 4:  # the stage's done line says the rest
            return
        self.quarters_shown, self.last_line = max(quarters, self.quarters_shown), now
        text = f"{self.name}: {done}" + (f"/{self.total} {self.unit} ({100 * done / self.total:.0f}%)" if self.total else f" {self.unit}")
        if not done:  # a slow start (loading a model, a long first batch) still says it is alive
            log.info("%s, started %.0f s ago, the first batch not done yet", text, now - self.started)
            return
        text += "".join(f", {value} {key}" if key != "loss" else f", loss {value}" for key, value in extra.items())
        # The rate since work was first seen done: the start (actors loading models, Ray Train's
        # workers starting) is no measure of the rest, and one step is no rate at all.
        since, before = self.first
        if now > since and done > before:
            rate = (done - before) / (now - since)
            text += f", {rate:.2f} {self.unit}/s"
            if self.total:
                text += f", about {(self.total - done) / rate:.0f} s left"
        log.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.refresh()  # its final count, whatever the time since the last redraw
            self.bar.close()
