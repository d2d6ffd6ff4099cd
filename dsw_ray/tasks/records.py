"""Reading a data file's rows (jsonl, json, csv or parquet; local path or pyarrow URI) into a
task's examples, one row at a time, under ``task.bad_rows``.

Each row knows where it starts (``line 3`` of a text file, ``row 3`` of a parquet file), so
that a loader's ``read_row`` only says what is wrong (``BadRow``) and the loop names the
file and place, then fails or quarantines the row (see ``rows``).

>>> [r.where for r in records_of_text("a.jsonl", '{"q": 1}\\n\\n{"q": 2}\\n', "jsonl", "x")]
['a.jsonl, line 1', 'a.jsonl, line 3']
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Callable

from dsw_ray.errors import BadRow, DataError
from dsw_ray.io import read_bytes, read_text
from dsw_ray.tasks.numeric import Example
from dsw_ray.tasks.rows import BadRows, array_items, json_array, object_row, parse_json, present, question_key

FORMATS = ("jsonl", "json", "csv", "parquet")


@dataclass(frozen=True)
class Record:
    """One row of a file: its place, its text as read (for the quarantine) and a reader of
    its value that raises BadRow when the row is no JSON object (jsonl)."""

    index: int  # 0-based position among the file's rows
    line: int  # the line the row starts on (parquet: its row number, from 1)
    where: str  # "train.jsonl, line 3"
    raw: str
    read: Callable[[], dict]


def file_format(path: str, format: str | None = None) -> str:
    """``format`` or the one the file name ends in; an unknown one is a DataError."""
    chosen = format or os.path.splitext(path.rstrip("/"))[1].lstrip(".").lower()
    if chosen not in FORMATS:
        raise DataError(
            f"{path}: cannot tell the file's format from its name; name it .jsonl, .json, .csv or .parquet "
            "(or set the task's format)."
        )
    return chosen


def records_of_text(path: str, text: str, format: str, row: str) -> list[Record]:
    """The rows of a jsonl, json or csv file's text; ``row`` says what one row should be."""
    if format == "jsonl":
        out = []
        # Lines end at "\n" only: a JSON string may hold a raw U+2028, which splitlines() splits at.
        for lineno, line in enumerate(text.split("\n"), 1):
            if line.strip():
                reader = lambda line=line: object_row(parse_json(line, f"each line is {row}"), row)  # noqa: E731
                out.append(Record(len(out), lineno, f"{path}, line {lineno}", line.rstrip("\r"), reader))
        return out
    if format == "json":
        values = json_array(path, text, f"a JSON array of rows, each {row}")
        return [
            Record(i, line, f"{path}, row {i + 1} (line {line})", raw, lambda v=value: object_row(v, row))
            for i, ((line, raw), value) in enumerate(zip(array_items(text, len(values)), values))
        ]
    # A field may be as long as the file: csv's own limit (128 KiB) failed a whole file.
    limit = csv.field_size_limit(max(len(text), csv.field_size_limit()))
    try:
        return csv_records(path, text)
    finally:
        csv.field_size_limit(limit)


def csv_records(path: str, text: str) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as error:
        raise DataError(f"{path}: the header line is not CSV ({error}).") from None
    out, start = [], reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return out
        except csv.Error as error:
            raise DataError(f"{path}, line {start}: not CSV ({error}); fix the quoting.") from None
        if any(value.strip() for value in values):
            reader_fn = lambda values=values: csv_row(header, values)  # noqa: E731
            out.append(Record(len(out), start, f"{path}, line {start}", ",".join(values), reader_fn))
        start = reader.line_num + 1


def csv_row(header: list[str], values: list[str]) -> dict:
    if len(values) != len(header):
        raise BadRow(f"{len(values)} fields, but the header has {len(header)}; quote fields that hold commas.")
    return dict(zip(header, values))


def read_records(path: str, format: str | None, row: str, expected: str) -> list[Record]:
    """Every row of the file at ``path`` (local or URI). ``expected`` says what the file should
    be, for the error when it is missing."""
    format = file_format(path, format)
    if format != "parquet":
        return records_of_text(path, read_text(path, expected), format, row)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(read_bytes(path)))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. {expected}") from None
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a parquet file that can be read ({error}).") from None
    return [
        Record(i, i + 1, f"{path}, row {i + 1}", repr(value), lambda v=value: v)
        for i, value in enumerate(table.to_pylist())
    ]


def read_examples(
    path: str,
    records: list[Record],
    read_row: Callable[[dict, Record], Example],
    bad: BadRows,
    row: str,
    unique_questions: bool = True,
    layout: str | None = None,
) -> list[Example | None]:
    """One entry per record of the file at ``path``: the example ``read_row`` makes of it, or
    None where ``bad`` left the row out (so rows keep their places in a split). A question
    id may appear once per file, and so may a question unless ``unique_questions`` is off.
    ``layout`` says what the file should hold (default: rows, each ``row``)."""
    examples, ids, questions = [], {}, {}
    for record in records:
        try:
            example = read_row(record.read(), record)
            first = ids.setdefault(example.question_id, record)
            if first is not record:
                raise BadRow(f"the same id {example.question_id!r} as {first.where.split(', ', 1)[1]}; every row needs its own id.")
            first = questions.setdefault(question_key(example.question), record)
            if unique_questions and first is not record:
                raise BadRow(f"the same question as {first.where.split(', ', 1)[1]}; a question appears once per file (delete one).")
            examples.append(example)
        except BadRow as error:
            bad.reject(path, record.line, record.where, error, record.raw)
            examples.append(None)
    bad.require_rows(path, len(present(examples)), layout or f"rows, each {row}")
    return examples
