"""Evaluate: greedy decoding with the few-shot prompt, graded against the test set's gold answers.

The models of a round (each method's export, and the base model in round 1) are evaluated in
one pass of one pool: starting a pool (a process, its imports) cost more than answering the
test set on this machine, and it was paid once per method.
"""

from __future__ import annotations

import gc
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from dsw_ray import columns as C
from dsw_ray.config import EvaluateConfig, ModelConfig
from dsw_ray.generate import generator
from dsw_ray.models import ModelSpec
from dsw_ray.tasks import Task

MODEL = "model_path"  # in an evaluation pass: the model a test row is answered by


def grade(answers: pd.DataFrame, task: Task, official: bool = False) -> pd.DataFrame:
    """Adds the parsed ``answer`` and whether it is ``correct``; shares the task's parser with
    voting (``official``: the authors' parsing and comparison)."""
    parsed = [task.parse_answer(text, official) for text in answers[C.TEXT]]
    correct = [task.is_correct(p, gold, official) for p, gold in zip(parsed, answers[C.GOLD])]
    return answers.assign(**{C.ANSWER: pd.array(parsed, dtype="string"), C.CORRECT: correct})


class Evaluator:
    """Ray Data callable class: greedy answers of several models, one pool for them all. Each
    row names the model that answers it (``MODEL``); an actor keeps the model it answered
    with last and loads another when a row asks for it. Rows come in model order, so an actor
    loads each model at most once."""

    def __init__(self, generator_class: type, model: ModelSpec, threads: int, **settings):
        """``model``: how every model loads (its path is each row's ``MODEL``)."""
        self.generator_class, self.model, self.settings = generator_class, model, {**settings, "threads": threads}
        self.model_path, self.generator = None, None
        self.load_seconds = 0.0  # spent loading models in calls (``progress.counted`` leaves it out of work)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {}
        for path in dict.fromkeys(batch[MODEL].tolist()):
            if path != self.model_path:
                started = time.time()
                self.generator = None  # the last model's memory is freed before the next loads
                gc.collect()  # a vLLM engine's objects hold references to each other
                self.generator = self.generator_class(replace(self.model, path=path), **self.settings)
                self.model_path = path
                self.load_seconds += time.time() - started
            rows = batch[MODEL] == path
            answers = self.generator({name: column[rows] for name, column in batch.items()})
            answers[MODEL] = [path] * int(rows.sum())
            for name, column in answers.items():
                out.setdefault(name, []).extend(column)
        return out


def models_per_pass(section: EvaluateConfig) -> int | None:
    """How many models one pool may answer for (None: all of them). A vLLM engine on GPUs holds
    its accelerator memory for the life of its process: one pool per model there. On CPU one
    process starts engines one after another in about 2 s each, its memory steady."""
    return 1 if section.backend == "vllm" and section.gpus_per_actor > 0 else None


def evaluate(test_rows, section: EvaluateConfig, model: ModelConfig, task: Task, official: bool):
    """The evaluate stage: one greedy answer per test question by the model each row names
    (``MODEL``; ``model``: the dtype and trust setting they load with), graded (a lazy Ray
    Dataset; rows of one model together)."""
    from dsw_ray.resources import TASK_CPUS, pool_map

    generator_class, settings, placement = generator(section, model, task)
    return pool_map(
        test_rows, Evaluator, {"generator_class": generator_class, **settings}, section, "evaluate", **placement
    ).map_batches(grade, fn_kwargs={"task": task, "official": official}, batch_format="pandas", num_cpus=TASK_CPUS)
