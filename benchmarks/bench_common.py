"""What the sections of ``dsw-ray bench`` share: the sizes, the job each section runs, and
the timing helpers."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import time
from dataclasses import dataclass


GPU_PROOF = "docs/gpu_proof.json"


@dataclass(frozen=True)
class BenchSize:
    """How much work each section does."""

    questions: int  # the round's unlabeled questions (the quickstart: 96)
    samples: int  # m
    valid: int
    test: int
    max_new_tokens: int
    generate_batch: int  # questions per generate call
    score_batch: int
    train_epochs: int
    micro_batch: int
    evaluate_batch: int
    authors_candidates: int  # candidates generated the authors' way (each runs to the full context)
    score_rows: int  # gold rationales streamed through the scoring pool
    authors_score_rows: int  # of them, scored the authors' way
    scaling_questions: tuple[int, ...]  # includes `questions`
    scaling_samples: tuple[int, ...]  # includes `samples`
    scaling_actors: tuple[int, ...]
    limit_tokens: int  # the largest [B, L] forward the limit measures
    score_all_cores: bool  # also time a scoring pool of one actor per core


SIZES = {
    # The quickstart's settings, with iwsi alone.
    "full": BenchSize(
        questions=96, samples=6, valid=24, test=100, max_new_tokens=48, generate_batch=16, score_batch=32,
        train_epochs=2, micro_batch=8, evaluate_batch=50, authors_candidates=12, score_rows=6000,
        authors_score_rows=300, scaling_questions=(48, 96, 192), scaling_samples=(3, 6, 12), scaling_actors=(1, 2),
        limit_tokens=65536, score_all_cores=True,
    ),
    # Every section on a few rows, the scaling study on two points: it checks that the
    # benchmark runs (in CI), not how fast.
    "tiny": BenchSize(
        questions=8, samples=2, valid=6, test=6, max_new_tokens=24, generate_batch=4, score_batch=16,
        train_epochs=1, micro_batch=4, evaluate_batch=6, authors_candidates=1, score_rows=512,
        authors_score_rows=16, scaling_questions=(4, 8), scaling_samples=(2,), scaling_actors=(1,), limit_tokens=8192,
        score_all_cores=False,
    ),
}


def job_config(size: BenchSize, run_dir: str, model_path: str, **overrides):
    """The quickstart's job at this size (iwsi only), built in code."""
    from dsw_ray.config import JobConfig

    settings = {
        "run_dir": run_dir,
        "methods": ["iwsi"],
        "task": {"name": "arith", "num_questions": size.questions, "num_valid": size.valid, "num_test": size.test, "seed": 0},
        "model": {"path": model_path},
        "generate": {"samples_per_question": size.samples, "temperature": 0.8, "max_new_tokens": size.max_new_tokens,
                     "batch_size": size.generate_batch},
        "score": {"batch_size": size.score_batch},
        "filter": {"keep_fraction": 0.8},
        "train": {"zero_stage": 2, "epochs": size.train_epochs, "micro_batch_size": size.micro_batch, "learning_rate": 2e-4},
        "evaluate": {"max_new_tokens": size.max_new_tokens, "batch_size": size.evaluate_batch},
    }
    for section, values in overrides.items():
        settings[section] = {**settings[section], **values} if isinstance(values, dict) else values
    return JobConfig.model_validate(settings)


def stage_seconds(run_dir: str) -> dict[str, float]:
    """Wall seconds of every stage of a run directory (``round-1/generate``), from the start and
    finish times in its manifests."""
    from dsw_ray.rundir import stage_states

    def instant(text: str) -> float:
        return datetime.datetime.fromisoformat(text).timestamp()

    return {s["stage"]: instant(s["finished"]) - instant(s["started"]) for s in stage_states(run_dir) if s["state"] == "done"}


@contextlib.contextmanager
def num_threads(threads: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def best_of(repeats: int, fn) -> float:
    """The shortest of ``repeats`` timed calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def pool_threads(actors: int) -> int:
    """The torch threads each actor of a pool of ``actors`` gets on this cluster."""
    import ray

    from dsw_ray.resources import pool_cpus, torch_threads

    return torch_threads(pool_cpus(actors, None, ray.cluster_resources().get("CPU", 1), "bench"))


def rounded(value, digits: int = 3):
    """Floats in a nested result to ``digits`` significant digits (the JSON stays readable)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) and value != 0 else value
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def machine() -> dict:
    import ray
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
    }
