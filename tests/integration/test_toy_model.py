"""The embedded default model must leave self-improvement room: right sometimes, not always."""

import os

import pytest
import torch

from dsw_ray import get_task
from dsw_ray.models import STOPS, load_model, load_tokenizer
from dsw_ray.tasks import SplitSizes
from dsw_ray.config import ToyModelConfig
from dsw_ray.toy import MARKER, build_toy_model

SMALL = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=1, pretrain_examples=200, steps=20)


@pytest.fixture(autouse=True)
def no_machine_cache(monkeypatch):
    """Every build here is a real build (a test of the cache sets its own)."""
    monkeypatch.setenv("DSW_RAY_CACHE", "")


@pytest.mark.timeout(600)
def test_default_toy_model_is_between_useless_and_perfect(toy_model):
    task = get_task("arith")
    splits = task.load(None, SplitSizes(8, 24, 100))  # the quickstart's first 100 test questions
    path = toy_model
    tokenizer, model = load_tokenizer(path, padding_side="left"), load_model(path, device="cpu")
    correct = 0
    for start in range(0, 100, 50):
        batch = splits.test[start : start + 50]
        encoded = tokenizer([task.prompt(e.question) for e in batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(
                **encoded, do_sample=False, max_new_tokens=48, stop_strings=list(STOPS), tokenizer=tokenizer,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(task.is_correct(task.parse_answer(t.split(STOPS[0])[0]), e.gold) for t, e in zip(texts, batch))
    assert 20 <= correct <= 95, f"greedy accuracy {correct}% leaves no room to improve or nothing to improve on"

    # Every training and scoring text ends its answer with EOS: the toy must expect it there,
    # or that one token's loss swamps a short answer's mean loss (docs/testbed.md).
    example = splits.test[0]
    ids = tokenizer(task.prompt(example.question) + example.rationale, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        next_token = model(input_ids=ids).logits[0, -1].softmax(-1)
    assert next_token[tokenizer.eos_token_id] > 0.5, f"P(EOS after the answer) = {next_token[tokenizer.eos_token_id]:.3f}"

    # A second build with the same settings reuses the directory; other settings are refused.
    mtime = os.path.getmtime(os.path.join(path, MARKER))
    assert build_toy_model(path, ToyModelConfig()) == path
    assert os.path.getmtime(os.path.join(path, MARKER)) == mtime
    with pytest.raises(FileExistsError, match="other settings"):
        build_toy_model(path, ToyModelConfig(steps=5))


def test_a_rebuild_gives_the_same_weights_bit_for_bit(tmp_path):
    """Same machine, same settings: the same tokenizer and weights, whatever torch's thread
    count was before the build (the build sets its own and restores it)."""
    from safetensors.torch import load_file

    config = SMALL
    threads = torch.get_num_threads()
    first = build_toy_model(str(tmp_path / "a"), config)
    torch.set_num_threads(1)
    try:
        second = build_toy_model(str(tmp_path / "b"), config)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    a, b = load_file(os.path.join(first, "model.safetensors")), load_file(os.path.join(second, "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(os.path.join(first, "tokenizer.json")) as f, open(os.path.join(second, "tokenizer.json")) as g:
        assert f.read() == g.read()
    other = build_toy_model(str(tmp_path / "c"), config.model_copy(update={"seed": 7}))
    c = load_file(os.path.join(other, "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a), "the seed reaches the weights"


def test_a_build_elsewhere_with_the_same_settings_is_copied_from_the_machines_cache(tmp_path, monkeypatch):
    """A second clone or run directory copies the build (the same files, its marker included, so
    no second pre-training wrote them); other left-out questions are another build."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DSW_RAY_CACHE", str(cache))
    first = build_toy_model(str(tmp_path / "a"), SMALL, {"What is 1 + 1?"})
    assert len(os.listdir(cache / "toys")) == 1
    second = build_toy_model(str(tmp_path / "b"), SMALL, {"What is 1 + 1?"})
    for name in (MARKER, "model.safetensors", "tokenizer.json"):
        with open(os.path.join(first, name), "rb") as f, open(os.path.join(second, name), "rb") as g:
            assert f.read() == g.read(), name
    other = build_toy_model(str(tmp_path / "c"), SMALL, {"What is 2 + 2?"})
    with open(os.path.join(first, MARKER)) as f, open(os.path.join(other, MARKER)) as g:
        assert f.read() != g.read(), "another corpus is pre-trained, not copied"
    assert len(os.listdir(cache / "toys")) == 2 and not [p for p in os.listdir(tmp_path) if p.startswith(".toy-")]


def test_builds_started_at_once_take_turns(tmp_path):
    """Two processes asking for the same toy at once (two jobs, two test workers): one builds,
    the other waits and reuses that build, and neither sees a half-written folder."""
    import subprocess
    import sys

    config = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=1, pretrain_examples=200, steps=40)
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from dsw_ray.config import ToyModelConfig\nfrom dsw_ray.toy import build_toy_model\n"
        f"print(build_toy_model(sys.argv[1], ToyModelConfig.model_validate_json({config.model_dump_json()!r})))\n"
    )
    path = str(tmp_path / "toy")
    builds = [subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]  # fmt: skip
    outputs = [b.communicate(timeout=300) for b in builds]
    assert [b.returncode for b in builds] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == [path, path]
    logs = "".join(err for _, err in outputs)
    assert logs.count("built the toy base model") == 1 and logs.count("reusing the toy base model") == 1, logs[-2000:]
    assert sorted(os.listdir(tmp_path)) == [".toy.lock", "toy"]  # no staging folder left behind
