"""Fixed costs: one actor's start-up as a pool's actor sees it."""

from __future__ import annotations

import time


def actor_startup(model_path: str) -> dict:
    """One Ray actor's start-up as a pool's actor sees it: process start, imports, the first
    model load (which includes transformers' lazy import of the model class) and a second,
    warm load (the weights alone)."""
    import ray

    @ray.remote
    class Probe:
        def __init__(self, path: str):
            started = time.perf_counter()
            import torch  # noqa: F401
            import transformers  # noqa: F401

            from dsw_ray.models import load_model, load_tokenizer

            imported = time.perf_counter()
            load_tokenizer(path), load_model(path)
            loaded = time.perf_counter()
            load_tokenizer(path), load_model(path)
            self.seconds = {
                "imports_s": imported - started,
                "first_model_load_s": loaded - imported,
                "warm_model_load_s": time.perf_counter() - loaded,
            }

        def report(self) -> dict:
            return self.seconds

    started = time.perf_counter()
    probe = Probe.options(num_cpus=1).remote(model_path)
    inside = ray.get(probe.report.remote())
    total = time.perf_counter() - started
    ray.kill(probe)
    return {"total_s": total, "process_start_s": total - sum(inside.values()), **inside}
