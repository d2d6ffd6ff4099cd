"""Bootstrap intervals and paired differences of test accuracies (dsw_ray.stats)."""

import numpy as np
import pytest

from dsw_ray import stats


def test_accuracy_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    p, n, trials = 0.35, 500, 300
    covered = 0
    for trial in range(trials):
        correct = rng.random(n) < p
        result = stats.accuracy_interval(correct, seed=trial)
        assert result["low"] <= result["accuracy"] <= result["high"]
        covered += result["low"] <= p <= result["high"]
    assert 0.90 <= covered / trials <= 0.99
    # About 1.96 standard errors each side.
    width = stats.accuracy_interval(rng.random(n) < p)
    half = (width["high"] - width["low"]) / 2
    assert half == pytest.approx(1.96 * np.sqrt(p * (1 - p) / n), rel=0.2)


def test_a_paired_difference_cancels_what_both_models_get_right_alike():
    rng = np.random.default_rng(0)
    base = (rng.random(500) < 0.4).astype(float)
    tuned = base.copy()
    flipped = rng.choice(np.flatnonzero(base == 0), size=30, replace=False)
    tuned[flipped] = 1.0  # 30 more right, nothing lost: +6 points
    paired = stats.paired_difference(tuned, base)
    assert paired["difference"] == pytest.approx(0.06)
    assert 0 < paired["low"] < 0.06 < paired["high"] < 0.09
    # Two independent intervals of the same accuracies overlap: only the pairing shows the gain.
    a, b = stats.accuracy_interval(tuned), stats.accuracy_interval(base)
    assert a["low"] < b["high"]
    same = stats.paired_difference(base, base)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}


def test_per_question_means_over_seeds_and_the_seed_spread():
    seeds = np.array([[1, 0, 1, 1], [1, 1, 0, 1]], dtype=float)
    per_question = seeds.mean(axis=0)
    assert stats.accuracy_interval(per_question)["accuracy"] == pytest.approx(0.75)
    spread = stats.seed_spread([0.30, 0.34, 0.32])
    assert spread["mean"] == pytest.approx(0.32) and spread["std"] == pytest.approx(0.02) and spread["seeds"] == 3
    assert stats.seed_spread([0.5]) == {"mean": 0.5, "std": 0.0, "seeds": 1}
