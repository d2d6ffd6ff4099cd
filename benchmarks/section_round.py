"""The quickstart's round as ``jobs/quickstart.yaml`` runs it, its wall time split into the
work its actors did and fixed costs, from its manifests.

A pool stage's manifest has ``busy_seconds``: the wall time in which some actor of its pool
was inside a call (``progress``); a fine-tune's has ``loop_seconds``: its workers' epochs.
The rest of a stage's wall time is fixed cost: starting processes and pools, loading
models, Ray Data's planning and reading, Ray Train's start and the export. Stages that ran
in one pass (the models one evaluation pool answered for, the fine-tunes of one Ray Train
run) share a manifest time and count once.
"""

from __future__ import annotations

import os
import time

from dsw_ray.scaling import stage_passes
from dsw_ray.toy import QUICKSTART_JOB


def stage_split(run_dir: str) -> list[dict]:
    """Per stage (or pass) of the run, in the order they ran: its wall, work and fixed seconds."""
    rows = []
    for p in stage_passes(run_dir):
        work = p["work_s"] or 0.0
        rows.append({"stage": p["stages"][0], "seconds": p["seconds"], "work_s": work, "fixed_s": p["seconds"] - work,
                     "models": len(p["stages"]), "stages": p["stages"]})  # fmt: skip
    return rows


def round_split(run_dir: str, ray_start_s: float, run_job_s: float) -> dict:
    """The whole run: Ray's start, every stage, and the driver's own time between stages (the
    task's data, the inputs' parquet, the summary and the report) as fixed cost."""
    stages = stage_split(run_dir)
    total = ray_start_s + run_job_s
    work = sum(s["work_s"] for s in stages)
    return {
        "ray_start_s": ray_start_s,
        "driver_s": run_job_s - sum(s["seconds"] for s in stages),
        "stages": stages,
        "total_s": total,
        "work_s": work,
        "fixed_s": total - work,
        "fixed_share": (total - work) / total,
    }


def split_table(split: dict) -> str:
    """The split as a markdown table, one row per stage, Ray's start and the driver's time."""
    lines = ["| stage | wall s | work s | fixed s |", "| --- | --- | --- | --- |"]
    lines.append(f"| Ray start | {split['ray_start_s']:.1f} | 0.0 | {split['ray_start_s']:.1f} |")
    for s in split["stages"]:
        name = s["stage"] + (f" (and {s['models'] - 1} more, one pass)" if s["models"] > 1 else "")
        lines.append(f"| {name} | {s['seconds']:.1f} | {s['work_s']:.1f} | {s['fixed_s']:.1f} |")
    lines.append(f"| driver, between stages | {split['driver_s']:.1f} | 0.0 | {split['driver_s']:.1f} |")
    lines.append(
        f"| **round** | **{split['total_s']:.1f}** | **{split['work_s']:.1f}** | **{split['fixed_s']:.1f}** "
        f"({100 * split['fixed_share']:.0f}%) |"
    )
    return "\n".join(lines)


# --size tiny runs the quickstart's job on a few rows.
# Answers are not cut short and 32 candidates hold a correct one, so every method trains.
TINY_QUICKSTART = ["task.num_questions=8", "task.num_valid=6", "task.num_test=6", "generate.samples_per_question=4",
                   "evaluate.max_new_tokens=24"]


def quickstart_round(size_name: str, work: str, model_path: str, ray_start_s: float) -> dict:
    """``jobs/quickstart.yaml`` on this Ray and ``model_path``, split into work and fixed costs."""
    from dsw_ray.config import load_job
    from dsw_ray.pipeline import run_job

    overrides = [f"run_dir={os.path.join(work, 'quickstart')}", f"model.path={model_path}"]
    job = load_job(QUICKSTART_JOB, overrides + (TINY_QUICKSTART if size_name == "tiny" else []))
    started = time.perf_counter()
    summary = run_job(job)
    split = round_split(job.run_dir, ray_start_s, time.perf_counter() - started)
    return {**split, "methods": list(job.methods), "questions": summary["questions"], "test": summary["test"],
            "generated": summary["rounds"][0]["methods"][job.methods[0]]["candidates"]["generated"]}
