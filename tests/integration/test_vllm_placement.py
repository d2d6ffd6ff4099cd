"""The vLLM backend's placement on a real Ray: with tensor parallelism each engine actor lives
in a placement group of one GPU bundle per rank, and the tasks it starts (vLLM's rank
workers) land in that group. Ray is given two logical GPUs; no GPU or vLLM is needed to
check where Ray puts things."""

import sys
import time

import numpy as np
import pytest
import ray
from ray import cloudpickle

from dsw_ray.config import GenerateConfig
from dsw_ray.resources import groups_released, pool_map
from dsw_ray.rundir import run_stage
from dsw_ray.vllm_backend import placement

pytestmark = pytest.mark.ray


@ray.remote(num_gpus=1, num_cpus=0)
def rank_worker() -> tuple[str, list]:
    """Stands where vLLM's Ray executor starts a rank worker."""
    return ray.util.get_current_placement_group().id.hex(), ray.get_gpu_ids()


class EngineProbe:
    """Stands where VllmGenerator builds its engine: reports the group it was placed in."""

    def __init__(self, threads: int):
        self.group = ray.util.get_current_placement_group()

    def __call__(self, batch):
        workers = ray.get([rank_worker.remote() for _ in range(2)])
        n = len(batch["id"])
        return {
            "id": batch["id"],
            "group": np.array([self.group.id.hex() if self.group else ""] * n),
            "bundles": np.array([len(self.group.bundle_specs) if self.group else 0] * n),
            "worker_groups": np.array([",".join(g for g, _ in workers)] * n),
            "worker_gpus": np.array([len(gpus) for _, gpus in workers][:1] * n),
        }


@pytest.fixture(scope="module")
def ray_with_gpus():
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_tensor_parallel_engine_gets_a_gpu_group_its_workers_share(ray_with_gpus):
    section = GenerateConfig(backend="vllm", gpus_per_actor=1, batch_size=2, vllm={"tensor_parallel_size": 2})
    with groups_released():  # the GPUs are free for the next test
        rows = pool_map(ray.data.range(4), EngineProbe, {}, section, "generate", **placement(section)).take_all()
    assert len(rows) == 4
    groups = {row["group"] for row in rows}
    assert len(groups) == 1 and "" not in groups  # one engine, inside a placement group
    assert {row["bundles"] for row in rows} == {2}
    # Both rank workers ran in the engine's group, each holding one of its GPUs.
    assert {row["worker_groups"] for row in rows} == {f"{next(iter(groups))},{next(iter(groups))}"}
    assert {row["worker_gpus"] for row in rows} == {1}


def test_a_stage_gives_its_engines_gpus_back_when_it_ends(ray_with_gpus, tmp_path):
    """An engine's placement group outlives the engine: left alone it would hold both GPUs
    until the job ends, and the next stage's engine would wait for them forever (ray#64035)."""
    section = GenerateConfig(backend="vllm", gpus_per_actor=1, batch_size=2, vllm={"tensor_parallel_size": 2})

    def produce(out: str) -> dict:
        pool = pool_map(ray.data.range(4), EngineProbe, {}, section, "generate", **placement(section))
        return {"rows": len(pool.take_all())}

    for stage in ("generate", "evaluate"):  # the second needs the GPUs the first used
        assert run_stage(str(tmp_path / stage), "fp", produce)["rows"] == 4
        states = [group["state"] for group in ray.util.placement_group_table().values()]
        assert states and set(states) == {"REMOVED"}
        deadline = time.time() + 30  # the driver's view of free resources lags a little
        while ray.available_resources().get("GPU") != 2 and time.time() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("GPU") == 2
