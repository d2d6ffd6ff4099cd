"""Tasks defined in a job file (``task.custom``): any jsonl, json, csv or parquet file, local or
behind a pyarrow URI, with no code. The section names the row fields that hold the question,
the answer, the rationale and the choices, the answer type (``number``, ``choice``,
``text``), the few-shot exemplars and how the rows split; it is validated before Ray starts,
each error naming its field. ``strategyqa``, ``anli_a1`` and ``anli_a2`` are presets of it.

A field is a key of the row, or a dotted path into nested objects (``question.stem``). A
template is text with ``{field}`` placeholders, the same paths, plus ``{choice}`` (the gold
choice's text) and ``{answer}`` (the gold answer) in a rationale template.

The split, in file order: without ``split.test_path`` the last ``split.test_rows`` rows are
the test set; the rows before them are the unlabeled questions, but for their last
``split.valid_fraction`` (at least one row), the labeled valid set. With ``split.test_path``
the data file holds the questions and the valid set only, and the test set is the test
file (its first ``split.test_rows`` rows, when set). A valid row needs a rationale; the
loader appends ``The answer is X.`` to one that does not end in its own answer.

>>> spec = CustomTask(answer_type="choice", num_choices=2, fields=Fields(question="q", answer="gold", choices="options", rationale="why"),
...     exemplars=[Exemplar(question="Is ice cold?", choices=["yes", "no"], answer="Ice is frozen water. The answer is (A).")],
...     split=Split(test_rows=1))
>>> read_row(spec, {"q": "Is fire hot?", "gold": "yes", "options": ["yes", "no"]}, "r-0", valid=False).question
'Is fire hot? Answer Choices are: A)yes; B)no.'
"""

from __future__ import annotations

import functools
import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dsw_ray.errors import BadRow, DataError
from dsw_ray.io import is_uri
from dsw_ray.tasks import answers, choice, numeric
from dsw_ray.tasks.numeric import Example, Splits, SplitSizes
from dsw_ray.tasks.records import FORMATS, Record, read_examples, read_records
from dsw_ray.tasks.rows import BadRows, json_type, present

PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
NEW_SENTENCE = re.compile(r"\s+[A-Z]")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fields(Spec):
    question: str | None = Field(None, description="Field holding the question text (or set question_template).")
    answer: str = Field(description="Field holding the gold answer: a number, a choice (letter, or the text of a "
                        "choice) or a text, per answer_type; answer_map may translate it first.")
    rationale: str | None = Field(None, description="Field holding a worked answer (chain of thought); valid-set rows "
                                  "need one (or set rationale_template).")
    choices: str | list[str] | None = Field(
        None, description="choice tasks: a field holding a list of choice texts (or of {text, label} objects), or one "
        "field per choice, in order (e.g. csv columns)."
    )
    id: str | None = Field(None, description="Field holding a unique row id (None: '<file name>-<row number>').")


class Exemplar(Spec):
    question: str = Field(min_length=1, description="An exemplar question, written as the rows' questions read.")
    choices: list[str] | None = Field(None, description="choice tasks: the exemplar's choices (listed after the question).")
    answer: str = Field(min_length=1, description="Its worked answer, ending in 'The answer is X.' ('(B)' for choices).")


class Split(Spec):
    test_path: str | None = Field(None, description="A separate test file in the same format and fields (None: the "
                                  "data file's last test_rows rows).")
    test_rows: int | None = Field(None, ge=1, description="Test rows: the data file's last rows, or the test file's "
                                  "first (None: the whole test file).")
    valid_fraction: float = Field(0.05, gt=0, lt=1, description="Share of the non-test rows, from their end, that "
                                  "form the labeled valid set (at least one row).")

    @model_validator(mode="after")
    def test_set_named(self) -> Split:
        if self.test_path is None and self.test_rows is None:
            raise ValueError("say where the test set is: split.test_rows (the data file's last rows) or split.test_path")
        return self


class CustomTask(Spec):
    format: Literal[FORMATS] | None = Field(None, description="jsonl, json, csv or parquet (None: from the file name).")
    answer_type: Literal[answers.ANSWER_TYPES] = Field(description="number, choice (a letter) or text.")
    fields: Fields = Field(description="Which row fields hold what.")
    question_template: str | None = Field(None, description="The question built from several fields, e.g. "
                                          "'\"{context}\" Does it follow that \"{hypothesis}\"?' (instead of fields.question).")
    choice_texts: list[str] | None = Field(None, min_length=2, description="choice tasks whose every row has the same "
                                           "choices (e.g. [yes, no]) instead of fields.choices.")
    num_choices: int | None = Field(None, ge=2, le=choice.MAX_CHOICES, description="choice tasks: choices per row "
                                    "(taken from choice_texts when set).")
    answer_map: dict[str, str] | None = Field(None, description="Gold labels as written in the file -> answers, e.g. "
                                              "{e: A, c: B, n: C} or {'true': A, 'false': B}; other labels are bad rows.")
    rationale_template: str | None = Field(None, description="A valid rationale built from fields, e.g. '{facts} So "
                                           "the answer is {choice}.' (instead of fields.rationale).")
    exemplars: list[Exemplar] = Field(min_length=1, description="Few-shot chain-of-thought exemplars of the prompt.")
    split: Split = Field(description="Which rows are unlabeled questions, valid set and test set.")

    @model_validator(mode="after")
    def consistent(self) -> CustomTask:
        if (self.fields.question is None) == (self.question_template is None):
            raise ValueError("set exactly one of fields.question and question_template")
        if (self.fields.rationale is None) == (self.rationale_template is None):
            raise ValueError("set exactly one of fields.rationale and rationale_template: the valid set needs rationales")
        if self.answer_type != "choice":
            if self.fields.choices or self.choice_texts or self.num_choices:
                raise ValueError(f"choices are for answer_type choice, not {self.answer_type}")
            return self
        if (self.fields.choices is None) == (self.choice_texts is None):
            raise ValueError("a choice task needs exactly one of fields.choices and choice_texts")
        count = len(self.choice_texts) if self.choice_texts else (
            len(self.fields.choices) if isinstance(self.fields.choices, list) else self.num_choices
        )
        if count is None:
            raise ValueError("set num_choices: how many choices each row has")
        if self.num_choices is not None and self.num_choices != count:
            raise ValueError(f"num_choices is {self.num_choices} but the choices given are {count}")
        object.__setattr__(self, "num_choices", count)
        for index, exemplar in enumerate(self.exemplars):
            if exemplar.choices is not None and len(exemplar.choices) != count:
                raise ValueError(f"exemplars.{index}.choices has {len(exemplar.choices)} choices, not {count}")
            if exemplar.choices is None and self.choice_texts is None and "Answer Choices are:" not in exemplar.question:
                raise ValueError(f"exemplars.{index}: give its choices (exemplars.{index}.choices)")
        return self

    @property
    def letters(self) -> str:
        return choice.letters(self.num_choices) if self.answer_type == "choice" else ""

    def exemplar_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for exemplar in self.exemplars:
            choices = exemplar.choices or self.choice_texts
            question = choice.with_choices(exemplar.question, choices) if choices else exemplar.question
            pairs.append((question, exemplar.answer.strip()))
        return pairs


def check_exemplars(spec: CustomTask, parse) -> None:
    """Each exemplar's answer must end in an answer the task's parser reads (else the prompt
    teaches the model to answer in a way no candidate is graded by)."""
    for index, (_, answer) in enumerate(spec.exemplar_pairs()):
        if parse(answer) is None:
            ending = "The answer is (A)." if spec.answer_type == "choice" else "The answer is 42."
            raise ValueError(
                f"exemplars.{index}.answer {answer[-60:]!r} has no answer the {spec.answer_type} parser reads; "
                f"end it like '{ending}'"
            )


# ---- reading a row ---------------------------------------------------------------------------

def lookup(row: dict, path: str):
    """``row["a"]["b"]`` for ``a.b``; a missing part is a BadRow naming the path."""
    value = row
    for depth, part in enumerate(path.split(".")):
        if not isinstance(value, dict) or part not in value:
            where = path if depth == 0 else f"{path} ({'.'.join(path.split('.')[:depth])} has no {part!r})"
            raise BadRow(f"'{where}' is missing; each row needs it.")
        value = value[part]
    return value


def text_at(row: dict, path: str, what: str) -> str:
    value = lookup(row, path)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRow(f"'{path}' ({what}) is {json_type(value)}, not text.")
    text = str(value).strip()
    if not text:
        raise BadRow(f"'{path}' ({what}) is empty.")
    return text


def fill(template: str, row: dict, extra: dict[str, str], sentences: bool = False) -> str:
    """The template with its placeholders filled; with ``sentences``, a value that a new
    sentence follows ("{facts} So ...") ends in a period if it has no final punctuation."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        text = extra[name] if name in extra else text_at(row, name, "a template field")
        if sentences and text[-1] not in ".!?" and NEW_SENTENCE.match(template, match.end()):
            text += "."
        return text

    return PLACEHOLDER.sub(value, template)


def row_choices(spec: CustomTask, row: dict) -> list[str]:
    if spec.choice_texts is not None:
        return list(spec.choice_texts)
    if isinstance(spec.fields.choices, list):
        return [text_at(row, path, f"choice {i + 1}") for i, path in enumerate(spec.fields.choices)]
    value = lookup(row, spec.fields.choices)
    if hasattr(value, "tolist"):  # a parquet list column
        value = value.tolist()
    if not isinstance(value, list) or len(value) != spec.num_choices:
        raise BadRow(f"'{spec.fields.choices}' is not a list of {spec.num_choices} choices.")
    texts = []
    for index, item in enumerate(value):
        item = item.get("text") if isinstance(item, dict) else item
        if not isinstance(item, str) or not item.strip():
            raise BadRow(f"choice {index + 1} of '{spec.fields.choices}' is not a text (or a {{\"text\": ...}} object).")
        texts.append(item.strip())
    return texts


def gold_answer(spec: CustomTask, row: dict, choices: list[str]) -> str:
    field = spec.fields.answer
    raw = lookup(row, field)
    if spec.answer_map is not None:
        key = ("true" if raw else "false") if isinstance(raw, bool) else str(raw).strip()
        if key not in spec.answer_map:
            raise BadRow(f"'{field}' is {raw!r}, not one of {sorted(spec.answer_map)}.")
        raw = spec.answer_map[key]
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise BadRow(f"'{field}' is {json_type(raw)}, not a {spec.answer_type} answer.")
    text = str(raw).strip()
    if spec.answer_type == "number":
        if numeric.normalize_number(text) is None:
            raise BadRow(f"'{field}' is {text[:40]!r}, not a number; write it in digits, e.g. 72.")
        return numeric.normalize_number(text)
    if spec.answer_type == "choice":
        letter = text.strip("()").upper()
        if len(letter) == 1 and letter in spec.letters:
            return letter
        folded = [answers.fold(c) for c in choices]
        if answers.fold(text) in folded:
            return spec.letters[folded.index(answers.fold(text))]
        raise BadRow(f"'{field}' is {text[:40]!r}, neither a choice letter ({', '.join(spec.letters)}) nor a choice's text.")
    if not answers.fold(text):
        raise BadRow(f"'{field}' is empty.")
    return answers.fold(text)


def answer_sentence(spec: CustomTask, gold: str) -> str:
    return choice.answer_sentence(gold) if spec.answer_type == "choice" else f"The answer is {gold}."


def read_row(spec: CustomTask, row: dict, default_id: str, valid: bool) -> Example:
    """One row as an example; ``valid`` rows must yield a rationale."""
    question_id = text_at(row, spec.fields.id, "the row id") if spec.fields.id else default_id
    question = fill(spec.question_template, row, {}) if spec.question_template else text_at(row, spec.fields.question, "the question")
    choices = row_choices(spec, row) if spec.answer_type == "choice" else []
    gold = gold_answer(spec, row, choices)
    if choices:
        question = choice.with_choices(question, choices)
    rationale = rationale_of(spec, row, choices, gold) if valid else None
    return Example(question_id, question, gold, rationale)


def rationale_of(spec: CustomTask, row: dict, choices: list[str], gold: str) -> str:
    """A valid row's rationale, ending in its gold answer (appended when it has none)."""
    if spec.rationale_template is not None:
        gold_text = choices[spec.letters.index(gold)] if choices else gold
        try:
            rationale = fill(spec.rationale_template, row, {"choice": gold_text, "answer": gold}, sentences=True)
        except BadRow as error:
            raise BadRow(f"the row falls in the valid set, whose rationale is written from {spec.rationale_template!r}: {error}") from None
    else:
        rationale = text_at(row, spec.fields.rationale, "the valid set's rationale")
    rationale = " ".join(rationale.split())
    parse = (lambda t: choice.parse_answer(t, spec.letters)) if choices else (
        numeric.parse_answer if spec.answer_type == "number" else answers.parse_text
    )
    if parse(rationale) is None:
        rationale = f"{rationale if rationale[-1] in '.!?' else rationale + '.'} {answer_sentence(spec, gold)}"
    return rationale


# ---- loading ---------------------------------------------------------------------------------

def layout(spec: CustomTask) -> str:
    named = [f for f in (spec.fields.question, spec.fields.answer, spec.fields.rationale) if f]
    return "a row with the fields " + ", ".join(repr(f) for f in named) + " (task.custom.fields)"


def examples(spec: CustomTask, path: str, bad: BadRows, records: list[Record], valid_rows: range) -> list[Example | None]:
    prefix = os.path.splitext(os.path.basename(path.rstrip("/")))[0]

    def one(row: dict, record: Record) -> Example:
        return read_row(spec, row, f"{prefix}-{record.index}", record.index in valid_rows)

    return read_examples(path, records, one, bad, layout(spec))


def load_spec(
    spec: CustomTask,
    data_path: str,
    sizes: SplitSizes,
    expected: str = "task.data_path is the task's data file (jsonl, json, csv or parquet).",
) -> Splits:
    """The split of ``split`` in file order; a skipped row keeps its place."""
    bad = BadRows(sizes.bad_rows)
    records = read_records(data_path, spec.format, layout(spec), expected)
    split = spec.split
    rest = len(records) if split.test_path else len(records) - split.test_rows
    if rest < 2:
        raise DataError(
            f"{data_path}: {len(records)} rows are too few; the unlabeled questions and the valid set need at least 2 "
            + ("" if split.test_path else f"besides the last {split.test_rows} (task.custom.split.test_rows)")
        )
    valid_start = rest - max(1, round(rest * split.valid_fraction))
    rows = examples(spec, data_path, bad, records, range(valid_start, rest))
    if split.test_path:
        test_records = read_records(split.test_path, spec.format, layout(spec), expected)
        test = examples(spec, split.test_path, bad, test_records[: split.test_rows], range(0))
    else:
        test = rows[rest:]
    questions, valid = present(rows[:valid_start]), present(rows[valid_start:rest])
    return Splits(questions[: sizes.questions], valid[: sizes.valid], present(test)[: sizes.test], bad.rejected)


def folder_preset(spec: CustomTask, data_file: str, expected: str):
    """The loader of a built-in task whose ``task.data_path`` is a folder holding ``data_file``
    and the file ``spec.split.test_path`` names."""
    return functools.partial(load_folder, spec, data_file, expected)


def load_folder(spec: CustomTask, data_file: str, expected: str, data_path: str, sizes: SplitSizes) -> Splits:
    if not is_uri(data_path) and os.path.isfile(data_path):
        raise DataError(f"task.data_path {data_path!r} is a file; {expected}")
    split = spec.split.model_copy(update={"test_path": os.path.join(data_path, spec.split.test_path)})
    spec = spec.model_copy(update={"split": split})
    return load_spec(spec, os.path.join(data_path, data_file), sizes, expected=expected)
