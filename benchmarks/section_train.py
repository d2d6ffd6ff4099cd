"""The train stage (Ray Train + DeepSpeed) against a plain PyTorch loop on the same rows."""

from __future__ import annotations

import json
import os
import time

from bench_common import num_threads, pool_threads


def plain_training_loop(model_path: str, questions: list[str], texts: list[str], job, threads: int) -> float:
    """Seconds of a single-process PyTorch loop (AdamW, clipping, the trainer's loss) over the
    rows for the job's epochs and micro batch, in the trainer's order: the same work as a train
    worker, no DeepSpeed, no Ray. Both encode the rows once, before their timer starts."""
    import torch
    from transformers import AutoModelForCausalLM

    from dsw_ray.models import load_tokenizer
    from dsw_ray.sft import encode_example, pad_batch, sequence_losses
    from dsw_ray.train_worker import micro_batches

    train = job.train
    tokenizer = load_tokenizer(model_path)
    torch.manual_seed(train.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, betas=tuple(train.betas))
    examples = [encode_example(tokenizer, q, t, train.max_length) for q, t in zip(questions, texts)]
    with num_threads(threads):
        started = time.perf_counter()
        for epoch in range(train.epochs):
            for batch in micro_batches(len(examples), train.micro_batch_size, train.seed, epoch):
                padded = pad_batch([examples[i] for i in batch], tokenizer.pad_token_id)
                loss = sequence_losses(model, padded).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started


def train_section(job, run_dir: str, stage_seconds: float, model_path: str) -> dict:
    """The round's train stage (loop and whole stage) against the plain loop on its rows."""
    from dsw_ray import columns as C
    from dsw_ray.rundir import read_table
    from dsw_ray.train_worker import LOSS_HISTORY

    method_dir = os.path.join(run_dir, "round-1", job.methods[0])
    kept = read_table(os.path.join(method_dir, "filter"))
    with open(os.path.join(method_dir, "train", "model", LOSS_HISTORY)) as f:
        metrics = json.load(f)["metrics"]
    samples = kept.num_rows * job.train.epochs
    threads = pool_threads(job.train.num_workers)
    plain_seconds = plain_training_loop(model_path, kept[C.QUESTION].to_pylist(), kept[C.TEXT].to_pylist(), job, threads)
    stage = {
        "samples": samples, "loop_seconds": metrics["loop_seconds"], "seconds": stage_seconds,
        "loop_samples_per_s": samples / metrics["loop_seconds"], "samples_per_s": samples / stage_seconds,
        "fixed_seconds": stage_seconds - metrics["loop_seconds"], "zero_stage": job.train.zero_stage,
        "workers": job.train.num_workers,
    }
    plain = {"samples": samples, "seconds": plain_seconds, "samples_per_s": samples / plain_seconds, "threads": threads}
    return {
        "stage": stage,
        "plain_loop": plain,
        "ratios": {"loop_vs_plain": stage["loop_samples_per_s"] / plain["samples_per_s"],
                   "stage_vs_plain": stage["samples_per_s"] / plain["samples_per_s"]},
    }
