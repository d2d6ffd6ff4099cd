"""The three answer types a task can have, and the one grader all of them share.

A task's parser turns a candidate into a canonical answer (``number``: ``"1000.5"``;
``choice``: a letter ``"B"``; ``text``: the words after "The answer is", folded), so that
grading is one comparison: as numbers when both sides are numbers (the ``official``
semantics compare ``int(float(x))``), else as folded text.

>>> parse_text("So it is Paris. The answer is Paris, France.\\nQ: next")
'paris, france'
>>> is_correct("1000", "1,000"), is_correct("B", "B"), is_correct("paris", "Paris"), is_correct(None, "A")
(True, True, True, False)
"""

from __future__ import annotations

import re

from dsw_ray.tasks import numeric

ANSWER_TYPES = ("number", "choice", "text")
# The text answer runs to the end of its sentence: a period, ! or ? before a space or the end, or a line break.
LEADING, TRAILING = " \"'`*", " \"'`*."  # what folding strips from an answer's start and end
SENTENCE_END = re.compile(r"[.!?](?:\s|$)|\n")


def fold(text: str) -> str:
    """Text as answers compare: case, spacing, surrounding quotes and final periods aside."""
    return " ".join(str(text).casefold().split()).lstrip(LEADING).rstrip(TRAILING)


def parse_text(text: str, official: bool = False) -> str | None:
    """The folded text after the first "the answer is" (official: the last), up to the end of
    its sentence; None when there is none or it is empty."""
    lowered = text.lower()
    if "the answer is" not in lowered:
        return None
    start = (lowered.rindex if official else lowered.index)("the answer is") + len("the answer is")
    rest = text[start:].lstrip(" :")
    end = SENTENCE_END.search(rest)
    answer = fold(rest[: end.start() if end else len(rest)])
    return answer or None


def is_correct(predicted: str | None, gold, official: bool = False) -> bool:
    """Whether a parsed answer equals the gold answer: as numbers when both are numbers
    (``official``: as the authors' integers), otherwise as folded text."""
    if predicted is None or gold is None:
        return False
    if numeric.normalize_number(gold) is not None and numeric.normalize_number(predicted) is not None:
        return numeric.is_correct(predicted, gold, official)
    return fold(predicted) == fold(gold)
