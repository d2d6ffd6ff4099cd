"""Evaluate: greedy decoding with the few-shot prompt, graded against the test set's gold answers."""

from __future__ import annotations

import pandas as pd

from dsw_ray import columns as C
from dsw_ray.generate import generate
from dsw_ray.tasks import Task, task_of


def grade(answers: pd.DataFrame, task: Task, official: bool = False) -> pd.DataFrame:
    """Adds the parsed ``answer`` and whether it is ``correct``; shares the task's parser with
    voting (``official``: the authors' parsing and comparison)."""
    parsed = [task.parse_answer(text, official) for text in answers[C.TEXT]]
    correct = [task.is_correct(p, gold, official) for p, gold in zip(parsed, answers[C.GOLD])]
    return answers.assign(**{C.ANSWER: pd.array(parsed, dtype="string"), C.CORRECT: correct})


def evaluate(test_questions, model_path: str, job):
    """The evaluate stage: one greedy answer per test question, graded (a lazy Ray Dataset)."""
    return generate(test_questions, model_path, job, round_index=0, greedy=True).map_batches(
        grade, fn_kwargs={"task": task_of(job.task), "official": job.semantics == "official"}, batch_format="pandas"
    )
