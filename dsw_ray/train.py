"""Train: supervised fine-tuning on the kept candidates with Ray Train and DeepSpeed ZeRO.

``fine_tune`` runs a ``TorchTrainer`` whose workers each run ``train_worker``: the model
(full, or wrapped in a peft LoRA adapter) goes through ``deepspeed.initialize`` with
torch's AdamW (no DeepSpeed op to compile), the worker reads its shard of the kept samples
from the filter stage's parquet (rows rank, rank + world, ...; every rank the same count)
and encodes it once, with the prompt masked and EOS closing the answer; each epoch visits
the shard in a fresh seeded order. DeepSpeed owns gradient
accumulation, clipping and the ZeRO partitioning. A micro batch's loss is the mean over
its samples of ``loss_weight * (mean token loss of the sample)``: the per-sample loss the
DS weight is computed from, weighted by the filter (1 unless the method weights). Each
epoch ends in a DeepSpeed checkpoint reported to Ray Train, from which a restarted worker
group or a rerun resumes. At the end every rank takes part in gathering the parameters (a
no-op below ZeRO-3) and rank 0 exports a Hugging Face model directory (LoRA merged into
the weights, the adapter beside it).

One Ray Train run can hold several fine-tunes (``fine_tune_all``: a round's methods and
seeds): the workers start, import and join their process group once, then train each in
turn. Rank 0 writes each export straight to its folder (the run directory is on storage
every node sees); a restarted worker group skips the fine-tunes already exported and
resumes the one its last epoch checkpoint belongs to. Starting Ray Train's workers cost
more than the quickstart's whole training loop (docs/benchmarks.md).

``train_worker`` needs no Ray: give it its rows and a report function and it runs as a
single process at world size 1.

The workers read the parquet themselves instead of iterating a Ray Data shard: for the
small kept sets of this method the shard's per-epoch iteration cost more than the training
(2.8 s of a 5 s epoch on the quickstart's 255 rows), and it re-tokenised every epoch. The run
directory is on a filesystem every node sees, as it is for every stage.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from dsw_ray import columns as C
from dsw_ray import progress
from dsw_ray.config import ModelConfig, TrainConfig
from dsw_ray.deepspeed_settings import deepspeed_config
from dsw_ray.errors import UserError
from dsw_ray.models import load_tokenizer
from dsw_ray.sft import batched_losses, encode_example, pack_batch, packed_sequence_losses, pad_batch, sequence_losses

log = logging.getLogger(__name__)

LOSS_HISTORY = "loss_history.json"
FINE_TUNE_OF = "fine_tune.json"  # in an epoch checkpoint: the export folder of the fine-tune it belongs to
HEALTH_CHECK_INTERVAL_S = 0.2


def optimizer_steps(num_samples_per_worker: int, settings: dict) -> int:
    """Optimizer steps the run makes: every ``accumulation`` micro batches, across epochs."""
    per_epoch = math.ceil(num_samples_per_worker / settings["micro_batch_size"])
    return per_epoch * settings["epochs"] // settings["gradient_accumulation_steps"]


def build_model(settings: dict):
    """The model to train: the base model, wrapped in a LoRA adapter when configured."""
    import torch
    from transformers import AutoModelForCausalLM

    # Master weights stay float32; DeepSpeed casts for bf16/fp16 compute on GPU.
    model = AutoModelForCausalLM.from_pretrained(
        settings["model_path"],
        dtype=torch.float32,
        trust_remote_code=settings["trust_remote_code"],
        use_safetensors=True,
    )
    if settings["lora"]:
        from peft import LoraConfig, get_peft_model

        lora = settings["lora"]
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"],
                task_type="CAUSAL_LM",
            ),
        )
    return model


def export(state: dict, settings: dict, out_dir: str) -> None:
    """Write a Hugging Face directory from a full (gathered) state dict: LoRA merged."""
    import torch

    model = build_model(settings)
    model.load_state_dict(state)
    if settings["lora"]:
        model.save_pretrained(os.path.join(out_dir, "adapter"))
        model = model.merge_and_unload()
    model.to(dtype=getattr(torch, settings["dtype"])).save_pretrained(out_dir)
    load_tokenizer(settings["model_path"], settings["trust_remote_code"]).save_pretrained(out_dir)


def make_optimizer(parameters, settings: dict):
    """torch's AdamW; with optimizer offload, DeepSpeed's CPU Adam (what ZeRO-Offload expects)."""
    import torch

    kwargs = dict(lr=settings["learning_rate"], betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"])
    if settings["offload_optimizer"]:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(parameters, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(parameters, **kwargs)


def lr_schedule(settings: dict, total_steps: int) -> Callable[[int], float]:
    """Warmup, then constant, linear or cosine decay over ``total_steps``."""
    total_steps = max(1, total_steps)
    warmup = math.floor(settings["warmup_fraction"] * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if settings["lr_schedule"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress if settings["lr_schedule"] == "linear" else 1.0

    return factor


def gather(value, world_size: int) -> list:
    """Every rank's ``value``, on every rank."""
    if world_size == 1:
        return [value]
    import torch.distributed as dist

    values = [None] * world_size
    dist.all_gather_object(values, value)
    return values


class NonFiniteLoss(RuntimeError):
    """A fine-tune's loss became NaN or infinite: the weights are ruined, so it stops there."""


class UnsafeCheckpoint(UserError):
    """An epoch checkpoint holds more than tensors and DeepSpeed's own records: resuming from it
    would run whatever its pickle says, so it is refused."""


def load_weights_only(path: str, map_location=None):
    """A DeepSpeed checkpoint file through torch's weights-only unpickler: tensors, plain data
    and the few DeepSpeed records its optimizer states hold, never code. DeepSpeed's own loader
    unpickles anything, and the checkpoints lie on the run's shared storage."""
    import pickle

    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            reason = str(error).split("WeightsUnpickler error: ")[-1].split(". ")[0]
            raise UnsafeCheckpoint(
                f"the epoch checkpoint {path} was not resumed: it holds more than weights ({reason}). "
                "Delete the run's ray_train folder to train this fine-tune from its start."
            ) from None


def require_space(folder: str, needed_bytes: int, what: str) -> None:
    """Fail before writing ``what`` into ``folder`` when its disk has less than ``needed_bytes``
    free: a clear error, not a checkpoint cut off by a full disk."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise UserError(
            f"train: {what} needs about {needed_bytes / 2**30:.2f} GiB in {folder}, which has {free / 2**30:.2f} GiB "
            "free. Point TMPDIR at a larger disk for the training workers (runtime_env env_vars), or free space there."
        )


def checkpoint_bytes(engine, settings: dict, world_size: int) -> int:
    """About what one rank's epoch checkpoint writes: the weights it saves (the adapter alone
    with LoRA) and 12 bytes per trainable parameter (fp32 copy and AdamW's two moments),
    partitioned across ranks above ZeRO stage 0."""
    saved = [p for p in engine.module.parameters() if p.requires_grad or not settings.get("lora")]
    weights = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in saved)
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad)
    states = 12 * trainable // (world_size if settings["zero_stage"] else 1)
    return weights + states


def all_finite(loss, world_size: int) -> bool:
    """Whether the loss is finite on every rank (a collective, so that every rank stops together)."""
    import torch
    import torch.distributed as dist

    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def parameter_digest(module) -> str:
    """A short fingerprint of the (gathered) weights: equal digests, equal weights to within
    float summation order. Per-tensor sums are cheap even for large models."""
    import hashlib

    import torch

    with torch.no_grad():
        sums = [float(p.detach().double().sum()) for p in module.parameters()]
    return hashlib.sha256(repr(sums).encode()).hexdigest()[:16]


def peak_memory_mb() -> float:
    """This process's peak memory: GPU memory allocated on CUDA, else resident set size."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def heldout_loss(engine, tokenizer, examples: list, settings: dict) -> float | None:
    """Mean per-sample loss of held-out ``(question, answer)`` pairs under the trained weights.
    Every rank runs it (a ZeRO-3 forward is a collective)."""
    if not examples:
        return None
    engine.eval()
    encoded = [
        encode_example(tokenizer, q, a, settings["max_length"], prompt_format=settings["prompt_format"]) for q, a in examples
    ]
    collate = functools.partial(pad_batch, pad_token_id=tokenizer.pad_token_id)
    return float(batched_losses(engine, encoded, settings["micro_batch_size"], collate).mean())


def shard(rows, rank: int, world_size: int):
    """A rank's rows of a pyarrow table: rank, rank + world, ..., cut to ``num_rows // world``
    so that every rank makes the same number of steps (a collective waits for every rank)."""
    per_rank = rows.num_rows // world_size
    return rows.take(list(range(rank, per_rank * world_size, world_size)))


def micro_batches(count: int, micro_batch_size: int, seed: int, epoch: int):
    """Row indexes of each micro batch of an epoch: a fresh seeded order every epoch, the same
    order again when a restarted worker resumes at that epoch."""
    import numpy as np

    order = np.random.default_rng([seed, epoch]).permutation(count)
    return [order[start : start + micro_batch_size].tolist() for start in range(0, count, micro_batch_size)]


def train_worker(
    settings: dict,
    rows,
    report: Callable[[dict, str | None], None],
    rank: int = 0,
    world_size: int = 1,
    restore: str | None = None,
    identity: str = "",
    on_step: Callable[[int, int, float], None] | None = None,
) -> None:
    """One worker's fine-tuning on ``rows``, its shard (a pyarrow table of ``question``, ``text``
    and optionally ``loss_weight``).

    After each epoch but the last, every rank saves its part of a DeepSpeed checkpoint and
    calls ``report(metrics, checkpoint_dir)``; at the end every rank calls
    ``report(metrics, export_dir_or_None)``, with the Hugging Face export on rank 0.
    ``restore`` is a checkpoint folder from an earlier attempt: training goes on after its
    epoch with the optimizer, schedule and step count it saved.
    """
    import deepspeed
    import torch

    torch.manual_seed(settings["seed"])
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    tokenizer = load_tokenizer(settings["model_path"], settings["trust_remote_code"])
    examples = [
        encode_example(tokenizer, str(q), str(t), settings["max_length"], prompt_format=settings["prompt_format"])
        for q, t in zip(rows[C.QUESTION].to_pylist(), rows[C.TEXT].to_pylist())
    ]
    loss_weights = rows[C.LOSS_WEIGHT].to_pylist() if C.LOSS_WEIGHT in rows.column_names else [1.0] * len(examples)
    model = build_model(settings)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], settings)
    expected_steps = optimizer_steps(len(examples), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(settings, expected_steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(settings, world_size),
        dist_init_required=False,
    )
    first_epoch, history, heldout_history = 0, [], []
    engine.checkpoint_engine.load = load_weights_only
    if restore:
        # A LoRA checkpoint holds the adapter alone: the frozen base weights come from the model.
        _, client_state = engine.load_checkpoint(restore, load_module_strict=not settings.get("lora"))
        first_epoch, history = client_state["epoch"], client_state["history"]
        heldout_history = client_state.get("heldout_history", [])
    started, micro_batches_run = time.time(), 0
    for epoch in range(first_epoch, settings["epochs"]):
        engine.train()
        for batch in micro_batches(len(examples), settings["micro_batch_size"], settings["seed"], epoch):
            weights = torch.tensor([loss_weights[i] for i in batch], dtype=torch.float32, device=engine.device)
            if settings.get("packing"):
                tensors = {k: v.to(engine.device) for k, v in pack_batch([examples[i] for i in batch]).items()}
                losses = packed_sequence_losses(engine, tensors, len(batch))
            else:
                padded = pad_batch([examples[i] for i in batch], tokenizer.pad_token_id)
                losses = sequence_losses(engine, {k: v.to(engine.device) for k, v in padded.items()})
            loss = (losses * weights).mean()
            if not all_finite(loss, world_size):
                raise NonFiniteLoss(
                    f"the fine-tune's loss became NaN or infinite at optimizer step {int(engine.global_steps) + 1} "
                    f"(epoch {epoch + 1}; this rank's loss: {loss.item()}): the weights diverged. Lower "
                    f"train.learning_rate (now {settings['learning_rate']}) or clip the gradients (train.max_grad_norm)."
                )
            engine.backward(loss)
            engine.step()
            micro_batches_run += 1
            if on_step is not None:
                on_step(int(engine.global_steps), expected_steps, float(loss.item()))
            history.append(
                {
                    "epoch": epoch,
                    "optimizer_step": int(engine.global_steps),
                    "loss": float(loss.item()),
                    "learning_rate": float(engine.get_lr()[0]),
                }
            )
        # The held-out loss after every epoch shows when a fine-tune starts to overfit.
        heldout = heldout_loss(engine, tokenizer, settings.get("heldout") or [], settings)
        if heldout is not None:
            heldout_history.append({"epoch": epoch + 1, "optimizer_step": int(engine.global_steps), "loss": heldout})
        if epoch + 1 < settings["epochs"]:
            require_space(tempfile.gettempdir(), checkpoint_bytes(engine, settings, world_size), f"epoch {epoch + 1}'s checkpoint")
            checkpoint_dir = tempfile.mkdtemp(prefix="dsw-checkpoint-")
            client_state = {"epoch": epoch + 1, "history": history, "heldout_history": heldout_history}
            engine.save_checkpoint(
                checkpoint_dir, tag=f"epoch-{epoch + 1}", client_state=client_state,
                exclude_frozen_parameters=bool(settings.get("lora")),
            )  # fmt: skip
            report({"epoch": epoch + 1, "optimizer_steps": int(engine.global_steps)}, checkpoint_dir)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    # Every rank joins the gather (a collective under ZeRO-3); rank 0 keeps a CPU copy.
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        digests = gather(parameter_digest(engine.module), world_size)
        state = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()} if rank == 0 else None
    metrics = {
        "optimizer_steps": int(engine.global_steps),
        "expected_optimizer_steps": expected_steps,
        "micro_batches": micro_batches_run,  # in this attempt
        "resumed_from_epoch": first_epoch,
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "heldout_loss": heldout_history[-1]["loss"] if heldout_history else None,
        "parameter_digests": digests,
        "workers": gather(identity, world_size),
        "peak_memory_mb": gather(round(peak_memory_mb(), 1), world_size),
        "loop_seconds": time.time() - started,  # the epochs alone; the stage's manifest has its wall time
    }
    if rank != 0:
        report(metrics, None)
        return
    require_space(tempfile.gettempdir(), sum(v.numel() * v.element_size() for v in state.values()), "the export")
    out_dir = tempfile.mkdtemp(prefix="dsw-export-")
    export(state, settings, out_dir)
    with open(os.path.join(out_dir, LOSS_HISTORY), "w") as f:
        json.dump({"metrics": metrics, "history": history, "heldout_history": heldout_history}, f)
    report(metrics, out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)  # the report copied it into the run's storage


def ray_train_loop(settings: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: the fine-tunes of ``settings["runs"]`` in
    turn (each run's own kept samples, base model, seed and export folder). Each worker reads its
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
    steps_before = 0
    for run in settings["runs"]:
        run_settings = {**settings, **run}
        if os.path.exists(os.path.join(run["export"], LOSS_HISTORY)):  # an earlier attempt finished it
            steps_before += run["steps"]
            continue

        def report(metrics: dict, out_dir: str | None, export: str = run["export"]) -> None:
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
        dataset = pads.dataset(run["data"], format="parquet")
        if C.LOSS_WEIGHT in dataset.schema.names:
            columns.append(C.LOSS_WEIGHT)
        rows = shard(dataset.to_table(columns=columns), rank, world)
        on_step = None if reporter is None else (
            lambda step, steps, loss, before=steps_before: reporter(before + step, settings["total_steps"], loss)
        )
        if resumes == run["export"]:
            with checkpoint.as_directory() as restore:
                log.info("rank %d: resuming from %s", rank, restore)
                train_worker(run_settings, rows, report, rank, world, restore, identity, on_step)
        else:
            train_worker(run_settings, rows, report, rank, world, identity=identity, on_step=on_step)
        # Only the first fine-tune this attempt runs may resume: any other has replaced the checkpoint.
        resumes, steps_before = None, steps_before + run["steps"]


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


def training_settings(
    train: TrainConfig, model: ModelConfig, model_path: str, threads: int, heldout=(), prompt_format: str = "few_shot"
) -> dict:
    """Everything a worker needs, as plain data (it travels to the workers). ``heldout``:
    ``(question, answer)`` pairs whose loss the workers report after training; ``prompt_format``:
    the task's (``prompting``), which shapes the training text."""
    return {
        **train.model_dump(exclude={"num_workers", "cpus_per_worker", "resources_per_worker", "max_failures"}),
        "lora": train.lora.model_dump() if train.lora else None,
        "heldout": [list(pair) for pair in heldout],
        "model_path": model_path,
        "dtype": model.dtype,
        "trust_remote_code": model.trust_remote_code,
        "threads": threads,
        "prompt_format": prompt_format,
    }


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
    settings = training_settings(train, model, runs[0].model_path, torch_threads(cpus), heldout, prompt_format)
    settings["runs"] = []
    for run in runs:
        num_samples = pads.dataset(os.path.abspath(run.kept), format="parquet").count_rows()
        if num_samples < train.num_workers:
            raise UserError(
                f"train: {num_samples} kept sample(s) cannot feed {train.num_workers} workers; "
                "lower train.num_workers or keep more candidates."
            )
        settings["runs"].append({
            "data": os.path.abspath(run.kept), "model_path": run.model_path, "seed": run.seed,
            "export": os.path.abspath(run.out_dir), "steps": optimizer_steps(num_samples // train.num_workers, settings),
        })  # fmt: skip
        if not os.path.exists(os.path.join(run.out_dir, LOSS_HISTORY)):  # kept: an earlier attempt finished it
            shutil.rmtree(run.out_dir, ignore_errors=True)
    settings["total_steps"] = sum(run["steps"] for run in settings["runs"])
    progress.expect(settings["total_steps"])  # the stage's progress counts optimizer steps
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config=settings,
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
