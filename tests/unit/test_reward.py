"""The reward scorer on a real (tiny, random) sequence classifier."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dsw_ray.models import ModelSpec
from dsw_ray.reward import RewardScorer

QUESTIONS = ["Mia has 3 pens.", "Tom buys 2 bags with 4 cards in each bag. How many cards?", "q"]
ANSWERS = ["3 + 1 = 4. The answer is 4.", "2 * 4 = 8. The answer is 8.", "The answer is 1."]


def unpadded_scores(path, text=lambda tokenizer, q, a: f"Q: {q}\nA: {a}"):
    """Each text alone, no padding: the classifier's logits at its last token."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return [
            model(**tokenizer(text(tokenizer, q, a), return_tensors="pt")).logits[0].float()
            for q, a in zip(QUESTIONS, ANSWERS)
        ]


def test_batched_rewards_equal_unpadded_logits(tiny_reward_model):
    rewards = RewardScorer(ModelSpec(tiny_reward_model), batch_size=3, max_length=256).rewards(QUESTIONS, ANSWERS)
    expected = [logits[0].item() for logits in unpadded_scores(tiny_reward_model)]
    np.testing.assert_allclose(rewards, expected, atol=1e-4)
    assert len(set(np.round(rewards, 6))) == 3, "different texts get different rewards"


def test_official_rewards_read_the_authors_question_eos_answer(tiny_reward_model):
    """The authors' RM input: the question, the tokenizer's EOS ([SEP] for their DeBERTa), the answer."""
    official = RewardScorer(ModelSpec(tiny_reward_model), batch_size=3, max_length=256, official=True)
    assert official.text("q?", "a.") == "q?" + official.tokenizer.eos_token + "a."
    rewards = official.rewards(QUESTIONS, ANSWERS)
    expected = [l[0].item() for l in unpadded_scores(tiny_reward_model, lambda t, q, a: q + t.eos_token + a)]
    np.testing.assert_allclose(rewards, expected, atol=1e-4)
    paper = RewardScorer(ModelSpec(tiny_reward_model), batch_size=3, max_length=256).rewards(QUESTIONS, ANSWERS)
    assert not np.allclose(rewards, paper)


def test_two_label_classifier_rewards_are_log_probability_of_the_last_label(two_label_reward_model):
    path = two_label_reward_model
    rewards = RewardScorer(ModelSpec(path), batch_size=2, max_length=256).rewards(QUESTIONS, ANSWERS)
    expected = [torch.log_softmax(logits, dim=0)[1].item() for logits in unpadded_scores(path)]
    np.testing.assert_allclose(rewards, expected, atol=1e-4)
    assert (rewards < 0).all()


def test_rewards_keep_the_key_columns(tiny_reward_model):
    batch = {
        "question_id": np.array(["a", "b"]),
        "sample_index": np.array([0, 3]),
        "question": np.array(QUESTIONS[:2]),
        "text": np.array(ANSWERS[:2]),
    }
    out = RewardScorer(ModelSpec(tiny_reward_model), batch_size=8, max_length=256)(batch)
    assert out["question_id"].tolist() == ["a", "b"] and out["sample_index"].tolist() == [0, 3]
    assert out["reward"].shape == (2,)
    with pytest.raises(KeyError, match="reward"):
        RewardScorer(ModelSpec(tiny_reward_model), batch_size=8, max_length=256)({"question": batch["question"]})
