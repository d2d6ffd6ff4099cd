"""Generation's pure parts: seeds, stop handling and the Gumbel-max sampler."""

import torch

from dsw_ray.decoding import cut_at_stop, sample_seed
from dsw_ray.generate import GumbelSampler


def test_sample_seed_is_a_pure_function_of_identity():
    assert sample_seed(0, 1, "q-3", 2) == sample_seed(0, 1, "q-3", 2)
    seeds = {sample_seed(s, r, q, i) for s in (0, 1) for r in (1, 2) for q in ("a", "b") for i in range(3)}
    assert len(seeds) == 24 and all(0 <= seed < 2**63 for seed in seeds)


def test_cut_at_stop():
    assert cut_at_stop("1 + 1 = 2. The answer is 2.\n\nQ: next", False) == ("1 + 1 = 2. The answer is 2.", "stop")
    assert cut_at_stop("The answer is 2.", True) == ("The answer is 2.", "stop")
    assert cut_at_stop("1 + 1 = ", False) == ("1 + 1 =", "length")


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
