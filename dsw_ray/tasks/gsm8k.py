"""GSM8K: grade-school math word problems, read from the published jsonl files.

A row of ``train.jsonl`` is ``{"question": ..., "answer": "...\\n#### 72"}``. The paper's
split: the first 7099 training questions are the unlabeled set, the remaining 374 (gold
rationales rewritten) the valid set; ``test.jsonl`` is the test set.

>>> gold_rationale("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 72")
'Natalia sold 48/2 = 24 clips in May. The answer is 72.'
"""

from __future__ import annotations

import math
import os
import re

from dsw_ray.errors import BadRow, DataError
from dsw_ray.io import is_uri
from dsw_ray.tasks.numeric import Example, Splits, SplitSizes, normalize_number, parse_answer
from dsw_ray.tasks.records import Record, read_examples, read_records
from dsw_ray.tasks.rows import BadRows, present, string_field

# The authors' released prompt for GSM8K and SVAMP (rubickkcibur/IWSI, src/utils/constants.py):
# the first three of Wei et al.'s questions with answers in their own words, "Leah’s" with a
# typographic apostrophe, joined by single newlines (``AUTHORS_SEPARATOR``).
AUTHORS_EXEMPLARS = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "We start with 15 trees. Later we have 21 trees. The difference must be the number of trees they planted. "
        "So, they must have planted 21 - 15 = 6 trees. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are 3 cars in the parking lot already. 2 more arrive. Now there are 3 + 2 = 5 cars. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Leah had 32 chocolates and Leah\u2019s sister had 42. That means there were originally 32 + 42 = 74 "
        "chocolates. 35 have been eaten. So in total they still have 74 - 35 = 39 chocolates. The answer is 39.",
    ),
]
AUTHORS_SEPARATOR = "\n"

# The published train file has 7473 rows, of which the paper labels the last 374 as valid set.
VALID_SHARE = 374 / 7473

# The chain-of-thought exemplars of Wei et al. (2022), used by the paper for GSM8K and SVAMP.
EXEMPLARS = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
        "After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
        "How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. "
        "So he gave Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
        "How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
        "5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, "
        "from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
        "So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
        "How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
        "So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
]

ANNOTATION = re.compile(r"<<[^>]*>>")


def gold_answer(answer: str) -> str:
    """The number after the last ``####``; an answer without one is a bad row."""
    if "####" not in answer:
        raise BadRow("the answer has no final '#### N' line; GSM8K answers end in '#### <number>', e.g. '#### 72'.")
    gold = answer.rsplit("####", 1)[1].strip()
    # The grader must read the gold back from "The answer is <gold>.", or no answer is ever right.
    if normalize_number(gold) is None or parse_answer(f"The answer is {gold}.") != normalize_number(gold):
        raise BadRow(f"the final answer {gold[:40]!r} after '####' is not a number; write it in digits, e.g. '#### 72'.")
    return gold


def gold_rationale(answer: str) -> str:
    """The paper's valid-set text: annotations removed, ``#### N`` as ``The answer is N.``"""
    body, gold = answer.rsplit("####", 1)
    lines = [line.strip() for line in ANNOTATION.sub("", body).splitlines() if line.strip()]
    # Rationale lines often lack a final period; joined on one line they need one.
    sentences = [line if line[-1] in ".!?" else line + "." for line in lines]
    return " ".join([*sentences, f"The answer is {gold.strip()}."])


EXPECTED = "task.data_path for gsm8k is the folder holding train.jsonl and test.jsonl (as published)."
ROW = 'one JSON object {"question": ..., "answer": "...\\n#### 72"}'
LAYOUT = f"{ROW} per line"


def read_jsonl(path: str, prefix: str, bad: BadRows) -> list[Example | None]:
    """One entry per non-blank line: its example (id ``<prefix>-<line number - 1>``), or None
    where ``bad`` left the line out. A question may appear once per file."""

    def read_row(row: dict, record: Record) -> Example:
        question = string_field(row, "question", '"Natalia sold clips to 48 of her friends..."')
        answer = string_field(row, "answer", '"Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 72"')
        return Example(f"{prefix}-{record.line - 1}", question.strip(), gold_answer(answer), gold_rationale(answer))

    return read_examples(path, read_records(path, "jsonl", ROW, EXPECTED), read_row, bad, ROW, layout=LAYOUT)


def load(data_path: str, sizes: SplitSizes) -> Splits:
    """The paper's split of ``train.jsonl`` plus ``test.jsonl``, each cut to the asked size.

    The split counts the file's rows, skipped ones included, so that leaving a bad row out
    moves no other row between the unlabeled questions and the valid set."""
    if not is_uri(data_path) and os.path.isfile(data_path):
        raise DataError(f"task.data_path {data_path!r} is a file; {EXPECTED}")
    bad = BadRows(sizes.bad_rows)
    train_path = os.path.join(data_path, "train.jsonl")
    train = read_jsonl(train_path, "train", bad)
    test = present(read_jsonl(os.path.join(data_path, "test.jsonl"), "test", bad))
    num_valid_split = round(len(train) * VALID_SHARE)
    if num_valid_split == 0:
        raise DataError(
            f"{train_path}: {len(train)} rows are too few; the valid set is the last {VALID_SHARE:.1%} of them "
            f"(374 of the published 7473), so give it at least {math.ceil(0.5 / VALID_SHARE)} rows."
        )
    # Unlabeled questions carry their gold answer only for analysis (the oracle filter,
    # the fraction of kept candidates that are right); no stage trains on it.
    questions, valid = present(train[:-num_valid_split]), present(train[-num_valid_split:])
    return Splits(questions[: sizes.questions], valid[: sizes.valid], test[: sizes.test], bad.rejected)
