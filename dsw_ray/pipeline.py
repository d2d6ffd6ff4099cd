"""The job: base model, base accuracy, then rounds of generate, vote, score, filter, train, evaluate.

Each stage reads the artifacts of the one before from the run directory and writes its
own (see ``rundir``), so the round below reads like METHOD.md and a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dsw_ray import columns as C
from dsw_ray.config import JobConfig
from dsw_ray.errors import UserError
from dsw_ray.evaluate import evaluate
from dsw_ray.filters import iwsi
from dsw_ray.generate import generate
from dsw_ray.models import check_model_dir
from dsw_ray.rundir import fingerprint, run_stage
from dsw_ray.score import score
from dsw_ray.tasks import Splits, get_task
from dsw_ray.toy import build_toy_model
from dsw_ray.train import fine_tune
from dsw_ray.vote import vote_question

log = logging.getLogger(__name__)

DATA = "data"  # the parquet folder inside a stage's artifact folder


# ---- artifacts -------------------------------------------------------------------------

def data_dir(stage_dir: str) -> str:
    return os.path.join(stage_dir, DATA)


def count_rows(stage_dir: str) -> int:
    if not os.path.isdir(data_dir(stage_dir)):  # Ray Data writes no file for an empty dataset
        return 0
    return pads.dataset(data_dir(stage_dir), format="parquet").count_rows()


def write_table(table: pa.Table, stage_dir: str) -> dict:
    os.makedirs(data_dir(stage_dir), exist_ok=True)
    pq.write_table(table, os.path.join(data_dir(stage_dir), "part-0.parquet"))
    return {"rows": table.num_rows}


def write_dataset(dataset, stage_dir: str) -> dict:
    dataset.write_parquet(data_dir(stage_dir))
    return {"rows": count_rows(stage_dir)}


def read_table(stage_dir: str, columns: list[str] | None = None) -> pa.Table:
    return pads.dataset(data_dir(stage_dir), format="parquet").to_table(columns=columns)


def read_dataset(stage_dir: str, rows_per_block: int, min_blocks: int = 1):
    """A Ray Dataset of a stage's rows, cut into blocks so that every actor of a pool gets work."""
    import ray

    rows = count_rows(stage_dir)
    blocks = max(min_blocks, min(256, math.ceil(rows / rows_per_block)))
    return ray.data.read_parquet(data_dir(stage_dir)).repartition(blocks)


def examples_table(examples) -> pa.Table:
    return pa.Table.from_pylist(
        [{C.QUESTION_ID: e.question_id, C.QUESTION: e.question, C.GOLD: e.gold} for e in examples]
    )


# ---- stages that run in the driver -------------------------------------------------------

def vote_group(candidates, task_name: str):
    return vote_question(candidates, get_task(task_name).parse_answer)


def accuracy(stage_dir: str) -> float:
    correct = read_table(stage_dir, [C.CORRECT])[C.CORRECT].to_pylist()
    return sum(correct) / len(correct) if correct else float("nan")


def check_splits(splits: Splits) -> None:
    for name in ("questions", "valid", "test"):
        if not getattr(splits, name):
            raise UserError(f"the task's {name} split is empty; check task.data_path and task.num_{name}.")
    for name in ("questions", "valid", "test"):
        ids = [e.question_id for e in getattr(splits, name)]
        if len(set(ids)) != len(ids):
            raise UserError(f"the task's {name} split has duplicate question ids.")


def base_model(job: JobConfig, splits: Splits) -> str:
    """The round-1 model path, building the toy model there first if the job asks for it."""
    if job.model.toy is not None:
        # Test and valid questions stay out of the toy model's pre-training corpus.
        build_toy_model(job.model.path, job.model.toy, {e.question for e in splits.test + splits.valid})
    check_model_dir(job.model.path)
    return os.path.abspath(job.model.path)


# ---- the job -------------------------------------------------------------------------------

def run_round(job: JobConfig, run_dir: str, round_index: int, model_path: str, model_fp: str, splits: Splits) -> dict:
    """One round of METHOD.md on ``model_path``; returns the round's summary."""
    round_dir = os.path.join(run_dir, f"round-{round_index}")

    def stage(name: str) -> str:
        return os.path.join(round_dir, name)

    questions = os.path.join(run_dir, "inputs", "questions")

    gen_fp = fingerprint("generate", job.task, job.generate, model_fp, round_index)
    generated = run_stage(
        stage("generate"),
        gen_fp,
        lambda out: write_dataset(
            generate(read_dataset(questions, job.generate.batch_size, job.generate.actors), model_path, job, round_index),
            out,
        ),
    )

    vote_fp = fingerprint("vote", gen_fp)
    run_stage(
        stage("vote"),
        vote_fp,
        lambda out: write_dataset(
            read_dataset(stage("generate"), 1024)
            .groupby(C.QUESTION_ID)
            .map_groups(vote_group, fn_kwargs={"task_name": job.task.name}, batch_format="pandas"),
            out,
        ),
    )

    score_fp = fingerprint("score", vote_fp, job.score, job.train.max_length, model_fp)
    scored = run_stage(
        stage("score"),
        score_fp,
        lambda out: write_dataset(
            score(read_dataset(stage("vote"), job.score.batch_size * 4, job.score.actors), splits.valid, model_path, job),
            out,
        ),
    )

    if scored["rows"] == 0:
        raise UserError(
            f"round {round_index}: no candidate has a parsable majority answer, so there is nothing to "
            f"fine-tune on; see {stage('vote')} and raise generate.max_new_tokens or check the task's prompt."
        )

    filter_fp = fingerprint("filter", score_fp, job.filter)

    def keep(out: str) -> dict:
        filtered = iwsi(read_table(stage("score")), job.filter.keep_fraction)
        # Scoring already left out the candidates that lost the vote: count them here too.
        lost_vote = generated["rows"] - scored["rows"]
        dropped = {**filtered.dropped, "not_majority": filtered.dropped["not_majority"] + lost_vote}
        return {**write_table(filtered.kept, out), "dropped": dropped}

    kept = run_stage(stage("filter"), filter_fp, keep)

    train_fp = fingerprint("train", filter_fp, job.train, job.model.dtype)
    trained = run_stage(
        stage("train"),
        train_fp,
        lambda out: fine_tune(
            read_dataset(stage("filter"), job.train.micro_batch_size, job.train.num_workers),
            kept["rows"],
            model_path,
            job,
            os.path.join(out, "model"),
            stage("ray_train"),
        ),
    )
    model_dir = os.path.join(stage("train"), "model")

    evaluated = run_evaluation(job, run_dir, stage("evaluate"), model_dir, train_fp)
    return {
        "round": round_index,
        "model": model_dir,
        "model_fingerprint": train_fp,
        "candidates": generated["rows"],
        "majority": scored["rows"],  # only majority candidates are scored
        "valid_loss_mean": first_value(stage("score"), C.VALID_LOSS_MEAN),
        "methods": {"iwsi": {"kept": kept["rows"], "dropped": kept["dropped"], "accuracy": evaluated}},
        "train": {k: trained[k] for k in ("optimizer_steps", "final_loss") if k in trained},
    }


def first_value(stage_dir: str, column: str):
    values = read_table(stage_dir, [column])[column]
    return values[0].as_py() if len(values) else None


def run_evaluation(job: JobConfig, run_dir: str, stage_dir: str, model_path: str, model_fp: str) -> float:
    test = os.path.join(run_dir, "inputs", "test")
    run_stage(
        stage_dir,
        fingerprint("evaluate", job.task, job.evaluate, model_fp),
        lambda out: write_dataset(
            evaluate(read_dataset(test, job.evaluate.batch_size, job.evaluate.actors), model_path, job), out
        ),
    )
    return accuracy(stage_dir)


def write_inputs(run_dir: str, splits: Splits, job: JobConfig) -> None:
    """The round's inputs as parquet, so that actors read them instead of the driver shipping them."""
    for name, examples in (("questions", splits.questions), ("test", splits.test)):
        run_stage(
            os.path.join(run_dir, "inputs", name),
            fingerprint("inputs", name, job.task, [asdict(e) for e in examples]),
            lambda out, examples=examples: write_table(examples_table(examples), out),
        )


# Workers log our stage lines, not one download-style progress bar per model load.
QUIET_WORKERS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def start_ray(job: JobConfig) -> None:
    import ray
    import ray.data

    if not ray.is_initialized():
        runtime_env = {"env_vars": QUIET_WORKERS}
        if job.ray.address:
            ray.init(address=job.ray.address, runtime_env=runtime_env)
        else:
            # The dashboard stays off: a local run exposes nothing beyond this process.
            ray.init(num_cpus=job.ray.num_cpus, include_dashboard=False, runtime_env=runtime_env)
    context = ray.data.DataContext.get_current()
    context.enable_operator_progress_bars = False


def run_job(job: JobConfig) -> dict:
    """Run every round of the job and write ``summary.json``; returns the summary."""
    task = get_task(job.task.name)
    splits = task.load(
        job.task.data_path, job.task.num_questions, job.task.num_valid, job.task.num_test, job.task.seed
    )
    check_splits(splits)
    model_path = base_model(job, splits)
    run_dir = os.path.abspath(job.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    start_ray(job)
    write_inputs(run_dir, splits, job)

    model_fp = fingerprint("base", model_path, job.model.toy, job.model.dtype)
    summary = {
        "task": job.task.name,
        "model": model_path,
        "questions": len(splits.questions),
        "valid": len(splits.valid),
        "test": len(splits.test),
        "base_accuracy": run_evaluation(job, run_dir, os.path.join(run_dir, "base", "evaluate"), model_path, model_fp),
        "rounds": [],
    }
    for round_index in range(1, job.rounds + 1):
        result = run_round(job, run_dir, round_index, model_path, model_fp, splits)
        summary["rounds"].append(result)
        model_path, model_fp = result["model"], result["model_fingerprint"]
    summary["methods"] = summary["rounds"][-1]["methods"]
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
