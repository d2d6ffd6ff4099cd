"""Filter: which scored candidates the fine-tune learns from, with every drop counted.

IWSI keeps the ``keep_fraction`` of majority candidates with the lowest DS weights. The
ranking is over all candidates of the round at once, ordered by ``(question_id,
sample_index)`` first, so ties break the same way in every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from dsw_ray import columns as C
from dsw_ray.weights import keep_lowest


@dataclass
class Filtered:
    """The kept rows and how many were dropped, by reason."""

    kept: pa.Table
    dropped: dict[str, int] = field(default_factory=dict)


def iwsi(scored: pa.Table, keep_fraction: float) -> Filtered:
    """The k lowest DS weights among majority candidates (METHOD.md step 5)."""
    C.require(scored, C.KEY + (C.DS_WEIGHT, C.IS_MAJORITY), "filter")
    majority = scored.filter(pc.field(C.IS_MAJORITY)).sort_by([(C.QUESTION_ID, "ascending"), (C.SAMPLE_INDEX, "ascending")])
    if majority.num_rows == 0:
        return Filtered(majority, {"not_majority": scored.num_rows})
    mask = keep_lowest(majority[C.DS_WEIGHT].to_numpy(), keep_fraction)
    kept = majority.filter(pa.array(mask))
    return Filtered(
        kept,
        {"not_majority": scored.num_rows - majority.num_rows, "high_ds_weight": majority.num_rows - kept.num_rows},
    )
