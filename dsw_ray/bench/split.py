"""A run's wall time split into the work its actors did and fixed costs, from its manifests.

A pool stage's manifest has ``busy_seconds``: the wall time in which some actor of its pool
was inside a call (``progress``); a fine-tune's has ``loop_seconds``: its workers' epochs.
The rest of a stage's wall time is fixed cost: starting processes and pools, loading
models, Ray Data's planning and reading, Ray Train's start and the export. Stages that ran
in one pass (the models one evaluation pool answered for, the fine-tunes of one Ray Train
run) share a manifest time and count once.
"""

from __future__ import annotations

from dsw_ray.rundir import stage_states


def work_seconds(manifests: list[dict]) -> float:
    """The work of one pass: its pool's busy time, or the sum of its fine-tunes' loops (one
    Ray Train run trains them one after the other)."""
    if "busy_seconds" in manifests[0]:
        return manifests[0]["busy_seconds"]
    return sum(m.get("loop_seconds", 0.0) for m in manifests)


def stage_split(run_dir: str) -> list[dict]:
    """Per stage (or pass) of the run, in the order they ran: its wall, work and fixed seconds."""
    passes: dict[tuple, list[dict]] = {}
    for state in stage_states(run_dir):
        if state["state"] == "done" and not state["stage"].startswith("inputs"):
            passes.setdefault((state["started"], state["finished"]), []).append(state)
    rows = []
    for manifests in passes.values():
        seconds = manifests[0]["seconds"]
        work = min(work_seconds(manifests), seconds)
        rows.append({"stage": manifests[0]["stage"], "seconds": seconds, "work_s": work, "fixed_s": seconds - work,
                     "models": len(manifests), "stages": [m["stage"] for m in manifests]})
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
