"""DS weights and keep rules of IWSI (METHOD.md, steps 4 and 5), as plain numpy.

Two semantics: ``paper`` (the default, what the paper states) and ``official`` (what the
authors' released code does, for comparison with published numbers; METHOD.md, "How the
authors' code differs").

>>> ds_weights([1.0, 2.0, 4.0], valid_loss_mean=2.0).tolist()
[2.0, 1.0, 2.0]
>>> keep_lowest([2.0, 1.0, 2.0], keep_fraction=0.67).tolist()
[True, True, False]
>>> official_ds_weights([0.5, 2.0, 8.0, 100.0], valid_loss_mean=2.0).tolist()
[2.0, 1.0, 4.0, 5.0]
"""

from __future__ import annotations

import numpy as np

OFFICIAL_MAX_RATIO = 2.0  # the authors clip w' to [0, 2]
OFFICIAL_MAX_DS = 5.0  # and cap 1 / w' at 5


class UnusableLoss(ValueError):
    """Some sample losses cannot be weighted; ``rows`` are their positions."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows


def check_losses(sample_losses, valid_loss_mean: float, allow_zero: bool = False) -> np.ndarray:
    """The losses as float64; a loss that is not finite and positive (or zero, where the
    official rule gives it a weight) has no meaningful weight and is rejected with its row."""
    losses = np.asarray(sample_losses, dtype=np.float64)
    if not (np.isfinite(valid_loss_mean) and valid_loss_mean > 0):
        raise ValueError(f"valid_loss_mean must be finite and positive, got {valid_loss_mean!r}.")
    usable = np.isfinite(losses) & ((losses >= 0) if allow_zero else (losses > 0))
    bad = np.flatnonzero(~usable)
    if bad.size:
        shown = ", ".join(f"row {i}: {losses[i]!r}" for i in bad[:10])
        kind = "finite and non-negative" if allow_zero else "finite and positive"
        raise UnusableLoss(f"{bad.size} sample loss(es) are not {kind} ({shown}).", bad.tolist())
    return losses


def importance_ratios(sample_losses, valid_loss_mean: float) -> np.ndarray:
    """``w' = Lv / loss`` per sample (the paper's estimated importance weight)."""
    return valid_loss_mean / check_losses(sample_losses, valid_loss_mean)


def ds_weights(sample_losses, valid_loss_mean: float) -> np.ndarray:
    """``w' = Lv / loss``; ``ds = w'`` if ``w' >= 1`` else ``1 / w'``, so ``ds >= 1``."""
    ratio = importance_ratios(sample_losses, valid_loss_mean)
    return np.where(ratio >= 1, ratio, 1 / ratio)


def official_ratios(sample_losses, valid_loss_mean: float) -> np.ndarray:
    """The authors' ``w'``: ``Lv / loss`` clipped to [0, 2]; a zero loss gives 0."""
    losses = check_losses(sample_losses, valid_loss_mean, allow_zero=True)
    with np.errstate(divide="ignore"):
        ratio = np.where(losses > 0, valid_loss_mean / np.where(losses > 0, losses, 1.0), 0.0)
    return np.clip(ratio, 0.0, OFFICIAL_MAX_RATIO)


def official_ds_weights(sample_losses, valid_loss_mean: float) -> np.ndarray:
    """The authors' DS weight: ``w'`` if ``w' > 1`` else ``min(1 / w', 5)``."""
    ratio = official_ratios(sample_losses, valid_loss_mean)
    with np.errstate(divide="ignore"):
        inverse = np.minimum(1.0 / ratio, OFFICIAL_MAX_DS)
    return np.where(ratio > 1, ratio, inverse)


def check_fraction(keep_fraction: float) -> None:
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}.")


def keep_count(n: int, keep_fraction: float) -> int:
    """How many of ``n`` rows a top-k rule keeps: ``round(k * n)`` (Python's rounding)."""
    check_fraction(keep_fraction)
    return round(keep_fraction * n)


def keep_lowest(ds_weights, keep_fraction: float) -> np.ndarray:
    """Mask keeping exactly ``round(keep_fraction * n)`` rows with the lowest weights.

    Ties break by position (a stable sort), so the rule is deterministic.
    """
    weights = np.asarray(ds_weights, dtype=np.float64)
    keep = np.zeros(weights.shape[0], dtype=bool)
    keep[np.argsort(weights, kind="stable")[: keep_count(weights.shape[0], keep_fraction)]] = True
    return keep


def official_keep(ds_weights, keep_fraction: float) -> np.ndarray:
    """The authors' rule ``ds < sorted(ds)[int(n * k)]``: every row tied at the threshold
    goes, so it may keep fewer than ``int(n * k)``. At ``k = 1`` (where their index runs
    past the end) every row is kept."""
    check_fraction(keep_fraction)
    weights = np.asarray(ds_weights, dtype=np.float64)
    cut = int(weights.shape[0] * keep_fraction)
    if cut >= weights.shape[0]:
        return np.ones(weights.shape[0], dtype=bool)
    return weights < np.sort(weights)[cut]
