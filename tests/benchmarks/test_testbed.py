"""The testbed's diagnosis of wrong majority candidates (benchmarks/testbed.py --errors), on
rationales written by hand for one arith question, and on the task's own gold rationales."""

import importlib.util
import os

from dsw_ray.tasks import arith

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUESTION = "Tom has 14 cards. He gets 3 more and then gives away 9. How many cards does Tom have now?"


def load_testbed():
    spec = importlib.util.spec_from_file_location("testbed", os.path.join(ROOT, "benchmarks", "testbed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wrong(text: str, question: str = QUESTION, majority: bool = True) -> dict:
    return {"question": question, "text": text, "is_majority": majority, "correct": False}


def test_each_kind_of_mistake_is_told_apart():
    testbed = load_testbed()
    cands = [
        wrong("14 + 3 = 17. 17 - 8 = 9. The answer is 9."),  # 9 read as 8
        wrong("14 + 3 = 17. 17 - 5 = 12. The answer is 12."),  # 9 read as 5
        wrong("14 + 3 = 17. 17 - 9 = 9. The answer is 9."),  # a wrong sum
        wrong("14 + 4 = 17. 17 - 9 = 9. The answer is 9."),  # both
        wrong("14 - 3 = 11. 11 + 9 = 20. The answer is 20."),  # the moves' signs swapped
        wrong("14 + 3 = 17. 16 - 9 = 7. The answer is 7."),  # not from the previous result
        wrong("14 + 3 = 17. 17 - 8 = 9. The answer is 9.", majority=False),  # not in the majority
    ]
    result = testbed.wrong_majority(cands)
    assert result["kinds"] == {"amounts": 2, "sums": 1, "both": 1, "signs": 1, "chain": 1}
    assert result["rows"] == 6 and result["off_by_one"] == 1
    # One question, six rows, five different sets of amounts: not one misreading repeated.
    assert result["questions"] == 1 and result["questions_with_one_amount_set"] == 0


def test_one_misreading_on_two_paths_is_one_amount_set():
    testbed = load_testbed()
    result = testbed.wrong_majority([
        wrong("14 + 3 = 17. 17 - 8 = 9. The answer is 9."),
        wrong("14 - 8 = 6. 6 + 3 = 9. The answer is 9."),
    ])
    assert result["kinds"] == {"amounts": 2} and result["off_by_one"] == 2
    assert result["questions_with_one_amount_set"] == 1


def test_gold_rationales_use_the_questions_amounts_and_signs():
    """Every path the task accepts computes with the question's amounts and signs: a rationale
    the task calls right is never counted as a misreading."""
    testbed = load_testbed()
    for example in arith.generate_examples(seed=3, count=200, prefix="q"):
        used = testbed.used_amounts(testbed.EQUATION.findall(example.rationale))
        assert used == testbed.asked_amounts(example.question), (example.question, example.rationale)
