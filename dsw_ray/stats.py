"""Uncertainty of test accuracies: bootstrap intervals over test questions, paired
differences between two models graded on the same questions, and the spread over
training seeds.

A test set of n questions gives an accuracy whose standard error is about
``sqrt(p (1 - p) / n)`` (5 points at n = 100): a table without intervals invites reading
noise as an effect. The bootstrap resamples the test questions with replacement; a paired
difference resamples the same questions for both models, so what the two get right alike
cancels and the interval is the one of the difference itself.

>>> import numpy as np
>>> base = np.array([1, 0, 0, 1, 0, 0, 1, 0] * 25, dtype=float)
>>> tuned = np.array([1, 1, 0, 1, 0, 1, 1, 0] * 25, dtype=float)
>>> difference = paired_difference(tuned, base)
>>> round(difference["difference"], 3), difference["low"] > 0
(0.25, True)
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def resample_means(per_question: np.ndarray, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of the rows of ``per_question`` (n questions,
    or n x k for k models graded on the same questions: one resample serves all k)."""
    rng = np.random.default_rng(seed)
    n = per_question.shape[0]
    picks = rng.integers(0, n, size=(resamples, n))
    return per_question[picks].mean(axis=1)


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The central ``LEVEL`` percentile interval of bootstrap statistics."""
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def accuracy_interval(correct: np.ndarray, seed: int = 0) -> dict:
    """Accuracy (mean of per-question correctness, which may be a mean over seeds) and its
    95% bootstrap interval."""
    correct = np.asarray(correct, dtype=float)
    low, high = interval(resample_means(correct, seed))
    return {"accuracy": float(correct.mean()), "low": low, "high": high}


def paired_difference(correct: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict:
    """``accuracy(correct) - accuracy(reference)`` on the same questions, with the 95% interval
    of a bootstrap that resamples questions for both at once."""
    both = np.stack([np.asarray(correct, dtype=float), np.asarray(reference, dtype=float)], axis=1)
    if both.shape[0] == 0:
        return {"difference": None, "low": None, "high": None}
    means = resample_means(both, seed)
    low, high = interval(means[:, 0] - means[:, 1])
    return {"difference": float(both[:, 0].mean() - both[:, 1].mean()), "low": low, "high": high}


def seed_spread(accuracies: list[float]) -> dict:
    """Mean and sample standard deviation of one method's accuracy over training seeds."""
    values = np.asarray(accuracies, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "seeds": len(values)}
