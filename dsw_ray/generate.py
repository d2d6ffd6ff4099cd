"""Generate: m chain-of-thought candidates per question, on a Ray Data actor pool.

Each actor loads the model once; one ``generate`` call produces all m samples of a batch
of prompts, padded to the longest prompt of the batch, stopping at ``\\nQ:`` or a blank line.

Every candidate has its own seed, derived from the job seed, the round, its question and
its index: sampling is Gumbel-max (temperature, top-p, then noise from the candidate's
own generator, then argmax), so a candidate's text does not depend on which batch or
actor produced it, and a retried batch reproduces its rows.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from dsw_ray.config import EvaluateConfig, GenerateConfig, ModelConfig
from dsw_ray.decoding import Completion, Decoding, candidate_rows, cut_at_stop, requests
from dsw_ray.models import ModelSpec
from dsw_ray.prompting import Prompter
from dsw_ray.tasks import Task

log = logging.getLogger(__name__)


class GumbelSampler:
    """A logits processor that turns greedy decoding into sampling with per-row seeds.

    ``argmax(logits / T + Gumbel noise)`` is an exact sample of ``softmax(logits / T)``;
    drawing each row's noise from its own generator makes the sample independent of the
    other rows in the batch. ``top_k`` (0: off) and ``top_p`` cut the tail first.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, top_k: int = 0):
        import torch

        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float() / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True, dim=-1)
            cumulative = ordered.softmax(-1).cumsum(-1)
            # Drop a token once the mass before it already reaches top_p (the first always stays).
            drop = (cumulative - ordered.softmax(-1)) >= self.top_p
            scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        uniform = uniform.clamp_(min=1e-20, max=1 - 1e-7).to(scores.device)
        return scores - torch.log(-torch.log(uniform))


class TransformersGenerator:
    """Ray Data callable class: ``__call__`` maps a batch of questions to their candidates,
    decoded as ``decoding`` says (greedy: one answer per question, for evaluation)."""

    def __init__(self, model: ModelSpec, task: Task, decoding: Decoding, threads: int | None = None):
        self.tokenizer, self.model = model.load(threads, padding_side="left")
        self.prompter = Prompter(self.tokenizer, task)
        self.decoding = decoding

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        import torch
        from transformers import LogitsProcessorList

        decoding = self.decoding
        question_ids, prompts, seeds = requests(batch, self.prompter, decoding)
        encoded = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
        # Each prompt repeated m times, prompt-major (q0 s0..s(m-1), q1 ...): decoding is
        # greedy over Gumbel-perturbed logits, and greedy generate takes one sequence per row.
        encoded = {k: v.repeat_interleave(decoding.samples, dim=0).to(self.model.device) for k, v in encoded.items()}
        processors = LogitsProcessorList()
        if not decoding.greedy:
            processors.append(GumbelSampler(seeds, decoding.temperature, decoding.top_p, decoding.top_k))
        with torch.inference_mode():
            output = self.model.generate(
                **encoded,
                do_sample=False,
                max_new_tokens=decoding.max_new_tokens,
                stop_strings=list(self.prompter.stops) or None,
                tokenizer=self.tokenizer,
                logits_processor=processors,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1] :].cpu()
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()  # one per row
        completions = []
        for tokens, prompt_length in zip(new_tokens.tolist(), prompt_lengths):
            length, stopped_by_eos = self.generated_length(tokens)
            text, finish_reason = cut_at_stop(
                self.tokenizer.decode(tokens[:length], skip_special_tokens=True), stopped_by_eos, self.prompter.stops
            )
            completions.append(Completion(text, int(prompt_length), length, finish_reason))
        return candidate_rows(batch, question_ids, decoding.samples, None if decoding.greedy else seeds, completions)

    def generated_length(self, tokens: list[int]) -> tuple[int, bool]:
        """Tokens the model really produced (padding after a stop excluded), and whether EOS ended it."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        for position, token in enumerate(tokens):
            if token == eos:
                return position + 1, True
            if token == pad:
                return position, False
        return len(tokens), False


PAPER_SAMPLING = {"temperature": 1.1, "top_p": 1.0, "top_k": 0}  # the paper's temperature, the full vocabulary
# Hugging Face ``generate``'s own defaults, which the authors' sampling fell back on (top-k 50).
HF_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}


def with_sampling_defaults(section: GenerateConfig, model_path: str, fallback: dict = PAPER_SAMPLING) -> GenerateConfig:
    """``section`` with every sampling setting it leaves unset (None) taken from the model's
    ``generation_config.json`` (as Hugging Face ``generate`` would), else from ``fallback``
    (``HF_SAMPLING`` under the official semantics)."""
    try:
        with open(os.path.join(model_path, "generation_config.json")) as f:
            model_defaults = json.load(f)
    except (OSError, ValueError):
        model_defaults = {}
    chosen = {}
    for name, paper in fallback.items():
        value = getattr(section, name)
        if value is None:
            value = model_defaults.get(name)
            value = paper if value is None else type(paper)(value)
        chosen[name] = value
    return section.model_copy(update=chosen)


def decoding_of(section: GenerateConfig | EvaluateConfig, round_index: int = 0) -> Decoding:
    """How the section's actors decode: the generate section samples its m candidates per
    question, the evaluate section decodes one greedy answer (no seed or top-p matters then)."""
    if isinstance(section, EvaluateConfig):
        return Decoding(section.max_new_tokens, round_index=round_index)
    return Decoding(
        section.max_new_tokens, section.temperature, section.samples_per_question, section.top_p, section.top_k,
        section.seed, round_index,
    )


def generator(
    section: GenerateConfig | EvaluateConfig, model: ModelConfig, task: Task, model_path: str | None = None,
    round_index: int = 0,
) -> tuple[type, dict, dict]:
    """The pool's actor class for the section's backend, its constructor's settings and its
    placement (``pool_map``'s); no ``model_path`` for the evaluate section: each row of an
    evaluation pass names the model that answers it."""
    constructor = dict(model=ModelSpec.of(model_path, model), task=task, decoding=decoding_of(section, round_index))
    if section.backend == "vllm":
        from dsw_ray import vllm_backend

        engine, placement = vllm_backend.pool_settings(section)
        return vllm_backend.VllmGenerator, {**constructor, **engine}, placement
    return TransformersGenerator, constructor, {}


def generate(questions, section: GenerateConfig, model: ModelConfig, task: Task, model_path: str, round_index: int):
    """The generate stage: a Ray Dataset of questions to one of candidates of ``model_path``
    (``model``: its dtype and whether to trust its code; unset sampling settings: the model's
    ``with_sampling_defaults``), lazy."""
    from dsw_ray.resources import pool_map

    section = with_sampling_defaults(section, model_path)
    actor_class, constructor, placement = generator(section, model, task, model_path, round_index)
    return pool_map(questions, actor_class, constructor, section, "generate", **placement)
