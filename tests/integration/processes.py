"""Real processes killed mid-run, for the fault tests: a driver and every process of its
session (test_faults.py, test_train_faults.py), and a Ray Data pool's actor SIGKILLed once its
stage has written a batch, then seen to be restarted (test_faults.py, test_vllm_cpu.py)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import threading
import time

import psutil
import pyarrow.parquet as pq

POLL = 0.05


def in_session(session_id: int) -> list[psutil.Process]:
    """The live processes of a session (a killed one stays a zombie until its new parent reaps it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (OSError, psutil.Error):
            pass
    return found


def kill_session(driver: subprocess.Popen) -> None:
    """SIGKILL a driver's process group (it, its GCS and raylet), then the rest of its session:
    Ray's workers lead process groups of their own, and would only exit once they notice
    the raylet is gone."""
    if driver.poll() is None:  # once reaped, its pid (the group's id) may be another's
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    deadline = time.time() + 60
    while survivors := in_session(driver.pid):
        for process in survivors:
            try:
                process.kill()
            except psutil.Error:
                pass
        assert time.time() < deadline, f"processes of the killed driver's session live on: {survivors}"
        time.sleep(POLL)


def actor_processes(actor_class: str) -> list[psutil.Process]:
    """This process's Ray workers that are actors of ``actor_class`` in a pool (Ray runs them
    under our raylet and titles them ``MapBatches(<class>)``)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if f"MapBatches({actor_class})" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


def rows_written(data_dir: str) -> int:
    """Rows in the complete parquet files of a stage being written (a file being written is skipped)."""
    rows = 0
    for path in glob.glob(os.path.join(data_dir, "*.parquet")):
        try:
            rows += pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 (half written: pyarrow raises several kinds)
            pass
    return rows


def pool_actors(actor_class: str) -> dict[str, dict]:
    """The GCS actor table's entries of ``actor_class`` (the state API needs the dashboard,
    which the tests leave off)."""
    from ray._private.state import actors

    return {key: a for key, a in actors().items() if actor_class in a["ActorClassName"]}


def held_back(dataset, out: str, let_through: set[str]):
    """``dataset`` with each block whose first ``question_id`` is not in ``let_through`` held until
    the stage writes its first file into ``out``: a pool whose calls outrun the writer (vLLM's
    on a toy, both cores busy with other tests) could otherwise take its last batch before the
    kill, and Ray Data then releases the killed actor instead of restarting it. The held blocks
    take no CPU, which the writer needs."""
    data = os.path.join(out, "data")

    def after_the_first_file(batch):
        if str(batch["question_id"][0]) not in let_through:
            while not (os.path.isdir(data) and os.listdir(data)):
                time.sleep(POLL)
        return batch

    return dataset.map_batches(after_the_first_file, batch_size=None, num_cpus=0)


def kill_one_actor_mid_stage(stage, actor_class: str, out: str, total_rows: int, timeout: float = 600) -> dict:
    """Run ``stage()`` (a pool of one ``actor_class`` actor writing ``total_rows`` rows to
    ``out``) in a thread, SIGKILL the actor once ``out`` holds a complete file, and return the
    stage's result once it finishes, after checking that Ray Data brought the same actor back
    (one restart, in a new process): Ray Data 2.60 gives pool actors max_restarts=-1 and
    max_task_retries=-1 (ActorPoolMapOperator._apply_default_remote_args)."""
    before = set(pool_actors(actor_class))
    outcome = {}

    def run():
        try:
            outcome["result"] = stage()
        except BaseException as error:  # noqa: BLE001 (reported by the test thread)
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    deadline = time.time() + timeout
    while not (actor_processes(actor_class) and rows_written(os.path.join(out, "data"))):
        assert worker.is_alive(), f"the stage ended before the kill: {outcome}"
        assert time.time() < deadline, f"the {actor_class} actor never wrote a batch"
        time.sleep(POLL)
    [victim] = actor_processes(actor_class)
    written_at_kill = rows_written(os.path.join(out, "data"))
    victim.kill()
    killed_at = time.time()
    victim.wait(timeout=30)
    assert written_at_kill < total_rows, "the kill came after the stage's last batch"
    replacements = set()
    while worker.is_alive() and time.time() < killed_at + timeout:
        replacements |= {p.pid for p in actor_processes(actor_class)} - {victim.pid}
        worker.join(POLL)
    assert not worker.is_alive(), "the stage did not finish after the kill"
    assert "error" not in outcome, outcome.get("error")

    pool = [a for key, a in pool_actors(actor_class).items() if key not in before]
    assert len(pool) == 1 and pool[0]["NumRestarts"] == 1, pool
    assert replacements, f"a new {actor_class} actor process took over"
    return outcome["result"]
