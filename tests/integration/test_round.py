"""The whole job on a real local Ray with a tiny model: every stage, its artifacts, a rerun."""

import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as pads
import pytest

from dsw_ray import columns as C
from dsw_ray import get_task, keep_lowest
from dsw_ray.config import JobConfig

pytestmark = pytest.mark.ray


def table(run_dir, stage):
    return pads.dataset(os.path.join(run_dir, stage, "data"), format="parquet").to_table().to_pandas()


def tiny_job(model_path, run_dir, **overrides):
    job = {
        "run_dir": str(run_dir),
        "task": {"name": "arith", "num_questions": 12, "num_valid": 6, "num_test": 10, "seed": 1},
        "model": {"path": model_path},
        "generate": {"samples_per_question": 3, "max_new_tokens": 24, "batch_size": 4},
        "score": {"batch_size": 8},
        "train": {"epochs": 1, "micro_batch_size": 4, "learning_rate": 1e-3},
        "evaluate": {"max_new_tokens": 24, "batch_size": 5},
        "ray": {"num_cpus": 2},
        **overrides,
    }
    return JobConfig.model_validate(job)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_whole_round(toy_model, tmp_path, ray_session):
    from dsw_ray.pipeline import run_job

    job = tiny_job(toy_model, tmp_path / "run")
    summary = run_job(job)
    run_dir = job.run_dir

    generated = table(run_dir, "round-1/generate")
    assert len(generated) == 12 * 3
    keys = list(zip(generated[C.QUESTION_ID], generated[C.SAMPLE_INDEX]))
    assert len(set(keys)) == len(keys), "every (question_id, sample_index) exactly once"
    assert set(generated[C.SAMPLE_INDEX]) == {0, 1, 2}
    assert set(generated[C.FINISH_REASON]) <= {"stop", "length"}
    assert generated[C.SEED].nunique() == len(generated)
    assert not generated[C.TEXT].str.contains("\nQ:").any()
    assert (generated[C.COMPLETION_TOKENS] <= 24).all() and (generated[C.COMPLETION_TOKENS] > 0).all()

    voted = table(run_dir, "round-1/vote")
    task = get_task("arith")
    assert len(voted) == len(generated)
    for _, row in voted.iterrows():
        answer = None if pd.isna(row[C.ANSWER]) else row[C.ANSWER]
        assert row[C.IS_MAJORITY] == (answer is not None and answer == row[C.MAJORITY_ANSWER])
        assert task.parse_answer(row[C.TEXT]) == answer

    scored = table(run_dir, "round-1/score")
    assert len(scored) == int(voted[C.IS_MAJORITY].sum())
    assert (scored[C.DS_WEIGHT] >= 1).all() and scored[C.VALID_LOSS_MEAN].nunique() == 1
    ratio = scored[C.VALID_LOSS_MEAN] / scored[C.LOSS]
    assert ((scored[C.DS_WEIGHT] - ratio.where(ratio >= 1, 1 / ratio)).abs() < 1e-9).all()

    kept = table(run_dir, "round-1/filter")
    ordered = scored.sort_values([C.QUESTION_ID, C.SAMPLE_INDEX])
    mask = keep_lowest(ordered[C.DS_WEIGHT].to_numpy(), 0.8)
    assert sorted(zip(kept[C.QUESTION_ID], kept[C.SAMPLE_INDEX])) == sorted(
        zip(ordered[C.QUESTION_ID][mask], ordered[C.SAMPLE_INDEX][mask])
    )

    model_dir = os.path.join(run_dir, "round-1", "train", "model")
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(model_dir) is not None
    with open(os.path.join(run_dir, "round-1", "train", "manifest.json")) as f:
        trained = json.load(f)
    assert trained["optimizer_steps"] == trained["expected_optimizer_steps"] > 0

    evaluated = table(run_dir, "round-1/evaluate")
    assert len(evaluated) == 10
    with open(os.path.join(run_dir, "summary.json")) as f:
        written = json.load(f)
    assert written["task"] == "arith" and written["model"] == toy_model
    dropped = written["methods"]["iwsi"]["dropped"]
    assert dropped["not_majority"] == len(generated) - len(scored)
    assert dropped["high_ds_weight"] == len(scored) - len(kept)
    assert written["methods"]["iwsi"]["kept"] == len(kept)
    assert written["methods"]["iwsi"]["accuracy"] == pytest.approx(evaluated[C.CORRECT].mean())
    assert written["base_accuracy"] == pytest.approx(table(run_dir, "base/evaluate")[C.CORRECT].mean())
    assert summary == written

    # A rerun skips every finished stage and reproduces the summary.
    before = {stage: os.path.getmtime(os.path.join(run_dir, "round-1", stage, "manifest.json"))
              for stage in ("generate", "vote", "score", "filter", "train", "evaluate")}
    assert run_job(job) == summary
    for stage, mtime in before.items():
        assert os.path.getmtime(os.path.join(run_dir, "round-1", stage, "manifest.json")) == mtime, stage

    # A changed filter recomputes the filter and what follows, not generation or scoring.
    changed = tiny_job(toy_model, tmp_path / "run", filter={"keep_fraction": 0.5})
    resumed = run_job(changed)
    assert resumed["methods"]["iwsi"]["kept"] == round(0.5 * len(scored))
    assert os.path.getmtime(os.path.join(run_dir, "round-1", "score", "manifest.json")) == before["score"]
    assert os.path.getmtime(os.path.join(run_dir, "round-1", "train", "manifest.json")) != before["train"]


def test_same_seed_same_candidates_whatever_the_batching(tiny_model, tmp_path, ray_session):
    """Per-candidate seeds: batch size and actor count do not change what is sampled."""
    import ray

    from dsw_ray.generate import generate
    from dsw_ray.pipeline import examples_table

    job = tiny_job(tiny_model, tmp_path / "a")
    questions = get_task("arith").load(None, 6, 2, 2, 5).questions
    dataset = ray.data.from_arrow(examples_table(questions))
    one = generate(dataset, tiny_model, job, round_index=1).to_pandas()
    other_job = tiny_job(tiny_model, tmp_path / "b", generate={**job.generate.model_dump(), "batch_size": 1, "actors": 2})
    two = generate(dataset.repartition(6), tiny_model, other_job, round_index=1).to_pandas()
    key = [C.QUESTION_ID, C.SAMPLE_INDEX]
    one, two = one.sort_values(key).reset_index(drop=True), two.sort_values(key).reset_index(drop=True)
    assert one[C.TEXT].tolist() == two[C.TEXT].tolist()
    assert one[C.SEED].tolist() == two[C.SEED].tolist()
    third = generate(dataset, tiny_model, job, round_index=2).to_pandas().sort_values(key)
    assert third[C.SEED].tolist() != one[C.SEED].tolist(), "each round samples afresh"


def test_cli_reports_user_errors_without_traceback(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("run_dir: r\ntask: {name: arith}\nmodel: {path: m}\nfilter: {keep_fraction: 2}\n")
    result = subprocess.run(
        [sys.executable, "-m", "dsw_ray.cli", "run", str(job)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "filter.keep_fraction" in result.stderr and str(job) in result.stderr
    assert "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "dsw_ray.cli", "run", str(job), "filter.keep_fraction=0.5", f"model.path={tmp_path}/none"],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.timeout(300)
def test_two_default_actors_on_two_cpus_do_not_starve_ray_data(tiny_model, tmp_path):
    """The trap of this machine: actors that reserve every CPU leave Ray Data's read tasks none
    and the job waits forever. With default CPUs a two-actor pool on two CPUs must finish."""
    script = f"""
import ray
from dsw_ray.config import JobConfig
from dsw_ray.pipeline import read_dataset, write_inputs, examples_table, write_table
from dsw_ray.generate import generate
from dsw_ray.tasks import get_task
job = JobConfig.model_validate({{"run_dir": "{tmp_path}", "task": {{"name": "arith"}}, "model": {{"path": "{tiny_model}"}},
    "generate": {{"actors": 2, "samples_per_question": 2, "max_new_tokens": 8, "batch_size": 2}}}})
ray.init(num_cpus=2, include_dashboard=False)
write_table(examples_table(get_task("arith").load(None, 8, 2, 2, 0).questions), "{tmp_path}/q")
rows = generate(read_dataset("{tmp_path}/q", 2, 2), "{tiny_model}", job, 1).count()
print("ROWS", rows)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ROWS 16" in result.stdout
