"""``ray job submit`` against a real two-node Ray cluster that the ``ray`` CLI starts on 127.0.0.1.

The head and a worker node run as separate ``ray start`` daemons (token authentication on,
dashboard and job server bound to 127.0.0.1); the job ships this checkout as its working
directory and runs ``python -m dsw_ray run`` there. Its fine-tune asks for a resource only
the worker node has, so a finished run shows that the second node did real work.
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


def test_a_submitted_job_runs_a_round_on_two_nodes(cluster, toy_model, tmp_path):
    run_dir = tmp_path / "run"
    job = small_round(
        toy_model,
        run_dir,
        train={"zero_stage": 0, "epochs": 1, "micro_batch_size": 4, "resources_per_worker": {WORKER_RESOURCE: 1}},
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    runtime_env = {"excludes": [".cache", "runs", "docs", ".hypothesis", ".pytest_cache"]}
    submitted = submit(
        cluster, [f"--working-dir={ROOT}", f"--runtime-env-json={json.dumps(runtime_env)}",
                  "--", "python", "-m", "dsw_ray", "run", str(job_file)],
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
    # The job's own output: the accuracy table the CLI prints at the end.
    assert "IWSI" in submitted.stdout and "run directory:" in submitted.stdout

    summary = json.loads((run_dir / "summary.json").read_text())
    iwsi = summary["methods"]["iwsi"]
    assert summary["questions"] == 12 and summary["test"] == 10
    assert iwsi["candidates"]["generated"] == 24 and iwsi["kept"] > 0
    assert 0 <= iwsi["accuracy"] <= 1 and 0 <= summary["base_accuracy"] <= 1
    manifest = json.loads((run_dir / "round-1" / "iwsi" / "train" / "manifest.json").read_text())
    worker_node = node_with(cluster, WORKER_RESOURCE)
    assert [w.split("/")[0] for w in manifest["workers"]] == [worker_node]
    assert os.path.exists(run_dir / "round-1" / "iwsi" / "train" / "model" / "model.safetensors")
    assert (run_dir / "report.md").exists()
