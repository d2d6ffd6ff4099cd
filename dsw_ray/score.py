"""Score: each majority candidate's loss under the base model, and its DS weight.

A stateful actor pool of ``Scorer``s, each holding the base model. It runs twice per
model: first over the labeled valid set, whose per-example losses give ``Lv`` (with its
standard error and ``n``) once for the whole pool; then over the candidates, with ``Lv``
handed to every actor, so that no two actors can weigh against different values. Each
batch costs one forward pass per sub-batch of similar lengths, padded to its longest row.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

from dsw_ray import columns as C
from dsw_ray.models import load_model, load_tokenizer
from dsw_ray.sft import batched_losses, encode_example, encode_official, pad_batch, stack
from dsw_ray.weights import UnusableLoss, ds_weights, official_ds_weights

log = logging.getLogger(__name__)

VALID_LOSS_STDERR = "valid_loss_stderr"
VALID_N = "valid_n"


class LossModel:
    """A causal LM that returns per-sequence losses of ``(question, answer)`` pairs."""

    def __init__(
        self, model_path: str, dtype: str, trust_remote_code: bool, max_length: int, loss_on: str, official: bool = False
    ):
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.model = load_model(model_path, dtype, trust_remote_code)
        self.max_length, self.loss_on, self.official = max_length, loss_on, official

    def encode(self, question: str, answer: str) -> dict:
        if self.official:
            return encode_official(self.tokenizer, question, answer)
        return encode_example(self.tokenizer, question, answer, self.max_length, self.loss_on)

    def losses(self, questions: list[str], answers: list[str], batch_size: int) -> np.ndarray:
        encoded = [self.encode(q, a) for q, a in zip(questions, answers)]
        # Official rows are already padded to one length; ours are padded per batch.
        collate = stack if self.official else functools.partial(pad_batch, pad_token_id=self.tokenizer.pad_token_id)
        return batched_losses(self.model, encoded, batch_size, collate)


def valid_loss_stats(losses) -> dict:
    """``Lv`` (``mean``), its standard error ``std / sqrt(n)`` (``stderr``) and ``n``."""
    losses = np.asarray(losses, dtype=np.float64)
    n = len(losses)
    stderr = float(np.std(losses, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(np.mean(losses)), "stderr": stderr, "n": n}


class Scorer:
    """Ray Data callable class: adds ``loss`` to rows of ``question`` and ``text``; given
    the valid loss, also ``valid_loss_mean``, ``valid_loss_stderr``, ``valid_n`` and ``ds_weight``."""

    def __init__(
        self,
        model_path: str,
        batch_size: int,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        max_length: int = 512,
        loss_on: str = "answer",
        official: bool = False,
        valid_loss: dict | None = None,
        threads: int | None = None,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = LossModel(model_path, dtype, trust_remote_code, max_length, loss_on, official)
        self.weigh = official_ds_weights if official else ds_weights
        self.batch_size, self.valid_loss = batch_size, valid_loss

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        C.require(batch, (C.QUESTION_ID, C.QUESTION, C.TEXT), "score")
        losses = self.model.losses(list(batch[C.QUESTION]), list(batch[C.TEXT]), self.batch_size)
        if self.valid_loss is None:
            return {**batch, C.LOSS: losses}
        try:
            weights = self.weigh(losses, self.valid_loss["mean"])
        except UnusableLoss as error:
            keys = list(zip(batch[C.QUESTION_ID], batch[C.SAMPLE_INDEX]))
            bad = [(str(keys[i][0]), int(keys[i][1])) for i in error.rows]
            raise ValueError(f"score: candidates {bad[:10]} have no usable loss: {error}") from error
        n = len(losses)
        return {
            **batch,
            C.LOSS: losses,
            C.VALID_LOSS_MEAN: np.full(n, self.valid_loss["mean"]),
            VALID_LOSS_STDERR: np.full(n, self.valid_loss["stderr"]),
            VALID_N: np.full(n, self.valid_loss["n"]),
            C.DS_WEIGHT: weights,
        }


def scorer_settings(model_path: str, job) -> dict:
    return dict(
        model_path=model_path,
        batch_size=job.score.batch_size,
        dtype=job.model.dtype,
        trust_remote_code=job.model.trust_remote_code,
        max_length=job.train.max_length,
        loss_on=job.score.loss_on,
        official=job.semantics == "official",
    )


def valid_losses(valid, model_path: str, job):
    """Per-example losses of the labeled valid set (their gold rationales) under ``model_path``,
    through the scoring pool: a pyarrow table of ``question_id`` and ``loss``."""
    import pyarrow as pa
    import ray

    from dsw_ray.resources import pool_map

    if len(valid) < 30:
        log.warning("the valid set has %d examples; Lv's standard error will be large (the paper: >= 50).", len(valid))
    examples = ray.data.from_arrow(
        pa.table(
            {
                C.QUESTION_ID: [e.question_id for e in valid],
                C.QUESTION: [e.question for e in valid],
                C.TEXT: [e.rationale for e in valid],
            }
        )
    ).repartition(job.score.actors)
    losses = pool_map(examples, Scorer, scorer_settings(model_path, job), job.score, "score").to_arrow_refs()
    return pa.concat_tables(ray.get(losses)).select([C.QUESTION_ID, C.LOSS]).sort_by(C.QUESTION_ID)


def score(candidates, valid_loss: dict, model_path: str, job):
    """The score stage: majority candidates (a Ray Dataset) with losses and DS weights (lazy)."""
    from ray.data.expressions import col

    from dsw_ray.resources import pool_map

    constructor = {**scorer_settings(model_path, job), "valid_loss": valid_loss}
    # One call gets several forward passes' worth of candidates.
    majority = candidates.filter(expr=col(C.IS_MAJORITY))
    return pool_map(majority, Scorer, constructor, job.score, "score", batch_size=job.score.batch_size * 4)
