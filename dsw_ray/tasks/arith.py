"""arith: synthetic arithmetic word problems that dsw-ray generates itself from a seed.

>>> example = generate_examples(seed=0, count=1, prefix="q")[0]
>>> example.question, example.rationale  # doctest: +SKIP
('Mia has 12 apples. She gets 7 more. How many apples does Mia have now?',
 '12 + 7 = 19. The answer is 19.')

Questions, valid set and test set come from separate seeded streams, and a question
text never appears in two of them.
"""

from __future__ import annotations

import random

from dsw_ray.tasks.numeric import Example, Splits

NAMES = [("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"), ("Sam", "He")]
ITEMS = ["apples", "pens", "cards", "books", "coins", "shells", "stamps", "marbles"]

EXEMPLARS = [
    (
        "Ben has 14 cups. He gets 9 more. How many cups does Ben have now?",
        "14 + 9 = 23. The answer is 23.",
    ),
    (
        "Ivy has 11 rings. She gets 6 more and then gives away 5. How many rings does Ivy have now?",
        "11 + 6 = 17. 17 - 5 = 12. The answer is 12.",
    ),
]


def problem(rng: random.Random) -> tuple[str, str, int]:
    """One question, its gold rationale and its answer.

    The rationale opens with the equation, so that a prompt ending in ``A: `` is followed
    by a number as in pre-training (a tokenizer that merges a space with the next word
    would otherwise see the trailing space alone only before digits). Numbers are small
    so that a model pre-trained for a minute on a CPU gets some, not all, right.
    """
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(["add", "sub", "mul", "two_step"])
    if kind == "add":
        a, b = rng.randint(2, 19), rng.randint(2, 9)
        answer = a + b
        question = f"{name} has {a} {item}. {pronoun} gets {b} more. How many {item} does {name} have now?"
        steps = f"{a} + {b} = {answer}."
    elif kind == "sub":
        a = rng.randint(5, 20)
        b = rng.randint(1, a - 1)
        answer = a - b
        question = f"{name} has {a} {item}. {pronoun} gives away {b}. How many {item} does {name} have left?"
        steps = f"{a} - {b} = {answer}."
    elif kind == "mul":
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        answer = a * b
        question = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"
        steps = f"{a} * {b} = {answer}."
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        c = rng.randint(1, a + b - 1)
        answer = a + b - c
        question = (
            f"{name} has {a} {item}. {pronoun} gets {b} more and then gives away {c}. "
            f"How many {item} does {name} have now?"
        )
        steps = f"{a} + {b} = {a + b}. {a + b} - {c} = {answer}."
    return question, f"{steps} The answer is {answer}.", answer


def generate_examples(seed: int, count: int, prefix: str, exclude: set[str] = frozenset()) -> list[Example]:
    """``count`` distinct problems from the stream ``seed``, none of whose texts is in ``exclude``."""
    rng, examples, seen = random.Random(seed), [], set(exclude)
    while len(examples) < count:
        question, rationale, answer = problem(rng)
        if question in seen:
            continue
        seen.add(question)
        examples.append(Example(f"{prefix}-{len(examples)}", question, str(answer), rationale))
    return examples


def load(
    data_path: str | None,
    num_questions: int | None,
    num_valid: int | None,
    num_test: int | None,
    seed: int,
    bad_rows: str = "fail",
) -> Splits:
    """Test first, so that its questions are kept out of the other two sets (generated rows
    are never bad, so ``bad_rows`` has nothing to do)."""
    test = generate_examples(seed * 3 + 2, num_test or 200, "test")
    valid = generate_examples(seed * 3 + 1, num_valid or 32, "valid", {e.question for e in test})
    taken = {e.question for e in test + valid}
    questions = generate_examples(seed * 3, num_questions or 256, "q", taken)
    return Splits(questions, valid, test)
