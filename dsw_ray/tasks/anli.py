"""ANLI rounds 1 and 2 (tasks ``anli_a1``, ``anli_a2``): does a premise entail a hypothesis?

A row is ``{"uid": ..., "context": <premise>, "hypothesis": ..., "label": "e" | "n" | "c",
"reason": <the annotator's explanation>, ...}`` as released (``R1/dev.jsonl``,
``R1/test.jsonl``; the same for ``R2``). The question is the paper's
``"<premise>" Based on this premise, can we conclude the hypothesis "<hypothesis>" is
true? Answer Choices are: A)yes; B)no; C)impossible to tell.``; gold e is (A), c is (B),
n is (C).

The split cannot follow the paper: it generates on the first 2000 rows of each round's
training file, which is not available here. So ``dev.jsonl`` is the unlabeled question set
but for its last 5% (50 of 1000 rows), the labeled valid set, whose rationale is the
annotator's ``reason`` followed by the answer; the test set is the first 500 rows of
``test.jsonl``, as in the paper. ``task.data_path`` is the round's folder (``.../anli/R1``).

The end of one real prompt (the first row of ``R1/dev.jsonl``; the three exemplars come
first), a candidate as a model might write it, and what the parser reads from it::

    Q: "Linguistics is the scientific study of language, and involves an analysis of language form,
    language meaning, and language in context. ..." Based on this premise, can we conclude the hypothesis
    "Form and meaning are the only aspects of language linguistics is concerned with." is true? Answer
    Choices are: A)yes; B)no; C)impossible to tell.
    A: <candidate: "The premise says linguistics also analyses language in context. So the hypothesis
    is false. The answer is (B).">
    parse_answer(candidate) == "B" (gold: c)
"""

from __future__ import annotations

import os

from dsw_ray.errors import BadRow, DataError
from dsw_ray.io import is_uri
from dsw_ray.tasks import choice
from dsw_ray.tasks.numeric import Example, Splits
from dsw_ray.tasks.records import Record, read_examples, read_records
from dsw_ray.tasks.rows import BadRows, present, string_field

VALID_SHARE = 0.05  # the tail of dev; the paper's valid-set sizes for ANLI are not published
NUM_TEST = 500  # the paper tests on the first 500 test rows of each round
CHOICES = ["yes", "no", "impossible to tell"]
GOLD = {"e": "A", "c": "B", "n": "C"}
CONCLUSION = {"A": "the hypothesis is true", "B": "the hypothesis is false", "C": "we cannot tell"}


def as_question(premise: str, hypothesis: str) -> str:
    return choice.with_choices(
        f'"{premise.strip()}" Based on this premise, can we conclude the hypothesis "{hypothesis.strip()}" is true?',
        CHOICES,
    )


# Written for dsw-ray: one exemplar per label, the reasoning quoting the premise.
EXEMPLARS = [
    (
        as_question(
            "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889 as the entrance "
            "to the World's Fair.",
            "The Eiffel Tower was finished in the nineteenth century.",
        ),
        "The premise says the tower was completed in 1889, which is in the nineteenth century. "
        "So the hypothesis is true. The answer is (A).",
    ),
    (
        as_question(
            "Maria Lopez is a Spanish swimmer who won two bronze medals at the 2008 European Championships.",
            "Maria Lopez has never won a medal at a European Championship.",
        ),
        "The premise says she won two bronze medals at the 2008 European Championships, so she has won medals "
        "there. So the hypothesis is false. The answer is (B).",
    ),
    (
        as_question(
            "The Old Mill is a restaurant on the river bank that serves local fish and opens only in summer.",
            "The Old Mill is the most expensive restaurant in town.",
        ),
        "The premise says what the restaurant serves and when it opens, but nothing about its prices or other "
        "restaurants. So we cannot tell. The answer is (C).",
    ),
]

EXPECTED = "task.data_path for anli_a1 and anli_a2 is a round's folder holding dev.jsonl and test.jsonl (e.g. .../anli/R1)."
ROW = '{"uid": ..., "context": ..., "hypothesis": ..., "label": "e", "reason": ...}'


def gold_rationale(reason: str, letter: str) -> str:
    reason = " ".join(reason.split())
    reason = reason if reason[-1] in ".!?" else reason + "."
    return f"{reason} So {CONCLUSION[letter]}. {choice.answer_sentence(letter)}"


def reader(valid_rows: range):
    """A row reader that requires ``reason`` in the rows that become valid-set examples."""

    def read_row(row: dict, record: Record) -> Example:
        question_id = string_field(row, "uid", '"bf628cf5-6948-4595-a6d0-daf99beb47b9"')
        premise = string_field(row, "context", '"Linguistics is the scientific study of language..."')
        hypothesis = string_field(row, "hypothesis", '"Form and meaning are the only aspects..."')
        if "label" not in row:
            raise BadRow("'label' is missing; each row needs one, e.g. \"label\": \"e\".")
        letter = choice.gold_letter(row["label"], GOLD, "label", '"e"')
        reason = row.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise BadRow("'reason' is not a string; write the annotator's explanation as text.")
        if record.index in valid_rows and not (reason or "").strip():
            raise BadRow(
                "the row falls in the valid set, whose rationale is written from 'reason', and has none; add it, "
                "e.g. \"reason\": \"The premise says ...\"."
            )
        rationale = gold_rationale(reason, letter) if reason and reason.strip() else None
        return Example(question_id, as_question(premise, hypothesis), letter, rationale)

    return read_row


def load(
    data_path: str,
    num_questions: int | None,
    num_valid: int | None,
    num_test: int | None,
    seed: int,
    bad_rows: str = "fail",
) -> Splits:
    """Dev split into unlabeled questions and the valid set, ``test[:500]`` as the test set."""
    if not is_uri(data_path) and os.path.isfile(data_path):
        raise DataError(f"task.data_path {data_path!r} is a file; {EXPECTED}")
    bad = BadRows(bad_rows)
    dev_path, test_path = os.path.join(data_path, "dev.jsonl"), os.path.join(data_path, "test.jsonl")
    records = read_records(dev_path, None, ROW, EXPECTED)
    valid_start = len(records) - max(1, round(len(records) * VALID_SHARE))
    dev = read_examples(dev_path, records, reader(range(valid_start, len(records))), bad, ROW)
    test = present(read_examples(test_path, read_records(test_path, None, ROW, EXPECTED)[:NUM_TEST], reader(range(0)), bad, ROW))
    questions, valid = present(dev[:valid_start]), present(dev[valid_start:])
    return Splits(questions[:num_questions], valid[:num_valid], test[:num_test], bad.rejected)
