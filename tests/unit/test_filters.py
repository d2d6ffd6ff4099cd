"""Every filter on a small round whose outcome is worked out by hand."""

import math

import numpy as np
import pyarrow as pa
import pytest

from dsw_ray import columns as C
from dsw_ray.filters import FilterConfig
from dsw_ray.filters import METHODS, answer_entropy, apply

# q1: answers 3, 3, 4 -> majority 3.  q2: 5, None, 6 -> a tie, 5 seen first wins.
# q3: nothing parsable -> no majority. Gold: q1 3, q2 6, q3 7.
# Majority losses with Lv = 2: q1/0 1.0 (w' 2), q1/1 4.0 (w' 0.5), q2/0 2.0 (w' 1).
ROWS = [
    # question, index, answer, majority, loss, reward
    ("q1", 0, "3", True, 1.0, 0.1),
    ("q1", 1, "3", True, 4.0, 0.9),
    ("q1", 2, "4", False, None, None),
    ("q2", 0, "5", True, 2.0, 0.5),
    ("q2", 1, None, False, None, None),
    ("q2", 2, "6", False, None, None),
    ("q3", 0, None, False, None, None),
    ("q3", 1, None, False, None, None),
    ("q3", 2, None, False, None, None),
]
GOLD = {"q1": "3", "q2": "6", "q3": "7", "q4": "9"}


def round_table(rows=ROWS, shuffle=True) -> pa.Table:
    rows = list(rows)
    if shuffle:  # the filters must not depend on the order rows arrive in
        rows = rows[::-1]
    ds = [None if loss is None else max(2.0 / loss, loss / 2.0) for *_, loss, _ in rows]
    return pa.table(
        {
            C.QUESTION_ID: pa.array([r[0] for r in rows], pa.string()),
            C.SAMPLE_INDEX: pa.array([r[1] for r in rows], pa.int64()),
            C.ANSWER: pa.array([r[2] for r in rows], pa.string()),
            C.IS_MAJORITY: pa.array([r[3] for r in rows], pa.bool_()),
            C.GOLD: pa.array([GOLD[r[0]] for r in rows], pa.string()),
            C.LOSS: pa.array([r[4] for r in rows], pa.float64()),
            C.VALID_LOSS_MEAN: pa.array([None if r[4] is None else 2.0 for r in rows], pa.float64()),
            C.DS_WEIGHT: pa.array(ds, pa.float64()),
            C.REWARD: pa.array([r[5] for r in rows], pa.float64()),
            C.RATING: pa.array([None if r[5] is None else 10 * r[5] for r in rows], pa.float64()),  # self: as rm
        }
    )


def keys(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table[C.QUESTION_ID].to_pylist(), table[C.SAMPLE_INDEX].to_pylist()))


def run(method, official=False, **settings):
    return apply(method, round_table(), FilterConfig(**settings), official)


def test_lmsi_keeps_every_majority_candidate():
    result = run("lmsi")
    assert keys(result.kept) == [("q1", 0), ("q1", 1), ("q2", 0)]
    assert result.dropped == {"no_answer": 4, "not_majority": 2}
    assert result.kept[C.LOSS_WEIGHT].to_pylist() == [1.0, 1.0, 1.0]


def test_iwsi_keeps_lowest_ds_with_ties_broken_by_key():
    # round(0.67 * 3) = 2: q2/0 (ds 1), then q1/0 and q1/1 tie at ds 2: the first key wins.
    result = run("iwsi", keep_fraction=0.67)
    assert keys(result.kept) == [("q1", 0), ("q2", 0)]
    assert result.dropped == {"no_answer": 4, "not_majority": 2, "high_ds_weight": 1}
    assert keys(run("iwsi", keep_fraction=1.0).kept) == [("q1", 0), ("q1", 1), ("q2", 0)]


def test_iwsi_official_keep_rule_drops_everything_tied_at_the_threshold():
    # Official DS: w' = clip(Lv/loss, 0, 2) = 2, 0.5, 1 -> ds 2, min(2, 5) = 2, 1.
    # sorted(ds)[int(3 * 0.67)] = 2, and only ds < 2 is kept.
    result = run("iwsi", official=True, keep_fraction=0.67)
    assert keys(result.kept) == [("q2", 0)]
    assert result.dropped["high_ds_weight"] == 2


def test_iwsi_w_weights_by_clipped_ratio():
    result = run("iwsi_w", weight_clip=1.5)
    assert keys(result.kept) == [("q1", 0), ("q1", 1), ("q2", 0)]
    # w' = 2, 0.5, 1 -> clip to [0, 1.5].
    assert result.kept[C.LOSS_WEIGHT].to_pylist() == [1.5, 0.5, 1.0]
    assert result.dropped == {"no_answer": 4, "not_majority": 2, "zero_weight": 0}


def test_iwsi_w_official_drops_zero_loss_as_zero_weight():
    table = round_table()
    losses = [0.0 if k == ("q1", 1) else v for k, v in zip(keys(table), table[C.LOSS].to_pylist())]
    table = table.set_column(table.column_names.index(C.LOSS), C.LOSS, pa.array(losses, pa.float64()))
    result = apply("iwsi_w", table, FilterConfig(weight_clip=5.0), official=True)
    assert keys(result.kept) == [("q1", 0), ("q2", 0)]
    assert result.kept[C.LOSS_WEIGHT].to_pylist() == [2.0, 1.0]  # official w' is clipped to 2 first
    assert result.dropped["zero_weight"] == 1


def test_answer_entropy_by_hand():
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(3)
    assert answer_entropy(["3", "3", "4"], 3) == pytest.approx(expected)  # 0.579
    assert answer_entropy(["5", None, "6"], 3) == pytest.approx(math.log(2) / math.log(3))  # 0.631
    assert answer_entropy([None, None], 2) == 0.0
    assert answer_entropy(["1"], 1) == 0.0
    assert answer_entropy(["1", "2", "3"], 3) == pytest.approx(1.0)
    # The authors divide by the log of the parsable answers' count: two different of two is 1.
    assert answer_entropy(["5", None, "6"]) == pytest.approx(1.0)
    assert answer_entropy(["5", None, None]) == 0.0


def test_official_entropy_filter_scales_by_the_parsable_answers():
    """q2's answers are 5, none, 6: 0.631 of log 3, but 1.0 of log 2, so at 0.7 the paper's
    scale keeps it and the authors' drops it."""
    paper, official = run("entropy", entropy_threshold=0.7), run("entropy", official=True, entropy_threshold=0.7)
    assert ("q2", 0) in keys(paper.kept) and ("q2", 0) not in keys(official.kept)
    # q2's three candidates, and q3's, none of which parses (the authors' code drops it there too).
    assert official.dropped["high_entropy"] == paper.dropped["high_entropy"] + 6
    # One parsable answer: entropy 0 of log 1 = 0, which the authors' code drops.
    single = round_table(ROWS + [("q4", 0, "9", True, 2.0, 0.1), ("q4", 1, None, False, None, None)])
    assert ("q4", 0) in keys(apply("entropy", single, FilterConfig(), False).kept)
    assert ("q4", 0) not in keys(apply("entropy", single, FilterConfig(), True).kept)


def test_entropy_drops_uncertain_questions_then_votes():
    result = run("entropy", entropy_threshold=0.6)
    assert keys(result.kept) == [("q1", 0), ("q1", 1)]
    assert result.dropped == {"high_entropy": 3, "no_answer": 3, "not_majority": 1}
    assert run("entropy", entropy_threshold=0.5).kept.num_rows == 0


def test_random_keeps_as_many_as_iwsi_reproducibly():
    first = run("random", keep_fraction=0.67, seed=3)
    assert first.kept.num_rows == 2
    assert set(keys(first.kept)) <= {("q1", 0), ("q1", 1), ("q2", 0)}
    assert keys(run("random", keep_fraction=0.67, seed=3).kept) == keys(first.kept)
    draws = {tuple(keys(run("random", keep_fraction=0.67, seed=s).kept)) for s in range(20)}
    assert len(draws) > 1, "the seed changes the draw"
    # Under the official keep rule IWSI keeps one here, and so does random.
    assert run("random", official=True, keep_fraction=0.67).kept.num_rows == 1


def test_oracle_keeps_correct_candidates_majority_or_not():
    result = run("oracle")
    assert keys(result.kept) == [("q1", 0), ("q1", 1), ("q2", 2)]
    assert result.dropped == {"no_answer": 4, "wrong_answer": 2}


def test_oracle_needs_labels():
    table = round_table()
    table = table.set_column(table.column_names.index(C.GOLD), C.GOLD, pa.nulls(table.num_rows, pa.string()))
    with pytest.raises(ValueError, match="gold"):
        apply("oracle", table, FilterConfig(), False)


def test_oracle_official_compares_integers():
    rows = [("q1", 0, "3.5", True, 1.0, 0.0), ("q1", 1, "2", False, None, None)]
    result = apply("oracle", round_table(rows), FilterConfig(), True)
    assert keys(result.kept) == [("q1", 0)]  # int(3.5) == 3
    assert apply("oracle", round_table(rows), FilterConfig(), False).kept.num_rows == 0


def test_rm_keeps_highest_rewards():
    result = run("rm", keep_fraction=0.67)
    assert keys(result.kept) == [("q1", 1), ("q2", 0)]
    assert result.dropped == {"no_answer": 4, "not_majority": 2, "low_reward": 1}


def test_self_keeps_highest_ratings():
    result = run("self", keep_fraction=0.67)
    assert keys(result.kept) == [("q1", 1), ("q2", 0)]
    assert result.dropped == {"no_answer": 4, "not_majority": 2, "low_rating": 1}


def test_none_keeps_every_candidate():
    result = run("none")
    assert result.kept.num_rows == len(ROWS) and result.dropped == {}


def test_scoring_gaps_are_errors_not_silent_drops():
    table = round_table()
    losses = [None if k == ("q2", 0) else v for k, v in zip(keys(table), table[C.LOSS].to_pylist())]
    table = table.set_column(table.column_names.index(C.LOSS), C.LOSS, pa.array(losses, pa.float64()))
    for method in ("iwsi", "iwsi_w", "random"):
        with pytest.raises(ValueError, match="no loss"):
            apply(method, table, FilterConfig(), False)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_a_single_candidate(method):
    result = apply(method, round_table([("q1", 0, "3", True, 2.0, 1.0)]), FilterConfig(keep_fraction=0.8), False)
    assert keys(result.kept) == [("q1", 0)]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_unparsable_and_empty_rounds(method):
    unparsable = round_table([("q3", i, None, False, None, None) for i in range(4)])
    result = apply(method, unparsable, FilterConfig(), False)
    assert result.kept.num_rows == (4 if method == "none" else 0)
    assert result.kept.num_rows + sum(result.dropped.values()) == 4
    empty = apply(method, round_table([]), FilterConfig(), False)
    assert empty.kept.num_rows == 0 and sum(empty.dropped.values()) == 0
    assert C.LOSS_WEIGHT in empty.kept.column_names


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_accounts_for_every_candidate_and_orders_by_key(method):
    result = apply(method, round_table(), FilterConfig(keep_fraction=0.67), False)
    assert result.kept.num_rows + sum(result.dropped.values()) == len(ROWS)
    assert keys(result.kept) == sorted(keys(result.kept))
    assert np.all(result.kept[C.LOSS_WEIGHT].to_numpy() > 0)


def test_a_method_may_carry_its_own_keep_fraction():
    from dsw_ray.filters import variant

    chosen = variant("iwsi@0.3")
    assert (chosen.method, chosen.keep_fraction, chosen.title) == ("iwsi", 0.3, "IWSI (k = 0.3)")
    one = keys(run("iwsi", keep_fraction=0.3).kept)
    assert len(one) == 1 and keys(apply("iwsi@0.3", round_table(), FilterConfig(keep_fraction=1.0), False).kept) == one
    assert len(keys(apply("iwsi", round_table(), FilterConfig(keep_fraction=1.0), False).kept)) == 3
    for name, problem in [("iwsi@", "must be a number"), ("iwsi@1.5", "must be a number"), ("lmsi@0.5", "no keep fraction"),
                          ("iwsy@0.5", "unknown method"), ("iwsi@nan", "must be a number")]:  # fmt: skip
        with pytest.raises(ValueError, match=problem):
            variant(name)


def test_official_top_fraction_keeps_ties_at_the_threshold_and_drops_zero():
    """The authors' RM/Self rule: sorted highest first, the value at int(n * k) is the threshold,
    every value at or above it stays (so ties and one more than k * n), 0 never does; Self with
    a threshold of 0 keeps the first int(n * k) by rank."""
    from dsw_ray.filters import official_keep_highest

    ratings = np.array([8.0, 5.0, 8.0, 3.0, 5.0, 9.0])
    assert official_keep_highest(ratings, 0.5, True).tolist() == [True, True, True, False, True, True]
    assert official_keep_highest(ratings, 1.0, True).all()
    zeros = np.array([0.0, 7.0, 0.0, 0.0])
    assert official_keep_highest(zeros, 0.5, True).tolist() == [True, True, False, False]  # by rank
    rewards = np.array([-1.0, -2.0, 0.5, -3.0])
    assert official_keep_highest(rewards, 0.5, False).tolist() == [True, True, True, False]  # negative: no rank rule
    # Through the filter: three majority candidates at k = 0.34 keep two (the threshold is the second).
    paper, official = run("self", keep_fraction=0.34), run("self", official=True, keep_fraction=0.34)
    assert len(keys(paper.kept)) == 1 and len(keys(official.kept)) == 2
