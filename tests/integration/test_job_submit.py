"""``ray job submit`` against a real two-node Ray cluster that the ``ray`` CLI starts on 127.0.0.1.

The head and a worker node run as separate ``ray start`` daemons (token authentication on,
dashboard and job server bound to 127.0.0.1); the job ships this checkout as its working
directory and runs ``python -m dsw_ray sweep`` there (a study of two points). Its fine-tunes
ask for a resource only the worker node has, so a finished run shows that the second node did
real work.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import yaml

from tests.conftest import ROOT, small_round

pytestmark = pytest.mark.ray

WORKER_RESOURCE = "dsw_worker_slot"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: str) -> None:
    """Stop this cluster's processes only (``ray stop`` would stop every Ray on the machine):
    the daemons that name its temp dir, and everything they started."""
    import psutil

    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}
    roots = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.pid not in spared and any(temp_dir in part for part in process.info["cmdline"] or ()):
                roots.append(process)
        except psutil.Error:
            pass
    tree = {p.pid: p for root in roots for p in [root, *safe_children(root)] if p.pid not in spared}
    for process in tree.values():
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(tree.values()), timeout=10)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def safe_children(process):
    import psutil

    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(scope="module")
def cluster():
    # A short temp dir of its own: Ray's socket paths must stay under 108 bytes, and a local
    # ray.init() elsewhere must not find this cluster as "the current one".
    temp_dir = tempfile.mkdtemp(prefix="dswjob-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    # Every Ray node's dashboard agent listens on 52365 unless told otherwise. While another
    # test's Ray holds it (two test processes), the head's agent cannot serve, and the job
    # server refuses every job ("No available agent to submit job").
    try:
        subprocess.run(
            ["ray", "start", "--head", f"--port={gcs_port}", f"--temp-dir={temp_dir}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
             f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            ["ray", "start", f"--address=127.0.0.1:{gcs_port}", f"--resources={json.dumps({WORKER_RESOURCE: 1})}",
             f"--dashboard-agent-listen-port={free_port()}", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield {"env": env, "address": f"http://127.0.0.1:{dashboard_port}", "gcs": f"127.0.0.1:{gcs_port}"}
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def node_with(cluster, resource: str) -> str:
    """The id of the alive node that has ``resource``, from the cluster's own state API."""
    listed = subprocess.run(
        ["ray", "list", "nodes", "--format=json", f"--address={cluster['gcs']}"],
        env=cluster["env"], check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    nodes = [n for n in json.loads(listed.stdout) if n["state"] == "ALIVE"]
    assert len(nodes) == 2, nodes
    return next(n["node_id"] for n in nodes if resource in n["resources_total"])


def submit(cluster, args: list[str], agent_wait_s: float = 120) -> subprocess.CompletedProcess:
    """``ray job submit``, again while the head's dashboard agent has not registered yet: it can
    come up after ``ray start`` returns, and the job server then refuses the job without
    starting it ("No available agent to submit job")."""
    deadline = time.time() + agent_wait_s
    while True:
        submitted = subprocess.run(
            ["ray", "job", "submit", f"--address={cluster['address']}", *args],
            env=cluster["env"], capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if "No available agent to submit job" not in submitted.stdout + submitted.stderr or time.time() > deadline:
            return submitted
        time.sleep(2)


def test_a_submitted_study_runs_its_points_on_two_nodes_sharing_their_candidates(cluster, toy_model, tmp_path):
    """A study (``dsw-ray sweep``) of two learning rates as one submitted job: the first point is
    a whole round, the second takes every stage before its fine-tune from the study's store."""
    job = small_round(
        toy_model,
        tmp_path / "set-by-the-study",
        train={"zero_stage": 0, "epochs": 1, "micro_batch_size": 4, "resources_per_worker": {WORKER_RESOURCE: 1}},
    )
    # Two scoring actors on two nodes of one CPU each leave half a CPU on each node: the light
    # tasks beside the pool must still start (resources.TASK_CPUS).
    job["score"] = {"actors": 2}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(
        {"job": "job.yaml", "out": str(tmp_path / "study"), "grid": {"train.learning_rate": [1.0e-4, 3.0e-4]}}
    ))  # fmt: skip
    runtime_env = {"excludes": [".cache", "runs", "docs", ".hypothesis", ".pytest_cache"]}
    submitted = submit(
        cluster, [f"--working-dir={ROOT}", f"--runtime-env-json={json.dumps(runtime_env)}",
                  "--", "python", "-m", "dsw_ray", "sweep", str(study_file)],
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
    # The job's own output: the scaling report the CLI prints at the end.
    assert "# Scaling study: 2 points over train.learning_rate" in submitted.stdout
    assert "Ray cluster: 2 nodes, 2 CPUs, 0 GPUs" in submitted.stdout and "study folder:" in submitted.stdout

    first, second = (tmp_path / "study" / "points" / name for name in ("learning_rate=0.0001", "learning_rate=0.0003"))
    summary = json.loads((first / "summary.json").read_text())
    iwsi = summary["methods"]["iwsi"]
    assert summary["questions"] == 12 and summary["test"] == 10
    assert iwsi["candidates"]["generated"] == 24 and iwsi["kept"] > 0
    assert 0 <= iwsi["accuracy"] <= 1 and 0 <= summary["base_accuracy"] <= 1
    manifest = lambda run_dir, stage: json.loads((run_dir / stage / "manifest.json").read_text())  # noqa: E731
    worker_node = node_with(cluster, WORKER_RESOURCE)
    for run_dir in (first, second):
        assert [w.split("/")[0] for w in manifest(run_dir, "round-1/iwsi/train")["workers"]] == [worker_node]
        assert os.path.exists(run_dir / "round-1" / "iwsi" / "train" / "model" / "model.safetensors")
        assert (run_dir / "report.md").exists()
    # The learning rate changes the fine-tune only: the second point computed it and its
    # evaluation, and linked the rest from the store (the same files, not copies).
    for stage in ("base/evaluate", "round-1/generate", "round-1/vote", "round-1/score", "round-1/iwsi/filter"):
        assert "reused_from" not in manifest(first, stage)
        assert manifest(second, stage)["reused_from"] == str(first / stage)
    for stage in ("round-1/iwsi/train", "round-1/iwsi/evaluate"):
        assert "reused_from" not in manifest(second, stage)
    parquet = lambda run_dir: next((run_dir / "round-1" / "generate" / "data").glob("*.parquet"))  # noqa: E731
    assert os.path.samefile(parquet(first), parquet(second))
    assert manifest(first, "round-1/iwsi/train")["final_loss"] != manifest(second, "round-1/iwsi/train")["final_loss"]
    # Each point keeps its own log (the CLI's session moves from one run directory to the next).
    assert "round-1/generate: done in" in (first / "dsw-ray.log").read_text()
    assert "round-1/generate: taken from the store" in (second / "dsw-ray.log").read_text()
    second_summary = json.loads((second / "summary.json").read_text())
    assert second_summary["base_accuracy"] == summary["base_accuracy"]
    assert second_summary["methods"]["iwsi"]["kept"] == iwsi["kept"]

    numbers = json.loads((tmp_path / "study" / "scaling.json").read_text())
    assert numbers["cluster"] == {"nodes": 2, "cpus": 2.0, "gpus": 0.0}
    assert numbers["stages"]["round-1/generate"][second.name] == {
        "stage": "generate", "units": 1, "held": "1 actor (CPUs shared)", "reused_from": [first.name]}
    train = numbers["stages"]["round-1/train"]
    assert train[first.name]["unit"] == "samples" and train[first.name]["work"] == iwsi["kept"]
    assert train[second.name]["kind"] == "same actors" and train[second.name]["smallest"] == first.name
    assert f"| {second.name} | 0.0003 | 2 |" in submitted.stdout  # two stages computed: train and evaluate
