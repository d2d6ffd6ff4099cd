"""A round on a real local Ray with the tiny model for a multiple-choice task defined only in
the job's YAML (task.custom), with the Self-filter. The tiny model answers badly (no letter),
so the round checks the mechanics: every candidate accounted for, the report written, the
ratings' stage reused when only the keep fraction changes; the rate stage then runs on its
actor pool over majority candidates written by hand."""

import json
import os

import pyarrow as pa
import pytest
import yaml

from dsw_ray import columns as C
from dsw_ray.config import load_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a second whole job (a task from YAML, the self filter): the slow lane

QUESTIONS = [
    ("What do plants need to make food?", ["sunlight", "darkness", "rocks"], "A", "Plants use sunlight."),
    ("Which is a metal?", ["wood", "iron", "glass"], "B", "Iron is a metal."),
    ("What is frozen water?", ["steam", "sand", "ice"], "C", "Water freezes into ice."),
    ("Which animal hunts?", ["a cow", "a wolf", "a tree"], "B", "Wolves hunt other animals."),
    ("What gives us light at night?", ["the moon", "the soil", "a stone"], "A", "The moon reflects light."),
    ("Which is a gas?", ["milk", "stone", "oxygen"], "C", "Oxygen is a gas."),
    ("Which is a planet?", ["mars", "the sun", "a comet"], "A", "Mars is a planet."),
    ("What melts ice?", ["cold", "heat", "dark"], "B", "Heat melts ice."),
]
JOB = {
    "methods": ["self", "lmsi", "entropy"],
    "task": {
        "name": "science",
        "custom": {
            "answer_type": "choice",
            "num_choices": 3,
            "fields": {"question": "question", "choices": "choices", "answer": "gold", "rationale": "why"},
            "exemplars": [{"question": "Which is hot?", "choices": ["ice", "fire", "snow"],
                           "answer": "Fire burns. The answer is (B)."}],
            "split": {"test_rows": 2, "valid_fraction": 0.34},  # 8 rows: 4 questions, 2 valid, 2 test
        },
    },
    "generate": {"samples_per_question": 2, "max_new_tokens": 12, "batch_size": 4},
    "score": {"batch_size": 8},
    "rate": {"batch_size": 4},
    "evaluate": {"max_new_tokens": 12, "batch_size": 4},
    "ray": {"num_cpus": 2},
}


def write_job(tmp_path, model_path, **changes) -> str:
    data = tmp_path / "science.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "gold": g, "why": w}) + "\n" for q, c, g, w in QUESTIONS))
    job = json.loads(json.dumps(JOB))
    job["task"]["data_path"] = str(data)
    job.update(run_dir=str(tmp_path / "run"), model={"path": model_path}, **changes)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_yaml_only_choice_task_round_with_the_self_filter(tiny_model, tmp_path):
    import ray

    from dsw_ray.pipeline import run_job
    from dsw_ray.ray_session import start_local_ray
    from dsw_ray.rundir import read_dataset, read_table, write_dataset, write_table
    from dsw_ray.rate import rate

    start_local_ray(2)
    try:
        job = load_job(write_job(tmp_path, tiny_model))
        summary = run_job(job)
        assert (summary["questions"], summary["valid"], summary["test"]) == (4, 2, 2)
        for method, result in summary["methods"].items():
            assert result["candidates"]["generated"] == 4 * 2
            assert result["kept"] + sum(result["dropped"].values()) == 4 * 2, method
        voted = read_table(os.path.join(job.run_dir, "round-1", "vote"))
        assert set(voted[C.ANSWER].drop_null().to_pylist()) <= set("ABC")  # letters or nothing
        assert voted[C.GOLD].to_pylist() == [g for *_, g, _ in QUESTIONS[:4] for _ in range(2)]
        assert read_table(os.path.join(job.run_dir, "base", "evaluate")).num_rows == 2
        with open(os.path.join(job.run_dir, "report.md")) as f:
            report = f.read()
        assert "# dsw-ray run: science" in report and "| Self-filter | 1 |" in report

        # Only the keep fraction changes: the ratings are reused, the filter reruns.
        manifest = os.path.join(job.run_dir, "round-1", "rate", "manifest.json")
        before = os.path.getmtime(manifest)
        filter_manifest = os.path.join(job.run_dir, "round-1", "self", "filter", "manifest.json")
        filtered = os.path.getmtime(filter_manifest)
        run_job(load_job(write_job(tmp_path, tiny_model, filter={"keep_fraction": 0.5})))
        assert os.path.getmtime(manifest) == before and os.path.getmtime(filter_manifest) != filtered

        # The rate stage's actor pool over majority candidates (the tiny model writes none).
        texts = ["Plants use sunlight. The answer is (A).", "The answer is (B).", "%%%", "The answer is (C)."]
        voted_dir = tmp_path / "voted"
        write_table(pa.table({
            C.QUESTION_ID: ["q0", "q0", "q1", "q1"], C.SAMPLE_INDEX: [0, 1, 0, 1],
            C.QUESTION: [QUESTIONS[0][0]] * 2 + [QUESTIONS[1][0]] * 2, C.TEXT: texts,
            C.IS_MAJORITY: [True, False, True, True],
        }), str(voted_dir))  # fmt: skip
        write_dataset(rate(read_dataset(str(voted_dir), 2, 1), job.rate, job.model, tiny_model, job.train.max_length), str(tmp_path / "rated"))
        rated = read_table(str(tmp_path / "rated")).sort_by(C.BY_KEY)
        assert list(zip(rated[C.QUESTION_ID].to_pylist(), rated[C.SAMPLE_INDEX].to_pylist())) == [("q0", 0), ("q1", 0), ("q1", 1)]
        ratings = rated[C.RATING].to_numpy()
        assert ((ratings >= 0) & (ratings <= 10)).all() and len(set(ratings.round(6))) == 3
    finally:
        ray.shutdown()
