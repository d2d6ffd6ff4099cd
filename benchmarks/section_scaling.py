"""End to end (one round, by stage) and scaling: generate + score time against questions, m and actors."""

from __future__ import annotations

import os
import time

from bench_common import BenchSize, job_config, stage_seconds
from section_round import stage_split


def end_to_end(job, ray_start_s: float, actor: dict) -> tuple[dict, dict]:
    """Run the round; its wall time by stage, beside the fixed costs measured apart."""
    from dsw_ray.pipeline import run_job

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
    from dsw_ray.tasks import get_task, splits_of
    from dsw_ray.vote import answer_parser, vote

    run_dir = os.path.join(work, name)
    job = job_config(size, run_dir, model_path, **overrides)
    splits = splits_of(job.task)
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
