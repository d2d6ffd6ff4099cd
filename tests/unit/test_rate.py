"""The Self-filter: its keep rule and its rating, by hand-worked examples and on a real tiny model."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dsw_ray import columns as C
from dsw_ray.filters import FilterConfig
from dsw_ray.filters import apply
from dsw_ray.models import ModelSpec
from dsw_ray.rate import Rater, continuation, expected_rating, rating_prompt


def test_expected_rating_by_hand():
    never = -math.inf
    rows = [
        [0.0] * 11,  # no preference: (0 + ... + 10) / 11 = 5
        [math.log(0.5) if n in (0, 10) else never for n in range(11)],  # half 0, half 10: 5
        [math.log(0.2) if n == 7 else math.log(0.8) if n == 9 else never for n in range(11)],  # 1.4 + 7.2
        [-1000.0 + (100.0 if n == 3 else 0.0) for n in range(11)],  # unnormalized and tiny: all mass on 3
    ]
    np.testing.assert_allclose(expected_rating(rows), [5.0, 5.0, 8.6, 3.0])


def test_self_keeps_the_highest_ratings_ties_by_key():
    # q1: 3 majority candidates rated 7, 9.5, 7; q2: one rated 7 and one not in the majority.
    table = pa.table({
        C.QUESTION_ID: ["q2", "q1", "q1", "q1", "q2", "q3"],
        C.SAMPLE_INDEX: [0, 2, 1, 0, 1, 0],
        C.ANSWER: pa.array(["(A)", "B", "B", "B", "A", None], pa.string()),
        C.IS_MAJORITY: [True, True, True, True, False, False],
        C.RATING: pa.array([7.0, 7.0, 9.5, 7.0, None, None], pa.float64()),
    })  # fmt: skip
    # 4 majority candidates, keep round(0.5 * 4) = 2: 9.5 (q1/1), then the first 7.0 by key (q1/0).
    result = apply("self", table, FilterConfig(keep_fraction=0.5), False)
    assert list(zip(result.kept[C.QUESTION_ID].to_pylist(), result.kept[C.SAMPLE_INDEX].to_pylist())) == [("q1", 0), ("q1", 1)]
    assert result.dropped == {"no_answer": 1, "not_majority": 1, "low_rating": 2}
    # k = 0.75 keeps 3: the ties at 7.0 go in key order, q1/2 before q2/0.
    kept = apply("self", table, FilterConfig(keep_fraction=0.75), False).kept
    assert list(zip(kept[C.QUESTION_ID].to_pylist(), kept[C.SAMPLE_INDEX].to_pylist())) == [("q1", 0), ("q1", 1), ("q1", 2)]
    unrated = table.set_column(4, C.RATING, pa.array([None, 7.0, 9.5, 7.0, None, None], pa.float64()))
    with pytest.raises(ValueError, match="1 majority candidate"):
        apply("self", unrated, FilterConfig(), False)


def test_ratings_are_the_models_own_distribution_over_0_to_10(tiny_model):
    questions = ["Mia has 3 pens and buys 1 more. How many pens?", "Is water wet? Answer Choices are: A)yes; B)no.", "q"]
    answers = ["3 + 1 = 4. The answer is 4.", "%%% not an answer at all \u2028 ???", ""]
    ratings = Rater(ModelSpec(tiny_model), batch_size=5, max_length=256).ratings(questions, answers)

    # The same numbers, each sequence alone (no batching, no padding) with the model's own logits.
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)
    expected = []
    for question, answer in zip(questions, answers):
        prompt = tokenizer(rating_prompt(question, answer), add_special_tokens=False)["input_ids"]
        logprobs = []
        for n in range(11):
            ids = tokenizer(continuation(n), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
            logprobs.append(sum(logits[len(prompt) - 1 + i, token].item() for i, token in enumerate(ids)))
        probabilities = np.exp(np.array(logprobs) - max(logprobs))
        expected.append(float(probabilities @ np.arange(11) / probabilities.sum()))
    np.testing.assert_allclose(ratings, expected, atol=1e-3)
    assert ((0 <= ratings) & (ratings <= 10)).all() and len(set(np.round(ratings, 5))) == 3


def test_a_long_candidate_is_cut_from_its_start_and_keeps_the_instruction(tiny_model):
    rater = Rater(ModelSpec(tiny_model), batch_size=11, max_length=64)
    rows = rater.encode("q", "blah " * 500)
    assert len(rows) == 11 and all(len(r["input_ids"]) <= 64 for r in rows)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer.decode(rows[7]["input_ids"]).endswith("Rating: 7/10")
    assert np.isfinite(rater.ratings(["q"], ["blah " * 500])).all()


def test_the_authors_rating_is_the_first_number_the_model_writes_after_their_rubric(tiny_model, tmp_path):
    """Official Self-filter ratings: each is authors_rating of what the model writes greedily after
    the rubric prompt, alone and unpadded; sampled ratings (a generation config with do_sample)
    follow each candidate's seed whatever the batch; a long candidate is cut from its start."""
    from dsw_ray.rate import AUTHORS_NEW_TOKENS, AuthorsRater, authors_prompt, authors_rating, authors_sampling

    questions = ["Mia has 3 pens and buys 1 more. How many pens?", "q", "Tom has 2 cats."]
    answers = ["3 + 1 = 4. The answer is 4.", "", "2 + 2 = 4. The answer is 4."]
    greedy = AuthorsRater(ModelSpec(tiny_model), batch_size=3, max_length=400, sampling=None, seed=0)
    ratings = greedy.ratings(questions, answers, [1, 2, 3])
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)
    for rating, question, answer in zip(ratings, questions, answers):
        prompt = tokenizer(authors_prompt(question, answer), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**prompt, do_sample=False, max_new_tokens=AUTHORS_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
        assert rating == authors_rating(tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True))
    assert ((0 <= ratings) & (ratings <= 10)).all()

    assert authors_sampling(tiny_model) is None  # no generation config with do_sample: greedy
    (tmp_path / "generation_config.json").write_text('{"do_sample": true, "top_p": 0.9}')
    sampling = authors_sampling(str(tmp_path))
    assert sampling == {"temperature": 0.7, "top_p": 0.9, "top_k": 50}
    seeds = [11, 12, 13]
    one = AuthorsRater(ModelSpec(tiny_model), batch_size=3, max_length=400, sampling=sampling, seed=0).ratings(questions, answers, seeds)
    apart = AuthorsRater(ModelSpec(tiny_model), batch_size=1, max_length=400, sampling=sampling, seed=0).ratings(questions, answers, seeds)
    np.testing.assert_array_equal(one, apart)

    ids = greedy.prompt_ids("q", "blah " * 500)
    assert len(ids) == 400 - AUTHORS_NEW_TOKENS and tokenizer.decode(ids).endswith("\nScore: ")
