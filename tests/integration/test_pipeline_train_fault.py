"""A training worker killed in the middle of a job's fine-tune: Ray Train restarts the workers
from the last epoch checkpoint, the job finishes, and the run reports the restart (the
fine-tune's own fault handling is tested in test_train_faults.py)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from tests.conftest import small_round

pytestmark = pytest.mark.ray


def committed_epochs(run_dir) -> list[int]:
    """Epochs whose checkpoint Ray Train has registered, from its snapshot in the run directory."""
    for path in glob.glob(os.path.join(run_dir, "round-1", "iwsi", "ray_train", "*", "checkpoint_manager_snapshot.json")):
        try:
            with open(path) as f:
                return [r["metrics"]["epoch"] for r in json.load(f)["checkpoint_results"] if "epoch" in r["metrics"]]
        except (json.JSONDecodeError, KeyError):
            return []
    return []


def training_workers(root: psutil.Process) -> list[psutil.Process]:
    """The job's Ray Train worker processes (its local Ray runs under the driver)."""
    workers = []
    for process in root.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                workers.append(process)
        except psutil.Error:
            pass
    return workers


def test_a_killed_training_worker_is_reported_and_the_job_finishes(toy_model, tmp_path):
    run_dir = tmp_path / "run"
    job = small_round(
        toy_model,
        run_dir,
        # Many short epochs: each ends in a checkpoint, so the kill lands between two of them.
        train={"zero_stage": 0, "epochs": 20, "micro_batch_size": 2, "max_failures": 2},
        ray={"num_cpus": 2},
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "dsw_ray", "run", str(job_file)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + 600
        while not committed_epochs(run_dir):
            assert driver.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "no epoch checkpoint was registered"
            time.sleep(0.1)
        workers = training_workers(psutil.Process(driver.pid))
        assert workers, "the fine-tune's worker process was not found"
        workers[0].kill()
        assert driver.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    summary = json.loads((run_dir / "summary.json").read_text())
    train = summary["methods"]["iwsi"]["train"]
    assert train["resumed_from_epoch"] >= 1
    manifest = json.loads((run_dir / "round-1" / "iwsi" / "train" / "manifest.json").read_text())
    assert manifest["optimizer_steps"] == manifest["expected_optimizer_steps"]
    # The manifest's seconds are the stage's wall time, the workers' own loop time beside them.
    assert manifest["seconds"] > manifest["loop_seconds"] > 0
    assert "a training worker failed; Ray Train restarted the workers" in log_path.read_text()
    assert summary["methods"]["iwsi"]["accuracy"] is not None
