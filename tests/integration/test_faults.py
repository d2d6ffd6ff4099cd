"""Faults injected into a real job on a real local Ray: a generation actor SIGKILLed in the
middle of the generate stage, the driver SIGKILLed in the middle of the score stage and
started again with the same command, and a training worker SIGKILLed in the middle of the
job's fine-tune. Real processes, real signals, nothing mocked.

Each starts from one uninterrupted run of the same job (the ``reference`` fixture, run once
for the module through the CLI): the first two compare against it, the third reuses its
candidates (the fine-tune's own fault handling is tested in test_train_faults.py).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from dsw_ray import columns as C
from tests.conftest import ROOT
from tests.integration.processes import POLL, in_session, kill_one_actor_mid_stage, kill_session

# Each test runs whole jobs (about 8 minutes on 2 cores in all): out of the default run, in
# the slow lane (pyproject.toml), with the killed vLLM actor and test_train_faults.py. The
# default run still stops a job with Ctrl-C and SIGTERM and resumes it (test_terminal.py).
pytestmark = [pytest.mark.ray, pytest.mark.slow]

QUESTIONS, SAMPLES = 16, 2
KEY = [C.QUESTION_ID, C.SAMPLE_INDEX]
RUN_TIMEOUT = 600  # one whole job on a busy 2-core machine


def job_spec(model: str, run_dir) -> dict:
    """A small arith job: one round of iwsi, 16 questions x 2 candidates in 4 generate batches."""
    return {
        "run_dir": str(run_dir),
        "methods": ["iwsi"],
        "task": {"name": "arith", "num_questions": QUESTIONS, "num_valid": 8, "num_test": 10},
        "model": {"path": model},
        "generate": {"samples_per_question": SAMPLES, "temperature": 0.8, "max_new_tokens": 40, "batch_size": 4},
        "score": {"batch_size": 8},
        "train": {"zero_stage": 0, "epochs": 1, "micro_batch_size": 4},
        "evaluate": {"max_new_tokens": 40, "batch_size": 10},
        "ray": {"num_cpus": 2},
    }


def write_job(model: str, where, **sections) -> str:
    """The job file in ``where``, for the run directory ``where/run``; ``sections`` replace whole sections."""
    os.makedirs(where, exist_ok=True)
    path = os.path.join(where, "job.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({**job_spec(model, os.path.join(where, "run")), **sections}, f)
    return path


# ---- processes this module starts -------------------------------------------------------

def start_cli(job_file: str) -> subprocess.Popen:
    """``python -m dsw_ray run JOB`` in a session of its own (its local Ray shares it), logging
    beside the job file."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray
    log = open(os.path.join(os.path.dirname(job_file), "driver.log"), "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "dsw_ray", "run", job_file],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    finally:
        log.close()


def driver_log(job_file: str) -> str:
    with open(os.path.join(os.path.dirname(job_file), "driver.log"), errors="replace") as f:
        return f.read()


def run_to_completion(job_file: str) -> None:
    driver = start_cli(job_file)
    try:
        driver.wait(timeout=RUN_TIMEOUT)
    finally:
        kill_session(driver)
    assert driver.returncode == 0, driver_log(job_file)[-5000:]


# ---- artifacts ------------------------------------------------------------------------------

def stage_frame(stage_dir: str) -> pd.DataFrame:
    frame = pq.read_table(os.path.join(stage_dir, "data")).to_pandas()
    return frame.sort_values(KEY).reset_index(drop=True)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def differs_between_runs(key: str) -> bool:
    """Summary fields two runs of one job need not share: a path into the run directory, timings."""
    return key in ("model", "started", "finished") or "seconds" in key


def assert_same(value, expected, where: str = "summary") -> None:
    """Two summaries agree, numbers to 1e-6, apart from paths and timings."""
    if isinstance(expected, dict):
        assert isinstance(value, dict), where
        keys = {k for k in expected if not differs_between_runs(k)}
        assert keys == {k for k in value if not differs_between_runs(k)}, where
        for key in sorted(keys):
            assert_same(value[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(value, list) and len(value) == len(expected), where
        for index, (item, other) in enumerate(zip(value, expected)):
            assert_same(item, other, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(value, bool):
        assert value == pytest.approx(expected, abs=1e-6, nan_ok=True), where
    else:
        assert value == expected, where


@pytest.fixture(scope="module")
def reference(toy_model, tmp_path_factory) -> dict:
    """One uninterrupted run of the job, through the CLI."""
    job_file = write_job(toy_model, tmp_path_factory.mktemp("reference"))
    run_to_completion(job_file)
    return {"job_file": job_file, "run_dir": os.path.join(os.path.dirname(job_file), "run")}


# ---- a generation actor killed mid-stage ----------------------------------------------------

@pytest.mark.timeout(1200)
def test_a_killed_generation_actor_is_restarted_and_its_candidates_are_reproduced(reference, toy_model, tmp_path):
    """SIGKILL the generate stage's actor once it has written a batch: Ray Data restarts it and
    retries its batches, and since each candidate's seed is a function of its identity, the
    stage's rows are exactly those of the uninterrupted run, each key once."""
    import ray

    from dsw_ray.config import JobConfig
    from dsw_ray.generate import generate
    from dsw_ray.ray_session import start_ray
    from dsw_ray.rundir import read_dataset, write_dataset
    from dsw_ray.tasks import get_task

    job = JobConfig.model_validate(job_spec(toy_model, tmp_path / "run"))
    questions = os.path.join(reference["run_dir"], "inputs", "questions")
    out = str(tmp_path / "generate")
    assert not ray.is_initialized()
    start_ray(job)
    try:
        def stage():
            dataset = read_dataset(questions, job.generate.batch_size, job.generate.actors)
            candidates = generate(dataset, job.generate, job.model, get_task("arith"), toy_model, round_index=1)
            return write_dataset(candidates, out)

        manifest = kill_one_actor_mid_stage(stage, "TransformersGenerator", out, QUESTIONS * SAMPLES, RUN_TIMEOUT)
    finally:
        ray.shutdown()

    assert manifest["rows"] == QUESTIONS * SAMPLES
    generated = stage_frame(out)
    assert not generated.duplicated(KEY).any(), "every (question_id, sample_index) exactly once"
    expected = stage_frame(os.path.join(reference["run_dir"], "round-1", "generate"))
    assert generated[KEY].values.tolist() == expected[KEY].values.tolist()
    assert generated[C.TEXT].tolist() == expected[C.TEXT].tolist()
    pd.testing.assert_frame_equal(generated, expected[generated.columns])


# ---- the driver killed mid-scoring, then run again ----------------------------------------

DONE_BEFORE_SCORING = ["inputs/questions", "inputs/test", "round-1/generate", "round-1/vote"]


def wait_for(path: str, driver: subprocess.Popen, job_file: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert driver.poll() is None, driver_log(job_file)[-5000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(POLL)


def wait_for_scoring(driver: subprocess.Popen, job_file: str, cpu_seconds: float = 2.0) -> None:
    """Until the scoring pool's actor is alive and has worked ``cpu_seconds``: the stage's
    folder appears before any actor starts, so a kill at that moment tested no scoring. On
    this toy the scoring itself is under a second, so the kill lands in the actor's start-up
    (imports, the model's load) or its scoring."""
    deadline = time.time() + RUN_TIMEOUT
    while True:
        for process in in_session(driver.pid):
            try:
                if "MapBatches(Scorer)" in " ".join(process.cmdline()) and sum(process.cpu_times()[:2]) >= cpu_seconds:
                    return
            except psutil.Error:
                pass
        assert driver.poll() is None, driver_log(job_file)[-5000:]
        assert time.time() < deadline, "the scoring actor never worked"
        time.sleep(POLL)


@pytest.mark.timeout(1800)
def test_a_driver_killed_while_scoring_resumes_to_the_uninterrupted_result(reference, toy_model, tmp_path):
    """SIGKILL the driver (and its local Ray) while the score stage runs, then run the same
    command again: the finished stages are skipped, untouched, and the run ends with the same
    candidates, scores, kept set and summary as an uninterrupted run of the same job. That is
    also the check that the same seed and config give identical candidates, kept set and
    summary in two separate runs."""
    job_file = write_job(toy_model, tmp_path)
    run_dir = os.path.join(tmp_path, "run")
    round_dir = os.path.join(run_dir, "round-1")
    driver = start_cli(job_file)
    try:
        wait_for(os.path.join(round_dir, "score.partial"), driver, job_file)
        wait_for_scoring(driver, job_file)
    finally:
        kill_session(driver)
    # A kill that landed after scoring must fail here, not test nothing.
    assert os.path.isdir(os.path.join(round_dir, "score.partial"))
    assert not os.path.exists(os.path.join(round_dir, "score", "manifest.json")), "the kill came after scoring"
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))
    before = {stage: read_bytes(os.path.join(run_dir, stage, "manifest.json")) for stage in DONE_BEFORE_SCORING}

    run_to_completion(job_file)
    for stage, manifest in before.items():
        assert read_bytes(os.path.join(run_dir, stage, "manifest.json")) == manifest, f"{stage} was redone"
    assert not os.path.exists(os.path.join(round_dir, "score.partial"))

    expected_dir = os.path.join(reference["run_dir"], "round-1")
    pd.testing.assert_frame_equal(
        stage_frame(os.path.join(round_dir, "generate")), stage_frame(os.path.join(expected_dir, "generate"))
    )
    scored, expected = stage_frame(os.path.join(round_dir, "score")), stage_frame(os.path.join(expected_dir, "score"))
    assert len(scored) > 0 and scored[KEY].values.tolist() == expected[KEY].values.tolist()
    for column in (C.LOSS, C.VALID_LOSS_MEAN, C.DS_WEIGHT):
        assert scored[column].to_numpy() == pytest.approx(expected[column].to_numpy(), abs=1e-6), column
    kept = stage_frame(os.path.join(round_dir, "iwsi", "filter"))
    assert kept[KEY].values.tolist() == stage_frame(os.path.join(expected_dir, "iwsi", "filter"))[KEY].values.tolist()

    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(reference["run_dir"], "summary.json")) as f:
        uninterrupted = json.load(f)
    iwsi, other = summary["methods"]["iwsi"], uninterrupted["methods"]["iwsi"]
    assert iwsi["kept"] == len(kept) > 0 and iwsi["train"]["optimizer_steps"] > 0
    assert_same(summary["base_accuracy"], uninterrupted["base_accuracy"], "base_accuracy")
    for field in ("kept", "dropped", "kept_correct", "accuracy", "candidates"):
        assert_same(iwsi[field], other[field], f"iwsi.{field}")
    for field in ("optimizer_steps", "final_loss"):
        assert_same(iwsi["train"][field], other["train"][field], f"iwsi.train.{field}")
    assert_same(summary, uninterrupted)  # and every other field


# ---- a training worker killed mid-fine-tune ----------------------------------------------------

def committed_epochs(run_dir: str) -> list[int]:
    """Epochs whose checkpoint Ray Train has registered, from its snapshot in the run directory."""
    for path in glob.glob(os.path.join(run_dir, "round-1", "ray_train", "*", "checkpoint_manager_snapshot.json")):
        try:
            with open(path) as f:
                return [r["metrics"]["epoch"] for r in json.load(f)["checkpoint_results"] if "epoch" in r["metrics"]]
        except (json.JSONDecodeError, KeyError):
            return []
    return []


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone meanwhile
        return ""


@pytest.mark.timeout(1200)
def test_a_killed_training_worker_is_reported_and_the_job_finishes(reference, toy_model, tmp_path):
    """The reference run's directory with more epochs asked for: only the fine-tune and the
    evaluation after it run. SIGKILL the training worker once an epoch checkpoint is
    registered: Ray Train restarts the workers from it, the job finishes, and the run says so."""
    shutil.copytree(reference["run_dir"], tmp_path / "run")
    # Many short epochs on two ZeRO-2 ranks: each epoch ends in a checkpoint, so the kill lands
    # between two of them, and both ranks must restart from it.
    epochs = 20
    train = {"num_workers": 2, "zero_stage": 2, "epochs": epochs, "micro_batch_size": 2, "max_failures": 2}
    job_file = write_job(toy_model, tmp_path, train=train)
    run_dir = os.path.join(tmp_path, "run")
    reused = ["round-1/generate", "round-1/vote", "round-1/score", "round-1/iwsi/filter", "base/evaluate"]
    before = {stage: read_bytes(os.path.join(run_dir, stage, "manifest.json")) for stage in reused}
    driver = start_cli(job_file)
    try:
        deadline = time.time() + RUN_TIMEOUT
        while not committed_epochs(run_dir):
            assert driver.poll() is None, driver_log(job_file)[-5000:]
            assert time.time() < deadline, "no epoch checkpoint was registered"
            time.sleep(POLL)
        workers = [p for p in in_session(driver.pid) if "RayTrainWorker" in command_line(p)]
        assert workers, "the fine-tune's worker process was not found"
        workers[0].kill()
        driver.wait(timeout=RUN_TIMEOUT)
    finally:
        kill_session(driver)
    assert driver.returncode == 0, driver_log(job_file)[-5000:]

    for stage, manifest in before.items():
        assert read_bytes(os.path.join(run_dir, stage, "manifest.json")) == manifest, f"{stage} was redone"
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["methods"]["iwsi"]["train"]["resumed_from_epoch"] >= 1
    with open(os.path.join(run_dir, "round-1", "iwsi", "train", "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["optimizer_steps"] == manifest["expected_optimizer_steps"]
    per_epoch = -(-(manifest["rows_in"] // 2) // 2)  # micro batches of one rank's rows
    assert manifest["micro_batches"] == per_epoch * (epochs - manifest["resumed_from_epoch"]), "the restart redid only later epochs"
    assert len(set(manifest["parameter_digests"])) == 1, "both ranks hold the same weights"
    # The manifest's seconds are the stage's wall time, the workers' own loop time beside them.
    assert manifest["seconds"] > manifest["loop_seconds"] > 0
    assert "a training worker failed; Ray Train restarted the workers" in driver_log(job_file)
    assert summary["methods"]["iwsi"]["accuracy"] is not None
