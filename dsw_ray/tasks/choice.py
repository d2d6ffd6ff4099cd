"""What every multiple-choice task shares: the question with its lettered choices, the
answer parser and the letter grader.

A question reads ``<question> Answer Choices are: A)yes; B)no.`` (the layout of the
authors' prompts) and a candidate ends ``The answer is (A).``. The parser returns the
choice letter, upper case, or None; a letter that is none of the task's choices is no
answer. ``paper`` semantics read the letter right after the first "the answer is" that
has one, written ``(a)``, ``(A)`` or a bare capital ``A`` that ends there; ``official``
semantics do what the released code does: lower-case the text, take what follows its
*last* "the answer is" (the whole text without one) and then its last ``=``, and read the
first letter in parentheses there.

>>> parse_answer("Plants need light. The answer is (b).", "ABCD")
'B'
>>> parse_answer("The answer is A. Then the answer is (B).", "AB"), parse_answer("The answer is (A). Or the answer is (B).", "AB", official=True)
('A', 'B')
>>> parse_answer("The answer is (E).", "ABCD"), parse_answer("The answer is a dog.", "AB"), parse_answer("No idea.", "AB")
(None, None, None)
>>> with_choices("Is water wet?", ["yes", "no"])
'Is water wet? Answer Choices are: A)yes; B)no.'
"""

from __future__ import annotations

import re
import string

from dsw_ray.errors import BadRow
from dsw_ray.tasks import numeric

ANSWER_PHRASE = re.compile(r"the answer is", re.IGNORECASE)
# "(b)", "(B)", or a bare capital letter that ends there ("The answer is B." / "is B" at the end).
LETTER = re.compile(r"[\s:*]*(?:\(([A-Za-z])\)|([A-Z])(?=[.,;!)\s]|$))")
PARENTHESIZED = re.compile(r"\(([a-z])\)")
MAX_CHOICES = 26


def letters(count: int) -> str:
    """The first ``count`` choice letters: ``letters(3) == "ABC"``."""
    if not 2 <= count <= MAX_CHOICES:
        raise ValueError(f"a choice task has 2 to {MAX_CHOICES} choices, not {count}")
    return string.ascii_uppercase[:count]


def parse_answer(text: str, valid: str, official: bool = False) -> str | None:
    """The choice letter the text answers with (one of ``valid``), or None."""
    if official:
        match = PARENTHESIZED.search(numeric.authors_suffix(text))
        letter = match.group(1).upper() if match else None
        return letter if letter is not None and letter in valid else None
    for phrase in ANSWER_PHRASE.finditer(text):
        match = LETTER.match(text, phrase.end())
        if match is not None:
            letter = (match.group(1) or match.group(2)).upper()
            return letter if letter in valid else None
    return None


def with_choices(question: str, choices: list[str]) -> str:
    """The question followed by its lettered choices, as every choice task prompts."""
    listed = "; ".join(f"{letter}){text.strip()}" for letter, text in zip(letters(len(choices)), choices))
    return f"{question.strip()} Answer Choices are: {listed}."


def answer_sentence(letter: str) -> str:
    return f"The answer is ({letter})."


def gold_letter(value, mapping: dict, field: str, example: str) -> str:
    """A row's gold label mapped to its letter (``mapping``: label -> letter); else a BadRow."""
    if isinstance(value, (str, bool)) and value in mapping:
        return mapping[value]
    shown = repr(value)[:40]
    raise BadRow(
        f"'{field}' is {shown}, not one of {sorted(map(str, mapping))}; write the gold label as one, e.g. \"{field}\": {example}."
    )
