"""A fine-tune's worker: one rank's loop over its shard, from a typed plan, with no Ray.

``TrainPlan`` is everything a worker needs (the train section, the model it starts from, its
threads, the task's prompt format, the held-out pairs): it travels to Ray Train's workers
pickled and to a torchrun harness as JSON. ``Worker`` is one rank's fine-tune: ``setup``
encodes the shard once and builds the model (full, or wrapped in a peft LoRA adapter), torch's
AdamW (no DeepSpeed op to compile), the schedule and the DeepSpeed engine; ``epoch`` visits the
shard in a fresh seeded order, a micro batch's loss being the mean over its samples of
``loss_weight * (mean token loss of the sample)``, the per-sample loss the DS weight is
computed from; ``checkpoint`` saves an epoch for a restarted worker to resume from; ``finish``
gathers the parameters (a collective under ZeRO-3) and exports a Hugging Face model directory
on rank 0 (LoRA merged into the weights, the adapter beside it). ``train_worker`` runs them in
order; give it its rows and a report function and it runs as a single process at world size 1.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from dsw_ray import columns as C
from dsw_ray.config import LoraConfig, TrainConfig
from dsw_ray.deepspeed_settings import deepspeed_config
from dsw_ray.errors import UserError
from dsw_ray.models import ModelSpec
from dsw_ray.sft import batched_losses, encode_example, pack_batch, packed_sequence_losses, pad_batch, sequence_losses

LOSS_HISTORY = "loss_history.json"


@dataclass(frozen=True)
class TrainPlan:
    """What a fine-tune's workers need: the train section, the model it starts from and its
    seed (a round's fine-tunes differ in these), the torch threads of a worker, the task's
    prompt format (it shapes the training text) and ``(question, answer)`` pairs whose loss
    the workers report after every epoch."""

    train: TrainConfig
    model: ModelSpec
    seed: int
    threads: int | None = None
    prompt_format: str = "few_shot"
    heldout: tuple[tuple[str, str], ...] = field(default=())

    def starting_from(self, model_path: str, seed: int) -> TrainPlan:
        return replace(self, model=replace(self.model, path=model_path), seed=seed)

    def deepspeed_config(self, world_size: int) -> dict:
        return deepspeed_config({**self.train.model_dump(), "dtype": self.model.dtype}, world_size)

    def to_json(self) -> dict:
        return {**asdict(self), "train": self.train.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: dict) -> TrainPlan:
        heldout = tuple((str(q), str(a)) for q, a in data["heldout"])
        return cls(**{**data, "train": TrainConfig.model_validate(data["train"]), "model": ModelSpec(**data["model"]),
                      "heldout": heldout})  # fmt: skip


def optimizer_steps(num_samples_per_worker: int, train: TrainConfig) -> int:
    """Optimizer steps the run makes: every ``accumulation`` micro batches, across epochs."""
    per_epoch = math.ceil(num_samples_per_worker / train.micro_batch_size)
    return per_epoch * train.epochs // train.gradient_accumulation_steps


def build_model(model: ModelSpec, lora: LoraConfig | None):
    """The model to train: the base model, wrapped in a LoRA adapter when configured."""
    import torch
    from transformers import AutoModelForCausalLM

    # Master weights stay float32; DeepSpeed casts for bf16/fp16 compute on GPU.
    built = AutoModelForCausalLM.from_pretrained(
        model.path, dtype=torch.float32, trust_remote_code=model.trust_remote_code, use_safetensors=True
    )
    if lora is None:
        return built
    from peft import LoraConfig as PeftLora, get_peft_model

    adapter = PeftLora(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type="CAUSAL_LM"
    )
    return get_peft_model(built, adapter)


def export(state: dict, plan: TrainPlan, out_dir: str) -> None:
    """Write a Hugging Face directory from a full (gathered) state dict: LoRA merged."""
    import torch

    model = build_model(plan.model, plan.train.lora)
    model.load_state_dict(state)
    if plan.train.lora:
        model.save_pretrained(os.path.join(out_dir, "adapter"))
        model = model.merge_and_unload()
    model.to(dtype=getattr(torch, plan.model.dtype)).save_pretrained(out_dir)
    plan.model.tokenizer().save_pretrained(out_dir)


def make_optimizer(parameters, train: TrainConfig):
    """torch's AdamW; with optimizer offload, DeepSpeed's CPU Adam (what ZeRO-Offload expects)."""
    import torch

    kwargs = dict(lr=train.learning_rate, betas=tuple(train.betas), weight_decay=train.weight_decay)
    if train.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(parameters, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(parameters, **kwargs)


def lr_schedule(warmup_fraction: float, schedule: str, total_steps: int) -> Callable[[int], float]:
    """Warmup over ``warmup_fraction`` of ``total_steps``, then ``schedule``: constant, linear or
    cosine decay."""
    total_steps = max(1, total_steps)
    warmup = math.floor(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress if schedule == "linear" else 1.0

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


def checkpoint_bytes(engine, lora: bool, zero_stage: int, world_size: int) -> int:
    """About what one rank's epoch checkpoint writes: the weights it saves (the adapter alone
    with LoRA) and 12 bytes per trainable parameter (fp32 copy and AdamW's two moments),
    partitioned across ranks above ZeRO stage 0."""
    saved = [p for p in engine.module.parameters() if p.requires_grad or not lora]
    weights = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in saved)
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad)
    states = 12 * trainable // (world_size if zero_stage else 1)
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


def heldout_loss(engine, tokenizer, plan: TrainPlan) -> float | None:
    """Mean per-sample loss of the plan's held-out pairs under the trained weights. Every rank
    runs it (a ZeRO-3 forward is a collective)."""
    if not plan.heldout:
        return None
    engine.eval()
    encoded = [
        encode_example(tokenizer, q, a, plan.train.max_length, prompt_format=plan.prompt_format) for q, a in plan.heldout
    ]
    collate = functools.partial(pad_batch, pad_token_id=tokenizer.pad_token_id)
    return float(batched_losses(engine, encoded, plan.train.micro_batch_size, collate).mean())


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


class Worker:
    """One rank's fine-tune of ``rows`` (its shard: a pyarrow table of ``question``, ``text``
    and optionally ``loss_weight``) as ``plan`` says, ``setup`` at construction."""

    def __init__(self, plan: TrainPlan, rows, rank: int = 0, world_size: int = 1, identity: str = ""):
        import deepspeed
        import torch

        self.plan, self.train, self.rank, self.world_size, self.identity = plan, plan.train, rank, world_size, identity
        torch.manual_seed(plan.seed)
        if plan.threads:
            torch.set_num_threads(plan.threads)
        self.tokenizer = plan.model.tokenizer()
        self.examples = [
            encode_example(self.tokenizer, str(q), str(t), self.train.max_length, prompt_format=plan.prompt_format)
            for q, t in zip(rows[C.QUESTION].to_pylist(), rows[C.TEXT].to_pylist())
        ]
        self.loss_weights = (
            rows[C.LOSS_WEIGHT].to_pylist() if C.LOSS_WEIGHT in rows.column_names else [1.0] * len(self.examples)
        )
        model = build_model(plan.model, self.train.lora)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], self.train)
        self.expected_steps = optimizer_steps(len(self.examples), self.train)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_schedule(self.train.warmup_fraction, self.train.lr_schedule, self.expected_steps)
        )
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=plan.deepspeed_config(world_size),
            dist_init_required=False,
        )
        self.engine.checkpoint_engine.load = load_weights_only
        self.first_epoch, self.history, self.heldout_history = 0, [], []
        self.started, self.micro_batches_run = time.time(), 0

    def restore(self, folder: str) -> None:
        """Go on after the epoch of an earlier attempt's checkpoint, with the optimizer, schedule
        and step count it saved."""
        # A LoRA checkpoint holds the adapter alone: the frozen base weights come from the model.
        _, client_state = self.engine.load_checkpoint(folder, load_module_strict=self.train.lora is None)
        self.first_epoch, self.history = client_state["epoch"], client_state["history"]
        self.heldout_history = client_state.get("heldout_history", [])

    def epoch(self, epoch: int, on_step: Callable[[int, int, float], None] | None = None) -> None:
        import torch

        engine, examples = self.engine, self.examples
        engine.train()
        for batch in micro_batches(len(examples), self.train.micro_batch_size, self.plan.seed, epoch):
            weights = torch.tensor([self.loss_weights[i] for i in batch], dtype=torch.float32, device=engine.device)
            if self.train.packing:
                tensors = {k: v.to(engine.device) for k, v in pack_batch([examples[i] for i in batch]).items()}
                losses = packed_sequence_losses(engine, tensors, len(batch))
            else:
                padded = pad_batch([examples[i] for i in batch], self.tokenizer.pad_token_id)
                losses = sequence_losses(engine, {k: v.to(engine.device) for k, v in padded.items()})
            loss = (losses * weights).mean()
            if not all_finite(loss, self.world_size):
                raise NonFiniteLoss(
                    f"the fine-tune's loss became NaN or infinite at optimizer step {int(engine.global_steps) + 1} "
                    f"(epoch {epoch + 1}; this rank's loss: {loss.item()}): the weights diverged. Lower "
                    f"train.learning_rate (now {self.train.learning_rate}) or clip the gradients (train.max_grad_norm)."
                )
            engine.backward(loss)
            engine.step()
            self.micro_batches_run += 1
            if on_step is not None:
                on_step(int(engine.global_steps), self.expected_steps, float(loss.item()))
            self.history.append(
                {
                    "epoch": epoch,
                    "optimizer_step": int(engine.global_steps),
                    "loss": float(loss.item()),
                    "learning_rate": float(engine.get_lr()[0]),
                }
            )
        # The held-out loss after every epoch shows when a fine-tune starts to overfit.
        heldout = heldout_loss(engine, self.tokenizer, self.plan)
        if heldout is not None:
            self.heldout_history.append({"epoch": epoch + 1, "optimizer_step": int(engine.global_steps), "loss": heldout})

    def checkpoint(self, epoch: int, report: Callable[[dict, str | None], None]) -> None:
        """Every rank saves its part of the DeepSpeed checkpoint after ``epoch`` and reports it."""
        engine = self.engine
        needed = checkpoint_bytes(engine, self.train.lora is not None, self.train.zero_stage, self.world_size)
        require_space(tempfile.gettempdir(), needed, f"epoch {epoch + 1}'s checkpoint")
        checkpoint_dir = tempfile.mkdtemp(prefix="dsw-checkpoint-")
        client_state = {"epoch": epoch + 1, "history": self.history, "heldout_history": self.heldout_history}
        engine.save_checkpoint(
            checkpoint_dir, tag=f"epoch-{epoch + 1}", client_state=client_state,
            exclude_frozen_parameters=self.train.lora is not None,
        )  # fmt: skip
        report({"epoch": epoch + 1, "optimizer_steps": int(engine.global_steps)}, checkpoint_dir)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def finish(self, report: Callable[[dict, str | None], None]) -> None:
        """Every rank reports its metrics; rank 0 with the Hugging Face export."""
        import deepspeed

        engine, world_size = self.engine, self.world_size
        # Every rank joins the gather (a collective under ZeRO-3); rank 0 keeps a CPU copy.
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            digests = gather(parameter_digest(engine.module), world_size)
            state = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()} if self.rank == 0 else None
        metrics = {
            "optimizer_steps": int(engine.global_steps),
            "expected_optimizer_steps": self.expected_steps,
            "micro_batches": self.micro_batches_run,  # in this attempt
            "resumed_from_epoch": self.first_epoch,
            "final_loss": self.history[-1]["loss"] if self.history else float("nan"),
            "heldout_loss": self.heldout_history[-1]["loss"] if self.heldout_history else None,
            "parameter_digests": digests,
            "workers": gather(self.identity, world_size),
            "peak_memory_mb": gather(round(peak_memory_mb(), 1), world_size),
            "loop_seconds": time.time() - self.started,  # the epochs alone; the stage's manifest has its wall time
        }
        if self.rank != 0:
            report(metrics, None)
            return
        require_space(tempfile.gettempdir(), sum(v.numel() * v.element_size() for v in state.values()), "the export")
        out_dir = tempfile.mkdtemp(prefix="dsw-export-")
        export(state, self.plan, out_dir)
        with open(os.path.join(out_dir, LOSS_HISTORY), "w") as f:
            json.dump({"metrics": metrics, "history": self.history, "heldout_history": self.heldout_history}, f)
        report(metrics, out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)  # the report copied it into the run's storage


def train_worker(
    plan: TrainPlan,
    rows,
    report: Callable[[dict, str | None], None],
    rank: int = 0,
    world_size: int = 1,
    restore: str | None = None,
    identity: str = "",
    on_step: Callable[[int, int, float], None] | None = None,
) -> None:
    """One worker's fine-tuning on ``rows``, its shard.

    After each epoch but the last, every rank saves its part of a DeepSpeed checkpoint and
    calls ``report(metrics, checkpoint_dir)``; at the end every rank calls
    ``report(metrics, export_dir_or_None)``, with the Hugging Face export on rank 0.
    ``restore`` is a checkpoint folder from an earlier attempt: training goes on after its
    epoch with the optimizer, schedule and step count it saved.
    """
    worker = Worker(plan, rows, rank, world_size, identity)
    if restore:
        worker.restore(restore)
    for epoch in range(worker.first_epoch, plan.train.epochs):
        worker.epoch(epoch, on_step)
        if epoch + 1 < plan.train.epochs:
            worker.checkpoint(epoch, report)
    worker.finish(report)
