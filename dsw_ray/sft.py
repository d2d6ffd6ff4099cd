"""The supervised text of one sample: ``Q: <question>\\nA: <answer><EOS>`` (BOS first when the
model's tokenizer adds one; ``prompting`` says how the text becomes ids).

One encoding serves training and scoring, so the loss a DS weight is computed from is the
loss the trainer minimizes: the prompt gets label -100 (no loss), the answer and the EOS
that closes it are the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsw_ray.prompting import bos_ids, example_ids
from dsw_ray.tasks.numeric import training_prompt

IGNORE = -100
OFFICIAL_LENGTH = 400  # the authors' scoring pads (and cuts) every text to this many tokens


def encode_example(
    tokenizer, question: str, answer: str, max_length: int, loss_on: str = "answer", prompt_format: str = "few_shot"
) -> dict:
    """``input_ids`` and ``labels`` of one sample; ``loss_on="full"`` keeps the prompt in the loss."""
    prompt_ids, answer_ids = example_ids(tokenizer, question, answer, prompt_format)
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = (prompt_ids if loss_on == "full" else [IGNORE] * len(prompt_ids)) + answer_ids
    return {"input_ids": input_ids, "labels": labels[:max_length]}


def encode_official(tokenizer, question: str, answer: str) -> dict:
    """The authors' scoring text: BOS (where the tokenizer adds one, as their
    ``add_special_tokens=True`` does), ``Q: <question>\nA: ``, EOS, the answer; cut and
    left-padded to 400 tokens. Every real token is a target except the first, which
    nothing real precedes. Positions stay 0..399 as in their code (no position ids)."""
    bos = bos_ids(tokenizer)
    prompt_ids = tokenizer(training_prompt(question), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    real = (bos + prompt_ids + [tokenizer.eos_token_id] + answer_ids)[:OFFICIAL_LENGTH]
    padding = OFFICIAL_LENGTH - len(real)
    return {
        "input_ids": [tokenizer.pad_token_id] * padding + real,
        "attention_mask": [0] * padding + [1] * len(real),
        "labels": [IGNORE] * (padding + 1) + real[1:],
    }


@dataclass(frozen=True)
class LossTokens:
    """The tokens a candidate's loss is over: its text as the fine-tune encodes it
    (``prompt_format``, cut at ``max_length``), targets the answer or the whole text
    (``loss_on``); ``official``: the authors' scoring text instead (``encode_official``)."""

    max_length: int = 512
    loss_on: str = "answer"
    prompt_format: str = "few_shot"
    official: bool = False

    def encode(self, tokenizer, question: str, answer: str) -> dict:
        if self.official:
            return encode_official(tokenizer, question, answer)
        return encode_example(tokenizer, question, answer, self.max_length, self.loss_on, self.prompt_format)


def pad_batch(examples: list[dict], pad_token_id: int):
    """Right-pad to the longest example of the batch: ``input_ids``, ``attention_mask``, ``labels``."""
    import torch

    longest = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack_batch(examples: list[dict]):
    """The examples end to end in one row (no padding): ``position_ids`` restart at each
    example, so that the model attends within each example only (transformers' packed
    sequences: no attention mask, no cache); each example's first token is no target, as
    nothing of its own precedes it; ``sample`` is the example each position belongs to."""
    import torch

    input_ids, labels, position_ids, sample = [], [], [], []
    for index, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids += example["input_ids"]
        labels += [IGNORE] + example["labels"][1:n]
        position_ids += range(n)
        sample += [index] * n
    row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
    return {"input_ids": row(input_ids), "labels": row(labels), "position_ids": row(position_ids), "sample": row(sample)}


def packed_sequence_losses(model, batch: dict, samples: int):
    """``sequence_losses`` of a ``pack_batch`` row: each example's mean token cross-entropy
    over its labeled positions (a 1-D tensor of ``samples`` losses)."""
    import torch

    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    targets = batch["labels"][0, 1:]
    token_losses = torch.nn.functional.cross_entropy(logits[0, :-1].float(), targets, ignore_index=IGNORE, reduction="none")
    owner = batch["sample"][0, 1:]
    zeros = torch.zeros(samples, dtype=token_losses.dtype, device=token_losses.device)
    sums = zeros.index_add(0, owner, token_losses)
    counts = zeros.index_add(0, owner, (targets != IGNORE).to(token_losses.dtype))
    return sums / counts.clamp(min=1)


def stack(examples: list[dict]):
    """Tensors of examples that already share one length (``encode_official``)."""
    import torch

    return {name: torch.tensor([e[name] for e in examples], dtype=torch.long) for name in examples[0]}


def batched_losses(model, encoded: list[dict], batch_size: int, collate):
    """Per-example losses of encoded examples, ``batch_size`` at a time in order of length
    (which keeps each forward pass's padding small); ``collate`` makes a batch's tensors."""
    import numpy as np
    import torch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    losses = np.empty(len(encoded), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = {name: tensor.to(model.device) for name, tensor in collate([encoded[i] for i in rows]).items()}
            losses[rows] = sequence_losses(model, batch).double().cpu().numpy()
    return losses


def sequence_losses(model, batch: dict):
    """Mean token cross-entropy of each row over its labeled positions (a 1-D tensor)."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
    )
    counts = (targets != IGNORE).sum(dim=1)
    return token_losses.sum(dim=1) / counts.clamp(min=1)
