"""Filter: which candidates a method fine-tunes on, with per-row loss weights and every drop counted.

Every method reads the same table: all candidates of a round with their parsed ``answer``
and ``is_majority`` (vote), and for majority candidates ``loss``, ``valid_loss_mean`` and
``ds_weight`` (score) and, when the ``rm`` or ``self`` method runs, ``reward`` or ``rating``. It returns the kept
rows, ordered by ``(question_id, sample_index)``, with a ``loss_weight`` column (1 unless
the method weights), and the number of candidates dropped for each reason; kept plus
dropped is always every candidate.

| method | keeps |
| --- | --- |
| ``lmsi`` | every majority candidate (self-consistency, the paper's LMSI) |
| ``iwsi`` | the ``keep_fraction`` of majority candidates with the lowest DS weight |
| ``iwsi_w`` | every majority candidate, its loss weighted by ``clip(w', 0, C)`` |
| ``entropy`` | majority candidates of questions whose normalised answer entropy is at most a threshold |
| ``random`` | as many majority candidates as ``iwsi`` keeps, drawn with a seed |
| ``oracle`` | candidates whose answer equals the gold label (needs labels) |
| ``rm`` | the ``keep_fraction`` of majority candidates a reward model rates highest |
| ``self`` | the ``keep_fraction`` of majority candidates the generating model itself rates highest (0-10) |
| ``none`` | every candidate (an ablation) |

A method that reads ``keep_fraction`` may name its own: ``iwsi@0.6`` is IWSI keeping 60%, so
one job compares several keep fractions on the same candidates and scores (the paper's
Figure 2); ``variant`` reads such a name.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from dsw_ray import columns as C
from dsw_ray.tasks.answers import is_correct
from dsw_ray.weights import (
    importance_ratios,
    keep_lowest,
    official_keep,
    official_ratios,
)


class FilterConfig(BaseModel):
    """The job's ``filter`` section: the settings the methods read."""

    model_config = ConfigDict(extra="forbid")

    keep_fraction: float = Field(
        0.8, gt=0, le=1, description="k: fraction of majority candidates iwsi and rm keep (random keeps as many as iwsi)."
    )
    weight_clip: float = Field(2.0, gt=0, description="C: iwsi_w weights each sample's loss by clip(w', 0, C).")
    entropy_threshold: float = Field(
        0.8, ge=0, le=1,
        description="entropy drops questions whose answer entropy / log m is above this (the paper's k = 80; "
        "semantics: official divides by the log of the number of parsable answers, and its default is 0.79).",
    )  # fmt: skip
    seed: int = Field(0, description="Seed of the random method's draw.")


@dataclass
class Filtered:
    """The kept rows (with ``loss_weight``) and how many candidates were dropped, by reason."""

    kept: pa.Table
    dropped: dict[str, int] = field(default_factory=dict)


def answers_correct(table: pa.Table, official: bool) -> np.ndarray:
    """Per row, whether the parsed ``answer`` equals the ``gold`` label (labels required)."""
    return np.array(
        [is_correct(a, g, official) for a, g in zip(table[C.ANSWER].to_pylist(), table[C.GOLD].to_pylist())],
        dtype=bool,
    )


def correct_fraction(table: pa.Table, official: bool) -> float | None:
    """The share of rows whose parsed answer equals the gold label (None without labels or rows)."""
    if table.num_rows == 0 or C.GOLD not in table.column_names or table[C.GOLD].null_count:
        return None
    return float(answers_correct(table, official).mean())


def ordered(candidates: pa.Table) -> pa.Table:
    return candidates.sort_by(C.BY_KEY)


def with_weights(kept: pa.Table, weights=None) -> pa.Table:
    values = np.ones(kept.num_rows) if weights is None else np.asarray(weights, dtype=np.float64)
    return kept.append_column(C.LOSS_WEIGHT, pa.array(values, pa.float64()))


def vote_drops(candidates: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """The majority candidates, and the candidates the vote left out: with no parsable
    answer, or with an answer other than the majority's."""
    no_answer = candidates[C.ANSWER].null_count
    majority = candidates.filter(pc.field(C.IS_MAJORITY))
    return majority, {"no_answer": no_answer, "not_majority": candidates.num_rows - majority.num_rows - no_answer}


def scored(majority: pa.Table) -> tuple[np.ndarray, float]:
    """The majority candidates' losses and ``Lv``; every majority candidate must have been scored."""
    C.require(majority, (C.LOSS, C.VALID_LOSS_MEAN), "filter")
    losses = majority[C.LOSS]
    if losses.null_count:
        raise ValueError(f"filter: {losses.null_count} majority candidate(s) have no loss; rerun the score stage.")
    valid = pc.unique(majority[C.VALID_LOSS_MEAN]).to_pylist()
    if len(valid) > 1:
        raise ValueError(f"filter: the candidates were scored against different valid losses {valid}.")
    return losses.to_numpy(), (valid[0] if valid else 1.0)  # no rows: any positive Lv weighs nothing


def keep_mask(majority: pa.Table, settings: FilterConfig, official: bool) -> np.ndarray:
    """The IWSI keep rule over the majority candidates' DS weights."""
    scored(majority)
    ds = majority[C.DS_WEIGHT].to_numpy()
    return (official_keep if official else keep_lowest)(ds, settings.keep_fraction)


# ---- the methods -----------------------------------------------------------------------------

def lmsi(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    majority, dropped = vote_drops(candidates)
    return Filtered(with_weights(majority), dropped)


def iwsi(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    majority, dropped = vote_drops(candidates)
    kept = majority.filter(pa.array(keep_mask(majority, settings, official), pa.bool_()))
    return Filtered(with_weights(kept), {**dropped, "high_ds_weight": majority.num_rows - kept.num_rows})


def iwsi_w(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    """No filtering beyond the vote; weights ``clip(w', 0, C)``. A weight of 0 would only
    waste compute in the loader (a defect of the released code), so those rows are dropped."""
    majority, dropped = vote_drops(candidates)
    losses, valid_loss_mean = scored(majority)
    ratios = (official_ratios if official else importance_ratios)(losses, valid_loss_mean)
    weights = np.clip(ratios, 0.0, settings.weight_clip)
    positive = weights > 0
    kept = with_weights(majority.filter(pa.array(positive, pa.bool_())), weights[positive])
    return Filtered(kept, {**dropped, "zero_weight": int((~positive).sum())})


def answer_entropy(answers: list[str | None], samples: int | None = None) -> float:
    """``-sum p log p`` over the parsable answers (unparsable ones do not vote), divided by
    ``log samples`` (the paper's m), or by the log of the number of parsable answers when
    ``samples`` is None (the authors' code)."""
    counts = Counter(answer for answer in answers if answer is not None)
    total = sum(counts.values())
    scale = total if samples is None else samples
    if total == 0 or scale < 2:
        return 0.0
    return -sum(c / total * math.log(c / total) for c in counts.values()) / math.log(scale)


def entropy(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    by_question: dict[str, list] = {}
    for question_id, answer in zip(candidates[C.QUESTION_ID].to_pylist(), candidates[C.ANSWER].to_pylist()):
        by_question.setdefault(question_id, []).append(answer)

    def too_uncertain(answers: list) -> bool:
        if official:  # the authors' code also drops a question with one parsable answer (log 1 = 0)
            return sum(a is not None for a in answers) < 2 or answer_entropy(answers) > settings.entropy_threshold
        return answer_entropy(answers, len(answers)) > settings.entropy_threshold

    uncertain = [q for q, answers in by_question.items() if too_uncertain(answers)]
    confident = candidates.filter(pc.invert(pc.is_in(candidates[C.QUESTION_ID], pa.array(uncertain, pa.string()))))
    majority, dropped = vote_drops(confident)
    return Filtered(with_weights(majority), {"high_entropy": candidates.num_rows - confident.num_rows, **dropped})


def random(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    """As many majority candidates as IWSI keeps, drawn uniformly with the filter seed."""
    majority, dropped = vote_drops(candidates)
    count = int(keep_mask(majority, settings, official).sum())
    mask = np.zeros(majority.num_rows, dtype=bool)
    mask[np.random.default_rng(settings.seed).choice(majority.num_rows, size=count, replace=False)] = True
    kept = majority.filter(pa.array(mask, pa.bool_()))
    return Filtered(with_weights(kept), {**dropped, "not_drawn": majority.num_rows - count})


def oracle(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    """Candidates whose answer equals the gold label, majority or not (an upper bound)."""
    C.require(candidates, (C.GOLD,), "filter (oracle)")
    if candidates[C.GOLD].null_count:
        raise ValueError("the oracle method needs a gold answer for every question; this task's questions lack some.")
    correct = answers_correct(candidates, official)
    no_answer = candidates[C.ANSWER].null_count
    kept = candidates.filter(pa.array(correct, pa.bool_()))
    return Filtered(with_weights(kept), {"no_answer": no_answer, "wrong_answer": candidates.num_rows - kept.num_rows - no_answer})


def official_keep_highest(values: np.ndarray, keep_fraction: float, by_rank_at_zero: bool) -> np.ndarray:
    """The authors' top-fraction rule (``filter_data.py``, modes RM and Self): sorted highest
    first, the value at index ``int(n * k)`` is the threshold and every value at or above it
    stays, ties included; a value of exactly 0 never does (they multiply it into a 0/1 mark).
    Self (``by_rank_at_zero``) keeps the first ``int(n * k)`` by rank when the threshold is
    not above 0."""
    order = np.argsort(-values, kind="stable")
    portion = int(len(values) * keep_fraction)
    if portion >= len(values):  # their index would be past the end at k = 1: everything stays
        return values != 0
    threshold = values[order[portion]]
    if threshold > 0 or not by_rank_at_zero:
        return (values >= threshold) & (values != 0)
    mask = np.zeros(len(values), dtype=bool)
    mask[order[:portion]] = True
    return mask


def keep_highest(candidates: pa.Table, column: str, keep_fraction: float, method: str, official: bool) -> Filtered:
    """The ``keep_fraction`` of majority candidates with the highest ``column``; ties by key
    (``official``: ``official_keep_highest``)."""
    majority, dropped = vote_drops(candidates)
    C.require(majority, (column,), f"filter ({method})")
    if majority[column].null_count:
        raise ValueError(f"filter: {majority[column].null_count} majority candidate(s) have no {column}.")
    values = majority[column].to_numpy()
    if official:
        mask = official_keep_highest(values, keep_fraction, by_rank_at_zero=method == "self")
    else:  # lowest negated value first is highest first; the stable sort breaks ties by key
        mask = keep_lowest(-values, keep_fraction)
    kept = majority.filter(pa.array(mask, pa.bool_()))
    return Filtered(with_weights(kept), {**dropped, f"low_{column}": majority.num_rows - kept.num_rows})


def reward_model(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    return keep_highest(candidates, C.REWARD, settings.keep_fraction, "rm", official)


def self_rated(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    """The Self-filter: the majority candidates the generating model rates highest."""
    return keep_highest(candidates, C.RATING, settings.keep_fraction, "self", official)


def everything(candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    return Filtered(with_weights(candidates), {})


@dataclass(frozen=True)
class Method:
    """A filter as the pipeline sees it: the function, its name in the paper's Table 1,
    the stage it needs beyond the vote, and the filter settings its result depends on
    (``official`` selects the authors' semantics)."""

    select: Callable[[pa.Table, FilterConfig, bool], Filtered]
    title: str
    needs: str | None = None  # "score", "reward" or "rate"
    settings: tuple[str, ...] = ()


METHODS = {
    "lmsi": Method(lmsi, "LMSI"),
    "iwsi": Method(iwsi, "IWSI", "score", ("keep_fraction",)),
    "iwsi_w": Method(iwsi_w, "IWSI-w", "score", ("weight_clip",)),
    "entropy": Method(entropy, "Entropy-filter", None, ("entropy_threshold",)),
    "random": Method(random, "random", "score", ("keep_fraction", "seed")),
    "oracle": Method(oracle, "oracle"),
    "rm": Method(reward_model, "RM-filter", "reward", ("keep_fraction",)),
    "self": Method(self_rated, "Self-filter", "rate", ("keep_fraction",)),
    "none": Method(everything, "none"),
}


@dataclass(frozen=True)
class Variant:
    """A method as a job lists it: ``iwsi`` (the filter section's keep fraction) or ``iwsi@0.6``."""

    name: str
    method: str
    keep_fraction: float | None = None

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def title(self) -> str:
        return self.spec.title + ("" if self.keep_fraction is None else f" (k = {self.keep_fraction:g})")

    def settings(self, section: FilterConfig) -> FilterConfig:
        return section if self.keep_fraction is None else section.model_copy(update={"keep_fraction": self.keep_fraction})


def variant(name: str) -> Variant:
    """The method and keep fraction a job's method name means; a ValueError says what is wrong."""
    method, sep, fraction = name.partition("@")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if not sep:
        return Variant(name, method)
    if "keep_fraction" not in METHODS[method].settings:
        raise ValueError(f"{name!r}: the {method} method has no keep fraction to set after '@'")
    try:
        keep_fraction = float(fraction)
    except ValueError:
        keep_fraction = math.nan
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"{name!r}: the keep fraction after '@' must be a number in (0, 1]")
    return Variant(name, method, keep_fraction)


def apply(name: str, candidates: pa.Table, settings: FilterConfig, official: bool) -> Filtered:
    """Run one method (a ``variant`` name) on a round's candidates; the kept rows are ordered by key."""
    C.require(candidates, C.KEY + (C.ANSWER, C.IS_MAJORITY), "filter")
    chosen = variant(name)
    result = chosen.spec.select(ordered(candidates), chosen.settings(settings), official)
    accounted = result.kept.num_rows + sum(result.dropped.values())
    if accounted != candidates.num_rows:  # a broken method must not lose rows silently
        raise RuntimeError(f"filter {name}: kept {result.kept.num_rows} + dropped {result.dropped} != {candidates.num_rows}")
    return result
