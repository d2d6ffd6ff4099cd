"""The round's evaluations: every model's greedy answers on the test set, in as few passes of
one pool as ``evaluate.models_per_pass`` allows, each cached in its own stage folder; then the
accuracies and their intervals for the summary."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsw_ray import columns as C
from dsw_ray import stats
from dsw_ray.config import JobConfig
from dsw_ray.evaluate import MODEL, evaluate, models_per_pass
from dsw_ray.inputs import split_fingerprint
from dsw_ray.resources import pool_input
from dsw_ray.rundir import read_table, run_stages, stage_fingerprint, write_table
from dsw_ray.tasks import Splits, task_of

BASE_EVALUATION = os.path.join("base", "evaluate")  # the base model's graded answers, in the run directory


@dataclass(frozen=True)
class Evaluation:
    """A model to evaluate: its stage folder (relative to the run directory), path and fingerprint."""

    stage_dir: str
    model_path: str
    model_fp: str


def evaluate_round(job: JobConfig, run_dir: str, evaluations: list[Evaluation], splits: Splits) -> dict[str, float]:
    """Greedy accuracy on the test set of each model, by stage folder. Each model's answers are
    cached in its own stage folder; the models not answered yet are answered in one pass of
    one pool (``evaluate.models_per_pass``)."""
    import ray

    test = os.path.join(run_dir, "inputs", "test")
    test_fp = split_fingerprint(splits, "test")
    fps = [evaluation_fingerprint(job, test_fp, e.model_fp) for e in evaluations]
    paths = [os.path.join(run_dir, e.stage_dir) for e in evaluations]
    model_of = dict(zip(paths, (e.model_path for e in evaluations)))

    def answer(outs: list[str]) -> list[dict]:
        models = [model_of[out.removesuffix(".partial")] for out in outs]
        questions = read_table(test)
        rows = pa.concat_tables(
            [questions.append_column(MODEL, pa.array([model] * questions.num_rows, pa.string())) for model in models]
        )
        answered = evaluate(
            pool_input(rows, job.evaluate.batch_size, job.evaluate.actors), job.evaluate, job.model, task_of(job.task), job.official
        )
        answers = pa.concat_tables(ray.get(answered.to_arrow_refs()), promote_options="default")
        return [
            write_table(answers.filter(pc.field(MODEL) == model).drop_columns([MODEL]).sort_by(C.QUESTION_ID), out)
            for model, out in zip(models, outs)
        ]

    step = models_per_pass(job.evaluate) or max(1, len(paths))
    for start in range(0, len(paths), step):
        run_stages(paths[start : start + step], fps[start : start + step], answer, rows_in=len(splits.test),
                   force=job.forced("evaluate"))  # fmt: skip
    return {e.stage_dir: accuracy(path) for e, path in zip(evaluations, paths)}


# The task settings that choose rows, not how a row is prompted or parsed: the split
# fingerprints already say which rows a stage read.
TASK_ROWS = {"data_path", "num_questions", "num_valid", "num_test", "seed", "bad_rows"}


def evaluation_fingerprint(job: JobConfig, test_fp: str, model_fp: str) -> str:
    """A model's evaluation: the test rows, how they are prompted and graded, and the model; the
    size of the other splits is not part of it, so points of a study that differ in the number
    of unlabeled questions share the base model's evaluation."""
    prompt = job.task.model_dump(mode="json", exclude=TASK_ROWS)
    return stage_fingerprint("evaluate", test_fp, prompt, job.evaluate, job.semantics, model_fp)


def accuracy(stage_dir: str) -> float:
    correct = read_table(stage_dir, [C.CORRECT])[C.CORRECT].to_pylist()
    return sum(correct) / len(correct) if correct else float("nan")


def correctness(run_dir: str, evaluations: list[str]) -> np.ndarray:
    """Per test question (in question id order), the share of ``evaluations`` (evaluate stage
    folders, relative to ``run_dir``) that answered it correctly."""
    tables = [read_table(os.path.join(run_dir, e), [C.QUESTION_ID, C.CORRECT]).sort_by(C.QUESTION_ID) for e in evaluations]
    return np.mean([t[C.CORRECT].to_numpy(zero_copy_only=False).astype(float) for t in tables], axis=0)


def add_statistics(summary: dict, run_dir: str) -> None:
    """95% bootstrap intervals over test questions: each accuracy, and each method's paired
    difference to the base model and to LMSI of the same round; with repeats, the spread of
    each method's accuracy over training seeds."""
    base = correctness(run_dir, [BASE_EVALUATION])
    summary["base"] = stats.accuracy_interval(base)
    for result in summary["rounds"]:
        methods = result["methods"]
        graded = {m: correctness(run_dir, r["evaluations"]) for m, r in methods.items() if r.get("evaluations")}
        for method, correct in graded.items():
            numbers = methods[method]
            numbers["interval"] = stats.accuracy_interval(correct)
            numbers["vs_base"] = stats.paired_difference(correct, base)
            if "lmsi" in graded and method != "lmsi":
                numbers["vs_lmsi"] = stats.paired_difference(correct, graded["lmsi"])
            numbers["seed_spread"] = stats.seed_spread([s["accuracy"] for s in numbers["seeds"]])
