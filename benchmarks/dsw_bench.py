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
  stated assumptions (``gpu_cost``).

Every rate counts real tokens: new tokens for generation, unpadded tokens for scoring.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict

from dsw_ray.toy import QUICKSTART_TOY, build_quickstart_toy

from bench_common import GPU_PROOF, SIZES, BenchSize, job_config, machine, pool_threads, rounded
from gpu_cost import gpu_projection, load_proof, projection_table
from section_cost import cost_model
from section_generate import generate_section
from section_round import quickstart_round, split_table
from section_scaling import end_to_end, plot_scaling, round_point, scaling
from section_score import score_section
from section_startup import actor_startup
from section_train import train_section

log = logging.getLogger(__name__)


def markdown_table(r: dict) -> str:
    """The tables docs/benchmarks.md shows, from a result."""
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
    from dsw_ray.tasks import splits_of

    size = SIZES[size_name]
    work = tempfile.mkdtemp(prefix="dsw-bench-")
    started = time.perf_counter()
    try:
        job = job_config(size, os.path.join(work, "round"), model)
        build_quickstart_toy(model)
        model_path = base_model(job, splits_of(job.task))
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
