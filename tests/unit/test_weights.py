import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsw_ray import ds_weights, keep_lowest
from dsw_ray.weights import official_ds_weights, official_keep, official_ratios

finite_losses = st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=50)


def test_ds_weights_by_hand():
    # Lv = 2: loss 1 -> w' = 2 -> ds 2; loss 2 -> 1; loss 4 -> w' = 0.5 -> ds 2; loss 8 -> 4.
    assert ds_weights([1.0, 2.0, 4.0, 8.0], 2.0).tolist() == [2.0, 1.0, 2.0, 4.0]
    assert ds_weights([0.5], 0.5).tolist() == [1.0]
    assert ds_weights([], 1.0).tolist() == []


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_ds_weights_reject_unusable_losses_naming_rows(bad):
    with pytest.raises(ValueError, match=r"row 1"):
        ds_weights([1.0, bad, 2.0], 1.0)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan")])
def test_ds_weights_reject_unusable_valid_loss(bad):
    with pytest.raises(ValueError, match="valid_loss_mean"):
        ds_weights([1.0], bad)


def test_keep_lowest_by_hand():
    assert keep_lowest([3.0, 1.0, 2.0, 4.0], 0.5).tolist() == [False, True, True, False]
    # Ties break by position: the earlier of equal weights is kept.
    assert keep_lowest([1.0, 1.0, 1.0], 0.34).tolist() == [True, False, False]
    assert keep_lowest([5.0, 1.0], 1.0).tolist() == [True, True]
    assert keep_lowest([7.0], 0.8).tolist() == [True]
    assert keep_lowest([], 0.8).tolist() == []
    # round(0.8 * 5) = 4 kept; the highest weight goes.
    assert keep_lowest([1.0, 9.0, 2.0, 3.0, 4.0], 0.8).tolist() == [True, False, True, True, True]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01])
def test_keep_lowest_rejects_fractions_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match="keep_fraction"):
        keep_lowest([1.0, 2.0], fraction)


@given(finite_losses, st.floats(min_value=1e-3, max_value=1e3))
def test_ds_is_at_least_one_and_symmetric_in_ratio(losses, valid):
    ds = ds_weights(losses, valid)
    assert np.all(ds >= 1.0)
    ratio = valid / np.asarray(losses)
    np.testing.assert_allclose(ds, np.maximum(ratio, 1 / ratio))


@given(finite_losses, st.floats(min_value=1e-3, max_value=1e3))
def test_ds_grows_with_distance_of_loss_from_valid_loss(losses, valid):
    ds = ds_weights(losses, valid)
    # Ordering by |log(loss / Lv)| is ordering by ds.
    distance = np.abs(np.log(np.asarray(losses) / valid))
    order = np.argsort(distance, kind="stable")
    assert np.all(np.diff(ds[order]) >= -1e-9)


@given(st.lists(st.floats(min_value=1, max_value=10), max_size=60), st.floats(min_value=0.01, max_value=1))
def test_keep_lowest_keeps_exact_count_of_lowest(weights, fraction):
    mask = keep_lowest(weights, fraction)
    assert mask.sum() == round(fraction * len(weights))
    if 0 < mask.sum() < len(weights):
        assert max(np.asarray(weights)[mask]) <= min(np.asarray(weights)[~mask])


def test_official_ds_weights_by_hand():
    # Lv = 2: loss 0.5 -> w' 4 clipped to 2 -> ds 2; loss 2 -> w' 1 -> not > 1 -> min(1/1, 5) = 1;
    # loss 8 -> w' 0.25 -> ds 4; loss 100 -> w' 0.02 -> 1/w' = 50 capped at 5; loss 0 -> w' 0 -> ds 5.
    assert official_ds_weights([0.5, 2.0, 8.0, 100.0, 0.0], 2.0).tolist() == [2.0, 1.0, 4.0, 5.0, 5.0]
    assert official_ratios([0.5, 2.0, 8.0, 0.0], 2.0).tolist() == [2.0, 1.0, 0.25, 0.0]
    with pytest.raises(ValueError, match="row 0"):
        official_ds_weights([-1.0], 2.0)


def test_official_keep_by_hand():
    # int(4 * 0.5) = 2; sorted = [1, 2, 2, 3]; threshold 2; keep ds < 2: only the 1.
    assert official_keep([2.0, 1.0, 3.0, 2.0], 0.5).tolist() == [False, True, False, False]
    # Without ties it keeps int(n * k): int(5 * 0.8) = 4.
    assert official_keep([1.0, 5.0, 2.0, 3.0, 4.0], 0.8).tolist() == [True, False, True, True, True]
    assert official_keep([3.0, 1.0], 1.0).tolist() == [True, True]  # their index would run past the end
    assert official_keep([3.0], 0.8).tolist() == [False]  # int(0.8) = 0: threshold is the only row
    assert official_keep([], 0.8).tolist() == []


@given(finite_losses, st.floats(min_value=1e-3, max_value=1e3))
def test_official_ds_is_between_one_and_five(losses, valid):
    ds = official_ds_weights(losses, valid)
    assert np.all((ds >= 1.0) & (ds <= 5.0))


@given(st.lists(st.floats(min_value=1, max_value=5), max_size=60), st.floats(min_value=0.01, max_value=1))
def test_official_keep_keeps_at_most_int_nk_strictly_below_the_rest(weights, fraction):
    mask = official_keep(weights, fraction)
    n = len(weights)
    assert mask.sum() <= (n if int(n * fraction) >= n else int(n * fraction))
    if 0 < mask.sum() < n:
        assert max(np.asarray(weights)[mask]) < min(np.asarray(weights)[~mask])
