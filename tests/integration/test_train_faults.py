"""The train stage under Ray Train with a driver killed mid-run and started again: the
fine-tune it finished is kept, the one it was in resumes from its last epoch checkpoint.
Real processes, real signals. (A training worker killed mid-run is tested on a whole job in
test_faults.py.)"""

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsw_ray import get_task
from dsw_ray.tasks import SplitSizes
from tests.integration.processes import kill_session

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a fault injected into a whole fine-tune: the slow lane (pyproject.toml)

DRIVER = os.path.join(os.path.dirname(__file__), "train_driver.py")
ROWS, EPOCHS, MICRO, ACCUMULATION = 200, 4, 2, 4


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    examples = get_task("arith").load(None, SplitSizes(4, ROWS, 4, seed=11)).valid
    path = tmp_path_factory.mktemp("data") / "rows.parquet"
    pq.write_table(pa.table({"question": [e.question for e in examples], "text": [e.rationale for e in examples]}), path)
    return str(path)


def expected_steps(workers: int) -> int:
    """Computed here from the config, independently of the trainer's own count."""
    micro_batches = -(-(ROWS // workers) // MICRO) * EPOCHS
    return micro_batches // ACCUMULATION


def start(tmp_path, model, rows_file, workers: int):
    spec = {
        "job": {
            "run_dir": str(tmp_path),
            "task": {"name": "arith"},
            "model": {"path": model},
            "train": {"num_workers": workers, "epochs": EPOCHS, "micro_batch_size": MICRO,
                      "gradient_accumulation_steps": ACCUMULATION, "zero_stage": 2, "max_failures": 2},
        },
        "model": model,
        "data": rows_file,
        "outs": [str(tmp_path / "first"), str(tmp_path / "second")],
        "storage": str(tmp_path / "ray_train"),
        "run_name": "train-test",
        "num_cpus": 2,
    }
    with open(tmp_path / "spec.json", "w") as f:
        json.dump(spec, f)
    log = open(tmp_path / "driver.log", "a")
    return subprocess.Popen(
        [sys.executable, DRIVER, str(tmp_path / "spec.json")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def committed_epochs(tmp_path, fine_tune: str) -> list[int]:
    """Epoch checkpoints of ``fine_tune`` (its export folder) that Ray Train has registered
    (every rank reported), from its snapshot file."""
    try:
        with open(tmp_path / "ray_train" / "train-test" / "checkpoint_manager_snapshot.json") as f:
            results = json.load(f)["checkpoint_results"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []
    return [r["metrics"]["epoch"] for r in results if r["metrics"].get("fine_tune") == fine_tune]


def wait_for_checkpoint(tmp_path, process, fine_tune: str, timeout=400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if committed_epochs(tmp_path, fine_tune):
            return
        assert process.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"no epoch checkpoint of {fine_tune} was registered")


def metrics_of(tmp_path, process, timeout=400) -> list[dict]:
    process.wait(timeout=timeout)
    output = (tmp_path / "driver.log").read_text()
    assert process.returncode == 0, output[-4000:]
    line = [line for line in output.splitlines() if line.startswith("METRICS ")][-1]
    # Ray's forwarded log lines share the driver's stdout and can land on the same line.
    return json.JSONDecoder().raw_decode(line[len("METRICS "):])[0]


@pytest.mark.timeout(900)
def test_killed_driver_keeps_the_finished_fine_tune_and_resumes_the_next(tiny_model, rows_file, tmp_path):
    first = start(tmp_path, tiny_model, rows_file, workers=1)
    try:
        wait_for_checkpoint(tmp_path, first, str(tmp_path / "second"))
    finally:
        # The driver, the Ray it started and its training worker, which leads a process group
        # of its own: none of them may outlive the kill and share the rerun's cores.
        kill_session(first)
    finished = tmp_path / "first" / "loss_history.json"
    before = (finished.read_bytes(), finished.stat().st_mtime_ns)
    again = start(tmp_path, tiny_model, rows_file, workers=1)
    try:
        kept, resumed = metrics_of(tmp_path, again)
    finally:
        kill_session(again)
    assert (finished.read_bytes(), finished.stat().st_mtime_ns) == before, "the finished fine-tune was trained again"
    assert kept["resumed_from_epoch"] == 0 and kept["optimizer_steps"] == expected_steps(1)
    assert 1 <= resumed["resumed_from_epoch"] < EPOCHS, "killed between two epochs, not after the last"
    assert resumed["optimizer_steps"] == expected_steps(1)
