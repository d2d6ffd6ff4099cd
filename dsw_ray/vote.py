"""Vote: self-consistency. The majority answer of a question's candidates wins; every
candidate that gives it is kept (the paper's D_c, the LMSI filter)."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from dsw_ray import columns as C


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


def vote_question(candidates: pd.DataFrame, parse_answer) -> pd.DataFrame:
    """One question's candidates with ``answer``, ``majority_answer`` and ``is_majority`` added."""
    candidates = candidates.sort_values(C.SAMPLE_INDEX, kind="stable")
    answers = [parse_answer(text) for text in candidates[C.TEXT]]
    winner, is_majority = majority_vote(answers)
    # Typed as strings even when every answer is None: a block of nulls must not give
    # the stage's parquet files a schema that disagrees with the other blocks.
    return candidates.assign(
        **{
            C.ANSWER: pd.array(answers, dtype="string"),
            C.MAJORITY_ANSWER: pd.array([winner] * len(answers), dtype="string"),
            C.IS_MAJORITY: is_majority,
        }
    )
