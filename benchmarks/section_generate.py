"""The generate stage beside the same actor's loop, the authors' way and the batched-forward limit."""

from __future__ import annotations

import os
import time

from bench_common import BenchSize, best_of, num_threads


def batched_forward_limit(model, tokens: int, length: int, threads: list[int], limit_tokens: int) -> dict:
    """Tokens/s of batched [B, L] forward passes of the same model (no KV cache, logits
    included): the rate at which this machine pushes tokens through it when nothing is
    sequential, which no decoding or scoring loop can beat. L is the work's row length; B
    gives B * L from 2,048 tokens up to ``tokens`` (at most ``limit_tokens``), since on a CPU
    one huge forward can be slower per token than a few smaller ones (caches). The best
    over those shapes and over ``threads`` thread counts, each the fastest of 3 runs."""
    import torch

    length = max(2, min(length, model.config.max_position_embeddings))
    most = max(1, min(tokens, limit_tokens) // length)
    batches = sorted({max(1, min(most, size // length)) for size in (2048, 8192, 32768)} | {most})
    generator = torch.Generator().manual_seed(0)
    # On a GPU the call returns before the kernels finish: wait for them inside the timing.
    finish = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
    runs = []
    with torch.inference_mode():
        for count in threads:
            with num_threads(count):
                for batch in batches:
                    input_ids = torch.randint(3, model.config.vocab_size, (batch, length), generator=generator)
                    input_ids = input_ids.to(model.device)
                    model(input_ids=input_ids)  # warm-up
                    finish()
                    seconds = best_of(3, lambda: (model(input_ids=input_ids), finish()))
                    runs.append({"threads": count, "batch": batch, "length": length, "tokens_per_s": batch * length / seconds})
    best = max(runs, key=lambda run: run["tokens_per_s"])
    return {**best, "runs": runs}


def generate_section(job, run_dir: str, stage_seconds: float, model_path: str, size: BenchSize, threads: int) -> dict:
    """Our generate stage, the same actor's loop in this process, the authors' way, the limit."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from dsw_ray.generate import TransformersGenerator, decoding_of, with_sampling_defaults
    from dsw_ray.models import ModelSpec, load_model, load_tokenizer
    from dsw_ray.rundir import read_table
    from dsw_ray.tasks import get_task

    generated = read_table(os.path.join(run_dir, "round-1", "generate"))
    candidates = generated.num_rows
    new_tokens = int(np.sum(generated["completion_tokens"].to_numpy()))
    prompt_tokens = int(np.sum(generated["prompt_tokens"].to_numpy()))
    stage = {"seconds": stage_seconds, "candidates": candidates, "new_tokens": new_tokens,
             "candidates_per_s": candidates / stage_seconds, "new_tokens_per_s": new_tokens / stage_seconds}

    # The actor's own loop on the same questions and batches, without Ray: what one actor
    # does once it is up (the stage minus start-up and Ray Data).
    questions = pq.read_table(os.path.join(run_dir, "inputs", "questions", "data"))
    sampling = with_sampling_defaults(job.generate, model_path)
    generator = TransformersGenerator(ModelSpec(model_path), get_task(job.task.name), decoding_of(sampling, 1), threads)
    loop_tokens, started = 0, time.perf_counter()
    for start in range(0, questions.num_rows, job.generate.batch_size):
        batch = {name: questions[name].to_numpy(zero_copy_only=False)[start : start + job.generate.batch_size]
                 for name in questions.column_names}
        loop_tokens += sum(generator(batch)["completion_tokens"])
    loop_seconds = time.perf_counter() - started
    actor_loop = {"seconds": loop_seconds, "candidates": candidates, "new_tokens": loop_tokens,
                  "candidates_per_s": candidates / loop_seconds, "new_tokens_per_s": loop_tokens / loop_seconds,
                  "threads": threads}

    # The authors' way: one sample per generate call, sampling with temperature, no stop
    # string, a fixed max_length (theirs: 1024; here the model's whole context).
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path)
    context = model.config.max_position_embeddings
    task = get_task(job.task.name)
    texts = questions["question"].to_pylist()
    authors_tokens, authors_seconds = 0, 0.0
    with num_threads(threads), torch.inference_mode():
        for index in range(size.authors_candidates):
            encoded = tokenizer(task.prompt(texts[index % len(texts)]), return_tensors="pt")  # theirs adds special tokens
            torch.manual_seed(index)
            started = time.perf_counter()
            output = model.generate(
                **encoded, do_sample=True, temperature=sampling.temperature, max_length=context,
                pad_token_id=tokenizer.pad_token_id,
            )
            authors_seconds += time.perf_counter() - started
            authors_tokens += output.shape[1] - encoded["input_ids"].shape[1]
    authors = {"seconds": authors_seconds, "candidates": size.authors_candidates, "new_tokens": authors_tokens,
               "max_length": context, "seconds_per_candidate": authors_seconds / size.authors_candidates,
               "candidates_per_s": size.authors_candidates / authors_seconds,
               "new_tokens_per_s": authors_tokens / authors_seconds, "threads": threads}

    limit = batched_forward_limit(
        model, prompt_tokens + new_tokens, round((prompt_tokens + new_tokens) / candidates),
        sorted({threads, os.cpu_count() or 1}), size.limit_tokens,
    )
    return {
        "stage": stage,
        "actor_loop": actor_loop,
        "authors": authors,
        "limit": limit,
        "ratios": {
            # Per candidate: the authors' seconds per candidate over ours.
            "stage_vs_authors": authors["seconds_per_candidate"] * stage["candidates_per_s"],
            "actor_loop_vs_authors": authors["seconds_per_candidate"] * actor_loop["candidates_per_s"],
            "stage_vs_limit": stage["new_tokens_per_s"] / limit["tokens_per_s"],
            "actor_loop_vs_limit": actor_loop["new_tokens_per_s"] / limit["tokens_per_s"],
        },
    }
