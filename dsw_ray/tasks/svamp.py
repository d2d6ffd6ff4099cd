"""SVAMP: arithmetic word problems, read from the published ``SVAMP.json``.

A row is ``{"ID": "chal-1", "Body": "...", "Question": "...", "Equation": "( 76.0 - 25.0 )",
"Answer": 51.0}``; the question is ``Body + " " + Question``. SVAMP has no rationales and no
split, so the valid set's rationale is written from the equation
(``76 - 25 = 51. The answer is 51.``), and the rows split in file order into the
unlabeled questions, then the valid set (the last 5% before the test set), then the test
set (the last 300 rows).
"""

from __future__ import annotations

import re

from dsw_ray.errors import BadRow, DataError
from dsw_ray.io import read_text
from dsw_ray.tasks.gsm8k import EXEMPLARS  # the paper uses the same exemplars for SVAMP
from dsw_ray.tasks.numeric import Example, Splits, SplitSizes, normalize_number
from dsw_ray.tasks.rows import (
    BadRows,
    array_items,
    json_array,
    json_type,
    object_row,
    present,
    question_key,
    string_field,
)

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


EXPECTED = "task.data_path for svamp is SVAMP.json or the folder holding it."
LAYOUT = 'a JSON array of objects {"ID", "Body", "Question", "Equation", "Answer"}'
ROW = 'one JSON object {"ID": ..., "Body": ..., "Question": ..., "Equation": ..., "Answer": ...}'


def read_row(value, needs_rationale: bool) -> Example:
    row = object_row(value, ROW)
    question_id = string_field(row, "ID", '"chal-1"')
    body = string_field(row, "Body", '"Each pack of dvds costs 76 dollars..."', empty=True)
    question = string_field(row, "Question", '"How much do you have to pay to buy each pack?"')
    if "Answer" not in row:
        raise BadRow("'Answer' is missing; each row needs one, e.g. \"Answer\": 51.0.")
    answer = row["Answer"]
    if isinstance(answer, bool) or not isinstance(answer, (int, float, str)) or normalize_number(answer) is None:
        raise BadRow(f"'Answer' is {json_type(answer)}, not a number; write it as one, e.g. \"Answer\": 51.0.")
    equation = row.get("Equation")
    if equation is not None and not isinstance(equation, str):
        raise BadRow(
            f"'Equation' is {json_type(equation)}, not a string; write it as text, e.g. \"Equation\": \"( 76.0 - 25.0 )\"."
        )
    if needs_rationale and not (equation or "").strip():
        raise BadRow(
            "the row falls in the valid set, whose rationale is written from 'Equation', and has none; "
            "add it, e.g. \"Equation\": \"( 76.0 - 25.0 )\"."
        )
    gold = normalize_number(answer)
    text = f"{body.strip()} {question.strip()}".strip()
    return Example(question_id, text, gold, rationale(equation, gold) if equation and equation.strip() else None)


def read_rows(path: str, text: str, values: list, bad: BadRows, valid_rows: range) -> list[Example | None]:
    """One entry per element of the file's array: its example, or None where ``bad`` left it
    out. An ID, and a question, may appear once per file."""
    rows, seen_ids, seen_questions = [], {}, {}
    for index, ((line, raw), value) in enumerate(zip(array_items(text, len(values)), values)):
        try:
            example = read_row(value, index in valid_rows)
            first = seen_ids.setdefault(example.question_id, index)
            if first != index:
                raise BadRow(f"duplicate ID {example.question_id!r} (also row {first + 1}); every row needs its own ID.")
            first = seen_questions.setdefault(question_key(example.question), index)
            if first != index:
                raise BadRow(f"the same question as row {first + 1}; a question appears once per file (delete one).")
            rows.append(example)
        except BadRow as error:
            bad.reject(path, line, f"{path}, row {index + 1} (line {line})", error, raw)
            rows.append(None)
    bad.require_rows(path, len(present(rows)), LAYOUT)
    return rows


def load(data_path: str, sizes: SplitSizes) -> Splits:
    """The split in file order; a skipped row keeps its place, so no other row changes set."""
    path = data_path if data_path.endswith(".json") else f"{data_path.rstrip('/')}/SVAMP.json"
    text = read_text(path, EXPECTED)
    values = json_array(path, text, LAYOUT, "SVAMP.json")
    if len(values) < NUM_TEST + 2:
        raise DataError(
            f"{path}: {len(values)} rows are too few; svamp takes the last {NUM_TEST} as the test set and needs "
            f"at least 2 before them, for the unlabeled questions and the valid set (the published file has 1000)."
        )
    rest = len(values) - NUM_TEST
    valid_start = rest - max(1, round(rest * VALID_SHARE))
    bad = BadRows(sizes.bad_rows)
    rows = read_rows(path, text, values, bad, range(valid_start, rest))
    questions, valid, test = present(rows[:valid_start]), present(rows[valid_start:rest]), present(rows[rest:])
    return Splits(questions[: sizes.questions], valid[: sizes.valid], test[: sizes.test], bad.rejected)
