"""arith: synthetic arithmetic word problems that dsw-ray generates itself from a seed.

>>> example = generate_examples(seed=0, count=1, prefix="q")[0]
>>> example.question
'Leo has 13 stamps. He gets 6 more and then gives away 7. How many stamps does Leo have now?'
>>> example.rationale, example.gold
('6 + 13 = 19. 19 - 7 = 12. The answer is 12.', '12')

The task asks two-step problems, each with several solution paths (the amounts in another
order); one-step ones exist for the toy's pre-training corpus.
Questions, valid set and test set come from separate seeded streams, and a question
text never appears in two of them.
"""

from __future__ import annotations

import itertools
import random
import re

from dsw_ray.tasks.numeric import Example, Splits, SplitSizes

NAMES = [("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"), ("Sam", "He")]
ITEMS = ["apples", "pens", "cards", "books", "coins", "shells", "stamps", "marbles"]
# The task's questions are two-step problems; the toy's pre-training corpus holds mostly
# one-step ones (ToyModelConfig.two_step_share), so the base model starts surer of one step
# than of two: the room self-improvement works in (docs/testbed.md).
TWO_STEP_SHARE = 1.0

# Written in the problems' own vocabulary: names, items and numbers that the generator
# draws, so that a few-shot prompt reads like the toy's pre-training text. Exemplars with a
# name or item the toy never saw (an untrained embedding in every prompt) wrecked its
# few-shot answers: 14% right where the same model answered 82% of the same questions
# with these (docs/testbed.md).
EXEMPLARS = [
    (
        "Sam has 14 pens. He gets 9 more. How many pens does Sam have now?",
        "14 + 9 = 23. The answer is 23.",
    ),
    (
        "Ava has 11 cards. She gets 6 more and then gives away 5. How many cards does Ava have now?",
        "11 + 6 = 17. 17 - 5 = 12. The answer is 12.",
    ),
]


def one_step(rng: random.Random, name: str, pronoun: str, item: str) -> tuple[str, list[str], int]:
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        a, b = rng.randint(2, 19), rng.randint(2, 9)
        question = f"{name} has {a} {item}. {pronoun} gets {b} more. How many {item} does {name} have now?"
        return question, [f"{a} + {b} = {a + b}.", f"{b} + {a} = {a + b}."], a + b
    if kind == "sub":
        a = rng.randint(5, 20)
        b = rng.randint(1, a - 1)
        question = f"{name} has {a} {item}. {pronoun} gives away {b}. How many {item} does {name} have left?"
        return question, [f"{a} - {b} = {a - b}."], a - b
    a, b = rng.randint(2, 5), rng.randint(2, 5)
    question = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"
    return question, [f"{a} * {b} = {a * b}.", f"{b} * {a} = {a * b}."], a * b


def two_steps(rng: random.Random, name: str, pronoun: str, item: str) -> tuple[str, list[str], int]:
    """A question and every rationale that solves it: the three amounts taken in any order
    that starts from an amount held and never goes below zero. A problem with several
    solution paths is what lets a vote over samples beat one greedy answer: the paths make
    different mistakes, and the right answer is where they meet (docs/testbed.md)."""
    a = rng.randint(5, 19)
    moves = [("+" if rng.random() < 0.5 else "-", rng.randint(2, 9)) for _ in range(2)]
    if moves[0][0] == "-" and moves[0][1] >= a:
        moves[0] = ("+", moves[0][1])
    answer = a + sum(n if sign == "+" else -n for sign, n in moves)
    if answer < 0:
        moves[1] = ("+", moves[1][1])
        answer = a + sum(n if sign == "+" else -n for sign, n in moves)
    words = [f"gets {n} more" if sign == "+" else f"gives away {n}" for sign, n in moves]
    question = f"{name} has {a} {item}. {pronoun} {words[0]} and then {words[1]}. How many {item} does {name} have now?"
    rationales = []
    for (first_sign, x), (op1, y), (op2, z) in itertools.permutations([("+", a), *moves]):
        middle = x + y if op1 == "+" else x - y
        if first_sign == "+" and middle >= 0:
            rationales.append(f"{x} {op1} {y} = {middle}. {middle} {op2} {z} = {answer}.")
    return question, rationales, answer


MOVE = re.compile(r"(has|gets|gives away) (\d+)")  # an amount held, gained or lost


def careless(example: Example) -> str:
    """A two-step answer as a careless hand writes it: one equation adding every amount,
    whatever the moves' signs (``17 + 9 + 4 = 30.`` for *gets 9 more and then gives away
    4*), so it is right only when both moves are gains. The toy's corpus holds a share of
    these (``ToyModelConfig.careless_share``): a habit that greedy decoding follows and that
    a vote over sampled paths outvotes, as self-consistency outvotes an LLM's slips
    (docs/testbed.md, section 13). A one-step answer is returned as it is.

    >>> careless(generate_examples(seed=0, count=1, prefix="q")[0])
    '13 + 6 + 7 = 26. The answer is 26.'
    """
    amounts = [amount for _, amount in MOVE.findall(example.question)]
    if len(amounts) != 3:
        return example.rationale
    total = sum(map(int, amounts))
    return f"{' + '.join(amounts)} = {total}. The answer is {total}."


def problem(rng: random.Random, two_step_share: float = TWO_STEP_SHARE) -> tuple[str, str, int]:
    """One question, its gold rationale and its answer: two steps with probability
    ``two_step_share``, else one.

    The rationale opens with the equation, so that a prompt ending in ``A: `` is followed
    by a number as in pre-training (a tokenizer that merges a space with the next word
    would otherwise see the trailing space alone only before digits). Numbers are small
    so that a model pre-trained for a minute on a CPU learns one step well.
    """
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    steps = two_steps if rng.random() < two_step_share else one_step
    question, rationales, answer = steps(rng, name, pronoun, item)
    return question, f"{rng.choice(rationales)} The answer is {answer}.", answer


def generate_examples(
    seed: int, count: int, prefix: str, exclude: set[str] = frozenset(), two_step_share: float = TWO_STEP_SHARE
) -> list[Example]:
    """``count`` distinct problems from the stream ``seed``, none of whose texts is in ``exclude``
    or is an exemplar (whose answer every prompt shows)."""
    rng, examples, seen = random.Random(seed), [], set(exclude) | {question for question, _ in EXEMPLARS}
    while len(examples) < count:
        question, rationale, answer = problem(rng, two_step_share)
        if question in seen:
            continue
        seen.add(question)
        examples.append(Example(f"{prefix}-{len(examples)}", question, str(answer), rationale))
    return examples


def load(data_path: str | None, sizes: SplitSizes) -> Splits:
    """Test first, so that its questions are kept out of the other two sets (generated rows
    are never bad, so ``sizes.bad_rows`` has nothing to do)."""
    seed = sizes.seed
    test = generate_examples(seed * 3 + 2, sizes.test or 200, "test")
    valid = generate_examples(seed * 3 + 1, sizes.valid or 32, "valid", {e.question for e in test})
    taken = {e.question for e in test + valid}
    questions = generate_examples(seed * 3, sizes.questions or 256, "q", taken)
    return Splits(questions, valid, test)
