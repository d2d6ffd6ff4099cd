"""Tasks: each owns its few-shot exemplars, prompt, answer parser, grader and data loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dsw_ray.errors import ConfigError
from dsw_ray.tasks import arith, gsm8k, numeric, svamp
from dsw_ray.tasks.numeric import Example, Splits


@dataclass(frozen=True)
class Task:
    """A task as the stages see it. ``load(data_path, num_questions, num_valid, num_test, seed,
    bad_rows)`` returns its splits; a bad data row raises a DataError naming its file and
    line (``bad_rows="fail"``) or is left out and listed in ``Splits.rejected`` ("skip")."""

    name: str
    exemplars: list[tuple[str, str]]
    load: Callable[..., Splits]
    needs_data: bool

    def prompt(self, question: str) -> str:
        return numeric.few_shot_prompt(self.exemplars, question)

    @staticmethod
    def parse_answer(text: str, integer: bool = False) -> str | None:
        return numeric.parse_answer(text, integer)

    @staticmethod
    def is_correct(predicted: str | None, gold, integer: bool = False) -> bool:
        return numeric.is_correct(predicted, gold, integer)


TASKS = {
    "arith": Task("arith", arith.EXEMPLARS, arith.load, needs_data=False),
    "gsm8k": Task("gsm8k", gsm8k.EXEMPLARS, gsm8k.load, needs_data=True),
    "svamp": Task("svamp", svamp.EXEMPLARS, svamp.load, needs_data=True),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of {sorted(TASKS)}.") from None


__all__ = ["Example", "Splits", "Task", "TASKS", "get_task"]
