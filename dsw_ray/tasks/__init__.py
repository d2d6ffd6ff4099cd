"""Tasks: each owns its few-shot exemplars, prompt, answer parser, grader and data loader."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

from dsw_ray.errors import ConfigError
from dsw_ray.tasks import anli, answers, arith, choice, custom, gsm8k, numeric, openbookqa, strategyqa, svamp
from dsw_ray.tasks.numeric import Example, Splits, SplitSizes


@dataclass(frozen=True)
class Task:
    """A task as the stages see it (picklable: actors receive it whole). ``load(data_path,
    sizes)`` returns its splits, cut to the ``SplitSizes``; a bad data row raises a DataError
    naming its file and line (``sizes.bad_rows="fail"``) or is left out and listed in
    ``Splits.rejected`` ("skip"). ``answer_type`` is ``number``, ``choice`` (a
    letter among ``letters``) or ``text``. ``prompt_format``: few-shot text (``prompt``) or the
    model's chat template (``prompting.Prompter`` makes either into ids)."""

    name: str
    exemplars: list[tuple[str, str]]
    load: Callable[..., Splits]
    needs_data: bool
    answer_type: str = "number"
    letters: str = ""
    prompt_format: str = "few_shot"
    separator: str = "\n\n"  # after each exemplar of the few-shot prompt

    def prompt(self, question: str) -> str:
        return numeric.few_shot_prompt(self.exemplars, question, self.separator)

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


def custom_task(name: str, spec: custom.CustomTask, load=None) -> Task:
    """A task a ``custom`` section defines; ``load`` replaces reading ``task.data_path`` as its one data file."""
    load = load or functools.partial(custom.load_spec, spec)
    return Task(name, spec.exemplar_pairs(), load, needs_data=True, answer_type=spec.answer_type, letters=spec.letters)


TASKS = {
    "arith": Task("arith", arith.EXEMPLARS, arith.load, needs_data=False),
    "gsm8k": Task("gsm8k", gsm8k.EXEMPLARS, gsm8k.load, needs_data=True),
    "svamp": Task("svamp", svamp.EXEMPLARS, svamp.load, needs_data=True),
    "openbookqa": Task(
        "openbookqa", openbookqa.EXEMPLARS, openbookqa.load, needs_data=True, answer_type="choice", letters=openbookqa.LETTERS
    ),
    "strategyqa": custom_task("strategyqa", strategyqa.SPEC, strategyqa.load),
    "anli_a1": custom_task("anli_a1", anli.SPEC, anli.load),
    "anli_a2": custom_task("anli_a2", anli.SPEC, anli.load),
}


# The authors' released few-shot prompts (``task.exemplars: authors``): exemplars and separator.
AUTHORS_PROMPTS = {
    "gsm8k": (gsm8k.AUTHORS_EXEMPLARS, gsm8k.AUTHORS_SEPARATOR),
    "svamp": (gsm8k.AUTHORS_EXEMPLARS, gsm8k.AUTHORS_SEPARATOR),  # their SVAMP prompt is their GSM8K one
}


def task_of(config) -> Task:
    """The task a job's ``task`` section names, or defines (``task.custom``), in its prompt format,
    with its own exemplars or the authors' (``exemplars``), the first ``num_exemplars`` of them."""
    task = get_task(config.name) if config.custom is None else custom_task(config.name, config.custom)
    if config.exemplars == "authors":
        exemplars, separator = AUTHORS_PROMPTS[config.name]
        task = dataclasses.replace(task, exemplars=exemplars, separator=separator)
    exemplars = task.exemplars if config.num_exemplars is None else task.exemplars[: config.num_exemplars]
    return dataclasses.replace(task, prompt_format=config.prompt_format, exemplars=exemplars)


def splits_of(config) -> Splits:
    """The splits a job's ``task`` section asks for: its task's rows from ``data_path``, cut to
    its sizes (``SplitSizes.of``)."""
    return task_of(config).load(config.data_path, SplitSizes.of(config))


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of {sorted(TASKS)}.") from None


__all__ = ["Example", "SplitSizes", "Splits", "Task", "TASKS", "get_task", "splits_of", "task_of"]
