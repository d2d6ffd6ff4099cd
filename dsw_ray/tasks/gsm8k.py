"""GSM8K: grade-school math word problems, read from the published jsonl files.

A row of ``train.jsonl`` is ``{"question": ..., "answer": "...\\n#### 72"}``. The paper's
split: the first 7099 training questions are the unlabeled set, the remaining 374 (gold
rationales rewritten) the valid set; ``test.jsonl`` is the test set.

>>> gold_rationale("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 72")
'Natalia sold 48/2 = 24 clips in May. The answer is 72.'
"""

from __future__ import annotations

import json
import os
import re

from dsw_ray.errors import DataError
from dsw_ray.io import read_text
from dsw_ray.tasks.numeric import Example, Splits, normalize_number

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


def gold_answer(answer: str, where: str) -> str:
    """The number after ``####``; a row without one is a data error."""
    if "####" not in answer:
        raise DataError(f"{where}: the answer has no '#### N' line; GSM8K answers end in '#### <number>'.")
    gold = answer.rsplit("####", 1)[1].strip()
    if normalize_number(gold) is None:
        raise DataError(f"{where}: the final answer {gold!r} after '####' is not a number.")
    return gold


def gold_rationale(answer: str) -> str:
    """The paper's valid-set text: annotations removed, ``#### N`` as ``The answer is N.``"""
    body, gold = answer.rsplit("####", 1)
    lines = [line.strip() for line in ANNOTATION.sub("", body).splitlines() if line.strip()]
    # Rationale lines often lack a final period; joined on one line they need one.
    sentences = [line if line[-1] in ".!?" else line + "." for line in lines]
    return " ".join([*sentences, f"The answer is {gold.strip()}."])


def read_jsonl(path: str, prefix: str) -> list[Example]:
    examples = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not a JSON object ({error.msg}).") from error
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with 'question' and 'answer'.")
        question, answer = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: 'question' is missing, empty or not a string.")
        if not isinstance(answer, str):
            raise DataError(f"{where}: 'answer' is missing or not a string.")
        gold = gold_answer(answer, where)
        examples.append(Example(f"{prefix}-{lineno - 1}", question.strip(), gold, gold_rationale(answer)))
    if not examples:
        raise DataError(f"{path}: the file holds no rows.")
    return examples


def load(data_path: str, num_questions: int | None, num_valid: int | None, num_test: int | None, seed: int) -> Splits:
    """The paper's split of ``train.jsonl`` plus ``test.jsonl``, each cut to the asked size."""
    train = read_jsonl(os.path.join(data_path, "train.jsonl"), "train")
    test = read_jsonl(os.path.join(data_path, "test.jsonl"), "test")
    # Unlabeled questions carry their gold answer only for analysis (the oracle filter,
    # the fraction of kept candidates that are right); no stage trains on it.
    num_unlabeled = len(train) - round(len(train) * VALID_SHARE)
    questions, valid = train[:num_unlabeled], train[num_unlabeled:]
    return Splits(questions[:num_questions], valid[:num_valid], test[:num_test])
