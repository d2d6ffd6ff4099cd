"""Tasks: each owns its few-shot exemplars, prompt, answer parser, grader and data loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dsw_ray.errors import ConfigError
from dsw_ray.tasks import anli, answers, arith, choice, gsm8k, numeric, openbookqa, strategyqa, svamp
from dsw_ray.tasks.numeric import Example, Splits


@dataclass(frozen=True)
class Task:
    """A task as the stages see it (picklable: actors receive it whole). ``load(data_path,
    num_questions, num_valid, num_test, seed, bad_rows)`` returns its splits; a bad data row
    raises a DataError naming its file and line (``bad_rows="fail"``) or is left out and
    listed in ``Splits.rejected`` ("skip"). ``answer_type`` is ``number``, ``choice`` (a
    letter among ``letters``) or ``text``."""

    name: str
    exemplars: list[tuple[str, str]]
    load: Callable[..., Splits]
    needs_data: bool
    answer_type: str = "number"
    letters: str = ""

    def prompt(self, question: str) -> str:
        return numeric.few_shot_prompt(self.exemplars, question)

    def parse_answer(self, text: str, official: bool = False) -> str | None:
        """The canonical answer of a candidate; ``official``: the authors' parsing (see answers)."""
        if self.answer_type == "choice":
            return choice.parse_answer(text, self.letters, official)
        if self.answer_type == "text":
            return answers.parse_text(text, official)
        return numeric.parse_answer(text, official)

    @staticmethod
    def is_correct(predicted: str | None, gold, official: bool = False) -> bool:
        return answers.is_correct(predicted, gold, official)


def choice_task(name: str, module, letters: str, load=None) -> Task:
    return Task(name, module.EXEMPLARS, load or module.load, needs_data=True, answer_type="choice", letters=letters)


TASKS = {
    "arith": Task("arith", arith.EXEMPLARS, arith.load, needs_data=False),
    "gsm8k": Task("gsm8k", gsm8k.EXEMPLARS, gsm8k.load, needs_data=True),
    "svamp": Task("svamp", svamp.EXEMPLARS, svamp.load, needs_data=True),
    "openbookqa": choice_task("openbookqa", openbookqa, openbookqa.LETTERS),
    "strategyqa": choice_task("strategyqa", strategyqa, "AB"),
    "anli_a1": choice_task("anli_a1", anli, "ABC"),
    "anli_a2": choice_task("anli_a2", anli, "ABC"),
}


def task_of(config) -> Task:
    """The task a job's ``task`` section names."""
    return get_task(config.name)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of {sorted(TASKS)}.") from None


__all__ = ["Example", "Splits", "Task", "TASKS", "get_task", "task_of"]
