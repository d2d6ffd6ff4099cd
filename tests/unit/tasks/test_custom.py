"""Tasks defined only in a job file (task.custom): every format, every answer type, the
errors that name the field, and bad rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dsw_ray.config import load_job
from dsw_ray.errors import ConfigError, DataError
from dsw_ray.tasks import SplitSizes, task_of

CHOICE_CSV = """id,question,a,b,c,gold,why
r0,Which is a mammal?,shark,whale,trout,B,Whales breathe air and feed milk to their young.
r1,Which is a metal?,iron,wood,glass,A,Iron is a metal.
r2,Which melts ice fastest?,salt,sand,"paper, dry",A,Salt lowers the freezing point of water.
r3,Which is a planet?,moon,mars,sun,mars,Mars orbits the sun.
r4,Which is a gas?,oxygen,stone,milk,A,Oxygen is a gas at room temperature.
r5,Which is a color?,red,loud,fast,A,Red is a color.
"""

CHOICE_TASK = {
    "name": "science_qa",
    "custom": {
        "answer_type": "choice",
        "fields": {"id": "id", "question": "question", "answer": "gold", "rationale": "why", "choices": ["a", "b", "c"]},
        "exemplars": [
            {"question": "Which is hot?", "choices": ["ice", "fire", "snow"], "answer": "Fire burns. The answer is (B)."}
        ],
        "split": {"test_rows": 2, "valid_fraction": 0.25},
    },
}


def job_file(tmp_path, task: dict, data_name: str, data) -> str:
    data_path = tmp_path / data_name
    if isinstance(data, pa.Table):
        pq.write_table(data, data_path)
    else:
        data_path.write_text(data)
    job = {"run_dir": str(tmp_path / "run"), "task": {**task, "data_path": str(data_path)}, "model": {"path": "m"}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_a_choice_task_from_csv(tmp_path):
    job = load_job(job_file(tmp_path, CHOICE_TASK, "data.csv", CHOICE_CSV))
    task = task_of(job.task)
    splits = task.load(job.task.data_path, SplitSizes())
    # 6 rows: the last 2 are the test set; of the 4 before, the last round(0.25 * 4) = 1 is the valid set.
    assert [e.question_id for e in splits.questions] == ["r0", "r1", "r2"]
    assert [e.question_id for e in splits.valid] == ["r3"] and [e.question_id for e in splits.test] == ["r4", "r5"]
    assert splits.questions[2].question == "Which melts ice fastest? Answer Choices are: A)salt; B)sand; C)paper, dry."
    assert splits.valid[0].gold == "B"  # "mars" is the text of choice B
    assert splits.valid[0].rationale == "Mars orbits the sun. The answer is (B)."
    assert task.prompt(splits.test[0].question) == (
        "Q: Which is hot? Answer Choices are: A)ice; B)fire; C)snow.\nA: Fire burns. The answer is (B).\n\n"
        "Q: Which is a gas? Answer Choices are: A)oxygen; B)stone; C)milk.\nA: "
    )
    assert task.parse_answer("So the answer is (c).") == "C" and task.parse_answer("The answer is (D).") is None


def test_number_task_from_parquet_and_text_task_from_json(tmp_path):
    table = pa.table({
        "problem": {"text": [f"What is {i} + {i}?" for i in range(8)]}["text"],
        "solution": [f"{i} + {i} = {2 * i}." for i in range(8)],
        "result": [float(2 * i) for i in range(8)],
    })  # fmt: skip
    task = {
        "name": "doubles",
        "custom": {
            "answer_type": "number",
            "fields": {"question": "problem", "answer": "result", "rationale": "solution"},
            "exemplars": [{"question": "What is 5 + 5?", "answer": "5 + 5 = 10. The answer is 10."}],
            "split": {"test_rows": 3},
        },
    }
    job = load_job(job_file(tmp_path, task, "d.parquet", table))
    splits = task_of(job.task).load(job.task.data_path, SplitSizes())
    assert (len(splits.questions), len(splits.valid), len(splits.test)) == (4, 1, 3)
    assert splits.valid[0].rationale == "4 + 4 = 8. The answer is 8." and splits.valid[0].gold == "8"
    assert splits.questions[0].question_id == "d-0"

    rows = [{"q": {"text": f"Capital of country {i}?"}, "a": f"City {i}", "r": f"It is City {i}."} for i in range(5)]
    task = {
        "name": "capitals",
        "custom": {
            "answer_type": "text",
            "fields": {"question": "q.text", "answer": "a"},
            "rationale_template": "{r} The answer is {answer}.",
            "exemplars": [{"question": "Capital of France?", "answer": "Paris is the capital. The answer is Paris."}],
            "split": {"test_rows": 1, "valid_fraction": 0.5},
        },
    }
    job = load_job(job_file(tmp_path, task, "c.json", json.dumps(rows, indent=1)))
    t = task_of(job.task)
    splits = t.load(job.task.data_path, SplitSizes())
    assert [e.gold for e in splits.valid] == ["city 2", "city 3"]
    assert splits.valid[0].rationale == "It is City 2. The answer is city 2."
    assert t.is_correct(t.parse_answer("Hmm. The answer is City 4."), splits.test[0].gold)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.pop("exemplars"), r"task.custom.exemplars: Field required"),
        (lambda c: c.update(fielsd={}), r"task.custom.fielsd: Extra inputs are not permitted \(did you mean fields\?\)"),
        (lambda c: c["exemplars"][0].update(answer="Fire burns."), r"task.custom.exemplars.0.answer 'Fire burns.' has no answer"),
        (lambda c: c["fields"].pop("choices"), r"a choice task needs exactly one of fields.choices and choice_texts"),
        (lambda c: c["fields"].pop("rationale"), r"set exactly one of fields.rationale and rationale_template"),
        (lambda c: c.update(answer_type="letter"), r"task.custom.answer_type: Input should be 'number', 'choice' or 'text'"),
        (lambda c: c["split"].pop("test_rows"), r"split.test_rows \(the data file's last rows\) or split.test_path"),
        (lambda c: c["split"].update(test_path="/nowhere/test.csv"), r"task.custom.split.test_path '/nowhere/test.csv' does not exist"),
        (lambda c: c["exemplars"][0].update(choices=["a", "b"]), r"exemplars.0.choices has 2 choices, not 3"),
    ],
)
def test_config_errors_name_the_field(tmp_path, change, message):
    task = json.loads(json.dumps(CHOICE_TASK))
    change(task["custom"])
    with pytest.raises(ConfigError, match=message) as error:
        load_job(job_file(tmp_path, task, "data.csv", CHOICE_CSV))
    assert "job.yaml" in str(error.value)


def test_a_custom_task_may_not_take_a_builtin_name_and_needs_its_file(tmp_path):
    with pytest.raises(ConfigError, match="a built-in task's name"):
        load_job(job_file(tmp_path, {**CHOICE_TASK, "name": "gsm8k"}, "data.csv", CHOICE_CSV))
    path = job_file(tmp_path, CHOICE_TASK, "data.csv", CHOICE_CSV)
    with pytest.raises(ConfigError, match="task.data_path .* does not exist"):
        load_job(path, [f"task.data_path={tmp_path}/none.csv"])


def test_a_csv_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    """Python's csv stops at fields of 128 KiB by default, which failed the whole file."""
    import csv

    long_why = "Whales breathe air. " * 10_000  # 200 KB
    data = CHOICE_CSV.replace("Whales breathe air and feed milk to their young.", long_why)
    job = load_job(job_file(tmp_path, CHOICE_TASK, "data.csv", data))
    limit = csv.field_size_limit()
    splits = task_of(job.task).load(job.task.data_path, SplitSizes())
    assert [e.question_id for e in splits.questions] == ["r0", "r1", "r2"]
    assert csv.field_size_limit() == limit, "the csv module's limit is left as it was"


def test_bad_rows_name_file_and_line_and_skip_keeps_places(tmp_path):
    bad = CHOICE_CSV.replace("r1,Which is a metal?,iron,wood,glass,A,", "r1,Which is a metal?,iron,wood,glass,Z,")
    bad = bad.replace("r3,Which is a planet?,moon,mars,sun,mars,Mars orbits the sun.", "r3,Which is a planet?,moon,mars,sun,mars,")
    bad = bad.replace("r5,Which is a color?,red,loud,fast,A,Red is a color.", "r5,Which is a color?,red,loud")
    job = load_job(job_file(tmp_path, CHOICE_TASK, "data.csv", bad))
    task = task_of(job.task)
    with pytest.raises(DataError, match=r"data.csv, line 3: 'gold' is 'Z', neither a choice letter \(A, B, C\) nor a choice's text"):
        task.load(job.task.data_path, SplitSizes())
    splits = task.load(job.task.data_path, SplitSizes(bad_rows="skip"))
    assert [(r.line, r.reason.split(";")[0].split(",")[0]) for r in splits.rejected] == [
        (3, "'gold' is 'Z'"),
        (5, "'why' (the valid set's rationale) is empty."),
        (7, "4 fields"),
    ]
    assert [e.question_id for e in splits.questions] == ["r0", "r2"] and splits.valid == []
    assert [e.question_id for e in splits.test] == ["r4"]
