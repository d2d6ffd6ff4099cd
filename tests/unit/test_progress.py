"""Progress off a terminal: a few plain lines, not redraws."""

import logging

from dsw_ray import progress


def test_off_a_terminal_a_stage_logs_a_line_per_quarter_and_none_once_done(monkeypatch, caplog):
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="dsw_ray.progress")
    tracker = progress.Tracker("round-1/generate", "questions", "candidates", 100, terminal=None)
    for done in (0, 10, 20, 30, 40, 45, 60, 80, 99, 100):
        tracker.update({"done": done, "out": 8 * done})
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(",")[0] for line in lines] == [
        "round-1/generate: 30/100 questions (30%)",
        "round-1/generate: 60/100 questions (60%)",
        "round-1/generate: 80/100 questions (80%)",
    ]
    assert "240 candidates" in lines[0] and "questions/s, about" in lines[0] and lines[0].endswith(" s left")
    assert all("\r" not in line for line in lines)


def test_a_fine_tune_reports_its_total_steps_and_loss(monkeypatch, caplog):
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="dsw_ray.progress")
    tracker = progress.Tracker("round-1/iwsi/train", "steps", None, total=255, terminal=None)  # rows in, until told
    tracker.update({"step": 3, "total": 12, "loss": 1.23456})
    (line,) = [record.getMessage() for record in caplog.records]
    assert line == "round-1/iwsi/train: 3/12 steps (25%), loss 1.2346", "one observation is no rate"


def test_time_left_comes_from_the_rate_since_work_was_first_seen(monkeypatch, caplog):
    """A fine-tune whose workers took 100 s to start, then 1 step a second: its lines promise
    what is left at 1 step/s, not at the 1 step per 100 s of the first step (which promised
    132051 s once); a start slower than a minute still logs that it is alive."""
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="dsw_ray.progress")
    tracker = progress.Tracker("round-1/iwsi/train", "steps", None, total=400, terminal=None)
    clock[0] += 61
    tracker.update({"step": 0})
    clock[0] += 39
    tracker.update({"step": 1})  # a quarter not reached, a minute not passed: no line
    clock[0] += 99
    tracker.update({"step": 100})  # a quarter: 99 steps in 99 s since the first
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "round-1/iwsi/train: 0/400 steps (0%), started 61 s ago, the first batch not done yet",
        "round-1/iwsi/train: 100/400 steps (25%), 1.00 steps/s, about 300 s left",
    ]


def test_on_a_terminal_the_bar_ends_at_the_stage_full_count(monkeypatch):
    """The last steps can land after the last redraw (tqdm redraws at most twice a second)."""
    import io

    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    terminal = io.StringIO()
    tracker = progress.Tracker("round-1/none/train", "steps", None, total=12, terminal=terminal)
    tracker.update({"step": 1, "loss": 2.0})
    tracker.update({"step": 12, "loss": 1.0})
    assert "12/12" not in terminal.getvalue()  # within tqdm's redraw interval
    tracker.close()
    assert "12/12" in terminal.getvalue() and "loss=1.0000" in terminal.getvalue()


def test_busy_seconds_counts_actors_computing_side_by_side_once():
    # Two actors: one computes 0-4 and 6-7, the other 1-3 and 3.5-5; nothing runs 5-6.
    calls = [(6.0, 7.0), (1.0, 3.0), (0.0, 4.0), (3.5, 5.0)]
    assert progress.busy_seconds(calls) == 6.0
    assert progress.busy_seconds([(2.0, 2.5)]) == 0.5
    assert progress.busy_seconds([]) == 0.0
