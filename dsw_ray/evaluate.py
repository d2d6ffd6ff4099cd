"""Evaluate: greedy decoding with the few-shot prompt, graded against the test set's gold answers."""

from __future__ import annotations

import pandas as pd

from dsw_ray import columns as C
from dsw_ray.generate import generate
from dsw_ray.tasks import get_task


def grade(answers: pd.DataFrame, task_name: str, integer: bool = False) -> pd.DataFrame:
    """Adds the parsed ``answer`` and whether it is ``correct``; shares the task's parser with
    voting (``integer``: the authors' ``int(float(x))`` comparison)."""
    task = get_task(task_name)
    parsed = [task.parse_answer(text, integer) for text in answers[C.TEXT]]
    correct = [task.is_correct(p, gold, integer) for p, gold in zip(parsed, answers[C.GOLD])]
    return answers.assign(**{C.ANSWER: pd.array(parsed, dtype="string"), C.CORRECT: correct})


def evaluate(test_questions, model_path: str, job):
    """The evaluate stage: one greedy answer per test question, graded (a lazy Ray Dataset)."""
    return generate(test_questions, model_path, job, round_index=0, greedy=True).map_batches(
        grade, fn_kwargs={"task_name": job.task.name, "integer": job.semantics == "official"}, batch_format="pandas"
    )
