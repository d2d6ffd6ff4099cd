"""dsw-ray: importance-weighted self-improvement (IWSI) of LLMs on Ray.

The public surface: tasks, voting, DS weights and the keep rules (the paper's and the
authors' code's) as plain functions, the filter methods, and ``run_job`` for a whole job.
Importing this package loads nothing but itself: every Ray worker of a job imports
``dsw_ray.console`` at start (``ray_session.SETUP_HOOK``), and a worker that runs no stage of
ours should not load pydantic, pandas and the stages (docs/benchmarks.md). The names below
load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dsw_ray.config import JobConfig

PUBLIC = {
    "JobConfig": "dsw_ray.config", "load_job": "dsw_ray.config",
    "ConfigError": "dsw_ray.errors", "DataError": "dsw_ray.errors", "UserError": "dsw_ray.errors",
    "get_task": "dsw_ray.tasks", "majority_vote": "dsw_ray.vote", "METHODS": "dsw_ray.filters",
    "ds_weights": "dsw_ray.weights", "keep_lowest": "dsw_ray.weights",
    "official_ds_weights": "dsw_ray.weights", "official_keep": "dsw_ray.weights",
}  # fmt: skip


def __getattr__(name: str):
    if name not in PUBLIC:
        raise AttributeError(f"module 'dsw_ray' has no attribute {name!r}")
    return getattr(importlib.import_module(PUBLIC[name]), name)


def run_job(job: JobConfig) -> dict:
    """Run every round of ``job`` on Ray; see ``dsw_ray.pipeline``."""
    from dsw_ray.pipeline import run_job as run

    return run(job)


__all__ = [*PUBLIC, "run_job"]
