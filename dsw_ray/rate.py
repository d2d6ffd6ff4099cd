"""Rate: the Self-filter's ratings. The model that generated a round's candidates rates each
majority candidate from 0 to 10 (the ``self`` method keeps the highest rated).

The model is asked, after the question and the candidate, to rate the answer; the rating is
read as the expected value of the model's own distribution over the eleven answers
``0/10`` .. ``10/10``: each is scored as a continuation of the rating prompt (its summed
token log-probability), the eleven are normalized, and ``sum p(n) * n`` is the rating. A
model that would rather write something else than a number still gets a rating (its
preference among the numbers), so no text can crash the stage or leave a candidate
unrated, and the rating is a smooth number rather than a tie-prone integer.

>>> float(expected_rating([[0.0] * 11]))  # no preference: the middle
5.0
>>> import math; float(expected_rating([[math.log(0.2) if n == 7 else math.log(0.8) if n == 9 else -math.inf for n in range(11)]]))
8.6

The rating prompt (the candidate's own words, then the instruction, so that a long candidate
is cut from its start and the instruction always stays)::

    Question: <question>
    Answer: <candidate>

    Rate the answer above from 0 to 10: 0 if its reasoning is wrong or its final answer is
    incorrect, 10 if the reasoning is sound and the final answer is correct.
    Rating:<" 7/10">

Each rating costs eleven scored sequences (one forward pass each, batched), about as much as
scoring the candidate eleven times; no sampling is involved.

Under ``semantics: official`` the stage does what the authors' ``self_weight.py`` does instead
(``AuthorsRater``): their quality rubric, then ``Q: <question>\\nA: <candidate>\\nScore: ``; the
model writes a rating (sampled at T = 0.7 with the model's top-p/top-k when its
``generation_config.json`` says ``do_sample``, as Hugging Face ``generate`` did for them, else
greedy), and the first number it writes, clamped to [0, 10], is the rating; no number is 0.
They let the model write up to 400 tokens with the prompt; it writes ``AUTHORS_NEW_TOKENS`` here.

>>> authors_rating(" 8\\n\\nThe answer is clear."), authors_rating("Score: 12/10"), authors_rating("Good.")
(8.0, 10.0, 0.0)
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from dsw_ray import columns as C
from dsw_ray.config import ModelConfig, RateConfig
from dsw_ray.models import ModelSpec
from dsw_ray.decoding import sample_seed
from dsw_ray.prompting import bos_ids, ids
from dsw_ray.sft import IGNORE, batched_losses, pad_batch

RATINGS = np.arange(11)
INSTRUCTION = (
    "\n\nRate the answer above from 0 to 10: 0 if its reasoning is wrong or its final answer is incorrect, "
    "10 if the reasoning is sound and the final answer is correct.\nRating:"
)


def rating_prompt(question: str, answer: str) -> str:
    return f"Question: {question.strip()}\nAnswer: {answer.strip()}{INSTRUCTION}"


def continuation(rating: int) -> str:
    """What the model would write after ``Rating:``; ``/10`` ends it, so 1 is not a prefix of 10."""
    return f" {rating}/10"


def expected_rating(logprobs) -> np.ndarray:
    """Per row of eleven log-probabilities (ratings 0..10, unnormalized), the expected rating."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    shifted = np.exp(logprobs - logprobs.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)) @ RATINGS


class Rater:
    """Ray Data callable class: adds ``rating`` to candidates (``question``, ``text``)."""

    def __init__(self, model: ModelSpec, batch_size: int, max_length: int, threads: int | None = None):
        self.tokenizer, self.model = model.load(threads)
        self.batch_size, self.max_length = batch_size, max_length
        self.bos = bos_ids(self.tokenizer)
        self.continuations = [self.tokenizer(continuation(n), add_special_tokens=False)["input_ids"] for n in RATINGS]

    def encode(self, question: str, answer: str) -> list[dict]:
        """The eleven scored sequences of one candidate: its prompt (BOS first when the tokenizer
        adds one, the text cut from its start to fit ``max_length``) followed by each rating,
        which alone is the target."""
        prompt = self.tokenizer(rating_prompt(question, answer), add_special_tokens=False)["input_ids"]
        room = self.max_length - max(map(len, self.continuations)) - len(self.bos)
        prompt = self.bos + (prompt[-room:] if len(prompt) > room else prompt)
        return [{"input_ids": prompt + ids, "labels": [IGNORE] * len(prompt) + ids} for ids in self.continuations]

    def ratings(self, questions: list[str], answers: list[str]) -> np.ndarray:
        encoded = [row for q, a in zip(questions, answers) for row in self.encode(q, a)]
        if not encoded:
            return np.empty(0)
        mean_losses = batched_losses(
            self.model, encoded, self.batch_size, lambda rows: pad_batch(rows, self.tokenizer.pad_token_id)
        )
        # A row's mean loss times its target tokens is minus the rating's log-probability.
        counts = np.array([len(ids) for ids in self.continuations] * len(questions), dtype=np.float64)
        return expected_rating((-mean_losses * counts).reshape(len(questions), len(RATINGS)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        C.require(batch, (C.QUESTION_ID, C.SAMPLE_INDEX, C.QUESTION, C.TEXT), "rate")
        return {**batch, C.RATING: self.ratings(list(batch[C.QUESTION]), list(batch[C.TEXT]))}


# The authors' Self-filter prompt (rubickkcibur/IWSI, src/utils/constants.py), verbatim.
AUTHORS_RUBRIC = (
    "Below is a question and a candidate answer. Evaluate whether or not the answer is a good example. A good "
    "answer should be complete, clear, and comprehensive The answer sentence should be well organized without "
    "missing or irrelevant information. Use a number between 0 and 10 to represent the rating of the candidate "
    "answer. 10 means the best and 0 means the worst. Please follow the format 'Score: <rating>'.\n Here are the "
    "question and candidate answer: \n"
)
AUTHORS_TEMPERATURE = 0.7
AUTHORS_NEW_TOKENS = 16  # the rating comes first; a number later than this reads as none (0)
FIRST_NUMBER = re.compile(r"\d+\.?\d*")


def authors_prompt(question: str, answer: str) -> str:
    return f"{AUTHORS_RUBRIC}Q: {question}\nA: {answer}\nScore: "


def authors_rating(text: str) -> float:
    """The first number of the text (at most 20 characters), clamped to [0, 10]; none: 0."""
    match = FIRST_NUMBER.search(text)
    return 0.0 if match is None else min(max(0.0, float(match.group()[:20])), 10.0)


def authors_sampling(model_path: str) -> dict | None:
    """How Hugging Face ``generate(temperature=0.7)`` decoded for the authors: sampled with the
    model's top-p and top-k (else 1.0 and 50) when its generation config says ``do_sample``,
    else greedily (None)."""
    try:
        with open(os.path.join(model_path, "generation_config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = {}
    if not config.get("do_sample"):
        return None
    return {"temperature": AUTHORS_TEMPERATURE, "top_p": config.get("top_p", 1.0), "top_k": config.get("top_k", 50)}


class AuthorsRater:
    """Ray Data callable class: the authors' Self-filter ratings (``rating``) of candidates;
    a sampled rating's seed is a function of the candidate's key and ``seed``."""

    def __init__(
        self,
        model: ModelSpec,
        batch_size: int,
        max_length: int,
        sampling: dict | None,
        seed: int,
        threads: int | None = None,
    ):
        self.tokenizer, self.model = model.load(threads, padding_side="left")
        self.batch_size, self.max_length, self.sampling, self.seed = batch_size, max_length, sampling, seed
        self.bos = bos_ids(self.tokenizer)

    def prompt_ids(self, question: str, answer: str) -> list[int]:
        """BOS (where the tokenizer adds one) and the prompt, cut from its start to leave room to answer."""
        prompt = ids(self.tokenizer, authors_prompt(question, answer))
        room = self.max_length - AUTHORS_NEW_TOKENS - len(self.bos)
        return self.bos + prompt[-room:]

    def ratings(self, questions: list[str], answers: list[str], seeds: list[int]) -> np.ndarray:
        import torch
        from transformers import LogitsProcessorList

        from dsw_ray.generate import GumbelSampler

        ratings = []
        for start in range(0, len(questions), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(questions)))
            encoded = self.tokenizer.pad(
                {"input_ids": [self.prompt_ids(questions[i], answers[i]) for i in rows]}, padding=True, return_tensors="pt"
            ).to(self.model.device)
            processors = LogitsProcessorList()
            if self.sampling is not None:
                processors.append(GumbelSampler([seeds[i] for i in rows], **self.sampling))
            with torch.inference_mode():
                output = self.model.generate(
                    **encoded, do_sample=False, max_new_tokens=AUTHORS_NEW_TOKENS, logits_processor=processors,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                )  # fmt: skip
            texts = self.tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            ratings += [authors_rating(text) for text in texts]
        return np.array(ratings, dtype=np.float64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        C.require(batch, (C.QUESTION_ID, C.SAMPLE_INDEX, C.QUESTION, C.TEXT), "rate")
        seeds = [sample_seed(self.seed, 0, q, int(i)) for q, i in zip(batch[C.QUESTION_ID], batch[C.SAMPLE_INDEX])]
        return {**batch, C.RATING: self.ratings(list(batch[C.QUESTION]), list(batch[C.TEXT]), seeds)}


def rate(
    candidates, section: RateConfig, model: ModelConfig, model_path: str, max_length: int, official: bool = False,
    seed: int = 0,
):
    """The rate stage: majority candidates (a Ray Dataset of voted rows) with a ``rating``
    column from ``model_path``, the model that generated them (lazy); ``official``: the
    authors' rubric and parsing (``AuthorsRater``, sampled ratings seeded from ``seed``)."""
    from ray.data.expressions import col

    from dsw_ray.resources import TASK_CPUS, pool_map

    constructor = dict(model=ModelSpec.of(model_path, model), batch_size=section.batch_size, max_length=max_length)
    majority = candidates.filter(expr=col(C.IS_MAJORITY), num_cpus=TASK_CPUS)
    if official:
        constructor.update(sampling=authors_sampling(model_path), seed=seed)
        return pool_map(majority, AuthorsRater, constructor, section, "rate", batch_size=section.batch_size)
    # Each candidate is eleven sequences: a call of batch_size candidates is 11 forward batches.
    return pool_map(majority, Rater, constructor, section, "rate", batch_size=section.batch_size)
