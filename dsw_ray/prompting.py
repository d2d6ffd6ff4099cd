"""How one model's tokenizer turns a task's texts into token ids, the same way in every stage
and in both backends (generation, scoring, training, evaluation; transformers and vLLM).

Three rules that a real checkpoint needs and the toy never did:

- **BOS** is added exactly when the model's own tokenizer adds it to a text (Llama-3 does,
  SmolLM2 does not): every stage tokenizes its parts without special tokens and then puts
  ``bos_ids`` in front, so a prompt's ids are the same wherever they are made.
- **The prompt/answer boundary** follows the text's own tokenization. A byte-level BPE
  merges the space after ``A:`` into the answer's first word (``" There"``), so a prompt
  ending in a lone ``" "`` token would make the model start every answer out of
  distribution. A training or scoring text is therefore tokenized whole and split where
  the answer's tokens begin; a generation prompt ends in ``A:`` when the task's own
  exemplars show the space merged into their answers, else in ``A: `` (digits stay apart
  from the space in the toy's and SmolLM2's tokenizers: their prompts are unchanged).
- **A chat model's template** can replace the few-shot text (``task.prompt_format: chat``):
  the exemplars become earlier user/assistant turns, the answer ends with the template's
  end-of-turn token, which is the tokenizer's EOS for the models that use one.

SmolLM2's tokenizer, for example, makes ``A: There`` into ``A``, ``:``, `` There`` and ``A: 15``
into ``A``, ``:``, `` ``, ``1``, ``5``: its gsm8k and SVAMP prompts end in ``A:``, its arith
prompts in ``A: ``.
"""

from __future__ import annotations

from dsw_ray.errors import UserError
from dsw_ray.models import STOPS
from dsw_ray.tasks.numeric import training_prompt


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def bos_ids(tokenizer) -> list[int]:
    """``[bos]`` if the tokenizer puts BOS before a text of its own accord, else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    return [bos] if tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos] != ids(tokenizer, "x")[:1] else []


def with_bos(bos: list[int], token_ids: list[int]) -> list[int]:
    """``bos`` before ``token_ids``, unless they start with it already (a chat template that writes it)."""
    return token_ids if token_ids[: len(bos)] == bos else bos + token_ids


def check_chat_template(tokenizer, where: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"task.prompt_format is chat, but {where}'s tokenizer has no chat template; use task.prompt_format: few_shot."
        )


def chat_text(tokenizer, turns: list[tuple[str, str]], question: str) -> str:
    """The chat template's text of earlier ``(question, answer)`` turns, then ``question``, ready
    for the assistant's answer."""
    messages = []
    for q, a in turns:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def split_boundary(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """The ids of ``prompt + answer`` tokenized whole, split where the answer's tokens begin:
    after the prompt's own tokens, or before a trailing space that the answer's first token
    took; tokenized apart only when neither is a prefix of the whole."""
    whole = ids(tokenizer, prompt + answer)
    for head in (prompt, prompt.rstrip(" ")):
        head_ids = ids(tokenizer, head)
        if whole[: len(head_ids)] == head_ids:
            return head_ids, whole[len(head_ids) :]
    return ids(tokenizer, prompt), ids(tokenizer, answer)


def space_joins_answer(tokenizer, exemplars: list[tuple[str, str]]) -> bool:
    """Whether, in the task's first exemplar, the space after ``A:`` belongs to the answer's first token."""
    if not exemplars:
        return False
    question, answer = exemplars[0]
    prompt = training_prompt(question)
    head, _ = split_boundary(tokenizer, prompt, answer)
    return head != ids(tokenizer, prompt)  # the head is then the prompt without its trailing space


class Prompter:
    """The generation prompt of a task's questions (in the task's ``prompt_format``) for one
    tokenizer, as ids (``ids``)."""

    def __init__(self, tokenizer, task):
        prompt_format = task.prompt_format
        if prompt_format == "chat":
            check_chat_template(tokenizer, "the model")
        self.tokenizer, self.task, self.prompt_format = tokenizer, task, prompt_format
        self.bos = bos_ids(tokenizer)
        self.strip_space = prompt_format == "few_shot" and space_joins_answer(tokenizer, task.exemplars)
        # A chat answer ends with the end-of-turn token (EOS) and may hold blank lines.
        self.stops = STOPS if prompt_format == "few_shot" else ()

    def text(self, question: str) -> str:
        if self.prompt_format == "chat":
            return chat_text(self.tokenizer, self.task.exemplars, question)
        prompt = self.task.prompt(question)
        return prompt.rstrip(" ") if self.strip_space else prompt

    def ids(self, question: str) -> list[int]:
        return with_bos(self.bos, ids(self.tokenizer, self.text(question)))


def example_ids(tokenizer, question: str, answer: str, prompt_format: str = "few_shot") -> tuple[list[int], list[int]]:
    """A training or scoring text's prompt ids (BOS first when the tokenizer adds one) and its
    answer's ids, EOS last: ``Q: q\\nA: a<EOS>`` (no exemplars), or the chat template's."""
    prompt = chat_text(tokenizer, [], question) if prompt_format == "chat" else training_prompt(question)
    prompt_ids, answer_ids = split_boundary(tokenizer, prompt, answer)
    return with_bos(bos_ids(tokenizer), prompt_ids), answer_ids + [tokenizer.eos_token_id]


