"""OpenBookQA (main set): four-choice elementary science questions, read from the published jsonl.

A row is ``{"id": "7-980", "question": {"stem": "The sun is responsible for", "choices":
[{"text": ..., "label": "A"}, ...]}, "answerKey": "D"}``. The paper's split: the first 4750
rows of ``train.jsonl`` are the unlabeled questions, the rest of train (207 rows of the
published 4957; the same share of a file of another size) the labeled valid set, and
``test.jsonl`` (500) the test set; ``dev.jsonl`` is not read.

**The valid set's rationales.** The main set has no rationale and no fact for a question
(the science fact behind it, ``fact1``, comes only with the "additional" release). A
valid-set loss over the bare ``The answer is (D).`` would be the loss of a few very
predictable tokens, far below the loss of any candidate with a chain of thought: ``Lv``
would sit under every candidate, every DS weight would be ``loss(x) / Lv`` (large), and
IWSI would degrade into "keep the candidates with the lowest loss" rather than "keep the
ones whose loss is closest to the valid set's". So each valid row gets a one-sentence
rationale written from the gold choice, in the style of the exemplars (``<stem> <gold
choice text>, so the best choice is "<text>". The answer is (D).``), and a row that has
``fact1`` (the additional release's layout) uses that fact instead (``<fact1>. <stem> ...``).
This brings ``Lv`` closer to the candidates' losses but not to them: the templated sentence
repeats words of the prompt and is shorter than a real chain of thought, so ``Lv`` stays
lower than a hand-written valid set would give, and DS weights stay somewhat larger. For a
faithful run, point ``task.data_path`` at a copy whose train rows carry ``fact1``.

The end of one real prompt (the first row of ``train.jsonl``; the four exemplars come
first), a candidate as a model might write it, and what the parser reads from it::

    Q: The sun is responsible for? Answer Choices are: A)puppies learning new tricks; B)children
    growing up and getting old; C)flowers wilting in a vase; D)plants sprouting, blooming and wilting.
    A: <candidate: "Plants need sunlight to sprout, bloom and grow. The answer is (D).">
    parse_answer(candidate) == "D" (the gold answerKey)
"""

from __future__ import annotations

import os

from dsw_ray.errors import BadRow, DataError
from dsw_ray.io import is_uri
from dsw_ray.tasks import choice
from dsw_ray.tasks.numeric import Example, Splits, SplitSizes
from dsw_ray.tasks.records import Record, read_examples, read_records
from dsw_ray.tasks.rows import BadRows, object_row, present, string_field

VALID_SHARE = 207 / 4957  # the published train file: rows 4750.. are the valid set
LETTERS = "ABCD"

# Written for dsw-ray: everyday science facts, one step each, the answer in the last sentence.
EXEMPLARS = [
    (
        choice.with_choices(
            "Which of these would let the most heat travel through?",
            ["a new pair of jeans", "a steel spoon in a cafeteria", "a cotton candy at a store", "a calvin klein cotton hat"],
        ),
        "Metals conduct heat well, and steel is a metal, while cloth and sugar do not conduct heat well. "
        "The answer is (B).",
    ),
    (
        choice.with_choices(
            "What do plants need to make their own food?",
            ["sunlight", "soil worms", "darkness", "rocks"],
        ),
        "Plants make food by photosynthesis, which uses the energy of sunlight. The answer is (A).",
    ),
    (
        choice.with_choices(
            "An animal that hunts other animals for food is a?",
            ["producer", "decomposer", "predator", "plant"],
        ),
        "An animal that hunts and eats other animals is called a predator. The answer is (C).",
    ),
    (
        choice.with_choices(
            "When water is cooled below its freezing point it becomes?",
            ["steam", "a gas", "warmer", "ice"],
        ),
        "Water freezes into solid ice when its temperature falls below the freezing point. The answer is (D).",
    ),
]

EXPECTED = "task.data_path for openbookqa is the folder holding train.jsonl and test.jsonl (the main set, as published)."
ROW = '{"id": ..., "question": {"stem": ..., "choices": [{"text": ..., "label": "A"}, ...]}, "answerKey": "A"}'


def as_question(stem: str) -> str:
    """The stem as the paper's prompt asks it: with a question mark added if it has none."""
    stem = stem.strip()
    return stem if "?" in stem else stem + "?"


def gold_rationale(stem: str, answer: str, letter: str, fact: str | None) -> str:
    if fact:
        return f"{fact.strip().rstrip('.')}. {stem.strip()} {answer.strip()}. {choice.answer_sentence(letter)}"
    return f'{stem.strip()} {answer.strip()}, so the best choice is "{answer.strip()}". {choice.answer_sentence(letter)}'


def read_row(row: dict, record: Record) -> Example:
    question_id = string_field(row, "id", '"7-980"')
    question = object_row(row.get("question"), '{"stem": ..., "choices": [...]}') if "question" in row else None
    if question is None:
        raise BadRow('\'question\' is missing; each row needs one, e.g. "question": {"stem": ..., "choices": [...]}.')
    stem = string_field(question, "stem", '"The sun is responsible for"')
    choices = question.get("choices")
    if not isinstance(choices, list) or len(choices) != len(LETTERS):
        raise BadRow(f"'question.choices' is not a list of {len(LETTERS)} choices; each is {{\"text\": ..., \"label\": \"A\"}}.")
    texts = []
    for letter, item in zip(LETTERS, choices):
        item = object_row(item, '{"text": ..., "label": "A"}')
        if item.get("label") != letter:
            raise BadRow(f"choice {len(texts) + 1} has label {item.get('label')!r}; the choices are labeled A, B, C, D in order.")
        texts.append(string_field(item, "text", '"plants sprouting, blooming and wilting"'))
    letter = choice.gold_letter(row.get("answerKey"), {x: x for x in LETTERS}, "answerKey", '"D"')
    fact = row.get("fact1") if isinstance(row.get("fact1"), str) and row["fact1"].strip() else None
    rationale = gold_rationale(stem, texts[LETTERS.index(letter)], letter, fact)
    return Example(question_id, choice.with_choices(as_question(stem), texts), letter, rationale)


def load(data_path: str, sizes: SplitSizes) -> Splits:
    """The paper's split; it counts the file's rows, skipped ones included, so that leaving a
    bad row out moves no other row between the unlabeled questions and the valid set."""
    if not is_uri(data_path) and os.path.isfile(data_path):
        raise DataError(f"task.data_path {data_path!r} is a file; {EXPECTED}")
    bad = BadRows(sizes.bad_rows)
    train, test = (
        # The published train file asks 5 questions twice, under different ids (all among the
        # unlabeled questions): they stay, as in the paper's run.
        read_examples(path, read_records(path, None, ROW, EXPECTED), read_row, bad, ROW, unique_questions=False)
        for path in (os.path.join(data_path, "train.jsonl"), os.path.join(data_path, "test.jsonl"))
    )
    test = present(test)
    valid_start = len(train) - max(1, round(len(train) * VALID_SHARE))
    questions, valid = present(train[:valid_start]), present(train[valid_start:])
    return Splits(questions[: sizes.questions], valid[: sizes.valid], test[: sizes.test], bad.rejected)
