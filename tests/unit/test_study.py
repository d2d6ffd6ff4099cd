"""Studies (``dsw-ray sweep``): the grid's points, checked whole before any runs, and the scaling
report's comparisons. The stage store they share is tested in test_rundir.py; a study on a
real cluster runs in tests/integration/test_job_submit.py."""

import json
import os

import pytest
import yaml

from dsw_ray.errors import ConfigError
from dsw_ray.scaling import compare, held
from dsw_ray.study import load_study


def write_study(tmp_path, grid, **extra) -> str:
    job = {"run_dir": "ignored", "methods": ["iwsi"], "task": {"name": "arith", "num_questions": 12},
           "model": {"path": "some/model"}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"job": "job.yaml", "out": str(tmp_path / "out"), "grid": grid, **extra}, sort_keys=False))
    return str(path)


def test_every_combination_of_the_axes_is_a_point_with_its_own_run_directory_and_one_store(tmp_path):
    path = write_study(
        tmp_path,
        {"task.num_questions": [20, 40], "actors": {"generate.actors": [1, 2], "score.actors": [1, 3]}},
        overrides=["train.epochs=2"],
    )
    study, points = load_study(path, ["train.micro_batch_size=2"])
    assert [p.name for p in points] == ["num_questions=20,actors=1", "num_questions=20,actors=2_3",
                                        "num_questions=40,actors=1", "num_questions=40,actors=2_3"]  # fmt: skip
    last = points[-1].job
    assert (last.task.num_questions, last.generate.actors, last.score.actors) == (40, 2, 3)
    assert last.train.epochs == 2 and last.train.micro_batch_size == 2  # the study's and the command line's
    out = str(tmp_path / "out")
    assert [p.job.run_dir for p in points] == [os.path.join(out, "points", p.name) for p in points]
    assert {p.job.store for p in points} == {os.path.join(out, "store")}
    assert points[1].values == {"task.num_questions": 20, "actors": "2/3"}


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"run_dir": ["a", "b"]}, "grid key 'run_dir' cannot be swept"),
        ({"ray.num_cpus": [1, 2]}, "one Ray session runs every point"),
        ({"train.epochs": []}, "grid axis 'train.epochs' has no values"),
        ({"both": {"generate.actors": [1, 2], "score.actors": [1]}}, "lists need one length"),
        ({"generate.actors": [1, 0]}, "point actors=0: "),  # the job refuses the value: named with its point
        ({"train.epoch": [1]}, "did you mean epochs?"),
    ],
)
def test_a_study_is_checked_whole_before_anything_runs(tmp_path, grid, message):
    with pytest.raises(ConfigError, match="study.yaml") as error:
        load_study(write_study(tmp_path, grid))
    assert message in str(error.value)


def row(seconds, work, units, work_s):
    return {"stage": "generate", "units": units, "seconds": seconds, "work": work, "work_s": work_s, "unit": "new tokens",
            "reused_from": []}  # fmt: skip


def test_scaling_compares_each_point_with_the_stage_smallest_and_projects_the_cost_model():
    rows = {
        "a2": row(seconds=30.0, work=1000, units=2, work_s=20.0),  # strong: the same work on twice the actors
        "a1": row(seconds=50.0, work=1000, units=1, work_s=40.0),  # the smallest: 10 s fixed, 25 tokens/s an actor
        "a4w": row(seconds=60.0, work=4000, units=4, work_s=45.0),  # weak: 1000 tokens an actor
        "m": row(seconds=90.0, work=3000, units=2, work_s=70.0),
        "a1x2": row(seconds=80.0, work=2000, units=1, work_s=70.0),
    }
    compare(rows)
    a1, a2, a4w, m = (rows[k] for k in ("a1", "a2", "a4w", "m"))
    assert {r["smallest"] for r in rows.values()} == {"a1"} and rows["a1x2"]["kind"] == "same actors"
    assert (a1["kind"], a2["kind"], a4w["kind"], m["kind"]) == ("smallest", "strong", "weak", "mixed")
    assert a2["speedup"] == pytest.approx(50 / 30) and a2["efficiency"] == pytest.approx(50 / 30 / 2)
    assert a4w["efficiency"] == pytest.approx((4000 / 60 / 4) / (1000 / 50))  # weak: 50 s against 60 s
    assert a1["model_s"] == pytest.approx(50.0) and a1["model_error"] == pytest.approx(0)
    assert a2["model_s"] == pytest.approx(10 + 1000 / (2 * 25)) and a2["model_error"] == pytest.approx(30 / 30 - 1)
    assert a4w["model_s"] == pytest.approx(10 + 4000 / (4 * 25)) and a4w["model_error"] == pytest.approx(60 / 50 - 1)


def test_a_stage_without_a_busy_time_gets_no_cost_model_and_a_pool_is_named_by_its_resources(tmp_path):
    rows = {"p": {**row(2.0, 10, None, None), "stage": "vote"}, "q": {**row(4.0, 10, 1, None), "stage": "score"}}
    compare(rows)
    assert "speedup" not in rows["p"], "the driver's and Ray Data's own stages are not compared"
    assert rows["q"]["speedup"] == pytest.approx(1) and "model_s" not in rows["q"], "no busy time: no cost model"
    path = write_study(tmp_path, {"generate.actors": [3]})
    _, (point,) = load_study(path, ["generate.cpus_per_actor=0.5", "generate.gpus_per_actor=1"])
    assert held(point.job, "generate") == (3, "3 actors (0.5 CPU, 1 GPU each)")
    assert held(point.job, "train") == (1, "1 worker (CPUs shared)")
    assert held(point.job, "filter") == (None, "the driver")
    assert json.dumps(point.values) == '{"generate.actors": 3}'


def test_the_base_evaluation_is_shared_across_question_counts_but_not_across_prompts(tmp_path):
    from dsw_ray.evaluation import evaluation_fingerprint

    path = write_study(tmp_path, {"task.num_questions": [20, 40], "task.num_exemplars": [2, 4]})
    _, points = load_study(path)
    fps = {p.name: evaluation_fingerprint(p.job, "test-rows", "base-model") for p in points}
    assert fps["num_questions=20,num_exemplars=2"] == fps["num_questions=40,num_exemplars=2"]
    assert fps["num_questions=20,num_exemplars=2"] != fps["num_questions=20,num_exemplars=4"]
    assert evaluation_fingerprint(points[0].job, "other-rows", "base-model") != fps[points[0].name]
