"""Score: each majority candidate's loss under the base model, and its DS weight.

One pass of a stateful actor pool of ``Scorer``s, each holding the base model, computes the
losses of the labeled valid set's gold rationales and of the majority candidates together, so
each actor loads the model once per round. Only keys and losses come back to the driver; there
``Lv`` (with its standard error and ``n``) comes from the valid rows, once for the whole pool,
and every candidate is weighed against it, so no two candidates can be weighed against
different values. Each actor call sorts its rows by length and runs one forward pass per
sub-batch, padded to its longest row.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

from dsw_ray import columns as C
from dsw_ray.config import ModelConfig, ScoreConfig
from dsw_ray.models import ModelSpec
from dsw_ray.sft import LossTokens, batched_losses, pad_batch, stack
from dsw_ray.weights import UnusableLoss, ds_weights, official_ds_weights

log = logging.getLogger(__name__)

VALID_LOSSES = "valid_losses.parquet"  # per-example valid-set losses, in the score stage's folder
# Lv as the paper reports it (Table 2: Llama-3-8B, valid sets of several sizes), for a run to
# print beside its own; comparable in the authors' loss text (semantics: official).
PAPER_VALID_LOSS = {"gsm8k": "about 2.05-2.09 (Table 2: Llama-3-8B, the authors' loss text)"}
VALID_LOSS_STDERR = "valid_loss_stderr"
VALID_N = "valid_n"


class LossModel:
    """A causal LM that returns per-sequence losses of ``(question, answer)`` pairs."""

    def __init__(self, model: ModelSpec, tokens: LossTokens = LossTokens(), threads: int | None = None):
        self.tokenizer, self.model = model.load(threads)
        self.tokens = tokens

    def encode(self, question: str, answer: str) -> dict:
        return self.tokens.encode(self.tokenizer, question, answer)

    def losses(self, questions: list[str], answers: list[str], batch_size: int) -> np.ndarray:
        encoded = [self.encode(q, a) for q, a in zip(questions, answers)]
        # Official rows are already padded to one length; ours are padded per batch.
        collate = stack if self.tokens.official else functools.partial(pad_batch, pad_token_id=self.tokenizer.pad_token_id)
        return batched_losses(self.model, encoded, batch_size, collate)


def valid_loss_stats(losses) -> dict:
    """``Lv`` (``mean``), its standard error ``std / sqrt(n)`` (``stderr``) and ``n``."""
    losses = np.asarray(losses, dtype=np.float64)
    n = len(losses)
    stderr = float(np.std(losses, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(np.mean(losses)), "stderr": stderr, "n": n}


class Scorer:
    """Ray Data callable class: adds ``loss`` to rows of ``question`` and ``text``."""

    def __init__(self, model: ModelSpec, batch_size: int, tokens: LossTokens = LossTokens(), threads: int | None = None):
        self.model = LossModel(model, tokens, threads)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        C.require(batch, (C.QUESTION_ID, C.QUESTION, C.TEXT), "score")
        return {**batch, C.LOSS: self.model.losses(list(batch[C.QUESTION]), list(batch[C.TEXT]), self.batch_size)}


def scorer_settings(
    section: ScoreConfig, model: ModelConfig, model_path: str, max_length: int, official: bool,
    prompt_format: str = "few_shot",
) -> dict:
    """A scoring actor's constructor arguments. ``max_length`` and ``prompt_format``: the
    fine-tune's, so that a candidate's loss is over the tokens training would see."""
    return dict(
        model=ModelSpec.of(model_path, model),
        batch_size=section.batch_size,
        tokens=LossTokens(max_length, section.loss_on, prompt_format, official),
    )


VALID_ROW = "valid_row"  # True for the valid set's rows in the scoring pool's input
CALL_BATCHES = 16  # forward passes per actor call


def rows_per_call(section: ScoreConfig) -> int:
    """Rows one scoring actor call gets: several forward passes' worth, sorted by length inside
    the call, so that padding stays small and Ray Data's per-call cost is spread."""
    return section.batch_size * CALL_BATCHES
SCORED_COLUMNS = [C.QUESTION_ID, C.SAMPLE_INDEX, C.QUESTION, C.TEXT, VALID_ROW]


def scoring_rows(valid, candidates):
    """The pool's input: the valid set's gold rationales (``sample_index`` 0) and the majority
    candidates of ``candidates`` (a Ray Dataset of voted rows), with the same columns."""
    import pyarrow as pa
    import ray
    from ray.data.expressions import col, lit

    from dsw_ray.resources import TASK_CPUS

    if len(valid) < 30:
        log.warning("the valid set has %d examples; Lv's standard error will be large (the paper: >= 50).", len(valid))
    valid_rows = pa.table(
        {
            C.QUESTION_ID: pa.array([e.question_id for e in valid], pa.string()),
            C.SAMPLE_INDEX: pa.array([0] * len(valid), pa.int64()),
            C.QUESTION: pa.array([e.question for e in valid], pa.string()),
            C.TEXT: pa.array([e.rationale for e in valid], pa.string()),
            VALID_ROW: pa.array([True] * len(valid), pa.bool_()),
        }
    )
    majority = (
        candidates.filter(expr=col(C.IS_MAJORITY), num_cpus=TASK_CPUS)
        .select_columns(SCORED_COLUMNS[:-1], num_cpus=TASK_CPUS)
        .with_column(VALID_ROW, lit(False), num_cpus=TASK_CPUS)
    )
    return ray.data.from_arrow(valid_rows).union(majority)


def pool_losses(
    rows, section: ScoreConfig, model: ModelConfig, model_path: str, max_length: int, official: bool,
    prompt_format: str = "few_shot",
):  # fmt: skip
    """The scoring pool over ``rows`` (``scoring_rows``): keys, ``valid_row`` and ``loss`` (lazy)."""
    from dsw_ray.resources import TASK_CPUS, pool_map

    settings = scorer_settings(section, model, model_path, max_length, official, prompt_format)
    scorer, placement = Scorer, {}
    if section.backend == "vllm":
        from dsw_ray import vllm_backend

        engine, placement = vllm_backend.pool_settings(section)
        settings, scorer = {**settings, **engine}, vllm_backend.VllmScorer
    scored = pool_map(rows, scorer, settings, section, "score", batch_size=rows_per_call(section), **placement)
    return scored.select_columns([C.QUESTION_ID, C.SAMPLE_INDEX, VALID_ROW, C.LOSS], num_cpus=TASK_CPUS)


def score_losses(
    valid, candidates, section: ScoreConfig, model: ModelConfig, model_path: str, max_length: int, official: bool,
    prompt_format: str = "few_shot",
):  # fmt: skip
    """Losses of the valid set and of the majority candidates by ``model_path``, in one pass of
    the scoring pool: a pyarrow table of ``question_id``, ``sample_index``, ``valid_row`` and
    ``loss``."""
    import pyarrow as pa
    import ray

    rows = scoring_rows(valid, candidates)
    refs = pool_losses(rows, section, model, model_path, max_length, official, prompt_format).to_arrow_refs()
    return pa.concat_tables(ray.get(refs))


def weigh(majority, losses, official: bool):
    """The cheap step after the pool: ``Lv`` from the valid rows of ``losses``, then each
    majority candidate's loss and DS weight against it.

    Returns the scored candidates (``majority``'s rows, ordered by key, plus ``loss``,
    ``valid_loss_mean``, ``valid_loss_stderr``, ``valid_n`` and ``ds_weight``), the valid
    set's per-example losses (``question_id``, ``loss``) and ``Lv``'s statistics."""
    import pyarrow as pa
    import pyarrow.compute as pc

    is_valid = losses[VALID_ROW]
    valid = losses.filter(is_valid).select([C.QUESTION_ID, C.LOSS]).sort_by(C.QUESTION_ID)
    valid_loss = valid_loss_stats(valid[C.LOSS].to_numpy())
    # Both ordered by key and matched row for row (a join would refuse the all-null columns
    # that a vote where nothing parsed writes).
    scored = majority.sort_by(C.BY_KEY)
    candidate_losses = losses.filter(pc.invert(is_valid)).sort_by(C.BY_KEY)
    keys = [scored[k].to_pylist() for k in C.KEY]
    if keys != [candidate_losses[k].to_pylist() for k in C.KEY]:
        raise RuntimeError(f"score: the pool returned other rows than the {scored.num_rows} majority candidates")
    candidate_loss = candidate_losses[C.LOSS].to_numpy()
    scored = scored.append_column(C.LOSS, pa.array(candidate_loss, pa.float64()))
    try:
        weights = (official_ds_weights if official else ds_weights)(candidate_loss, valid_loss["mean"])
    except UnusableLoss as error:
        bad = [(keys[0][i], keys[1][i]) for i in error.rows[:10]]
        raise ValueError(f"score: candidates {bad} have no usable loss: {error}") from error
    n = scored.num_rows
    for name, values in (
        (C.VALID_LOSS_MEAN, np.full(n, valid_loss["mean"])),
        (VALID_LOSS_STDERR, np.full(n, valid_loss["stderr"])),
        (VALID_N, np.full(n, valid_loss["n"])),
        (C.DS_WEIGHT, np.asarray(weights, dtype=np.float64)),
    ):
        scored = scored.append_column(name, pa.array(values))
    return scored, valid, valid_loss
