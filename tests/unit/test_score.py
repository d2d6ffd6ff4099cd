"""The score stage's losses (score.LossModel, batched as the stage runs it) against plain
forward passes, and the valid set's loss statistics."""

import numpy as np
import pytest
import torch

from dsw_ray.models import ModelSpec, load_model, load_tokenizer
from dsw_ray.score import LossModel, valid_loss_stats
from dsw_ray.sft import LossTokens, encode_example, encode_official, pad_batch, sequence_losses


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


def test_batched_loss_equals_one_at_a_time_loss(tiny_model):
    scorer = LossModel(ModelSpec(tiny_model))
    questions = ["Mia has 3 pens.", "Tom buys 2 bags with 4 cards in each bag. How many cards?", "q"]
    answers = ["3 + 1 = 4. The answer is 4.", "2 * 4 = 8. The answer is 8.", "The answer is 1."]
    batched = scorer.losses(questions, answers, batch_size=3)
    single = np.array([scorer.losses([q], [a], batch_size=1)[0] for q, a in zip(questions, answers)])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    # And both equal a plain per-token cross-entropy computed without our helpers.
    model, tokenizer = load_model(tiny_model, device="cpu"), load_tokenizer(tiny_model)
    example = encode_example(tokenizer, questions[1], answers[1], 512)
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        reference = model(input_ids=ids, labels=torch.tensor([example["labels"]])).loss.item()
    assert batched[1] == pytest.approx(reference, abs=1e-5)
    with torch.no_grad():
        again = sequence_losses(model, pad_batch([example], tokenizer.pad_token_id))
    assert again.item() == pytest.approx(reference, abs=1e-5)


def test_valid_loss_stats():
    stats = valid_loss_stats(np.array([1.0, 2.0, 3.0, 4.0]))
    assert (stats["mean"], stats["n"]) == (2.5, 4)
    assert stats["stderr"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert np.isnan(valid_loss_stats([3.0])["stderr"])


def test_official_loss_is_the_mean_over_real_tokens(tiny_model, tokenizer):
    """The left-padded 400-token loss equals the same tokens' loss computed unpadded
    (positions shift, and rotary attention depends only on relative positions)."""
    official = LossModel(ModelSpec(tiny_model), LossTokens(official=True))
    questions, answers = ["Mia has 3 pens.", "q"], ["3 + 1 = 4. The answer is 4.", "The answer is 1."]
    losses = official.losses(questions, answers, batch_size=2)
    model = load_model(tiny_model, device="cpu")
    for loss, q, a in zip(losses, questions, answers):
        example = encode_official(tokenizer, q, a)
        real = [t for t, m in zip(example["input_ids"], example["attention_mask"]) if m]
        with torch.no_grad():
            reference = model(input_ids=torch.tensor([real]), labels=torch.tensor([real])).loss.item()
        assert loss == pytest.approx(reference, abs=1e-4)
    paper = LossModel(ModelSpec(tiny_model), LossTokens(loss_on="full")).losses(questions, answers, batch_size=2)
    assert not np.allclose(losses, paper), "the EOS after 'A: ' and the BOS change the loss"
