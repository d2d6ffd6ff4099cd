"""SVAMP: arithmetic word problems, read from the published ``SVAMP.json``.

A row is ``{"ID": "chal-1", "Body": "...", "Question": "...", "Equation": "( 76.0 - 25.0 )",
"Answer": 51.0}``; the question is ``Body + " " + Question``. SVAMP has no rationales and no
split, so the valid set's rationale is written from the equation
(``76 - 25 = 51. The answer is 51.``), and the rows split in file order into the
unlabeled questions, then the valid set (the last 5% before the test set), then the test
set (the last 300 rows).
"""

from __future__ import annotations

import json
import re

from dsw_ray.errors import DataError
from dsw_ray.io import read_text
from dsw_ray.tasks.gsm8k import EXEMPLARS  # the paper uses the same exemplars for SVAMP
from dsw_ray.tasks.numeric import Example, Splits, normalize_number

NUM_TEST = 300
VALID_SHARE = 0.05
FLOAT_LITERAL = re.compile(r"(\d+)\.0\b")

__all__ = ["EXEMPLARS", "load"]


def rationale(equation: str, answer: str) -> str:
    """``( 76.0 - 25.0 )`` and 51.0 -> ``76 - 25 = 51. The answer is 51.``"""
    expression = FLOAT_LITERAL.sub(r"\1", equation).strip()
    if expression.startswith("(") and expression.endswith(")") and expression.count("(") == 1:
        expression = expression[1:-1].strip()
    return f"{expression} = {answer}. The answer is {answer}."


def read_rows(path: str) -> list[Example]:
    try:
        rows = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON (line {error.lineno}: {error.msg}).") from error
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON array of SVAMP rows.")
    examples, seen = [], set()
    for index, row in enumerate(rows):
        where = f"{path}, row {index}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with ID, Body, Question, Equation, Answer.")
        question_id, body, question = row.get("ID"), row.get("Body"), row.get("Question")
        if not isinstance(question_id, str) or not question_id:
            raise DataError(f"{where}: 'ID' is missing or not a string.")
        if question_id in seen:
            raise DataError(f"{where}: duplicate ID {question_id!r}; every row needs its own ID.")
        seen.add(question_id)
        if not isinstance(body, str) or not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: 'Body' and 'Question' must be strings and 'Question' not empty.")
        answer = normalize_number(row.get("Answer", ""))
        if answer is None or isinstance(row.get("Answer"), bool):
            raise DataError(f"{where}: 'Answer' {row.get('Answer')!r} is not a number.")
        equation = row.get("Equation")
        text = f"{body.strip()} {question.strip()}".strip()
        examples.append(
            Example(question_id, text, answer, rationale(equation, answer) if isinstance(equation, str) else None)
        )
    return examples


def load(data_path: str, num_questions: int | None, num_valid: int | None, num_test: int | None, seed: int) -> Splits:
    path = data_path if data_path.endswith(".json") else f"{data_path.rstrip('/')}/SVAMP.json"
    rows = read_rows(path)
    test, rest = rows[-NUM_TEST:], rows[:-NUM_TEST]
    num_valid_split = max(1, round(len(rest) * VALID_SHARE))
    questions, valid = rest[:-num_valid_split], rest[-num_valid_split:]
    if any(example.rationale is None for example in valid):
        raise DataError(f"{path}: every valid-set row needs an 'Equation' to write its rationale from.")
    return Splits(questions[:num_questions], valid[:num_valid], test[:num_test])
