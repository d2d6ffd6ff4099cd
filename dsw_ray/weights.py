"""DS weights and the keep rule of IWSI (METHOD.md, steps 4 and 5), as plain numpy.

>>> ds_weights([1.0, 2.0, 4.0], valid_loss_mean=2.0).tolist()
[2.0, 1.0, 2.0]
>>> keep_lowest([2.0, 1.0, 2.0], keep_fraction=0.67).tolist()
[True, True, False]
"""

from __future__ import annotations

import numpy as np


def ds_weights(sample_losses, valid_loss_mean: float) -> np.ndarray:
    """``w' = Lv / loss``; ``ds = w'`` if ``w' >= 1`` else ``1 / w'``, so ``ds >= 1``.

    A loss that is not finite and positive has no meaningful weight: it is rejected,
    with the positions of the offending rows, rather than weighted.
    """
    losses = np.asarray(sample_losses, dtype=np.float64)
    if not (np.isfinite(valid_loss_mean) and valid_loss_mean > 0):
        raise ValueError(f"valid_loss_mean must be finite and positive, got {valid_loss_mean!r}.")
    bad = np.flatnonzero(~(np.isfinite(losses) & (losses > 0)))
    if bad.size:
        shown = ", ".join(f"row {i}: {losses[i]!r}" for i in bad[:10])
        raise ValueError(f"{bad.size} sample loss(es) are not finite and positive ({shown}).")
    ratio = valid_loss_mean / losses
    return np.where(ratio >= 1, ratio, 1 / ratio)


def keep_lowest(ds_weights, keep_fraction: float) -> np.ndarray:
    """Mask keeping exactly ``round(keep_fraction * n)`` rows with the lowest weights.

    Ties break by position (a stable sort), so the rule is deterministic.
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}.")
    weights = np.asarray(ds_weights, dtype=np.float64)
    keep = np.zeros(weights.shape[0], dtype=bool)
    keep[np.argsort(weights, kind="stable")[: round(keep_fraction * weights.shape[0])]] = True
    return keep
