"""The train stage on a real multi-node Ray cluster on this machine: a head and two worker
nodes, a custom resource that only the worker nodes have, one training worker on each."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsw_ray import get_task
from dsw_ray.config import JobConfig
from dsw_ray.tasks import SplitSizes

# Training across nodes (the default run's two-node cluster is test_job_submit.py's): the slow lane.
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, resources={"train_slot": 1}) for _ in range(2)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster, {node.node_id for node in workers}
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.timeout(600)
def test_one_training_worker_on_each_node(tiny_model, tmp_path, cluster):
    from dsw_ray.train import fine_tune

    _, worker_nodes = cluster
    examples = get_task("arith").load(None, SplitSizes(4, 16, 4, seed=5)).valid
    kept = str(tmp_path / "kept.parquet")  # every node reads it: one machine's filesystem here, shared on a cluster
    pq.write_table(pa.table({"question": [e.question for e in examples], "text": [e.rationale for e in examples]}), kept)
    job = JobConfig.model_validate(
        {
            "run_dir": str(tmp_path),
            "task": {"name": "arith"},
            "model": {"path": tiny_model},
            "train": {"num_workers": 2, "resources_per_worker": {"train_slot": 1}, "epochs": 2, "micro_batch_size": 2,
                      "zero_stage": 3},
        }
    )
    metrics = fine_tune(kept, job.train, job.model, tiny_model, str(tmp_path / "model"), str(tmp_path / "ray_train"))
    nodes = [worker.split("/")[0] for worker in metrics["workers"]]
    assert set(nodes) == worker_nodes, "each worker node ran one training worker"
    assert metrics["optimizer_steps"] == metrics["expected_optimizer_steps"] == 8  # 8 rows/worker, micro 2, 2 epochs
    assert len(set(metrics["parameter_digests"])) == 1
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert not (tmp_path / "ray_train" / "train").exists(), "the run's own copy is removed after the export"
