import pyarrow as pa
import pytest

from dsw_ray import columns as C
from dsw_ray import get_task, majority_vote
from dsw_ray.vote import parse_answers, verdicts, with_verdicts

PARSE = get_task("arith").parse_answer


def test_majority_vote_by_hand():
    assert majority_vote(["3", "4", "4"]) == ("4", [False, True, True])
    # A tie goes to the answer seen first; None never votes.
    assert majority_vote(["5", None, "6", None]) == ("5", [True, False, False, False])
    assert majority_vote([None, None]) == (None, [False, False])
    assert majority_vote([]) == (None, [])
    assert majority_vote(["7"]) == ("7", [True])


def seed_of(question_id: str, sample_index: int) -> int:
    return 100 * ord(question_id) + sample_index


def candidates(rows: list[tuple[str, int, str]]) -> pa.Table:
    question_ids, sample_indexes, texts = zip(*rows)
    return pa.table({
        C.QUESTION_ID: list(question_ids), C.SAMPLE_INDEX: pa.array(sample_indexes, pa.int64()),
        C.TEXT: list(texts), C.SEED: pa.array([seed_of(q, i) for q, i in zip(question_ids, sample_indexes)], pa.int64()),
    })  # fmt: skip


def test_each_question_votes_in_sample_order_whatever_the_row_order():
    # q's candidates arrive shuffled over two blocks; "1" and "2" tie, and the tie goes to the
    # answer of the lowest sample index ("1"), not to the first row seen ("2").
    blocks = [
        candidates([("q", 1, "The answer is 2."), ("r", 0, "no answer"), ("q", 3, "no answer")]),
        candidates([("q", 2, "no answer"), ("q", 0, "The answer is 1."), ("r", 1, "The answer is 9.")]),
    ]
    tally = verdicts(pa.concat_tables([parse_answers(block, PARSE) for block in blocks]))
    voted = pa.concat_tables([with_verdicts(block, tally) for block in blocks]).sort_by(
        [(C.QUESTION_ID, "ascending"), (C.SAMPLE_INDEX, "ascending")]
    )
    assert voted.num_rows == 6
    # Every candidate keeps its own columns through the join.
    keys = zip(voted[C.QUESTION_ID].to_pylist(), voted[C.SAMPLE_INDEX].to_pylist())
    assert voted[C.SEED].to_pylist() == [seed_of(q, i) for q, i in keys]
    assert voted[C.ANSWER].to_pylist() == ["1", "2", None, None, None, "9"]
    assert voted[C.IS_MAJORITY].to_pylist() == [True, False, False, False, False, True]
    assert voted[C.MAJORITY_ANSWER].to_pylist() == ["1"] * 4 + ["9"] * 2


def test_a_question_without_parsable_answers_keeps_nothing_and_keeps_the_schema():
    tally = verdicts(parse_answers(candidates([("q", 0, "no"), ("q", 1, "none")]), PARSE))
    assert tally[C.IS_MAJORITY].to_pylist() == [False, False]
    assert tally.schema.field(C.MAJORITY_ANSWER).type == pa.string()
    assert tally.schema.field(C.ANSWER).type == pa.string()


def test_a_block_without_text_is_refused_with_the_stage_name():
    with pytest.raises(KeyError, match="vote: input lacks column"):
        parse_answers(pa.table({C.QUESTION_ID: ["q"], C.SAMPLE_INDEX: [0]}), PARSE)
