"""Every user mistake in a dataset, a model folder or a job gets a message naming the file and
line (or field) and what would fix it; ``task.bad_rows: skip`` quarantines bad rows instead.

The data files are real GSM8K and SVAMP rows from ../shared/data, copied and corrupted; the
fuzz tests check that nothing a loader or parser is given makes it raise anything but ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import example as fixed_example
from hypothesis import strategies as st

from dsw_ray.config import load_job
from dsw_ray.errors import BadRow, ConfigError, DataError, UserError
from dsw_ray.io import read_text
from dsw_ray.models import check_model_dir
from dsw_ray.inputs import check_splits, write_inputs
from dsw_ray.tasks import SplitSizes, get_task, gsm8k, svamp
from dsw_ray.tasks.answers import fold, parse_text
from dsw_ray.tasks.numeric import Example, Splits, is_correct, normalize_number, parse_answer
from dsw_ray.tasks.rows import RAW_CHARS, array_items
from tests.conftest import ROOT

GSM8K_TRAIN_ROWS = 40  # the last round(40 * 374 / 7473) = 2 are the valid set
FIX = "task.bad_rows=skip"


# ---- real rows, copied ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def gsm8k_lines(shared_data) -> dict[str, list[str]]:
    with open(os.path.join(shared_data, "gsm8k", "train.jsonl")) as f:
        train = [next(f).rstrip("\n") for _ in range(GSM8K_TRAIN_ROWS)]
    with open(os.path.join(shared_data, "gsm8k", "test.jsonl")) as f:
        test = [next(f).rstrip("\n") for _ in range(10)]
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def svamp_rows(shared_data) -> list[dict]:
    """The first 320 published rows: 19 unlabeled questions, 1 valid row (index 19), 300 test."""
    with open(os.path.join(shared_data, "svamp", "SVAMP.json")) as f:
        return json.load(f)[:320]


def write_gsm8k(folder, train: list[str], test: list[str]) -> str:
    (folder / "train.jsonl").write_text("\n".join(train) + "\n")
    (folder / "test.jsonl").write_text("\n".join(test) + "\n")
    return str(folder)


def write_svamp(folder, rows: list) -> str:
    """Written as published: a JSON array indented by four spaces."""
    path = folder / "SVAMP.json"
    path.write_text(json.dumps(rows, indent=4))
    return str(path)


def start_line(path: str, row_index: int) -> int:
    """The line where element ``row_index`` of an array written by ``write_svamp`` starts."""
    lines = open(path).read().split("\n")
    starts = [n for n, line in enumerate(lines, 1) if line[:4] == "    " and line[4:5] not in (" ", "}", "]")]
    return starts[row_index]


# ---- gsm8k ----------------------------------------------------------------------------------

ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
GSM8K_BAD_ROWS = [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ('{"question": "q", "answer": "#### 1"', "not valid JSON"),
    ("[1, 2]", "an array, not an object"),
    ('"a question"', "a string ('a question'), not an object"),
    ("null", "null, not an object"),
    ("1" * 5000, "JSON that cannot be read (ValueError"),
    ("[" * 100000, "JSON that cannot be read (RecursionError"),
    (json.dumps({"answer": ANSWER}), "'question' is missing"),
    (json.dumps({"question": "", "answer": ANSWER}), "'question' is empty"),
    (json.dumps({"question": " \t ", "answer": ANSWER}), "'question' is empty"),
    (json.dumps({"question": 42, "answer": ANSWER}), "'question' is a number (42), not a string"),
    (json.dumps({"question": None, "answer": ANSWER}), "'question' is null, not a string"),
    (json.dumps({"question": ["q"], "answer": ANSWER}), "'question' is an array, not a string"),
    (json.dumps({"question": "How many?"}), "'answer' is missing"),
    (json.dumps({"question": "How many?", "answer": 72}), "'answer' is a number (72), not a string"),
    (json.dumps({"question": "How many?", "answer": "She sold 72."}), "the answer has no final '#### N' line"),
    (json.dumps({"question": "How many?", "answer": "72\n#### many"}), "'many' after '####' is not a number"),
    (json.dumps({"question": "How many?", "answer": "72\n####"}), "'' after '####' is not a number"),
    (json.dumps({"question": "How many?", "answer": "#### 1e999999999"}), "is not a number"),
]


@pytest.mark.parametrize("line, message", GSM8K_BAD_ROWS, ids=[m[:30] for _, m in GSM8K_BAD_ROWS])
def test_gsm8k_bad_row_names_file_line_and_fix(tmp_path, gsm8k_lines, line, message):
    train = list(gsm8k_lines["train"])
    train[2] = line
    folder = write_gsm8k(tmp_path, train, gsm8k_lines["test"])
    with pytest.raises(DataError) as error:
        gsm8k.load(folder, SplitSizes())
    text = str(error.value)
    assert text.startswith(f"{folder}/train.jsonl, line 3: "), text
    assert message in text and FIX in text and "\n" not in text


def test_gsm8k_duplicate_question_names_both_lines(tmp_path, gsm8k_lines):
    train = list(gsm8k_lines["train"])
    first = json.loads(train[0])
    # The same words with other case and spacing is the same question.
    train[7] = json.dumps({**first, "question": "  " + first["question"].upper().replace(" ", "  ")})
    folder = write_gsm8k(tmp_path, train, gsm8k_lines["test"])
    with pytest.raises(DataError, match=r"train.jsonl, line 8: the same question as line 1; a question appears once"):
        gsm8k.load(folder, SplitSizes())


def test_gsm8k_test_file_rows_are_named_too(tmp_path, gsm8k_lines):
    test = list(gsm8k_lines["test"])
    test.insert(4, "")  # blank lines are skipped but counted
    test[6] = json.dumps({"question": "How many?", "answer": "no marker"})
    folder = write_gsm8k(tmp_path, gsm8k_lines["train"], test)
    with pytest.raises(DataError, match=r"test.jsonl, line 7: the answer has no final"):
        gsm8k.load(folder, SplitSizes())


def test_gsm8k_file_level_errors(tmp_path, gsm8k_lines):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(gsm8k_lines["train"]))
    with pytest.raises(DataError, match=r"test.jsonl: no such file. task.data_path for gsm8k is the folder holding"):
        gsm8k.load(str(folder), SplitSizes())
    with pytest.raises(DataError, match=r"is a file; task.data_path for gsm8k is the folder"):
        gsm8k.load(str(folder / "train.jsonl"), SplitSizes())
    write_gsm8k(folder, gsm8k_lines["train"][:5], gsm8k_lines["test"])
    with pytest.raises(DataError, match=r"train.jsonl: 5 rows are too few; the valid set is the last 5.0% .* at least 10 rows"):
        gsm8k.load(str(folder), SplitSizes())
    (folder / "test.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"test.jsonl: the file holds no rows; it should hold one JSON object"):
        gsm8k.load(str(folder), SplitSizes())
    (folder / "test.jsonl").write_bytes(("\n".join(gsm8k_lines["test"][:2]) + "\n").encode() + b'{"question": "\xff"}\n')
    with pytest.raises(DataError, match=r"test.jsonl, line 3: not UTF-8 text \(byte 0xff"):
        gsm8k.load(str(folder), SplitSizes())


def test_gsm8k_reads_crlf_bom_and_unicode_line_separators(tmp_path, gsm8k_lines):
    train = list(gsm8k_lines["train"])
    row = json.loads(train[3])
    train[3] = json.dumps({**row, "question": row["question"] + "\u2028(raw U+2028)"}, ensure_ascii=False)
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(train).encode())
    (tmp_path / "test.jsonl").write_text("\n".join(gsm8k_lines["test"]))
    splits = gsm8k.load(str(tmp_path), SplitSizes())
    assert len(splits.questions) == 38 and len(splits.valid) == 2 and not splits.rejected
    assert splits.questions[3].question.endswith("(raw U+2028)")


def test_gsm8k_skip_quarantines_bad_rows_and_keeps_the_split(tmp_path, gsm8k_lines):
    clean = gsm8k.load(write_gsm8k(tmp_path, gsm8k_lines["train"], gsm8k_lines["test"]), SplitSizes())
    train, test = list(gsm8k_lines["train"]), list(gsm8k_lines["test"])
    train[2] = "{not json"
    train[10] = json.dumps({"question": "Long " * 200, "answer": "no marker"})
    train[39] = json.dumps({"question": "", "answer": "#### 1"})  # the last valid row
    test[0] = "[]"
    splits = gsm8k.load(write_gsm8k(tmp_path, train, test), SplitSizes(bad_rows="skip"))
    rejected = [(os.path.basename(r.file), r.line, r.reason.split(";")[0]) for r in splits.rejected]
    assert rejected == [
        ("train.jsonl", 3, "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        ("train.jsonl", 11, "the answer has no final '#### N' line"),
        ("train.jsonl", 40, "'question' is empty"),
        ("test.jsonl", 1, "an array, not an object"),
    ]
    assert splits.rejected[0].raw == "{not json"
    assert splits.rejected[1].raw.startswith('{"question": "Long Long') and len(splits.rejected[1].raw) < RAW_CHARS + 40
    assert splits.rejected[1].raw.endswith(f"... ({len(train[10])} characters)")
    # A skipped row keeps its place: no good row moves between the questions and the valid set.
    assert [e.question_id for e in splits.questions] == [
        e.question_id for e in clean.questions if e.question_id not in ("train-2", "train-10")
    ]
    assert [e.question_id for e in splits.valid] == ["train-38"] == [e.question_id for e in clean.valid][:1]
    assert [e.question_id for e in splits.test] == [e.question_id for e in clean.test][1:]


def test_gsm8k_skip_still_fails_when_no_row_is_left(tmp_path, gsm8k_lines):
    folder = write_gsm8k(tmp_path, gsm8k_lines["train"], ["{", "[]"])
    with pytest.raises(DataError, match=r"test.jsonl: none of its 2 rows can be used \(the first, line 1: not valid JSON"):
        gsm8k.load(folder, SplitSizes(bad_rows="skip"))


# ---- svamp ----------------------------------------------------------------------------------

def drop(key):
    return lambda row: {k: v for k, v in row.items() if k != key}


def put(key, value):
    return lambda row: {**row, key: value}


SVAMP_BAD_ROWS = [
    (lambda row: 5, "a number (5), not an object"),
    (lambda row: [row], "an array, not an object"),
    (drop("ID"), "'ID' is missing"),
    (put("ID", 7), "'ID' is a number (7), not a string"),
    (put("ID", ""), "'ID' is empty"),
    (put("ID", "chal-1"), "duplicate ID 'chal-1' (also row 1); every row needs its own ID"),
    (put("Body", None), "'Body' is null, not a string"),
    (drop("Question"), "'Question' is missing"),
    (put("Question", ""), "'Question' is empty"),
    (put("Question", {"text": "q"}), "'Question' is an object, not a string"),
    (drop("Answer"), "'Answer' is missing"),
    (put("Answer", "many"), "'Answer' is a string ('many'), not a number"),
    (put("Answer", True), "'Answer' is a boolean (true), not a number"),
    (put("Answer", None), "'Answer' is null, not a number"),
    (put("Answer", [51]), "'Answer' is an array, not a number"),
    (put("Answer", "1e999999999"), "not a number"),
    (put("Equation", 51), "'Equation' is a number (51), not a string"),
]


@pytest.mark.parametrize("corrupt, message", SVAMP_BAD_ROWS, ids=[m[:30] for _, m in SVAMP_BAD_ROWS])
def test_svamp_bad_row_names_file_row_line_and_fix(tmp_path, svamp_rows, corrupt, message):
    rows = list(svamp_rows)
    rows[4] = corrupt(dict(rows[4]))
    path = write_svamp(tmp_path, rows)
    with pytest.raises(DataError) as error:
        svamp.load(str(tmp_path), SplitSizes())
    text = str(error.value)
    assert text.startswith(f"{path}, row 5 (line {start_line(path, 4)}): "), text
    assert message in text and FIX in text and "\n" not in text


def test_svamp_duplicate_question_and_valid_row_without_equation(tmp_path, svamp_rows):
    rows = list(svamp_rows)
    rows[8] = {**rows[8], "Body": rows[2]["Body"], "Question": rows[2]["Question"].lower()}
    path = write_svamp(tmp_path, rows)
    with pytest.raises(DataError, match=r"row 9 \(line \d+\): the same question as row 3; a question appears once"):
        svamp.load(path, SplitSizes())
    rows = list(svamp_rows)
    rows[3] = drop("Equation")(rows[3])  # an unlabeled question needs no equation
    rows[19] = drop("Equation")(rows[19])  # the valid row does
    path = write_svamp(tmp_path, rows)
    with pytest.raises(DataError, match=r"row 20 \(line \d+\): the row falls in the valid set, whose rationale is "
                                        r"written from 'Equation', and has none; add it"):
        svamp.load(path, SplitSizes())


def test_svamp_file_level_errors(tmp_path, svamp_rows):
    with pytest.raises(DataError, match=r"SVAMP.json: no such file. task.data_path for svamp is SVAMP.json or the folder"):
        svamp.load(str(tmp_path), SplitSizes())
    path = tmp_path / "SVAMP.json"
    path.write_text(json.dumps(svamp_rows, indent=4)[:-40])
    with pytest.raises(DataError, match=r"SVAMP.json: not valid JSON \(.* at line \d+, column \d+\); SVAMP.json is a JSON array"):
        svamp.load(str(path), SplitSizes())
    path.write_text(json.dumps({"rows": svamp_rows}))
    with pytest.raises(DataError, match=r"SVAMP.json: an object, not a JSON array of objects"):
        svamp.load(str(path), SplitSizes())
    path.write_text(json.dumps(svamp_rows[:301]))
    with pytest.raises(DataError, match=r"301 rows are too few; svamp takes the last 300 as the test set"):
        svamp.load(str(path), SplitSizes())
    path.write_text("[]")
    with pytest.raises(DataError, match=r"0 rows are too few"):
        svamp.load(str(path), SplitSizes())


def test_svamp_skip_quarantines_bad_rows(tmp_path, svamp_rows):
    rows = list(svamp_rows)
    rows[0], rows[19], rows[300] = "oops", drop("Equation")(rows[19]), put("Answer", "n/a")(rows[300])
    path = write_svamp(tmp_path, rows)
    splits = svamp.load(path, SplitSizes(bad_rows="skip"))
    assert [(r.line, r.reason.split(";")[0]) for r in splits.rejected] == [
        (start_line(path, 0), "a string ('oops'), not an object"),
        (start_line(path, 19), "the row falls in the valid set, whose rationale is written from 'Equation', and has none"),
        (start_line(path, 300), "'Answer' is a string ('n/a'), not a number"),
    ]
    assert json.loads(splits.rejected[2].raw)["ID"] == svamp_rows[300]["ID"]
    assert len(splits.questions) == 18 and splits.valid == [] and len(splits.test) == 299
    with pytest.raises(UserError, match=r"the labeled valid set is empty \(task svamp.*3 bad rows were left out"):
        check_splits(splits, load_task("svamp", path))


# ---- the splits together ---------------------------------------------------------------------

def load_task(name: str, data_path: str | None = None):
    from dsw_ray.config import TaskConfig

    return TaskConfig(name=name, data_path=data_path)


def example(question_id: str, question: str) -> Example:
    return Example(question_id, question, "1", "1 = 1. The answer is 1.")


def splits_of(questions, valid, test, rejected=()):
    return Splits(
        [example(i, q) for i, q in questions], [example(i, q) for i, q in valid], [example(i, q) for i, q in test],
        list(rejected),
    )


@pytest.mark.parametrize(
    "splits, message",
    [
        (splits_of([], [("v", "b")], [("t", "c")]), r"the unlabeled question set is empty \(task arith\)\. Give the data"),
        (splits_of([("q", "a")], [], [("t", "c")]), r"the labeled valid set is empty"),
        (splits_of([("q", "a")], [("v", "b")], []), r"the test set is empty"),
        (splits_of([("x", "a"), ("x", "b")], [("v", "c")], [("t", "d")]),
         r"1 question ids are used more than once \(task arith\), e.g. 'x', 2 times in the unlabeled question set\. "
         r"Give every row"),
        (splits_of([("q", "a")], [("x", "b")], [("x", "c")]), r"'x', 2 times in the labeled valid set and the test set\."),
        (splits_of([("q1", "a"), ("q2", "Two  apples?")], [("v1", "b"), ("v2", "two apples?")], [("t", "c")]),
         r"1 questions of the labeled valid set are also in the unlabeled question set \(task arith\), e.g. v2 and q2: "
         r"'Two  apples\?'.*delete one of each pair from the data files, or set task.num_valid=1 to keep only"),
        (splits_of([("q", "a")], [("v1", "b"), ("v2", "c")], [("t1", "B"), ("t2", "C")]),
         r"2 questions of the labeled valid set are also in the test set .* e.g. v1 and t1: 'B'.*data files\.$"),
    ],
)
def test_check_splits(splits, message):
    with pytest.raises(UserError, match=message):
        check_splits(splits, load_task("arith"))


def test_valid_set_overlapping_the_test_file(tmp_path, gsm8k_lines):
    test = list(gsm8k_lines["test"])
    test[5] = gsm8k_lines["train"][39]  # the last valid row
    folder = write_gsm8k(tmp_path, gsm8k_lines["train"], test)
    splits = gsm8k.load(folder, SplitSizes())
    with pytest.raises(UserError, match=r"1 questions of the labeled valid set are also in the test set \(task gsm8k, "
                                        r"task.data_path .*\), e.g. train-39 and test-5: .*task.num_valid=1"):
        check_splits(splits, load_task("gsm8k", folder))


def test_write_inputs_writes_and_clears_the_quarantine(tmp_path, gsm8k_lines):
    train = list(gsm8k_lines["train"])
    train[2] = "{not json"
    folder = write_gsm8k(tmp_path, train, gsm8k_lines["test"])
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"run_dir: {tmp_path}/run\ntask: {{name: gsm8k, data_path: {folder}}}\nmodel: {{path: m}}\n")
    job = load_job(str(job_file), ["task.bad_rows=skip"])
    splits = gsm8k.load(folder, SplitSizes.of(job.task))
    write_inputs(str(tmp_path / "run"), splits, job)
    quarantine = tmp_path / "run" / "inputs" / "quarantine.jsonl"
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert records == [
        {"file": f"{folder}/train.jsonl", "line": 3, "reason": records[0]["reason"], "raw": "{not json"}
    ]
    assert records[0]["reason"].startswith("not valid JSON")
    clean = gsm8k.load(write_gsm8k(tmp_path, gsm8k_lines["train"], gsm8k_lines["test"]), SplitSizes())
    write_inputs(str(tmp_path / "run"), clean, job)
    assert not quarantine.exists(), "a rerun on fixed data lists nothing"


# ---- model folders ----------------------------------------------------------------------------

def model_folder(tmp_path, model_type: str | None = "llama", weights: str | None = "model.safetensors", **config):
    folder = tmp_path / "model"
    folder.mkdir()
    if model_type is not None:
        from transformers import AutoConfig

        AutoConfig.for_model(model_type, **config).save_pretrained(folder)
    if weights:
        (folder / weights).write_bytes(b"")  # the check reads no weights
    return str(folder)


def test_a_good_model_folder_passes(tmp_path):
    folder = model_folder(tmp_path)
    check_model_dir(folder)
    check_model_dir(folder, "sequence classifier", field="reward.model_path")


@pytest.mark.parametrize(
    "build, kind, message",
    [
        (lambda t: str(t / "missing"), "causal LM", r"model.path '.*missing' is not a directory; give a Hugging Face"),
        (lambda t: model_folder(t, None), "causal LM", r"has no config.json; is it a Hugging Face model folder"),
        (lambda t: model_folder(t, "t5"), "causal LM",
         r"is a 't5' model \(no architectures listed\), which transformers cannot load as a causal LM "
         r"\(AutoModelForCausalLM\); give a decoder-only model"),
        (lambda t: model_folder(t, "vit"), "sequence classifier",
         r"reward.model_path '.*' is a 'vit' model .* cannot load as a sequence classifier "
         r"\(AutoModelForSequenceClassification\)"),
        (lambda t: model_folder(t, weights=None), "causal LM", r"holds no weights: it needs model.safetensors"),
        (lambda t: model_folder(t, weights="pytorch_model.bin"), "causal LM",
         r"has only PyTorch pickle weights \(pytorch_model.bin\), and dsw-ray loads safetensors only .* convert it "
         r"once: python -c \"import transformers as t; t.AutoModelForCausalLM.from_pretrained"),
    ],
)
def test_bad_model_folders(tmp_path, build, kind, message):
    field = "reward.model_path" if kind == "sequence classifier" else "model.path"
    with pytest.raises(UserError, match=message):
        check_model_dir(build(tmp_path), kind, field=field)


def test_damaged_or_foreign_configs(tmp_path):
    folder = model_folder(tmp_path, None)
    config = tmp_path / "model" / "config.json"
    for text, message in [
        ("{oops", r"config.json cannot be read as JSON .*; the model folder is damaged"),
        ('{"hidden_size": 8}', r"config.json has no 'model_type'; it is not a transformers model config"),
        ('{"model_type": "frobnicator"}', r"transformers cannot read its config.json \(.*frobnicator"),
        ('{"model_type": "llama", "hidden_size": "big"}', r"transformers cannot read its config.json"),
    ]:
        config.write_text(text)
        with pytest.raises(UserError, match=message):
            check_model_dir(folder)
    (tmp_path / "model" / "adapter_config.json").write_text("{}")
    config.unlink()
    with pytest.raises(UserError, match=r"holds a LoRA adapter, not a model; give the merged model"):
        check_model_dir(folder)


def test_remote_code_stays_off_unless_the_job_says_so(tmp_path):
    folder = model_folder(tmp_path, None)
    marker = tmp_path / "ran"
    (tmp_path / "model" / "config.json").write_text(json.dumps({
        "model_type": "frob",
        "auto_map": {"AutoConfig": "configuration_frob.FrobConfig", "AutoModelForCausalLM": "modeling_frob.Frob"},
    }))
    (tmp_path / "model" / "configuration_frob.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(UserError, match=r"ships its own code \(auto_map in config.json\), which runs only with model.trust_remote_code=true"):
        check_model_dir(folder)
    assert not marker.exists(), "the folder's code ran without trust_remote_code"


def test_the_rm_reward_model_is_checked_before_any_actor(tmp_path):
    from dsw_ray.inputs import base_model

    base = model_folder(tmp_path)
    reward = tmp_path / "reward"
    reward.mkdir()
    (reward / "config.json").write_text(json.dumps({"model_type": "vit"}))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"run_dir: {tmp_path}/run\nmethods: [iwsi, rm]\ntask: {{name: arith}}\nmodel: {{path: {base}}}\n"
        f"reward: {{model_path: {reward}}}\n"
    )
    with pytest.raises(UserError, match=r"reward.model_path .* cannot load as a sequence classifier"):
        base_model(load_job(str(job_file)), splits_of([], [], []))


# ---- the job config ----------------------------------------------------------------------------

MINIMAL = "run_dir: runs/x\ntask: {name: arith}\nmodel: {path: m}\n"


@pytest.mark.parametrize(
    "override, message",
    [
        ("filter.keep_fraction=0", r"filter.keep_fraction: Input should be greater than 0"),
        ("filter.keep_fraction=-0.5", r"filter.keep_fraction: Input should be greater than 0"),
        ("filter.keep_fraction=1.01", r"filter.keep_fraction: Input should be less than or equal to 1"),
        ("generate.samples_per_question=0", r"generate.samples_per_question: Input should be greater than or equal to 1"),
        ("task.name=mnist", r"task: Value error, unknown task.name 'mnist'; choose one of \['anli_a1', 'anli_a2', 'arith', 'gsm8k', 'openbookqa', 'strategyqa', 'svamp'\]"),
        ("methods=[iwsi, lmsy]", r"methods: Value error, unknown method 'lmsy'; choose from"),
        ("methods=[iwsi, lmsi@0.5]", r"'lmsi@0.5': the lmsi method has no keep fraction to set after '@'"),
        ("task.bad_rows=ignore", r"task.bad_rows: Input should be 'fail' or 'skip'"),
        ("task.bad_row=skip", r"task.bad_row: Extra inputs are not permitted"),
        ("round=2", r"round: Extra inputs are not permitted"),
    ],
)
def test_config_mistakes_name_the_file_and_field(tmp_path, override, message):
    path = tmp_path / "job.yaml"
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError, match=message) as error:
        load_job(str(path), [override])
    assert str(path) in str(error.value)


def test_bad_rows_defaults_to_fail(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(MINIMAL)
    assert load_job(str(path)).task.bad_rows == "fail"


def test_no_eval_or_exec_in_the_package():
    for folder, _, files in os.walk(os.path.join(ROOT, "dsw_ray")):
        for name in files:
            if name.endswith(".py"):
                source = open(os.path.join(folder, name)).read()
                for call in ("eval(", "exec(", "yaml.load(", "yaml.unsafe_load("):
                    assert f" {call}" not in source and f"({call}" not in source, (name, call)


# ---- the CLI -------------------------------------------------------------------------------------

def test_cli_names_the_bad_row_in_one_paragraph_before_ray(tmp_path, gsm8k_lines):
    train = list(gsm8k_lines["train"])
    train[6] = json.dumps({"question": "How many?", "answer": "72"})
    (tmp_path / "data").mkdir()
    folder = write_gsm8k(tmp_path / "data", train, gsm8k_lines["test"])
    job = tmp_path / "job.yaml"
    job.write_text(f"run_dir: {tmp_path}/run\ntask: {{name: gsm8k, data_path: {folder}}}\nmodel: {{path: {tmp_path}/m}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "dsw_ray.cli", "run", str(job)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"dsw-ray: {folder}/train.jsonl, line 7: the answer has no final '#### N' line")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "run").exists(), "it stopped before the run directory or Ray"


# ---- fuzz: nothing raises but our errors ---------------------------------------------------------

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
gsm8k_rows = st.fixed_dictionaries(
    {},
    optional={
        "question": json_values | st.text(max_size=30),
        "answer": json_values | st.builds(lambda a, b: f"{a}####{b}", st.text(max_size=20), st.text(max_size=10)),
    },
)
svamp_rows_st = st.fixed_dictionaries(
    {},
    optional={
        "ID": json_values, "Body": json_values, "Question": json_values, "Equation": json_values,
        "Answer": json_values | st.text(alphabet="0123456789.,-e$ ", max_size=8),
    },
)


def loads_or_our_error(load, *args, **kwargs):
    try:
        splits = load(*args, **kwargs)
    except UserError:
        return None
    assert isinstance(splits, Splits)
    return splits


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_gsm8k_random_bytes(tmp_path, gsm8k_lines, data):
    write_gsm8k(tmp_path, gsm8k_lines["train"], [])
    (tmp_path / "test.jsonl").write_bytes(data)
    for policy in ("fail", "skip"):
        loads_or_our_error(gsm8k.load, str(tmp_path), SplitSizes(bad_rows=policy))


@FUZZ
@given(rows=st.lists(gsm8k_rows | json_values, max_size=6))
def test_fuzz_gsm8k_random_rows(tmp_path, gsm8k_lines, rows):
    lines = [json.dumps(row) for row in rows]
    write_gsm8k(tmp_path, gsm8k_lines["train"][:20] + lines, lines)
    splits = loads_or_our_error(gsm8k.load, str(tmp_path), SplitSizes(bad_rows="skip"))
    if splits is not None:
        for e in splits.questions + splits.valid + splits.test:
            assert e.question.strip() and e.rationale.endswith(f"The answer is {e.gold}.")
            assert parse_answer(f"The answer is {e.gold}.") == normalize_number(e.gold) is not None


@FUZZ
@given(
    data=st.text(max_size=10).map(str.encode) | st.binary(max_size=10),
    at=st.integers(0, 110_000),
    length=st.integers(0, 10),
)
def test_fuzz_svamp_random_bytes(tmp_path, svamp_rows, data, at, length):
    """Random text or bytes written over part of the published file: about half the text
    mutations leave it valid JSON (inside a string, a number changed, a key renamed) and so
    reach the rows' parsing, which a whole random file never does; the rest are file-level
    errors. Each is our error or a load."""
    valid = json.dumps(svamp_rows, indent=4).encode()
    at = at % len(valid)
    (tmp_path / "SVAMP.json").write_bytes(valid[:at] + data + valid[at + length :])
    for policy in ("fail", "skip"):
        loads_or_our_error(svamp.load, str(tmp_path), SplitSizes(bad_rows=policy))


@FUZZ
@given(rows=st.lists(svamp_rows_st | json_values, min_size=1, max_size=5), at=st.integers(0, 319))
def test_fuzz_svamp_random_rows(tmp_path, svamp_rows, rows, at):
    path = write_svamp(tmp_path, svamp_rows[:at] + rows + svamp_rows[at:])
    for policy in ("fail", "skip"):
        splits = loads_or_our_error(svamp.load, path, SplitSizes(bad_rows=policy))
        if splits is not None:
            assert all(e.rationale.endswith(f"The answer is {e.gold}.") for e in splits.valid)
            assert len({e.question_id for e in splits.questions + splits.valid + splits.test}) == 320 + len(rows) - len(
                splits.rejected
            )


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_read_text(tmp_path, data):
    (tmp_path / "f").write_bytes(data)
    try:
        assert isinstance(read_text(str(tmp_path / "f")), str)
    except DataError:
        pass


@settings(max_examples=300, deadline=None)
@fixed_example(text="20000000000000000000000000000", gold="", integer=True)  # 29 digits: Decimal's context kept 28
@given(
    text=st.text(max_size=60) | st.builds(lambda a, b: f"{a}The answer is {b}", st.text(max_size=20), st.text(max_size=20)),
    gold=st.text(max_size=12) | st.integers() | st.floats() | st.decimals().map(str),
    integer=st.booleans(),
)
def test_fuzz_answer_parser_and_grader(text, gold, integer):
    answer = parse_answer(text, official=integer)
    assert answer is None or normalize_number(answer) == answer
    assert isinstance(is_correct(answer, gold, integer), bool)
    assert isinstance(is_correct(text[:12], gold, integer), bool)
    normalized = normalize_number(gold)
    assert normalized is None or normalize_number(normalized) == normalized


@settings(max_examples=200, deadline=None)
@given(answer=st.text(max_size=40) | st.builds(lambda a, b: f"{a}####{b}", st.text(max_size=20), st.text(max_size=12)))
def test_fuzz_gsm8k_gold_parsing(answer):
    try:
        gold = gsm8k.gold_answer(answer)
    except BadRow:
        return
    # A gold answer is one the grader reads back: otherwise no answer could ever be graded right.
    assert parse_answer(f"The answer is {gold}.") == normalize_number(gold) is not None
    assert gsm8k.gold_rationale(answer).endswith(f"The answer is {gold}.")


@settings(max_examples=100, deadline=None)
@given(values=st.lists(json_values, max_size=6), indent=st.sampled_from([None, 0, 2, 4]))
def test_array_items_finds_every_element_and_its_line(values, indent):
    text = json.dumps(values, indent=indent)
    items = array_items(text, len(values))
    assert [json.loads(raw) for _, raw in items] == [json.loads(json.dumps(v)) for v in values]
    for line, raw in items:
        assert raw.split("\n")[0] in text.split("\n")[line - 1]


@pytest.mark.parametrize(
    "parse, text",
    [
        (lambda t: parse_answer(t), "the answer is x " * 65_536),  # was quadratic: each phrase searched to the end
        (lambda t: parse_answer(t, official=True), "the answer is = " * 65_536),
        (lambda t: get_task("openbookqa").parse_answer(t), "The answer is " * 75_000),
        (lambda t: get_task("openbookqa").parse_answer(t, official=True), "the answer is (" * 70_000),
        (lambda t: fold(t), "." * 500_000 + "x" + "." * 500_000),  # was quadratic: the trailing-edge regex
        (lambda t: parse_text("The answer is " + t), "." * 1_000_000 + "x"),
    ],
)
def test_parsers_are_linear_on_a_megabyte_of_hostile_text(parse, text):
    """1 MB of text that made a parser quadratic (minutes) parses in well under a second; the
    bound is loose so that a busy machine does not fail it, and a quadratic parser would."""
    import time

    start = time.perf_counter()
    parse(text)
    assert time.perf_counter() - start < 2.0
