"""Reading a dataset's rows under ``task.bad_rows``: every bad row is named, then stops the
job (``fail``, the default) or is left out and recorded (``skip``).

A loader reads one row in a function that raises ``BadRow(reason)``; its loop knows the
file and line and hands the error to ``BadRows.reject``:

>>> bad = BadRows("skip")
>>> bad.reject("train.jsonl", 3, "train.jsonl, line 3", BadRow("'question' is missing."), '{"answer": "#### 2"}')
>>> bad.rejected[0].reason
"'question' is missing."
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from dsw_ray.errors import BadRow, DataError

POLICIES = ("fail", "skip")
RAW_CHARS = 500  # a quarantined row keeps this much of its text
FIX = (
    "Correct or delete the row, or set task.bad_rows=skip to leave bad rows out "
    "(they are then listed in the run directory's inputs/quarantine.jsonl)."
)


@dataclass(frozen=True)
class Rejected:
    """A row left out under ``bad_rows: skip``: its file, the line it starts on, why, its text."""

    file: str
    line: int
    reason: str
    raw: str


class BadRows:
    """``task.bad_rows`` while a loader reads its files."""

    def __init__(self, policy: str = "fail"):
        if policy not in POLICIES:
            raise DataError(f"task.bad_rows is {policy!r}; choose one of {list(POLICIES)}.")
        self.policy = policy
        self.rejected: list[Rejected] = []

    def reject(self, file: str, line: int, where: str, error: BadRow, raw: str) -> None:
        """Raise a DataError naming ``where`` (``fail``), or record the row (``skip``)."""
        if self.policy == "fail":
            raise DataError(f"{where}: {error} {FIX}") from None
        if len(raw) > RAW_CHARS:
            raw = raw[:RAW_CHARS] + f"... ({len(raw)} characters)"
        self.rejected.append(Rejected(file, line, str(error), raw))

    def require_rows(self, path: str, count: int, layout: str) -> None:
        """A file with no usable row fails under either policy: there is nothing to skip to."""
        if count:
            return
        mine = [r for r in self.rejected if r.file == path]
        if not mine:
            raise DataError(f"{path}: the file holds no rows; it should hold {layout}.")
        raise DataError(
            f"{path}: none of its {len(mine)} rows can be used (the first, line {mine[0].line}: {mine[0].reason}) "
            f"The file should hold {layout}."
        )


def present(rows: list) -> list:
    """The rows a loader kept (it reads a left-out row as None, so that rows keep their places)."""
    return [row for row in rows if row is not None]


def question_key(question: str) -> str:
    """What makes two questions the same: their words, case and spacing aside."""
    return " ".join(question.casefold().split())


def json_type(value) -> str:
    """How the user wrote ``value`` in JSON: ``a number (42)``, ``null``, ``an array``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        text = repr(value)
        return f"a number ({text if len(text) <= 20 else text[:20] + '...'})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r}{'...' if len(value) > 40 else ''})"
    return "an array" if isinstance(value, list) else "an object"


def parse_json(text: str, layout: str) -> object:
    """``json.loads`` whose every failure is a BadRow; ``layout`` says what the text should be."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        at = f"line {error.lineno}, column {error.colno}" if "\n" in text else f"column {error.colno}"
        raise BadRow(f"not valid JSON ({error.msg} at {at}); {layout}.") from None
    # An integer of thousands of digits is a ValueError, nesting thousands deep a RecursionError.
    except (ValueError, RecursionError) as error:
        raise BadRow(f"JSON that cannot be read ({type(error).__name__}: {str(error)[:80]}); {layout}.") from None


def json_array(path: str, text: str, layout: str, name: str = "the file") -> list:
    """A data file's JSON array, or a DataError naming ``path`` and what ``name`` should be."""
    try:
        values = parse_json(text, f"{name} is {layout}")
    except BadRow as error:
        raise DataError(f"{path}: {error}") from None
    if not isinstance(values, list):
        raise DataError(f"{path}: {json_type(values)}, not {layout}.")
    return values


def object_row(value, row: str) -> dict:
    if not isinstance(value, dict):
        raise BadRow(f"{json_type(value)}, not an object; each row is {row}.")
    return value


def string_field(row: dict, key: str, example: str, empty: bool = False) -> str:
    """``row[key]``, a string (non-blank unless ``empty``); ``example`` shows a good value."""
    if key not in row:
        raise BadRow(f"'{key}' is missing; each row needs one, e.g. \"{key}\": {example}.")
    value = row[key]
    if not isinstance(value, str):
        raise BadRow(f"'{key}' is {json_type(value)}, not a string; write it as text, e.g. \"{key}\": {example}.")
    if not empty and not value.strip():
        raise BadRow(f"'{key}' is empty; it needs text, e.g. \"{key}\": {example}.")
    return value


SEPARATORS = re.compile(r"[ \t\n\r,]*")


def array_items(text: str, count: int) -> list[tuple[int, str]]:
    """The line each element of a JSON array starts on and its text; ``text`` is a valid
    JSON array of ``count`` elements (``json.loads`` read it already)."""
    decoder, items = json.JSONDecoder(), []
    position = text.index("[") + 1
    line = 1 + text.count("\n", 0, position)
    for _ in range(count):
        start = SEPARATORS.match(text, position).end()
        line += text.count("\n", position, start)
        _, end = decoder.raw_decode(text, start)
        items.append((line, text[start:end]))
        line += text.count("\n", start, end)
        position = end
    return items
