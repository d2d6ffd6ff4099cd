import pandas as pd

from dsw_ray import get_task, majority_vote
from dsw_ray import columns as C
from dsw_ray.vote import vote_question


def test_majority_vote_by_hand():
    assert majority_vote(["3", "4", "4"]) == ("4", [False, True, True])
    # A tie goes to the answer seen first; None never votes.
    assert majority_vote(["5", None, "6", None]) == ("5", [True, False, False, False])
    assert majority_vote([None, None]) == (None, [False, False])
    assert majority_vote([]) == (None, [])
    assert majority_vote(["7"]) == ("7", [True])


def test_vote_question_orders_by_sample_index_and_parses():
    candidates = pd.DataFrame(
        {
            C.QUESTION_ID: ["q"] * 4,
            C.SAMPLE_INDEX: [3, 0, 2, 1],
            C.TEXT: ["The answer is 2.", "The answer is 1.", "no answer", "The answer is 2."],
        }
    )
    voted = vote_question(candidates, get_task("arith").parse_answer)
    assert voted[C.SAMPLE_INDEX].tolist() == [0, 1, 2, 3]
    assert [None if pd.isna(a) else a for a in voted[C.ANSWER]] == ["1", "2", None, "2"]
    assert voted[C.IS_MAJORITY].tolist() == [False, True, False, True]
    assert set(voted[C.MAJORITY_ANSWER]) == {"2"}
