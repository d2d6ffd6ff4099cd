"""What every generate backend shares: the requests a batch of questions makes (prompts and
one seed per candidate) and the stage's rows from the completions an engine returns.

``generate.TransformersGenerator`` and ``vllm_backend.VllmGenerator`` both map batches through
these, so the two backends write the same columns from the same seeds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dsw_ray import columns as C
from dsw_ray.prompting import Prompter

OUTPUT_COLUMNS = (
    C.QUESTION_ID, C.SAMPLE_INDEX, C.QUESTION, C.GOLD, C.TEXT, C.SEED,
    C.PROMPT_TOKENS, C.COMPLETION_TOKENS, C.FINISH_REASON,
)


def sample_seed(job_seed: int, round_index: int, question_id: str, sample_index: int) -> int:
    """A 63-bit seed that is a pure function of the candidate's identity."""
    digest = hashlib.blake2b(f"{job_seed}/{round_index}/{question_id}/{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def cut_at_stop(text: str, stopped_by_eos: bool, stops: tuple[str, ...]) -> tuple[str, str]:
    """The candidate before its first stop string, and why it ended: ``stop`` or ``length``."""
    cut = min((i for i in (text.find(stop) for stop in stops) if i >= 0), default=-1)
    head = text if cut < 0 else text[:cut]
    return head.strip(), "stop" if cut >= 0 or stopped_by_eos else "length"


@dataclass(frozen=True)
class Completion:
    """One decoded candidate, whichever engine produced it."""

    text: str  # cut before its first stop string
    prompt_tokens: int
    completion_tokens: int  # tokens the model generated, stop string included
    finish_reason: str  # "stop" (stop string or EOS) or "length"


@dataclass(frozen=True)
class Decoding:
    """How a generator decodes: ``samples`` candidates per question at ``temperature``, cut by
    ``top_p`` and ``top_k`` (0: every token), each seeded from ``seed``, ``round_index`` and its
    key (``sample_seed``); ``temperature`` None: one greedy answer per question (evaluation)."""

    max_new_tokens: int
    temperature: float | None = None
    samples: int = 1
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    round_index: int = 0

    def __post_init__(self):
        if self.greedy and self.samples != 1:
            raise ValueError(f"greedy decoding gives one answer per question, not {self.samples}")

    @property
    def greedy(self) -> bool:
        return self.temperature is None


def requests(batch, prompter: Prompter, decoding: Decoding) -> tuple[list[str], list[list[int]], list[int]]:
    """The question ids and prompt ids of a batch (``prompter``'s, so both backends decode from
    the same ids), and the seed of each of its ``decoding.samples`` candidates per question,
    prompt-major (q0 s0..s(m-1), q1 ...)."""
    C.require(batch, (C.QUESTION_ID, C.QUESTION), "generate")
    question_ids = [str(q) for q in batch[C.QUESTION_ID]]
    prompts = [prompter.ids(str(q)) for q in batch[C.QUESTION]]
    seeds = [
        sample_seed(decoding.seed, decoding.round_index, q, i) for q in question_ids for i in range(decoding.samples)
    ]
    return question_ids, prompts, seeds


def candidate_rows(
    batch, question_ids: list[str], samples: int, seeds: list[int] | None, completions: list[Completion]
) -> dict[str, list]:
    """The stage's output columns for prompt-major completions (``seeds`` None when greedy)."""
    if len(completions) != len(question_ids) * samples:
        raise RuntimeError(f"generate: {len(completions)} completions for {len(question_ids)} x {samples} requests")
    golds = batch.get(C.GOLD)
    rows = {name: [] for name in OUTPUT_COLUMNS}
    for row, completion in enumerate(completions):
        question = row // samples
        rows[C.QUESTION_ID].append(question_ids[question])
        rows[C.SAMPLE_INDEX].append(row % samples)
        rows[C.QUESTION].append(str(batch[C.QUESTION][question]))
        rows[C.GOLD].append(None if golds is None else golds[question])
        rows[C.TEXT].append(completion.text)
        rows[C.SEED].append(None if seeds is None else seeds[row])
        rows[C.PROMPT_TOKENS].append(completion.prompt_tokens)
        rows[C.COMPLETION_TOKENS].append(completion.completion_tokens)
        rows[C.FINISH_REASON].append(completion.finish_reason)
    return rows
