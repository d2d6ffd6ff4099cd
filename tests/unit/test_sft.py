"""The supervised encoding (sft.py): which tokens carry loss, padding, the authors' text, packing;
on a real tiny transformers model."""

import pytest
import torch

from dsw_ray.models import load_model, load_tokenizer
from dsw_ray.sft import IGNORE, OFFICIAL_LENGTH, encode_example, encode_official, pad_batch, sequence_losses


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


def test_prompt_gets_no_loss_and_eos_closes_the_answer(tokenizer):
    example = encode_example(tokenizer, "Mia has 3 pens.", "3 + 1 = 4. The answer is 4.", 512)
    prompt_len = len(tokenizer("Q: Mia has 3 pens.\nA: ", add_special_tokens=False)["input_ids"])
    assert example["labels"][:prompt_len] == [IGNORE] * prompt_len
    assert example["labels"][prompt_len:] == example["input_ids"][prompt_len:]
    assert example["input_ids"][-1] == tokenizer.eos_token_id and example["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["input_ids"][prompt_len:-1]) == "3 + 1 = 4. The answer is 4."
    full = encode_example(tokenizer, "Mia has 3 pens.", "4.", 512, loss_on="full")
    assert IGNORE not in full["labels"]


def test_padding_gets_no_loss(tokenizer):
    short = encode_example(tokenizer, "q", "1.", 512)
    long = encode_example(tokenizer, "a longer question here", "2 + 2 = 4. The answer is 4.", 512)
    batch = pad_batch([short, long], tokenizer.pad_token_id)
    n = len(short["input_ids"])
    assert (batch["labels"][0, n:] == IGNORE).all() and (batch["attention_mask"][0, n:] == 0).all()
    assert batch["attention_mask"][1].all()


def test_official_encoding_is_the_authors_text(tokenizer):
    example = encode_official(tokenizer, "Mia has 3 pens.", "3 + 1 = 4. The answer is 4.")
    assert len(example["input_ids"]) == OFFICIAL_LENGTH == len(example["labels"]) == len(example["attention_mask"])
    real = [t for t, m in zip(example["input_ids"], example["attention_mask"]) if m]
    padding = OFFICIAL_LENGTH - len(real)
    # Left padding, then BOS (where the tokenizer adds one: the toy's does not), "Q: ...\nA: ",
    # EOS, the answer (and no EOS after it).
    assert example["attention_mask"][:padding] == [0] * padding and set(example["input_ids"][:padding]) == {tokenizer.pad_token_id}
    prompt = tokenizer("Q: Mia has 3 pens.\nA: ", add_special_tokens=False)["input_ids"]
    bos = tokenizer("x")["input_ids"][: -len(tokenizer("x", add_special_tokens=False)["input_ids"])]
    assert bos == [] and real[: len(prompt)] == prompt and real[len(prompt)] == tokenizer.eos_token_id
    assert tokenizer.decode(real[1 + len(prompt) :]) == "3 + 1 = 4. The answer is 4."
    # Every real token but the first is a target, question tokens included.
    assert example["labels"][: padding + 1] == [IGNORE] * (padding + 1)
    assert example["labels"][padding + 1 :] == real[1:]
    long = encode_official(tokenizer, "x " * 500, "1.")
    assert len(long["input_ids"]) == OFFICIAL_LENGTH and all(long["attention_mask"])


def packing_examples(tokenizer, loss_on: str = "answer"):
    pairs = [("Mia has 3 pens.", "3 + 1 = 4. The answer is 4."), ("q", "The answer is 1."),
             ("Tom buys 2 bags with 4 cards in each bag. How many cards?", "2 * 4 = 8. The answer is 8.")]  # fmt: skip
    return [encode_example(tokenizer, q, a, 512, loss_on) for q, a in pairs]


@pytest.mark.parametrize("loss_on", ["answer", "full"])
def test_packed_and_padded_micro_batches_give_the_same_losses_and_gradients(tiny_model, tokenizer, loss_on):
    """float32: per-sample losses within 1e-5, every parameter's gradient within 1e-5 (absolute)."""
    from dsw_ray.sft import pack_batch, packed_sequence_losses

    model = load_model(tiny_model, "float32", False)
    examples = packing_examples(tokenizer, loss_on)
    weights = torch.tensor([1.0, 0.5, 2.0])
    results = []
    for packed in (False, True):
        model.zero_grad()
        if packed:
            losses = packed_sequence_losses(model, pack_batch(examples), len(examples))
        else:
            losses = sequence_losses(model, pad_batch(examples, tokenizer.pad_token_id))
        (losses * weights).mean().backward()
        results.append((losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (padded, padded_grads), (packed, packed_grads) = results
    assert torch.allclose(packed, padded, atol=1e-5), (packed, padded)
    assert padded.min() > 0
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-5), name


def test_a_packed_sample_attends_to_nothing_before_it(tiny_model, tokenizer):
    """Changing the first sample's tokens changes none of the second's logits in the packed row."""
    from dsw_ray.sft import pack_batch

    model = load_model(tiny_model, "float32", False)
    first, second, _ = packing_examples(tokenizer)
    other = {**first, "input_ids": [(t + 7) % tokenizer.vocab_size for t in first["input_ids"]]}
    with torch.no_grad():
        logits = [
            model(**{k: v for k, v in pack_batch([head, second]).items() if k in ("input_ids", "position_ids")},
                  use_cache=False).logits[0]
            for head in (first, other)
        ]  # fmt: skip
    n = len(first["input_ids"])
    assert not torch.allclose(logits[0][:n], logits[1][:n]), "the first sample's own logits do change"
    assert torch.allclose(logits[0][n:], logits[1][n:], atol=1e-6)
    # Without the restart of position ids the model would attend across: the check can fail.
    crossed = pack_batch([first, second])
    with torch.no_grad():
        plain = [model(input_ids=ids, use_cache=False).logits[0] for ids in (crossed["input_ids"], pack_batch([other, second])["input_ids"])]
    assert not torch.allclose(plain[0][n:], plain[1][n:], atol=1e-6)
