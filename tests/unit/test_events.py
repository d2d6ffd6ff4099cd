"""The fine-tune's TensorBoard event files, written from a loss history and read back."""

import glob
import json
import os

import pytest

from dsw_ray.events import step_series, write_training_events
from tests.conftest import read_scalars


def history(losses, learning_rates):
    return [{"epoch": 0, "optimizer_step": 0, "loss": loss, "learning_rate": lr} for loss, lr in zip(losses, learning_rates)]


def test_micro_batches_are_grouped_into_the_optimizer_step_they_accumulate_into():
    # accumulation 2: micro batches 0-1 make step 1, 2-3 step 2; the last (unfinished) step 3
    series = step_series(history([1.0, 3.0, 2.0, 4.0, 5.0], [0.1, 0.1, 0.2, 0.2, 0.3]), accumulation=2)
    assert series == [(1, 2.0, 0.1), (2, 3.0, 0.2), (3, 5.0, 0.3)]


def test_event_files_hold_the_series_and_are_rewritten_only_when_the_fine_tune_ran_again(tmp_path):
    path = tmp_path / "loss_history.json"
    heldout = [{"epoch": 1, "optimizer_step": 2, "loss": 1.5}, {"epoch": 2, "optimizer_step": 4, "loss": 1.25}]
    path.write_text(json.dumps({"history": history([4.0, 3.0, 2.0, 1.0], [1e-3, 1e-3, 5e-4, 0.0]), "heldout_history": heldout}))
    out = str(tmp_path / "tensorboard" / "round-1" / "iwsi")
    write_training_events(str(path), out, accumulation=1, rewrite=False)
    (events,) = glob.glob(os.path.join(out, "events.out.tfevents.*"))
    scalars = read_scalars(events)
    assert scalars["train/loss"] == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
    assert [step for step, _ in scalars["train/learning_rate"]] == [1, 2, 3, 4]
    assert [lr for _, lr in scalars["train/learning_rate"]] == pytest.approx([1e-3, 1e-3, 5e-4, 0.0])
    assert scalars["heldout/loss"] == [(2, 1.5), (4, 1.25)]

    path.write_text(json.dumps({"history": history([9.0], [1e-3]), "heldout_history": []}))
    write_training_events(str(path), out, accumulation=1, rewrite=False)  # a skipped stage keeps its files
    assert glob.glob(os.path.join(out, "events.out.tfevents.*")) == [events]
    write_training_events(str(path), out, accumulation=1, rewrite=True)  # a rerun replaces them: one series
    (rewritten,) = glob.glob(os.path.join(out, "events.out.tfevents.*"))
    assert read_scalars(rewritten)["train/loss"] == [(1, 9.0)]
