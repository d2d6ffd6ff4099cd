"""``dsw-ray bench``: how fast each stage is, beside the authors' way and the machine's limit.

    dsw-ray bench                   # --size full: docs/bench.json, docs/bench_scaling.png
    dsw-ray bench --size tiny --out /tmp/bench.json --plot /tmp/scaling.png   # what CI runs

One process, one local Ray, the quickstart's toy model and the arith task's few-shot
prompts. It runs the real stage functions on real parquet and measures, in order:

- **the quickstart's round**: ``jobs/quickstart.yaml`` as it is (``--size tiny``: on a few
  rows), its wall time split into the work its actors did and fixed costs (``split``);
  ``--only-round`` measures this section alone;
- **end to end**: one quickstart-like round (``run_job``, method iwsi), its wall time split
  by stage, beside Ray's start-up and one actor's start-up (process, imports, model load);
- **generate**: our stage (that round's generate stage, and the same actor's loop in this
  process without Ray) against the authors' way (one sample per ``generate`` call, no stop
  string, ``max_length`` = the model's context) and against the limit: the tokens/s of
  batched [B, L] forward passes of the same model, which no decoding loop can beat;
- **score**: the scoring pool's steady tokens/s on fixed gold rationales (over the actors'
  working window, start-up left out; one actor, then one per core), the round's score stage
  as run, the same actor's loop in this process, the authors' way (every text padded to 400
  tokens, one per forward pass) and the same batched-forward limit;
- **train**: the train stage (Ray Train + DeepSpeed; its workers' loop and the whole stage)
  against a plain PyTorch loop in this process on the same rows, micro batch and epochs;
- **scaling**: generate + score stage time against the number of questions (a fitted slope
  and intercept), against m, and against the number of actors, each point on fresh pools;
  then a cost model from these numbers, and a projection of a paper-sized round onto N
  GPU nodes, on the per-GPU rates a GPU proof run measured (``--gpu-proof``, default
  ``docs/gpu_proof.json``; ``benchmarks/gpu_proof.py`` writes it) or, without one, on
  stated assumptions (``dsw_ray.bench.gpu_cost``).

Every rate counts real tokens: new tokens for generation, unpadded tokens for scoring.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from dsw_ray.toy import QUICKSTART_JOB, QUICKSTART_TOY, build_quickstart_toy

log = logging.getLogger(__name__)

GPU_PROOF = "docs/gpu_proof.json"


@dataclass(frozen=True)
class BenchSize:
    """How much work each section does."""

    questions: int  # the round's unlabeled questions (the quickstart: 96)
    samples: int  # m
    valid: int
    test: int
    max_new_tokens: int
    generate_batch: int  # questions per generate call
    score_batch: int
    train_epochs: int
    micro_batch: int
    evaluate_batch: int
    authors_candidates: int  # candidates generated the authors' way (each runs to the full context)
    score_rows: int  # gold rationales streamed through the scoring pool
    authors_score_rows: int  # of them, scored the authors' way
    scaling_questions: tuple[int, ...]  # includes `questions`
    scaling_samples: tuple[int, ...]  # includes `samples`
    scaling_actors: tuple[int, ...]
    limit_tokens: int  # the largest [B, L] forward the limit measures
    score_all_cores: bool  # also time a scoring pool of one actor per core


SIZES = {
    # The quickstart's settings, with iwsi alone.
    "full": BenchSize(
        questions=96, samples=6, valid=24, test=100, max_new_tokens=48, generate_batch=16, score_batch=32,
        train_epochs=2, micro_batch=8, evaluate_batch=50, authors_candidates=12, score_rows=6000,
        authors_score_rows=300, scaling_questions=(48, 96, 192), scaling_samples=(3, 6, 12), scaling_actors=(1, 2),
        limit_tokens=65536, score_all_cores=True,
    ),
    # Every section on a few rows, the scaling study on two points: it checks that the
    # benchmark runs (in CI), not how fast.
    "tiny": BenchSize(
        questions=8, samples=2, valid=6, test=6, max_new_tokens=24, generate_batch=4, score_batch=16,
        train_epochs=1, micro_batch=4, evaluate_batch=6, authors_candidates=1, score_rows=512,
        authors_score_rows=16, scaling_questions=(4, 8), scaling_samples=(2,), scaling_actors=(1,), limit_tokens=8192,
        score_all_cores=False,
    ),
}


# ---- helpers ----------------------------------------------------------------------------

def job_config(size: BenchSize, run_dir: str, model_path: str, **overrides):
    """The quickstart's job at this size (iwsi only), built in code."""
    from dsw_ray.config import JobConfig

    settings = {
        "run_dir": run_dir,
        "methods": ["iwsi"],
        "task": {"name": "arith", "num_questions": size.questions, "num_valid": size.valid, "num_test": size.test, "seed": 0},
        "model": {"path": model_path},
        "generate": {"samples_per_question": size.samples, "temperature": 0.8, "max_new_tokens": size.max_new_tokens,
                     "batch_size": size.generate_batch},
        "score": {"batch_size": size.score_batch},
        "filter": {"keep_fraction": 0.8},
        "train": {"zero_stage": 2, "epochs": size.train_epochs, "micro_batch_size": size.micro_batch, "learning_rate": 2e-4},
        "evaluate": {"max_new_tokens": size.max_new_tokens, "batch_size": size.evaluate_batch},
    }
    for section, values in overrides.items():
        settings[section] = {**settings[section], **values} if isinstance(values, dict) else values
    return JobConfig.model_validate(settings)


def load_splits(job):
    from dsw_ray.tasks import SplitSizes, get_task

    t = job.task
    return get_task(t.name).load(t.data_path, SplitSizes.of(t))


# --size tiny runs the quickstart's job on a few rows.
# Answers are not cut short and 32 candidates hold a correct one, so every method trains.
TINY_QUICKSTART = ["task.num_questions=8", "task.num_valid=6", "task.num_test=6", "generate.samples_per_question=4",
                   "evaluate.max_new_tokens=24"]


def quickstart_round(size_name: str, work: str, model_path: str, ray_start_s: float) -> dict:
    """``jobs/quickstart.yaml`` on this Ray and ``model_path``, split into work and fixed costs."""
    from dsw_ray.bench.split import round_split
    from dsw_ray.config import load_job
    from dsw_ray.pipeline import run_job

    overrides = [f"run_dir={os.path.join(work, 'quickstart')}", f"model.path={model_path}"]
    job = load_job(QUICKSTART_JOB, overrides + (TINY_QUICKSTART if size_name == "tiny" else []))
    started = time.perf_counter()
    summary = run_job(job)
    split = round_split(job.run_dir, ray_start_s, time.perf_counter() - started)
    return {**split, "methods": list(job.methods), "questions": summary["questions"], "test": summary["test"],
            "generated": summary["rounds"][0]["methods"][job.methods[0]]["candidates"]["generated"]}


def stage_seconds(run_dir: str) -> dict[str, float]:
    """Wall seconds of every stage of a run directory (``round-1/generate``), from the start and
    finish times in its manifests."""
    from dsw_ray.rundir import stage_states

    def instant(text: str) -> float:
        return datetime.datetime.fromisoformat(text).timestamp()

    return {s["stage"]: instant(s["finished"]) - instant(s["started"]) for s in stage_states(run_dir) if s["state"] == "done"}


@contextlib.contextmanager
def num_threads(threads: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def best_of(repeats: int, fn) -> float:
    """The shortest of ``repeats`` timed calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def pool_threads(actors: int) -> int:
    """The torch threads each actor of a pool of ``actors`` gets on this cluster."""
    import ray

    from dsw_ray.resources import pool_cpus, torch_threads

    return torch_threads(pool_cpus(actors, None, ray.cluster_resources().get("CPU", 1), "bench"))


def rounded(value, digits: int = 3):
    """Floats in a nested result to ``digits`` significant digits (the JSON stays readable)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) and value != 0 else value
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


# ---- fixed costs --------------------------------------------------------------------------

def actor_startup(model_path: str) -> dict:
    """One Ray actor's start-up as a pool's actor sees it: process start, imports, the first
    model load (which includes transformers' lazy import of the model class) and a second,
    warm load (the weights alone)."""
    import ray

    @ray.remote
    class Probe:
        def __init__(self, path: str):
            started = time.perf_counter()
            import torch  # noqa: F401
            import transformers  # noqa: F401

            from dsw_ray.models import load_model, load_tokenizer

            imported = time.perf_counter()
            load_tokenizer(path), load_model(path)
            loaded = time.perf_counter()
            load_tokenizer(path), load_model(path)
            self.seconds = {
                "imports_s": imported - started,
                "first_model_load_s": loaded - imported,
                "warm_model_load_s": time.perf_counter() - loaded,
            }

        def report(self) -> dict:
            return self.seconds

    started = time.perf_counter()
    probe = Probe.options(num_cpus=1).remote(model_path)
    inside = ray.get(probe.report.remote())
    total = time.perf_counter() - started
    ray.kill(probe)
    return {"total_s": total, "process_start_s": total - sum(inside.values()), **inside}


# ---- generate -----------------------------------------------------------------------------

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

    from dsw_ray.generate import TransformersGenerator, decoding, with_sampling_defaults
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
    generator = TransformersGenerator(ModelSpec(model_path), get_task(job.task.name), decoding(sampling, 1), threads)
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


# ---- score --------------------------------------------------------------------------------

def timed_scorer():
    """``score.Scorer`` that also returns when each call started and ended (wall clock), so
    that the pool's rate can be taken over the actors' working window, start-up left out."""
    import numpy as np

    from dsw_ray.score import Scorer

    class TimedScorer(Scorer):
        def __call__(self, batch):
            started = time.time()
            out = super().__call__(batch)
            n = len(out["loss"])
            return {**out, "call_started": np.full(n, started), "call_ended": np.full(n, time.time())}

    return TimedScorer


def pool_run(rows_dir: str, model_path: str, job, tokens_of: dict[str, int]) -> dict:
    """The scoring pool (``score.Scorer`` actors, sized and fed as the score stage does) over
    parquet rows: its wall time, first output, and its rate over the working window (from the
    first call's start to the last call's end, across every actor)."""
    import numpy as np
    import pyarrow as pa

    from dsw_ray.rundir import read_dataset
    from dsw_ray.resources import pool_map
    from dsw_ray.score import rows_per_call, scorer_settings

    started_wall, started = time.time(), time.perf_counter()
    scored = pool_map(
        read_dataset(rows_dir, rows_per_call(job.score), job.score.actors), timed_scorer(),
        scorer_settings(job.score, job.model, model_path, job.train.max_length, False), job.score, "score",
        batch_size=rows_per_call(job.score),
    ).select_columns(["question_id", "call_started", "call_ended"])
    blocks, first = [], None
    for block in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        first = first or time.perf_counter() - started
        blocks.append(block)
    seconds = time.perf_counter() - started
    table = pa.concat_tables(blocks)
    tokens = sum(tokens_of[i] for i in table["question_id"].to_pylist())
    window_start, window_end = float(np.min(table["call_started"])), float(np.max(table["call_ended"]))
    calls = np.unique(np.stack([table["call_started"].to_numpy(), table["call_ended"].to_numpy()]), axis=1)
    return {
        "rows": table.num_rows, "tokens": tokens, "seconds": seconds, "first_output_s": first,
        "start_up_s": window_start - started_wall,  # from submitting to the first call's start
        "calls": calls.shape[1], "busy_s": float(np.sum(calls[1] - calls[0])), "window_s": window_end - window_start,
        "tokens_per_s": tokens / seconds, "steady_tokens_per_s": tokens / (window_end - window_start),
    }


def score_section(job, run_dir: str, stage_seconds: float, model_path: str, size: BenchSize, work: str, threads: int) -> dict:
    """The scoring pool's steady rate on fixed gold rationales, the same work in this process,
    the authors' way, the limit; and the round's score stage as run."""
    import pyarrow as pa

    from dsw_ray import columns as C
    from dsw_ray.rundir import read_table, write_table
    from dsw_ray.models import ModelSpec
    from dsw_ray.score import SCORED_COLUMNS, VALID_ROW, LossModel, rows_per_call
    from dsw_ray.sft import LossTokens
    from dsw_ray.tasks import SplitSizes, get_task

    model = LossModel(ModelSpec.of(model_path, job.model), LossTokens(job.train.max_length, job.score.loss_on))

    # The round's score stage: the valid set and the majority candidates, one pool pass.
    splits = load_splits(job)
    voted = read_table(os.path.join(run_dir, "round-1", "vote"))
    majority = voted.filter(voted[C.IS_MAJORITY])
    pairs = [(e.question, e.rationale) for e in splits.valid] + list(
        zip(majority[C.QUESTION].to_pylist(), majority[C.TEXT].to_pylist())
    )
    stage_tokens = sum(len(model.encode(q, a)["input_ids"]) for q, a in pairs)
    stage = {"seconds": stage_seconds, "rows": len(pairs), "tokens": stage_tokens, "tokens_per_s": stage_tokens / stage_seconds}

    # Fixed rows (gold rationales of arith questions outside the round), read from parquet
    # like the pipeline's, through the real pool.
    examples = get_task("arith").load(None, SplitSizes(1, size.score_rows, 1, seed=7)).valid
    questions, answers = [e.question for e in examples], [e.rationale for e in examples]
    tokens_of = {e.question_id: len(model.encode(e.question, e.rationale)["input_ids"]) for e in examples}
    rows = pa.table({
        C.QUESTION_ID: [e.question_id for e in examples], C.SAMPLE_INDEX: pa.array([0] * len(examples), pa.int64()),
        C.QUESTION: questions, C.TEXT: answers, VALID_ROW: [True] * len(examples),
    }).select(SCORED_COLUMNS)
    rows_dir = os.path.join(work, "score-rows")
    write_table(rows, rows_dir)
    pool = {**pool_run(rows_dir, model_path, job, tokens_of), "threads": threads, "actors": job.score.actors}
    total_tokens = pool["tokens"]
    # Both cores: one actor per core (one thread each) instead of one actor and a CPU left to Ray Data.
    cores, pool_wide = os.cpu_count() or 1, None
    if size.score_all_cores:
        wide_job = job.model_copy(update={"score": job.score.model_copy(update={"actors": cores})})
        pool_wide = {**pool_run(rows_dir, model_path, wide_job, tokens_of), "threads": pool_threads(cores), "actors": cores}

    # The actor's own work on the same rows, without Ray, in calls of the same size.
    call = rows_per_call(job.score)
    with num_threads(threads):
        started = time.perf_counter()
        for start in range(0, len(examples), call):
            model.losses(questions[start : start + call], answers[start : start + call], job.score.batch_size)
        loop_seconds = time.perf_counter() - started
    actor_loop = {"seconds": loop_seconds, "tokens": total_tokens, "tokens_per_s": total_tokens / loop_seconds,
                  "threads": threads}

    # The authors' way: every text padded (and cut) to 400 tokens, one per forward pass.
    authors_model = LossModel(ModelSpec.of(model_path, job.model), LossTokens(official=True))
    subset = slice(0, size.authors_score_rows)
    real = sum(
        sum(authors_model.encode(q, a)["attention_mask"])
        for q, a in zip(questions[subset], answers[subset])
    )
    with num_threads(threads):
        started = time.perf_counter()
        authors_model.losses(questions[subset], answers[subset], batch_size=1)
        authors_seconds = time.perf_counter() - started
    authors = {"seconds": authors_seconds, "rows": size.authors_score_rows, "tokens": real,
               "padded_length": 400, "tokens_per_s": real / authors_seconds, "threads": threads}

    mean_length = round(total_tokens / len(examples))
    limit = batched_forward_limit(
        model.model, total_tokens, mean_length, sorted({threads, os.cpu_count() or 1}), size.limit_tokens
    )
    return {
        "stage": stage,
        "pool": pool,
        **({"pool_all_cores": pool_wide} if pool_wide else {}),
        "actor_loop": actor_loop,
        "authors": authors,
        "limit": limit,
        "ratios": {
            "pool_vs_authors": pool["steady_tokens_per_s"] / authors["tokens_per_s"],
            "pool_vs_limit": pool["steady_tokens_per_s"] / limit["tokens_per_s"],
            **({
                "pool_all_cores_vs_authors": pool_wide["steady_tokens_per_s"] / authors["tokens_per_s"],
                "pool_all_cores_vs_limit": pool_wide["steady_tokens_per_s"] / limit["tokens_per_s"],
            } if pool_wide else {}),
            "actor_loop_vs_limit": actor_loop["tokens_per_s"] / limit["tokens_per_s"],
            "stage_vs_authors": stage["tokens_per_s"] / authors["tokens_per_s"],
        },
    }


# ---- train --------------------------------------------------------------------------------

def plain_training_loop(model_path: str, questions: list[str], texts: list[str], job, threads: int) -> float:
    """Seconds of a single-process PyTorch loop (AdamW, clipping, the trainer's loss) over the
    rows for the job's epochs and micro batch, in the trainer's order: the same work as a train
    worker, no DeepSpeed, no Ray. Both encode the rows once, before their timer starts."""
    import torch
    from transformers import AutoModelForCausalLM

    from dsw_ray.models import load_tokenizer
    from dsw_ray.sft import encode_example, pad_batch, sequence_losses
    from dsw_ray.train import micro_batches

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
    from dsw_ray.train import LOSS_HISTORY

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


# ---- end to end and scaling -----------------------------------------------------------------

ROUND_STAGES = ("base/evaluate", "round-1/generate", "round-1/vote", "round-1/score",
                "iwsi/filter", "iwsi/train", "iwsi/evaluate")


def end_to_end(job, ray_start_s: float, actor: dict) -> tuple[dict, dict]:
    """Run the round; its wall time by stage, beside the fixed costs measured apart."""
    from dsw_ray.pipeline import run_job

    from dsw_ray.bench.split import stage_split

    started = time.perf_counter()
    summary = run_job(job)
    wall = time.perf_counter() - started
    times = stage_seconds(job.run_dir)
    # Stages one pass computed (the base model's and the export's evaluations) are one entry.
    stages = {" + ".join(name.replace("round-1/iwsi/", "iwsi/") for name in row["stages"]): row["seconds"]
              for row in stage_split(job.run_dir)}
    result = {
        "ray_start_s": ray_start_s,
        "actor_start_s": actor["total_s"],
        "stages_s": stages,
        "run_job_s": wall,
        "other_s": wall - sum(stages.values()),  # splits, inputs, summary and report
        "total_s": ray_start_s + wall,
        "generated": summary["methods"]["iwsi"]["candidates"]["generated"],
        "kept": summary["methods"]["iwsi"]["kept"],
    }
    return result, times


def candidates_point(size: BenchSize, work: str, name: str, model_path: str, **overrides) -> dict:
    """The generate, vote and score stages for one setting, on parquet in and out as a round
    runs them."""
    import pyarrow.compute as pc

    from dsw_ray import columns as C
    from dsw_ray import inputs, rundir
    from dsw_ray.generate import generate
    from dsw_ray.score import rows_per_call, score_losses, weigh
    from dsw_ray.tasks import get_task
    from dsw_ray.vote import answer_parser, vote

    run_dir = os.path.join(work, name)
    job = job_config(size, run_dir, model_path, **overrides)
    splits = load_splits(job)
    inputs.write_inputs(run_dir, splits, job)
    stage = lambda name: os.path.join(run_dir, "round-1", name)  # noqa: E731
    times = {}

    started = time.perf_counter()
    questions = rundir.read_dataset(os.path.join(run_dir, "inputs", "questions"), job.generate.batch_size, job.generate.actors)
    task = get_task(job.task.name)
    rundir.write_dataset(generate(questions, job.generate, job.model, task, model_path, 1), stage("generate"))
    times["round-1/generate"] = time.perf_counter() - started

    started = time.perf_counter()
    candidates = rundir.read_dataset(stage("generate"), 1024)
    voted = rundir.write_dataset(vote(candidates, answer_parser(task, False)), stage("vote"))
    times["round-1/vote"] = time.perf_counter() - started

    # As the score stage runs: one pool pass, then the weights in this process.
    started = time.perf_counter()
    voted_rows = rundir.read_dataset(stage("vote"), rows_per_call(job.score), job.score.actors)
    losses = score_losses(splits.valid, voted_rows, job.score, job.model, model_path, job.train.max_length, False)
    scored, _, _ = weigh(rundir.read_table(stage("vote")).filter(pc.field(C.IS_MAJORITY)), losses, False)
    rundir.write_table(scored, stage("score"))
    times["round-1/score"] = time.perf_counter() - started
    return {**point(job, times), "candidates": voted["rows"], "scored": scored.num_rows}


def point(job, times: dict) -> dict:
    generate, vote, score = (times[f"round-1/{stage}"] for stage in ("generate", "vote", "score"))
    return {
        "questions": job.task.num_questions, "samples": job.generate.samples_per_question,
        "actors": job.generate.actors, "generate_s": generate, "vote_s": vote, "score_s": score,
        "generate_score_s": generate + score,
    }


def fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares ``y = intercept + slope * x`` (None with fewer than two distinct x)."""
    import numpy as np

    if len(set(xs)) < 2:
        return None

    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return {"slope": float(slope), "intercept": float(intercept)}


def round_point(job, round_times: dict) -> dict:
    """The round's own generate, vote and score stages: the scaling point at its settings."""
    from dsw_ray.rundir import count_rows

    stage = lambda name: os.path.join(job.run_dir, "round-1", name)  # noqa: E731
    return {**point(job, round_times), "candidates": count_rows(stage("generate")), "scored": count_rows(stage("score"))}


def scaling(size: BenchSize, work: str, model_path: str, base: dict) -> dict:
    """Generate + score time against questions, m and actors, each point on fresh pools;
    ``base`` is the point at the round's settings (``round_point``)."""
    by_questions = [base if n == size.questions else candidates_point(size, work, f"q{n}", model_path,
                                                                      task={"num_questions": n})
                    for n in size.scaling_questions]
    by_samples = [base if m == size.samples else candidates_point(size, work, f"m{m}", model_path,
                                                                  generate={"samples_per_question": m})
                  for m in size.scaling_samples]
    by_actors = [base if a == 1 else candidates_point(size, work, f"a{a}", model_path,
                                                      generate={"actors": a}, score={"actors": a})
                 for a in size.scaling_actors]
    questions = [p["questions"] for p in by_questions]
    return {
        "questions": by_questions,
        "samples": by_samples,
        "actors": by_actors,
        "fit_generate_score_vs_questions": fit(questions, [p["generate_score_s"] for p in by_questions]),
        "fit_generate_vs_questions": fit(questions, [p["generate_s"] for p in by_questions]),
        "fit_score_vs_questions": fit(questions, [p["score_s"] for p in by_questions]),
        "fit_generate_score_vs_samples": fit([p["samples"] for p in by_samples], [p["generate_score_s"] for p in by_samples]),
    }


def plot_scaling(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s = result["scaling"]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ("questions", "samples", "actors"), ("questions", "m (samples per question)", "actors per pool")):
        xs = [p[key] for p in s[key]]
        for column, style in (("generate_s", "o-"), ("score_s", "s-"), ("generate_score_s", "D-")):
            ax.plot(xs, [p[column] for p in s[key]], style, label=column.removesuffix("_s").replace("_", " + "))
        ax.set_xlabel(label)
        ax.set_ylabel("stage wall time (s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    line = s["fit_generate_score_vs_questions"]
    if line:
        xs = np.linspace(0, max(p["questions"] for p in s["questions"]), 50)
        axes[0].plot(xs, line["intercept"] + line["slope"] * xs, "k:",
                     label=f"fit: {line['intercept']:.1f} s + {line['slope']:.3f} s/question")
    axes[0].set_xlim(left=0)
    axes[0].legend(fontsize=8)
    axes[1].set_xlim(left=0)
    axes[2].set_xticks([p["actors"] for p in s["actors"]])
    figure.suptitle(f"dsw-ray generate + score on {result['machine']['cpus']} CPUs ({result['size']}, {result['date']})", fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---- cost model ---------------------------------------------------------------------------

def cost_model(result: dict) -> dict:
    """Per-unit costs of one actor and fixed costs per stage, from this run's numbers, and the
    time of the round's generate + score + train on N nodes like this one.

    Assumptions (each a simplification the numbers here support or do not contradict):
    candidates, scored rows and training samples are independent, so a pool of N actors (one
    per node) divides the work evenly when the data has at least N blocks; each actor runs at
    the steady rate measured here; fixed costs (Ray Data start-up, actor start-up) happen on
    every node at once and so do not shrink with N; training is data parallel with a gradient
    all-reduce whose cost (1 M parameters) is negligible."""
    g, s, t, e = result["generate"], result["score"], result["train"], result["end_to_end"]
    per_candidate = 1 / g["actor_loop"]["candidates_per_s"]
    per_token = 1 / s["pool"]["steady_tokens_per_s"]
    per_sample = 1 / t["stage"]["loop_samples_per_s"]
    fixed = {
        "ray_start_s": e["ray_start_s"],
        "actor_start_s": e["actor_start_s"],
        "generate_s": g["stage"]["seconds"] - g["stage"]["candidates"] * per_candidate,
        "score_s": s["stage"]["seconds"] - s["stage"]["tokens"] * per_token,
        "train_s": t["stage"]["fixed_seconds"],
    }
    work = {"candidates": g["stage"]["candidates"], "score_tokens": s["stage"]["tokens"], "train_samples": t["stage"]["samples"]}

    def seconds(nodes: int, scale: float) -> float:
        return (fixed["generate_s"] + fixed["score_s"] + fixed["train_s"]
                + scale * (work["candidates"] * per_candidate + work["score_tokens"] * per_token
                           + work["train_samples"] * per_sample) / nodes)

    projection = [
        {"nodes": n, "round_x1_s": seconds(n, 1), "round_x100_s": seconds(n, 100),
         "candidates_per_s_x100": 100 * work["candidates"] / seconds(n, 100)}
        for n in (1, 2, 4, 8, 16, 32)
    ]
    return {
        "per_candidate_s": per_candidate,
        "per_new_token_s": 1 / g["actor_loop"]["new_tokens_per_s"],
        "per_score_token_s": per_token,
        "per_train_sample_s": per_sample,
        "fixed_s": fixed,
        "work": work,
        "projection_cpu_nodes": projection,
    }


# ---- report -------------------------------------------------------------------------------

def markdown_table(r: dict) -> str:
    """The tables docs/benchmarks.md shows, from a result."""
    from dsw_ray.bench.split import split_table

    round_table = ""
    if "quickstart_round" in r:  # (results written before it was a section have none)
        q = r["quickstart_round"]
        round_table = (f"The quickstart's round ({q['questions']} questions, {q['generated']} candidates, "
                       f"{len(q['methods'])} methods, {q['test']} test questions), work and fixed costs:\n\n"
                       f"{split_table(q)}\n")
    if "generate" not in r:  # --only-round
        return round_table
    g, s, t, e, sc = r["generate"], r["score"], r["train"], r["end_to_end"], r["scaling"]
    f = lambda value, digits=3: f"{value:.{digits}g}" if isinstance(value, float) else str(value)  # noqa: E731
    lines = [
        round_table,
        "| section | measure | ours | authors' way | limit | ours / authors | ours / limit |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| generate, stage (incl. start-up) | candidates/s; new tokens/s | {f(g['stage']['candidates_per_s'])}; "
        f"{f(g['stage']['new_tokens_per_s'])} | {f(g['authors']['candidates_per_s'])}; {f(g['authors']['new_tokens_per_s'])} "
        f"| -; {f(g['limit']['tokens_per_s'])} | {f(g['ratios']['stage_vs_authors'])}x per candidate | {f(g['ratios']['stage_vs_limit'])} |",
        f"| generate, actor loop | candidates/s; new tokens/s | {f(g['actor_loop']['candidates_per_s'])}; "
        f"{f(g['actor_loop']['new_tokens_per_s'])} | same | same | {f(g['ratios']['actor_loop_vs_authors'])}x per candidate "
        f"| {f(g['ratios']['actor_loop_vs_limit'])} |",
        f"| score, pool (steady) | tokens/s | {f(s['pool']['steady_tokens_per_s'])} | {f(s['authors']['tokens_per_s'])} "
        f"| {f(s['limit']['tokens_per_s'])} | {f(s['ratios']['pool_vs_authors'])}x | {f(s['ratios']['pool_vs_limit'])} |",
        *([f"| score, pool, {s['pool_all_cores']['actors']} actors (steady) | tokens/s | {f(s['pool_all_cores']['steady_tokens_per_s'])} "
           f"| same | same | {f(s['ratios']['pool_all_cores_vs_authors'])}x | {f(s['ratios']['pool_all_cores_vs_limit'])} |"]
          if "pool_all_cores" in s else []),
        f"| score, stage (incl. start-up) | tokens/s | {f(s['stage']['tokens_per_s'])} | same | same "
        f"| {f(s['ratios']['stage_vs_authors'])}x | {f(s['stage']['tokens_per_s'] / s['limit']['tokens_per_s'])} |",
        f"| train, loop | samples/s | {f(t['stage']['loop_samples_per_s'])} | plain loop: {f(t['plain_loop']['samples_per_s'])} "
        f"| - | {f(t['ratios']['loop_vs_plain'])}x | - |",
        f"| train, stage (incl. start-up) | samples/s | {f(t['stage']['samples_per_s'])} | plain loop: "
        f"{f(t['plain_loop']['samples_per_s'])} | - | {f(t['ratios']['stage_vs_plain'])}x | - |",
        "",
        "| end to end | seconds |",
        "| --- | --- |",
        f"| Ray start-up | {f(e['ray_start_s'])} |",
        f"| one actor's start-up (process, imports, model load; measured apart) | {f(e['actor_start_s'])} |",
        *[f"| {name} | {f(seconds)} |" for name, seconds in e["stages_s"].items()],
        f"| other (splits, inputs, report) | {f(e['other_s'])} |",
        f"| **total** | **{f(e['total_s'])}** |",
        "",
        "| scaling | candidates | generate s | vote s | scored | score s | generate + score s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {p['questions']} questions, m = {p['samples']}, {p['actors']} actor(s) per pool | {p['candidates']} "
          f"| {f(p['generate_s'])} | {f(p['vote_s'])} | {p['scored']} | {f(p['score_s'])} | {f(p['generate_score_s'])} |"
          for p in unique_points(sc)],
        "",
        f"Fit of generate + score against questions: {f(sc['fit_generate_score_vs_questions']['intercept'])} s + "
        f"{f(sc['fit_generate_score_vs_questions']['slope'])} s/question (m = {r['settings']['samples']}).",
    ]
    if "gpu_nodes" in r["cost_model"]:
        from dsw_ray.bench.gpu_cost import projection_table

        lines += ["", "GPU nodes: a paper-sized round (Llama-3-8B, gsm8k, m = 15, LoRA), T = F + W / (8 N r):", "",
                  projection_table(r["cost_model"]["gpu_nodes"])]
    return "\n".join(lines)


def unique_points(scaling_result: dict) -> list[dict]:
    seen, points = set(), []
    for p in scaling_result["questions"] + scaling_result["samples"] + scaling_result["actors"]:
        key = (p["questions"], p["samples"], p["actors"])
        if key not in seen:
            seen.add(key)
            points.append(p)
    return points


def machine() -> dict:
    import ray
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
    }


def run_bench(
    size_name: str, out: str, plot: str, model: str = QUICKSTART_TOY, command: str = "", gpu_proof: str | None = GPU_PROOF,
    only_round: bool = False,
) -> dict:
    """Every section in order (``only_round``: the quickstart's round alone); writes ``out``
    (JSON) and ``plot`` (PNG), returns the result. ``gpu_proof``: a GPU proof run's JSON, whose
    rates the GPU projection uses if it exists."""
    import ray

    from dsw_ray.inputs import base_model
    from dsw_ray.ray_session import start_ray

    size = SIZES[size_name]
    work = tempfile.mkdtemp(prefix="dsw-bench-")
    started = time.perf_counter()
    try:
        job = job_config(size, os.path.join(work, "round"), model)
        build_quickstart_toy(model)
        model_path = base_model(job, load_splits(job))
        ray_started = time.perf_counter()
        start_ray(job)
        ray_start_s = time.perf_counter() - ray_started
        result = {"command": command, "size": size_name, "settings": asdict(size),
                  "date": datetime.date.today().isoformat(), "machine": machine()}
        log.info("bench: the quickstart's round")
        result["quickstart_round"] = quickstart_round(size_name, work, model_path, ray_start_s)
        if not only_round:
            other_sections(result, size, job, model_path, ray_start_s, work, gpu_proof)
        result["bench_seconds"] = time.perf_counter() - started
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    result = rounded(result, 4)
    result["table_markdown"] = markdown_table(result)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    if not only_round:
        plot_scaling(result, plot)
    return result


def other_sections(result: dict, size: BenchSize, job, model_path: str, ray_start_s: float, work: str, gpu_proof) -> None:
    """Every section after the quickstart's round, into ``result``."""
    from dsw_ray.bench.gpu_cost import gpu_projection, load_proof

    log.info("bench: one actor's start-up")
    actor = actor_startup(model_path)
    log.info("bench: end to end (one round)")
    result["end_to_end"], round_times = end_to_end(job, ray_start_s, actor)
    result["end_to_end"]["actor_start"] = actor
    threads = pool_threads(1)
    log.info("bench: generate")
    result["generate"] = generate_section(job, job.run_dir, round_times["round-1/generate"], model_path, size, threads)
    log.info("bench: score")
    result["score"] = score_section(job, job.run_dir, round_times["round-1/score"], model_path, size, work, threads)
    log.info("bench: train")
    result["train"] = train_section(job, job.run_dir, round_times["round-1/iwsi/train"], model_path)
    log.info("bench: scaling")
    result["scaling"] = scaling(size, work, model_path, round_point(job, round_times))
    result["cost_model"] = cost_model(result)
    proof = load_proof(gpu_proof)
    result["cost_model"]["gpu_nodes"] = {"gpu_proof": gpu_proof if proof else None, **gpu_projection(proof)}


def default_paths(size_name: str) -> tuple[str, str]:
    if size_name == "full":
        return "docs/bench.json", "docs/bench_scaling.png"
    return os.path.join("runs", "bench-tiny", "bench.json"), os.path.join("runs", "bench-tiny", "bench_scaling.png")


def main(args) -> int:
    """The ``bench`` subcommand: run, print the table, say where the files are."""
    out, plot = default_paths(args.size)
    out, plot = args.out or out, args.plot or plot
    result = run_bench(
        args.size, out, plot, args.model, "dsw-ray " + " ".join(sys.argv[1:]), args.gpu_proof, args.only_round
    )
    print()
    print(result["table_markdown"])
    written = out if args.only_round else f"{out} and {plot}"
    print(f"\n{result['machine']['cpus']} CPUs, {result['machine']['platform']}; {result['bench_seconds']:.0f} s; "
          f"written to {written}")
    return 0
