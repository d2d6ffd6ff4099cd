"""Train: supervised fine-tuning on the kept candidates with Ray Train and DeepSpeed ZeRO.

``fine_tune`` runs a ``TorchTrainer`` whose workers each run ``train_worker``: the model
(full, or wrapped in a peft LoRA adapter) goes through ``deepspeed.initialize`` with
torch's AdamW (no DeepSpeed op to compile), the worker's shard of the kept samples is
encoded with the prompt masked and EOS closing the answer, and DeepSpeed owns gradient
accumulation, clipping and the ZeRO partitioning. A micro batch's loss is the mean over
its samples of ``loss_weight * (mean token loss of the sample)``: the per-sample loss the
DS weight is computed from, weighted by the filter (1 unless the method weights). At the end every rank takes part in
gathering the parameters (a no-op below ZeRO-3) and rank 0 exports a Hugging Face model
directory (LoRA merged into the weights) as the run's checkpoint.

``train_worker`` needs no Ray: give it batches and a report function and it runs as a
single process at world size 1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Callable, Iterable

from dsw_ray import columns as C
from dsw_ray.errors import UserError
from dsw_ray.models import load_tokenizer
from dsw_ray.sft import encode_example, pad_batch, sequence_losses

log = logging.getLogger(__name__)

LOSS_HISTORY = "loss_history.json"


def deepspeed_config(settings: dict, world_size: int) -> dict:
    """The DeepSpeed config that the training settings imply (batch sizes agree by construction)."""
    dtype = settings["dtype"]
    return {
        "train_micro_batch_size_per_gpu": settings["micro_batch_size"],
        "gradient_accumulation_steps": settings["gradient_accumulation_steps"],
        "train_batch_size": settings["micro_batch_size"] * settings["gradient_accumulation_steps"] * world_size,
        "gradient_clipping": settings["max_grad_norm"],
        "zero_optimization": {"stage": settings["zero_stage"]},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        # Our optimizer is torch's AdamW, which DeepSpeed supports but does not list as tested.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def optimizer_steps(num_samples_per_worker: int, settings: dict) -> int:
    """Optimizer steps the run makes: every ``accumulation`` micro batches, across epochs."""
    micro_batches = math.ceil(num_samples_per_worker / settings["micro_batch_size"]) * settings["epochs"]
    return micro_batches // settings["gradient_accumulation_steps"]


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


def train_worker(
    settings: dict,
    batches: Callable[[int], Iterable[dict]],
    num_samples_per_worker: int,
    report: Callable[[dict, str | None], None],
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """One worker's fine-tuning. ``batches(epoch)`` yields micro batches of ``question``/``text``
    columns; ``report(metrics, export_dir_or_None)`` is called once at the end, on every rank."""
    import deepspeed
    import torch

    torch.manual_seed(settings["seed"])
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    tokenizer = load_tokenizer(settings["model_path"], settings["trust_remote_code"])
    model = build_model(settings)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=settings["learning_rate"], betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"]
    )
    expected_steps = optimizer_steps(num_samples_per_worker, settings)
    total_steps = max(1, expected_steps)
    warmup = math.floor(settings["warmup_fraction"] * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if settings["lr_schedule"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress if settings["lr_schedule"] == "linear" else 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(settings, world_size),
        dist_init_required=False,
    )
    engine.train()
    history, started = [], time.time()
    for epoch in range(settings["epochs"]):
        for batch in batches(epoch):
            examples = [
                encode_example(tokenizer, str(q), str(t), settings["max_length"])
                for q, t in zip(batch[C.QUESTION], batch[C.TEXT])
            ]
            tensors = {k: v.to(engine.device) for k, v in pad_batch(examples, tokenizer.pad_token_id).items()}
            weights = torch.as_tensor(
                batch[C.LOSS_WEIGHT] if C.LOSS_WEIGHT in batch else [1.0] * len(examples),
                dtype=torch.float32,
                device=engine.device,
            )
            loss = (sequence_losses(engine, tensors) * weights).mean()
            engine.backward(loss)
            engine.step()
            history.append({"epoch": epoch, "optimizer_step": int(engine.global_steps), "loss": float(loss.item())})
    metrics = {
        "optimizer_steps": int(engine.global_steps),
        "expected_optimizer_steps": expected_steps,
        "micro_batches": len(history),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "seconds": time.time() - started,
    }
    # Every rank joins the gather (a collective under ZeRO-3); rank 0 keeps a CPU copy.
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        state = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()} if rank == 0 else None
    if rank != 0:
        report(metrics, None)
        return
    out_dir = tempfile.mkdtemp(prefix="dsw-export-")
    export(state, settings, out_dir)
    with open(os.path.join(out_dir, LOSS_HISTORY), "w") as f:
        json.dump({"metrics": metrics, "history": history}, f)
    report(metrics, out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)  # the report copied it into the run's storage


def ray_train_loop(settings: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: Ray supplies the shard and the report."""
    import ray.train

    context = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")

    def batches(epoch: int):
        return shard.iter_batches(
            batch_size=settings["micro_batch_size"],
            batch_format="numpy",
            local_shuffle_buffer_size=settings["shuffle_buffer"],
            local_shuffle_seed=settings["seed"] + epoch,
        )

    def report(metrics: dict, out_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(out_dir) if out_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    world = context.get_world_size()
    train_worker(settings, batches, settings["num_samples"] // world, report, context.get_world_rank(), world)


def training_settings(job, model_path: str, num_samples: int, threads: int) -> dict:
    """Everything a worker needs, as plain data (it travels to the workers)."""
    train = job.train
    return {
        **train.model_dump(exclude={"num_workers", "cpus_per_worker", "use_gpu"}),
        "lora": train.lora.model_dump() if train.lora else None,
        "model_path": model_path,
        "dtype": job.model.dtype,
        "trust_remote_code": job.model.trust_remote_code,
        "num_samples": num_samples,
        "shuffle_buffer": max(1, min(num_samples, 1024)),
        "threads": threads,
    }


def fine_tune(kept, num_samples: int, model_path: str, job, out_dir: str, storage_dir: str) -> dict:
    """The train stage: fine-tune on the kept samples (a Ray Dataset), export to ``out_dir``."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dsw_ray.resources import pool_cpus, torch_threads

    train = job.train
    if num_samples < train.num_workers:
        raise UserError(
            f"train: {num_samples} kept sample(s) cannot feed {train.num_workers} workers; "
            "lower train.num_workers or keep more candidates."
        )
    cpus = pool_cpus(train.num_workers, train.cpus_per_worker, ray.cluster_resources().get("CPU", 1), "train")
    settings = training_settings(job, model_path, num_samples, torch_threads(cpus))
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config=settings,
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(storage_path=os.path.abspath(storage_dir), name="train"),
        datasets={"train": kept},
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as exported:
        staging = out_dir + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(exported, staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(staging, out_dir)
    with open(os.path.join(out_dir, LOSS_HISTORY)) as f:
        return json.load(f)["metrics"]
