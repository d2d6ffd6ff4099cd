"""The scoring pool's steady rate, the score stage as run, the actor's loop, the authors' way and the limit."""

from __future__ import annotations

import os
import time

from bench_common import BenchSize, num_threads, pool_threads
from section_generate import batched_forward_limit


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
    from dsw_ray.tasks import SplitSizes, get_task, splits_of

    model = LossModel(ModelSpec.of(model_path, job.model), LossTokens(job.train.max_length, job.score.loss_on))

    # The round's score stage: the valid set and the majority candidates, one pool pass.
    splits = splits_of(job.task)
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
