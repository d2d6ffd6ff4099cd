"""The job, as the paper's Algorithm 1: the base model and its accuracy, then rounds of
generate, vote and score (shared by the round's methods), each method's filter and
fine-tunes, and one evaluation of the round's models; then the summary and the report.

Each stage reads the artifacts of the one before from the run directory and writes its own
(see ``rundir``), so a rerun resumes. The stages' wiring lives beside the recipe:
``candidates`` (the shared stages), ``methods`` (filters and fine-tunes), ``evaluation``;
``inputs`` checks and writes the splits and the base model, ``ray_session`` starts Ray.
"""

from __future__ import annotations

import logging
import os

from dsw_ray.candidates import Candidates, make_candidates
from dsw_ray.config import JobConfig
from dsw_ray.console import attach_run_log
from dsw_ray.evaluation import BASE_EVALUATION, Evaluation, accuracy, add_statistics, evaluate_round
from dsw_ray.gguf_import import read_record
from dsw_ray.inputs import QUARANTINE, base_model, check_splits, write_inputs
from dsw_ray.methods import run_method, train_round
from dsw_ray.models import model_identity
from dsw_ray.ray_session import guard_submitted_job, start_ray
from dsw_ray.report import write_report
from dsw_ray.rundir import claim_run_dir, fingerprint, holding, sharing, write_json
from dsw_ray.tasks import Splits, splits_of
from dsw_ray.tracking import log_job, require_tracking

log = logging.getLogger(__name__)


def run_job(job: JobConfig) -> dict:
    """Run every round of the job and write ``summary.json``; returns the summary."""
    splits = splits_of(job.task)
    check_splits(splits, job.task)
    model_path = base_model(job, splits)
    guard_submitted_job(job)
    require_tracking(job)
    run_dir = os.path.abspath(job.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with holding(run_dir), sharing(job.store):
        return run_held(job, run_dir, splits, model_path)


def run_held(job: JobConfig, run_dir: str, splits: Splits, model_path: str) -> dict:
    """``run_job`` in the run directory this process holds."""
    claim_run_dir(run_dir, {"task": job.task.name, "model": model_path})
    attach_run_log(run_dir)
    start_ray(job)
    write_inputs(run_dir, splits, job)
    if splits.rejected:
        log.warning(
            "%d bad rows of the task's data were left out (task.bad_rows=skip); they and the reasons are in %s",
            len(splits.rejected),
            os.path.join(run_dir, "inputs", QUARANTINE),
        )

    # The base model is known by what its folder holds, not only by its path (and an imported
    # GGUF model by its file's content).
    imported = [read_record(model_path)["sha256"]] if job.model.gguf is not None else []
    model_fp = fingerprint("base", model_path, job.model.toy, job.model.dtype, model_identity(model_path), *imported)
    summary = {
        "task": job.task.name,
        "model": model_path,
        "semantics": job.semantics,
        "questions": len(splits.questions),
        "valid": len(splits.valid),
        "test": len(splits.test),
        "quarantined": len(splits.rejected),
        "repeats": job.repeats,
        "rounds": [],
    }
    lineages = {method: (model_path, model_fp) for method in job.methods}
    base = [Evaluation(BASE_EVALUATION, model_path, model_fp)]  # evaluated with round 1's models
    for round_index in range(1, job.rounds + 1):
        result = run_round(job, run_dir, round_index, lineages, splits, base if round_index == 1 else [])
        summary["rounds"].append(result)
        lineages = {m: (r["model"], r["model_fingerprint"]) for m, r in result["methods"].items()}
    summary["base_accuracy"] = accuracy(os.path.join(run_dir, BASE_EVALUATION))
    summary["methods"] = summary["rounds"][-1]["methods"]
    add_statistics(summary, run_dir)
    write_json(os.path.join(run_dir, "summary.json"), summary)
    write_report(run_dir, summary, job.filter.keep_fraction)
    log_job(job, run_dir, summary)
    return summary


def run_round(
    job: JobConfig, run_dir: str, round_index: int, lineages: dict[str, tuple[str, str]], splits: Splits,
    evaluations: list[Evaluation] = (),
) -> dict:
    """One round of METHOD.md for every method. ``lineages`` maps a method to the model it
    starts from (path, fingerprint): in round 1 all share the base model, and so share one
    set of candidates; later each method generates from its own fine-tuned model. The
    round's fine-tuned models are evaluated together, with ``evaluations`` (the base model's,
    in round 1)."""
    round_dir = os.path.join(run_dir, f"round-{round_index}")
    shared: dict[str, Candidates] = {}  # model fingerprint -> candidates
    methods, tunes = {}, []
    for method in job.methods:
        model_path, model_fp = lineages[method]
        if model_fp not in shared:
            where = round_dir if round_index == 1 else os.path.join(round_dir, method)
            shared[model_fp] = make_candidates(job, run_dir, where, round_index, model_path, model_fp, splits)
        candidates = shared[model_fp]
        result, method_tunes = run_method(job, method, candidates, os.path.join(round_dir, method), model_path)
        methods[method] = {**result, "candidates": candidates.summary}
        tunes += method_tunes
    # The round's fine-tunes train in one Ray Train run, its models are evaluated in one pass.
    tuned = train_round(job, run_dir, round_dir, tunes, splits) if tunes else []
    accuracy_of = evaluate_round(job, run_dir, list(evaluations) + [t.evaluation for t in tuned], splits)
    for method, result in methods.items():
        seeds = [t for t in tuned if t.tune.method == method]
        if seeds:  # the first seed's model is the one the next round starts from
            accuracies = [accuracy_of[t.evaluation.stage_dir] for t in seeds]
            result.update(
                evaluations=[t.evaluation.stage_dir for t in seeds],
                seeds=[{"seed": t.tune.seed, "accuracy": a} for t, a in zip(seeds, accuracies)],
                train=seeds[0].train, model=seeds[0].model, model_fingerprint=seeds[0].tune.fingerprint,
                accuracy=sum(accuracies) / len(accuracies),
            )  # fmt: skip
    return {"round": round_index, "methods": methods}
