"""Vote: self-consistency. The majority answer of a question's candidates wins; every
candidate that gives it is kept (the paper's D_c, the LMSI filter).

The stage needs no shuffle: a map over the candidates' blocks parses each answer, only the
keys and answers (a few bytes a candidate) come to the driver, which counts the votes of
every question, and a second map joins the verdicts onto the blocks. (A Ray Data
``groupby`` took 7-12 s of hash shuffle for the quickstart's 576 candidates.)
"""

from __future__ import annotations

import functools
from collections import Counter
from itertools import groupby
from typing import TYPE_CHECKING

import pyarrow as pa

from dsw_ray import columns as C

if TYPE_CHECKING:
    from dsw_ray.tasks import Task


def majority_vote(answers: list[str | None]) -> tuple[str | None, list[bool]]:
    """The winning answer and, per candidate, whether it gave it.

    Unparsable answers (None) do not vote; a tie goes to the tied answer seen first;
    with no parsable answer there is no winner and nothing is kept.

    >>> majority_vote(["3", None, "4", "4", "3"])
    ('3', [True, False, False, False, True])
    """
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return None, [False] * len(answers)
    top = max(counts.values())
    # Counter keeps first-seen order, so the first answer with the top count is the first seen.
    winner = next(answer for answer, count in counts.items() if count == top)
    return winner, [answer == winner for answer in answers]


def parse_answers(candidates: pa.Table, parse_answer) -> pa.Table:
    """The keys of a block's candidates and the answer each gives (null when unparsable)."""
    C.require(candidates, (*C.KEY, C.TEXT), "vote")
    return pa.table({
        C.QUESTION_ID: candidates[C.QUESTION_ID],
        C.SAMPLE_INDEX: candidates[C.SAMPLE_INDEX],
        C.ANSWER: pa.array([parse_answer(text) for text in candidates[C.TEXT].to_pylist()], pa.string()),
    })  # fmt: skip


def verdicts(answers: pa.Table) -> pa.Table:
    """Every candidate's answer, its question's majority answer and whether it gave it; each
    question's candidates vote in order of sample index."""
    ordered = answers.sort_by(C.BY_KEY)
    winners, is_majority = [], []
    rows = zip(ordered[C.QUESTION_ID].to_pylist(), ordered[C.ANSWER].to_pylist())
    for _, question in groupby(rows, key=lambda row: row[0]):
        given = [answer for _, answer in question]
        winner, flags = majority_vote(given)
        winners += [winner] * len(given)
        is_majority += flags
    # Typed as strings even when every answer is null, so that every block has one schema.
    return ordered.append_column(C.MAJORITY_ANSWER, pa.array(winners, pa.string())).append_column(
        C.IS_MAJORITY, pa.array(is_majority, pa.bool_())
    )


def with_verdicts(candidates: pa.Table, verdicts: pa.Table) -> pa.Table:
    """A block's candidates with their verdict columns joined on ``(question_id, sample_index)``."""
    joined = candidates.join(verdicts, keys=list(C.KEY), join_type="left outer")
    return joined.sort_by(C.BY_KEY)


EMPTY = pa.table({C.QUESTION_ID: pa.array([], pa.string()), C.SAMPLE_INDEX: pa.array([], pa.int64()), C.TEXT: pa.array([], pa.string())})


def vote(candidates, parse_answer):
    """The vote stage over a Ray Dataset of candidates: the same rows with ``answer``,
    ``majority_answer`` and ``is_majority`` added."""
    import ray

    answers = candidates.map_batches(
        parse_answers, fn_kwargs={"parse_answer": parse_answer}, batch_format="pyarrow", batch_size=None
    )
    blocks = ray.get(answers.to_arrow_refs())
    tally = verdicts(pa.concat_tables(blocks) if blocks else parse_answers(EMPTY, parse_answer))
    return candidates.map_batches(with_verdicts, fn_kwargs={"verdicts": tally}, batch_format="pyarrow", batch_size=None)


def answer_parser(task: Task, official: bool):
    """The task's answer parser, as the vote stage's workers call it (picklable)."""
    return functools.partial(task.parse_answer, official=official)
