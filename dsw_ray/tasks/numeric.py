"""What every numeric task shares: the prompt layout, the answer parser and the grader.

A candidate ends in ``The answer is X.``; the parser reads the number right after
the first ``the answer is`` that has one (generation stops at the next ``\\nQ:``).
Numbers compare as numbers: ``"1,000" == "1000"`` and ``"2.5" != "2"``. The authors' code
(``official``) reads what follows the *last* "the answer is" (the whole text without one),
then what follows its last ``=``, takes the first unsigned number there and compares
``int(float(x))``.

>>> parse_answer("48 / 2 = 24. 48 + 24 = 72. The answer is 72.")
'72'
>>> is_correct("1000", "1,000"), is_correct("2.5", "2"), is_correct(None, "3")
(True, False, False)
>>> is_correct("2.5", "2", integer=True), parse_answer("The answer is -2.7.", official=True)
(True, '2')
>>> parse_answer("So 3 + 4 = 7 apples in all.", official=True), parse_answer("So 3 + 4 = 7 apples in all.")
('7', None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation

from dsw_ray.tasks.rows import Rejected

ANSWER_PHRASE = re.compile(r"the answer is", re.IGNORECASE)
# A number as people write it: optional sign or currency, thousands commas, decimals; after
# the phrase only spaces, ':' and '*' may come first, and one '$' or '-' among them. Matched
# where the phrase ends (never searched for further on), so parsing stays linear in the text.
NUMBER_AFTER_PHRASE = re.compile(r"([ :*]*(?:[$-][ :*]*)?)(-?\$?\s*)(\d[\d,]*(?:\.\d+)?|\.\d+)")
MAX_EXPONENT = 1000  # larger or smaller numbers are no answer anyone writes


def normalize_number(value: str | float | int) -> str | None:
    """Canonical text of a number (``"1,000.50"`` -> ``"1000.5"``), or None."""
    text = str(value).strip().replace(",", "").replace("$", "").replace(" ", "")
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    # "1e999999999" would overflow, or be written out as a billion digits.
    if not number.is_finite() or abs(number.adjusted()) > MAX_EXPONENT:
        return None
    # Decimal's default context keeps 28 digits: a longer integer would lose its last ones.
    canonical = format(number.normalize(Context(prec=max(28, len(number.as_tuple().digits)))), "f")
    return "0" if canonical in ("-0", "0") else canonical


def as_integer(answer: str | None) -> str | None:
    """The authors' comparison key ``int(float(x))``: ``"2.5"`` and ``"2"`` agree."""
    try:
        return None if answer is None else str(int(float(answer)))
    except (ValueError, OverflowError):
        return None


# The authors' number: digits, then a point and more digits; no sign (their parser drops it).
UNSIGNED = re.compile(r"\d+\.?\d*")


def authors_suffix(text: str) -> str:
    """Where the authors' parsers (numbers and letters alike) look: the lower-cased text after
    its last "the answer is" (all of it without one), and then after its last ``=``."""
    return text.lower().split("the answer is")[-1].split("=")[-1]


def official_answer(text: str) -> str | None:
    """The authors' ``derive_num_from_output`` then ``int(float(x))``: in ``authors_suffix``,
    commas removed, the first unsigned number of at most 30 characters, truncated to an integer."""
    match = UNSIGNED.search(authors_suffix(text).replace(",", ""))
    if match is None or len(match.group()) > 30:
        return None
    return as_integer(match.group())


def parse_answer(text: str, official: bool = False) -> str | None:
    """The number right after the first "The answer is" that has one, normalized; else None.
    ``official``: the authors' parser (``official_answer``)."""
    if official:
        return official_answer(text)
    for phrase in ANSWER_PHRASE.finditer(text):
        # The number must follow the phrase directly, not be one found a sentence later
        # ("The answer is therefore 3" reads on to the next phrase).
        match = NUMBER_AFTER_PHRASE.match(text, phrase.end())
        if match is not None:
            sign = "-" if "-" in match.group(1) + match.group(2) else ""
            return normalize_number(sign + match.group(3))
    return None


def is_correct(predicted: str | None, gold: str | float | int, integer: bool = False) -> bool:
    """Whether a parsed answer equals the gold answer as a number (as integers with ``integer``)."""
    if predicted is None:
        return False
    expected, got = normalize_number(gold), normalize_number(predicted)
    if integer:
        expected, got = as_integer(expected), as_integer(got)
    return expected is not None and got == expected


@dataclass(frozen=True)
class Example:
    """One labeled or unlabeled question of a task split."""

    question_id: str
    question: str
    gold: str | None = None
    rationale: str | None = None


@dataclass(frozen=True)
class Splits:
    """The three sets of one round: unlabeled questions, the labeled valid set, the test set,
    and the rows of the task's files that were left out."""

    questions: list[Example]
    valid: list[Example]
    test: list[Example]
    rejected: list[Rejected] = field(default_factory=list)  # rows left out under bad_rows: skip


@dataclass(frozen=True)
class SplitSizes:
    """How much of each split a task loads (None: the task's own size) and how: the seed of a
    task that samples or generates its rows, and what a bad data row does ("fail" or "skip")."""

    questions: int | None = None
    valid: int | None = None
    test: int | None = None
    seed: int = 0
    bad_rows: str = "fail"

    @classmethod
    def of(cls, task) -> SplitSizes:
        """What a job's ``task`` section asks for: its ``num_questions``, ``num_valid``, ``num_test``,
        ``seed`` and ``bad_rows`` (read by name: the config module imports the tasks, not the reverse)."""
        return cls(task.num_questions, task.num_valid, task.num_test, seed=task.seed, bad_rows=task.bad_rows)


def few_shot_prompt(exemplars: list[tuple[str, str]], question: str, separator: str = "\n\n") -> str:
    """Exemplars as ``Q: ...\\nA: ...`` blocks, each followed by ``separator`` (a blank line; the
    authors' prompt: a newline), then ``Q: <question>\\nA: ``."""
    shots = "".join(f"Q: {q}\nA: {a}{separator}" for q, a in exemplars)
    return f"{shots}Q: {question}\nA: "


def training_prompt(question: str) -> str:
    """The part of a training text that gets no loss (the paper: no few-shot prefix)."""
    return f"Q: {question}\nA: "
