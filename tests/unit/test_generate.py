"""Generation's pure parts: seeds, stop handling and the Gumbel-max sampler."""

import pytest
import torch

from dsw_ray.config import EvaluateConfig, GenerateConfig
from dsw_ray.decoding import Decoding, cut_at_stop, sample_seed
from dsw_ray.generate import GumbelSampler, decoding_of
from dsw_ray.models import STOPS


def test_sample_seed_is_a_pure_function_of_identity():
    assert sample_seed(0, 1, "q-3", 2) == sample_seed(0, 1, "q-3", 2)
    seeds = {sample_seed(s, r, q, i) for s in (0, 1) for r in (1, 2) for q in ("a", "b") for i in range(3)}
    assert len(seeds) == 24 and all(0 <= seed < 2**63 for seed in seeds)


def test_a_section_decodes_as_its_stage_does():
    sampled = decoding_of(GenerateConfig(samples_per_question=5, temperature=0.7, top_p=0.9, top_k=20, seed=3), 2)
    assert sampled == Decoding(GenerateConfig().max_new_tokens, 0.7, 5, 0.9, 20, 3, 2) and not sampled.greedy
    greedy = decoding_of(EvaluateConfig(max_new_tokens=32))
    assert greedy.greedy and greedy.samples == 1 and greedy.max_new_tokens == 32
    with pytest.raises(ValueError, match="one answer per question"):
        Decoding(32, None, 4)


def test_cut_at_stop():
    assert cut_at_stop("1 + 1 = 2. The answer is 2.\n\nQ: next", False, STOPS) == ("1 + 1 = 2. The answer is 2.", "stop")
    assert cut_at_stop("The answer is 2.", True, STOPS) == ("The answer is 2.", "stop")
    assert cut_at_stop("1 + 1 = ", False, STOPS) == ("1 + 1 =", "length")
    # A real model goes on after the blank line that ends an exemplar's answer (SmolLM2: "\n\nA: ...").
    assert cut_at_stop("The answer is 2.\n\nA: 12 + 1 = 13.\nQ: x", False, STOPS) == ("The answer is 2.", "stop")
    assert cut_at_stop("First.\n\nThe answer is 2.", True, ()) == ("First.\n\nThe answer is 2.", "stop")  # chat


def test_gumbel_sampler_top_k_keeps_only_the_k_likeliest():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    sampler = GumbelSampler(list(range(200)), temperature=1.0, top_p=1.0, top_k=2)
    drawn = {int(sampler(None, logits.expand(200, -1)).argmax(-1)[i]) for i in range(200)}
    assert drawn == {0, 1}


def test_gumbel_sampler_samples_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    temperature = 0.7
    expected = torch.softmax(logits[0] / temperature, -1)
    draws = 20000
    sampler = GumbelSampler([123], temperature, top_p=1.0)
    counts = torch.zeros(4)
    for _ in range(draws):
        counts[sampler(None, logits).argmax()] += 1
    # Within 4 standard errors of the exact probabilities.
    stderr = torch.sqrt(expected * (1 - expected) / draws)
    assert torch.all((counts / draws - expected).abs() < 4 * stderr), (counts / draws, expected)


def test_gumbel_rows_do_not_depend_on_their_batch():
    logits = torch.randn(3, 50)
    alone = [GumbelSampler([seed], 1.0, 1.0)(None, logits[i : i + 1]) for i, seed in enumerate([5, 6, 7])]
    together = GumbelSampler([5, 6, 7], 1.0, 1.0)(None, logits)
    for i in range(3):
        assert torch.equal(alone[i][0], together[i])


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sampler = GumbelSampler([1], 1.0, top_p=0.8)
    picked = {int(sampler(None, logits).argmax()) for _ in range(500)}
    assert picked == {0, 1}


def test_unset_sampling_settings_come_from_the_models_generation_config(tmp_path):
    import json

    from dsw_ray.config import GenerateConfig
    from dsw_ray.generate import HF_SAMPLING, PAPER_SAMPLING, with_sampling_defaults

    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9}))
    chosen = with_sampling_defaults(GenerateConfig(top_p=0.5), str(tmp_path))
    assert (chosen.temperature, chosen.top_p, chosen.top_k) == (0.6, 0.5, 0)  # the job's top_p wins
    bare = with_sampling_defaults(GenerateConfig(), str(tmp_path / "no-such-model"))
    assert (bare.temperature, bare.top_p, bare.top_k) == tuple(PAPER_SAMPLING.values()) == (1.1, 1.0, 0)
    # The authors sampled with Hugging Face generate at T = 1.1: the model's top-p, HF's top-k 50.
    official = with_sampling_defaults(GenerateConfig(temperature=1.1), str(tmp_path), HF_SAMPLING)
    assert (official.temperature, official.top_p, official.top_k) == (1.1, 0.9, 50)


def test_the_task_section_picks_the_prompt_format_and_the_exemplars():
    from dsw_ray.config import TaskConfig
    from dsw_ray.tasks import get_task, task_of

    task = task_of(TaskConfig(name="arith", prompt_format="chat", num_exemplars=2))
    assert task.prompt_format == "chat" and task.exemplars == get_task("arith").exemplars[:2]
    assert task_of(TaskConfig(name="arith")).exemplars == get_task("arith").exemplars
