"""Reward: a sequence-classification reward model's score of each majority candidate (the rm method).

The same kind of stateful actor pool as scoring: each actor loads the reward model once;
each candidate is read as its training text ``Q: <question>\\nA: <answer>`` (semantics
official: the authors' ``<question><EOS><answer>``, which for their DeBERTa reward model is
``question[SEP]answer``). With one label the reward is its logit; with several, the
log-probability of the last label (the "good" class of a binary classifier).
"""

from __future__ import annotations

import numpy as np

from dsw_ray import columns as C
from dsw_ray.config import ModelConfig, RewardConfig
from dsw_ray.models import ModelSpec
from dsw_ray.tasks.numeric import training_prompt


class RewardScorer:
    """Ray Data callable class: adds ``reward`` to candidates."""

    def __init__(
        self, model: ModelSpec, batch_size: int, max_length: int, threads: int | None = None, official: bool = False
    ):
        self.tokenizer, self.model = model.load(threads, kind="sequence classifier")
        # The classifier reads the last real token of each row, which it finds by the pad id.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length, self.official = batch_size, max_length, official

    def text(self, question: str, answer: str) -> str:
        return question + self.tokenizer.eos_token + answer if self.official else training_prompt(question) + answer

    def rewards(self, questions: list[str], answers: list[str]) -> np.ndarray:
        import torch

        texts = [self.text(q, a) for q, a in zip(questions, answers)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rewards = np.empty(len(texts), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                ).to(self.model.device)
                logits = self.model(**batch).logits.float()
                scores = logits[:, 0] if logits.shape[1] == 1 else torch.log_softmax(logits, dim=1)[:, -1]
                rewards[rows] = scores.cpu().numpy()
        return rewards

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        C.require(batch, (C.QUESTION_ID, C.SAMPLE_INDEX, C.QUESTION, C.TEXT), "reward")
        return {**batch, C.REWARD: self.rewards(list(batch[C.QUESTION]), list(batch[C.TEXT]))}


def reward(candidates, section: RewardConfig, model: ModelConfig, max_length: int, official: bool = False):
    """The reward stage: majority candidates (a Ray Dataset) with a ``reward`` column from the
    section's reward model (loaded with ``model``'s dtype and trust setting; ``official``: the
    authors' input text), lazy."""
    from ray.data.expressions import col

    from dsw_ray.resources import TASK_CPUS, pool_map

    constructor = dict(
        model=ModelSpec.of(section.model_path, model), batch_size=section.batch_size, max_length=max_length, official=official
    )
    majority = candidates.filter(expr=col(C.IS_MAJORITY), num_cpus=TASK_CPUS)
    return pool_map(majority, RewardScorer, constructor, section, "reward", batch_size=section.batch_size * 4)
