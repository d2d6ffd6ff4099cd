"""Runs ``train_worker`` on every rank of a ``torchrun`` launch, without Ray: the tests use it
to give each rank exactly the same rows in the same order under every ZeRO stage.

    python -m torch.distributed.run --nproc_per_node 2 train_harness.py SPEC.json

SPEC: a list of fine-tunes, run one after the other in the same processes (a launch's
process start and imports cost more than a tiny fine-tune), each with ``plan`` (a
``TrainPlan`` as its ``to_json`` writes it), ``data`` (a parquet file of ``question``/``text`` rows),
``out`` (a folder: ``metrics-<rank>.json``, ``export/`` and each epoch's checkpoint in
``checkpoints/epoch-<n>``, or ``error-<rank>.txt`` when the loss diverged or a checkpoint was
refused) and optionally ``restore`` (a checkpoint folder to resume from). Rank r trains on rows r,
r + world, ... of the file (``train_worker.shard``), in the seeded order ``train_worker`` gives
each epoch, as a Ray Train worker does.
"""

import json
import os
import shutil
import sys

import pyarrow.parquet as pq
import torch.distributed as dist

from dsw_ray.train_worker import NonFiniteLoss, TrainPlan, UnsafeCheckpoint, shard, train_worker


def fine_tune(spec: dict, rank: int, world: int) -> None:
    rows = shard(pq.read_table(spec["data"]), rank, world)

    def report(metrics: dict, directory: str | None) -> None:
        if "parameter_digests" not in metrics:  # an epoch checkpoint: every rank's part in one folder
            shutil.copytree(directory, os.path.join(spec["out"], "checkpoints", f"epoch-{metrics['epoch']}"), dirs_exist_ok=True)
            return
        with open(os.path.join(spec["out"], f"metrics-{rank}.json"), "w") as f:
            json.dump(metrics, f)
        if directory:
            shutil.copytree(directory, os.path.join(spec["out"], "export"))

    try:
        train_worker(TrainPlan.from_json(spec["plan"]), rows, report, rank, world, spec.get("restore"), identity=f"rank-{rank}")
    except (NonFiniteLoss, UnsafeCheckpoint) as error:  # every rank stops at the same step; the test reads why
        with open(os.path.join(spec["out"], f"error-{rank}.txt"), "w") as f:
            f.write(str(error))
    dist.barrier()


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        specs = json.load(f)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo")
    for spec in specs:
        fine_tune(spec, rank, world)
    # Every file is written. Interpreter teardown with DeepSpeed's shared-memory comm threads
    # alive sometimes aborts ("terminate called without an active exception"): skip it.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
