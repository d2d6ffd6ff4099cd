"""StrategyQA: yes/no questions that need implicit multi-step reasoning, read from jsonl.

A row is ``{"qid": ..., "question": "Is ...?", "answer": true, "facts": "...", ...}``, as in
the commonly used 1603 / 687 train / test split the paper took (``train.jsonl``,
``test.jsonl``). The choices are ``A)yes; B)no.``: gold true is (A), false is (B). The
paper's split: the first 1580 train rows are the unlabeled questions, the rest of train
(23 of the published 1603; the same share of a file of another size) the labeled valid
set, whose rationale is the annotators' ``facts`` followed by the answer
(``<facts> So the answer is no. The answer is (B).``), the layout of the exemplars.

The end of one real prompt (the first row of ``train.jsonl``; the five exemplars come
first), a candidate as a model might write it, and what the parser reads from it::

    Q: Is Mixed martial arts totally original from Roman Colosseum games? Answer Choices are: A)yes; B)no.
    A: <candidate: "Roman Colosseum games were also fights in enclosed arenas before crowds. So the
    answer is no. The answer is (B).">
    parse_answer(candidate) == "B" (gold: false)
"""

from __future__ import annotations

import os

from dsw_ray.errors import BadRow, DataError
from dsw_ray.io import is_uri
from dsw_ray.tasks import choice
from dsw_ray.tasks.numeric import Example, Splits
from dsw_ray.tasks.records import Record, read_examples, read_records
from dsw_ray.tasks.rows import BadRows, present, string_field

VALID_SHARE = 23 / 1603  # the published train file: rows 1580.. are the valid set
CHOICES = ["yes", "no"]
GOLD = {True: "A", False: "B"}

# Written for dsw-ray: two or three facts, then the yes/no conclusion and the letter.
EXEMPLARS = [
    (
        choice.with_choices("Could a goldfish survive a week in the Sahara desert without water?", CHOICES),
        "A goldfish breathes through gills and needs to live in water. Out of water it dies within minutes. "
        "So the answer is no. The answer is (B).",
    ),
    (
        choice.with_choices("Would a person born in 1990 have been able to vote in the 2012 US election?", CHOICES),
        "Americans may vote from the age of 18. A person born in 1990 turned 22 in 2012. "
        "So the answer is yes. The answer is (A).",
    ),
    (
        choice.with_choices("Is a piano likely to fit inside a shoebox?", CHOICES),
        "A piano is over a meter wide and weighs hundreds of kilograms. A shoebox is about 30 centimeters long. "
        "So the answer is no. The answer is (B).",
    ),
    (
        choice.with_choices("Did the people who built the pyramids of Giza know of the Roman Empire?", CHOICES),
        "The pyramids of Giza were built around 2500 BC. The Roman Empire began in 27 BC, more than two thousand "
        "years later. So the answer is no. The answer is (B).",
    ),
    (
        choice.with_choices("Can you see the Moon during the day?", CHOICES),
        "The Moon is above the horizon for about half of every day, and it is bright enough to be seen in a blue sky "
        "on many days. So the answer is yes. The answer is (A).",
    ),
]

EXPECTED = "task.data_path for strategyqa is the folder holding train.jsonl and test.jsonl."
ROW = '{"qid": ..., "question": "Is ...?", "answer": true, "facts": "..."}'


def gold_rationale(facts: str, letter: str) -> str:
    facts = " ".join(facts.split())
    facts = facts if facts[-1] in ".!?" else facts + "."
    return f"{facts} So the answer is {CHOICES['AB'.index(letter)]}. {choice.answer_sentence(letter)}"


def reader(valid_rows: range):
    """A row reader that requires ``facts`` in the rows that become valid-set examples."""

    def read_row(row: dict, record: Record) -> Example:
        question_id = string_field(row, "qid", '"4fd64bb6ce5b78ab20b6"')
        question = string_field(row, "question", '"Is the cuisine of Hawaii suitable for a vegan?"')
        if "answer" not in row:
            raise BadRow("'answer' is missing; each row needs one, e.g. \"answer\": false.")
        letter = choice.gold_letter(row["answer"], GOLD, "answer", "false")
        facts = row.get("facts")
        if facts is not None and not isinstance(facts, str):
            raise BadRow("'facts' is not a string; write the supporting facts as one text, e.g. \"facts\": \"...\".")
        if record.index in valid_rows and not (facts or "").strip():
            raise BadRow(
                "the row falls in the valid set, whose rationale is written from 'facts', and has none; "
                "add them, e.g. \"facts\": \"Kalua pig is a famous dish of Hawaii.\"."
            )
        rationale = gold_rationale(facts, letter) if facts and facts.strip() else None
        return Example(question_id, choice.with_choices(question, CHOICES), letter, rationale)

    return read_row


def load(
    data_path: str,
    num_questions: int | None,
    num_valid: int | None,
    num_test: int | None,
    seed: int,
    bad_rows: str = "fail",
) -> Splits:
    """The paper's split; a skipped row keeps its place, so no other row changes set."""
    if not is_uri(data_path) and os.path.isfile(data_path):
        raise DataError(f"task.data_path {data_path!r} is a file; {EXPECTED}")
    bad = BadRows(bad_rows)
    train_path = os.path.join(data_path, "train.jsonl")
    records = read_records(train_path, None, ROW, EXPECTED)
    valid_start = len(records) - max(1, round(len(records) * VALID_SHARE))
    train = read_examples(train_path, records, reader(range(valid_start, len(records))), bad, ROW)
    test_path = os.path.join(data_path, "test.jsonl")
    test = present(read_examples(test_path, read_records(test_path, None, ROW, EXPECTED), reader(range(0)), bad, ROW))
    questions, valid = present(train[:valid_start]), present(train[valid_start:])
    return Splits(questions[:num_questions], valid[:num_valid], test[:num_test], bad.rejected)
