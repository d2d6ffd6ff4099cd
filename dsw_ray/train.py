"""Train: supervised fine-tuning on the kept candidates with Ray Train and DeepSpeed ZeRO.

``fine_tune_all`` runs a ``TorchTrainer`` whose workers each run ``train_worker.train_worker``
(one rank's loop, from a typed ``TrainPlan``: its module says how a rank trains) on their
shard of the kept samples, read from the filter stage's parquet (rows rank, rank + world, ...;
every rank the same count). Each epoch ends in a DeepSpeed checkpoint reported to Ray Train,
from which a restarted worker group or a rerun resumes; at the end rank 0 exports a Hugging
Face model directory.

One Ray Train run can hold several fine-tunes (a round's methods and seeds): the workers
start, import and join their process group once, then train each in turn. Rank 0 writes each
export straight to its folder (the run directory is on storage every node sees); a restarted
worker group skips the fine-tunes already exported and resumes the one its last epoch
checkpoint belongs to. Starting Ray Train's workers cost more than the quickstart's whole
training loop (docs/benchmarks.md).

The workers read the parquet themselves instead of iterating a Ray Data shard: for the
small kept sets of this method the shard's per-epoch iteration cost more than the training
(2.8 s of a 5 s epoch on the quickstart's 255 rows), and it re-tokenised every epoch. The run
directory is on a filesystem every node sees, as it is for every stage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable

from dsw_ray import columns as C
from dsw_ray import progress
from dsw_ray.config import ModelConfig, TrainConfig
from dsw_ray.errors import UserError
from dsw_ray.models import ModelSpec
from dsw_ray.train_worker import LOSS_HISTORY, TrainPlan, optimizer_steps, shard, train_worker

log = logging.getLogger(__name__)

FINE_TUNE_OF = "fine_tune.json"  # in an epoch checkpoint: the export folder of the fine-tune it belongs to
HEALTH_CHECK_INTERVAL_S = 0.2


@dataclass(frozen=True)
class PlannedRun:
    """One fine-tune of a Ray Train run as its workers see it: the kept samples (absolute), the
    model it starts from, its seed, its export folder and its optimizer steps."""

    data: str
    model_path: str
    seed: int
    export: str
    steps: int


def ray_train_loop(config: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: ``config["runs"]`` (``PlannedRun``s) in
    turn, each with ``config["plan"]`` starting from its model and seed. Each worker reads its
    shard of a run's kept samples; Ray supplies the rank, the report and the checkpoint to
    resume from."""
    import pyarrow.dataset as pads
    import ray.train

    context = ray.train.get_context()
    world, rank = context.get_world_size(), context.get_world_rank()
    identity = f"{ray.get_runtime_context().get_node_id()}/{os.getpid()}"
    reporter = step_reporter() if rank == 0 else None
    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts the workers, or the run resumes
    resumes = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, FINE_TUNE_OF)) as f:
                resumes = json.load(f)["export"]
    plan, total_steps, steps_before = config["plan"], config["total_steps"], 0
    for run in config["runs"]:
        if os.path.exists(os.path.join(run.export, LOSS_HISTORY)):  # an earlier attempt finished it
            steps_before += run.steps
            continue

        def report(metrics: dict, out_dir: str | None, export: str = run.export) -> None:
            saved = None
            if out_dir and os.path.exists(os.path.join(out_dir, LOSS_HISTORY)):  # rank 0's export
                staging = export + ".staging"
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(out_dir, staging)
                shutil.rmtree(export, ignore_errors=True)
                os.rename(staging, export)
            elif out_dir:  # an epoch checkpoint: it says which fine-tune it resumes
                with open(os.path.join(out_dir, FINE_TUNE_OF), "w") as f:
                    json.dump({"export": export}, f)
                saved = ray.train.Checkpoint.from_directory(out_dir)
                metrics = {**metrics, "fine_tune": export}
            ray.train.report(metrics, checkpoint=saved)

        columns = [C.QUESTION, C.TEXT]
        dataset = pads.dataset(run.data, format="parquet")
        if C.LOSS_WEIGHT in dataset.schema.names:
            columns.append(C.LOSS_WEIGHT)
        rows = shard(dataset.to_table(columns=columns), rank, world)
        on_step = None if reporter is None else (
            lambda step, steps, loss, before=steps_before: reporter(before + step, total_steps, loss)
        )
        run_plan = plan.starting_from(run.model_path, run.seed)
        if resumes == run.export:
            with checkpoint.as_directory() as restore:
                log.info("rank %d: resuming from %s", rank, restore)
                train_worker(run_plan, rows, report, rank, world, restore, identity, on_step)
        else:
            train_worker(run_plan, rows, report, rank, world, identity=identity, on_step=on_step)
        # Only the first fine-tune this attempt runs may resume: any other has replaced the checkpoint.
        resumes, steps_before = None, steps_before + run.steps


def step_reporter(every_seconds: float = 0.5) -> Callable[[int, int, float], None] | None:
    """Rank 0's steps and loss to the driver's progress tally (at most twice a second, and the
    last step), or None when the driver shows no progress."""
    handle = progress.tally()
    if handle is None:
        return None
    last = 0.0

    def on_step(step: int, steps: int, loss: float) -> None:
        nonlocal last
        if time.time() - last >= every_seconds or step >= steps:
            handle.set.remote(step=step, total=steps, loss=loss)
            last = time.time()

    return on_step


def train_plan(
    train: TrainConfig, model: ModelConfig, model_path: str, threads: int | None, heldout=(), prompt_format: str = "few_shot"
) -> TrainPlan:
    """The workers' plan for fine-tuning ``model_path`` (loaded as ``model`` says) with the
    train section's settings and seed. ``heldout``: ``(question, answer)`` pairs whose loss the
    workers report after every epoch; ``prompt_format``: the task's (``prompting``)."""
    heldout = tuple((str(q), str(a)) for q, a in heldout)
    return TrainPlan(train, ModelSpec.of(model_path, model), train.seed, threads, prompt_format, heldout)


@dataclass(frozen=True)
class FineTune:
    """One fine-tune of a Ray Train run: its kept samples (a parquet file or folder on storage
    every node sees), the model it starts from, its seed and the folder its export goes to."""

    kept: str
    model_path: str
    out_dir: str
    seed: int


def fine_tune(
    kept: str, train: TrainConfig, model: ModelConfig, model_path: str, out_dir: str, storage_dir: str,
    run_name: str = "train", heldout=(), prompt_format: str = "few_shot",
) -> dict:
    """The train stage: fine-tune on the kept samples (``kept``: a parquet file or folder on a
    filesystem every node sees), export to ``out_dir``; its metrics (``fine_tune_all``)."""
    (metrics,) = fine_tune_all(
        [FineTune(kept, model_path, out_dir, train.seed)], train, model, storage_dir, run_name, heldout, prompt_format
    )
    return metrics


def fine_tune_all(
    runs: list[FineTune], train: TrainConfig, model: ModelConfig, storage_dir: str, run_name: str = "train", heldout=(),
    prompt_format: str = "few_shot",
) -> list[dict]:
    """Several fine-tunes with ``train``'s settings in one Ray Train run (its workers started
    once), each exported to its ``out_dir``; each one's metrics, in order. ``heldout``:
    ``(question, answer)`` pairs whose loss the workers report after every epoch.

    Ray Train keeps the run's checkpoints under ``storage_dir/run_name``: when a worker dies
    it restarts the workers from the last one (up to ``train.max_failures`` times), and a
    later call with the same name resumes an interrupted run. An ``out_dir`` that holds a
    finished export (its loss history) is kept, not trained again: give fresh folders, or the
    ones an interrupted call of these same fine-tunes filled.
    """
    import pyarrow.dataset as pads
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dsw_ray.resources import pool_cpus, torch_threads, training_cpus

    if train.cpus_per_worker is None and not train.use_gpu:
        cpus = training_cpus(train.num_workers, [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]])
    else:
        cpus = pool_cpus(train.num_workers, train.cpus_per_worker, ray.cluster_resources().get("CPU", 1), "train")
    plan = train_plan(train, model, runs[0].model_path, torch_threads(cpus), heldout, prompt_format)
    planned = []
    for run in runs:
        num_samples = pads.dataset(os.path.abspath(run.kept), format="parquet").count_rows()
        if num_samples < train.num_workers:
            raise UserError(
                f"train: {num_samples} kept sample(s) cannot feed {train.num_workers} workers; "
                "lower train.num_workers or keep more candidates."
            )
        planned.append(PlannedRun(
            os.path.abspath(run.kept), run.model_path, run.seed, os.path.abspath(run.out_dir),
            optimizer_steps(num_samples // train.num_workers, train),
        ))  # fmt: skip
        if not os.path.exists(os.path.join(run.out_dir, LOSS_HISTORY)):  # kept: an earlier attempt finished it
            shutil.rmtree(run.out_dir, ignore_errors=True)
    total_steps = sum(run.steps for run in planned)
    progress.expect(total_steps)  # the stage's progress counts optimizer steps
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config={"plan": plan, "runs": planned, "total_steps": total_steps},
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": cpus, **train.resources_per_worker},
        ),
        run_config=RunConfig(
            storage_path=os.path.abspath(storage_dir),
            name=run_name,
            failure_config=FailureConfig(max_failures=train.max_failures),
            # The last epoch's checkpoint is all a restart needs (DeepSpeed's can be large).
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    # Ray Train's controller polls its workers every 2 s by default, and a fine-tune's state
    # changes (workers up, each report, done) each wait for a poll: about 5 s of every
    # fine-tune (docs/benchmarks.md). The driver's value reaches the controller; a user's own
    # is kept.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
    trainer.fit()
    # The exports are in place: the run's checkpoints would only take disk space.
    shutil.rmtree(os.path.join(storage_dir, run_name), ignore_errors=True)
    metrics = []
    for run in runs:
        with open(os.path.join(run.out_dir, LOSS_HISTORY)) as f:
            metrics.append(json.load(f)["metrics"])
    return metrics
