"""A fine-tune's curves as TensorBoard event files: ``RUN_DIR/tensorboard/round-N/METHOD``, one
TensorBoard run per method and round, so ``tensorboard --logdir RUN_DIR`` shows every method
side by side.

Written in the driver from the train stage's ``loss_history.json`` once the stage has
finished, with tensorboardX (which Ray Train already depends on; TensorBoard itself is only
needed to view them). Per optimizer step: ``train/loss`` (the mean loss of its micro
batches) and ``train/learning_rate``; per epoch: ``heldout/loss`` at the epoch's last step.
"""

from __future__ import annotations

import json
import os
import shutil

EVENTS = "tensorboard"  # in the run directory


def step_series(history: list[dict], accumulation: int) -> list[tuple[int, float, float]]:
    """``(optimizer step, mean loss, learning rate)`` per optimizer step: micro batch ``i`` (0-based,
    counted across epochs as DeepSpeed counts them) belongs to step ``i // accumulation + 1``."""
    steps: dict[int, list[dict]] = {}
    for index, entry in enumerate(history):
        steps.setdefault(index // accumulation + 1, []).append(entry)
    return [
        (step, sum(e["loss"] for e in entries) / len(entries), entries[-1]["learning_rate"])
        for step, entries in steps.items()
    ]


def write_training_events(loss_history: str, out_dir: str, accumulation: int, rewrite: bool) -> None:
    """The event files of one fine-tune, from its ``loss_history`` file into ``out_dir``; kept as
    they are unless ``rewrite`` (the fine-tune ran again) or there are none yet."""
    if not rewrite and os.path.isdir(out_dir) and os.listdir(out_dir):
        return
    from tensorboardX import SummaryWriter

    with open(loss_history) as f:
        losses = json.load(f)
    shutil.rmtree(out_dir, ignore_errors=True)
    with SummaryWriter(out_dir) as writer:
        for step, loss, learning_rate in step_series(losses["history"], accumulation):
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/learning_rate", learning_rate, step)
        for entry in losses.get("heldout_history", []):
            writer.add_scalar("heldout/loss", entry["loss"], entry["optimizer_step"])
