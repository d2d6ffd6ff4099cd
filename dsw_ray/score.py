"""Score: each majority candidate's loss under the base model, and its DS weight.

A stateful actor pool: each actor loads the base model once and computes the mean loss of
the labeled valid set, ``Lv``, once; then every batch of candidates costs one forward pass
per sub-batch, padded to its own longest row.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from dsw_ray import columns as C
from dsw_ray.models import load_model, load_tokenizer
from dsw_ray.sft import encode_example, encode_official, pad_batch, sequence_losses, stack
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
        import torch

        encoded = [self.encode(q, a) for q, a in zip(questions, answers)]
        # Sorting by length keeps the padding of each forward pass small.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
        losses = np.empty(len(encoded), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = stack([encoded[i] for i in rows]) if self.official else pad_batch(
                    [encoded[i] for i in rows], self.tokenizer.pad_token_id
                )
                batch = {name: tensor.to(self.model.device) for name, tensor in batch.items()}
                losses[rows] = sequence_losses(self.model, batch).double().cpu().numpy()
        return losses


def valid_loss_stats(losses: np.ndarray) -> tuple[float, float, int]:
    """``Lv``, its standard error ``std / sqrt(n)`` and ``n``."""
    n = len(losses)
    stderr = float(np.std(losses, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(np.mean(losses)), stderr, n


class Scorer:
    """Ray Data callable class: adds ``loss``, ``valid_loss_mean`` and ``ds_weight`` to candidates."""

    def __init__(
        self,
        model_path: str,
        valid_questions: list[str],
        valid_answers: list[str],
        batch_size: int,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        max_length: int = 512,
        loss_on: str = "answer",
        official: bool = False,
        threads: int | None = None,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = LossModel(model_path, dtype, trust_remote_code, max_length, loss_on, official)
        self.weigh = official_ds_weights if official else ds_weights
        self.batch_size = batch_size
        self.valid_loss_mean, self.valid_loss_stderr, self.valid_n = valid_loss_stats(
            self.model.losses(valid_questions, valid_answers, batch_size)
        )
        log.info("valid loss Lv = %.4f +- %.4f (n=%d)", self.valid_loss_mean, self.valid_loss_stderr, self.valid_n)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        C.require(batch, (C.QUESTION_ID, C.SAMPLE_INDEX, C.QUESTION, C.TEXT), "score")
        losses = self.model.losses(list(batch[C.QUESTION]), list(batch[C.TEXT]), self.batch_size)
        try:
            weights = self.weigh(losses, self.valid_loss_mean)
        except UnusableLoss as error:
            keys = list(zip(batch[C.QUESTION_ID], batch[C.SAMPLE_INDEX]))
            bad = [(str(keys[i][0]), int(keys[i][1])) for i in error.rows]
            raise ValueError(f"score: candidates {bad[:10]} have no usable loss: {error}") from error
        n = len(losses)
        return {
            **batch,
            C.LOSS: losses,
            C.VALID_LOSS_MEAN: np.full(n, self.valid_loss_mean),
            VALID_LOSS_STDERR: np.full(n, self.valid_loss_stderr),
            VALID_N: np.full(n, self.valid_n),
            C.DS_WEIGHT: weights,
        }


def score(candidates, valid, model_path: str, job):
    """The score stage: majority candidates (a Ray Dataset) with losses and DS weights (lazy)."""
    from ray.data.expressions import col

    from dsw_ray.resources import pool_map

    if len(valid) < 30:
        log.warning("the valid set has %d examples; Lv's standard error will be large (the paper: >= 50).", len(valid))
    constructor = dict(
        model_path=model_path,
        valid_questions=[e.question for e in valid],
        valid_answers=[e.rationale for e in valid],
        batch_size=job.score.batch_size,
        dtype=job.model.dtype,
        trust_remote_code=job.model.trust_remote_code,
        max_length=job.train.max_length,
        loss_on=job.score.loss_on,
        official=job.semantics == "official",
    )
    # One call gets several forward passes' worth of candidates.
    majority = candidates.filter(expr=col(C.IS_MAJORITY))
    return pool_map(majority, Scorer, constructor, job.score, "score", batch_size=job.score.batch_size * 4)
