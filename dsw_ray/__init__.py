"""dsw-ray: importance-weighted self-improvement (IWSI) of LLMs on Ray.

The public surface: tasks, voting, DS weights and the keep rules (the paper's and the
authors' code's) as plain functions, the filter methods, and ``run_job`` for a whole job.
Importing this package loads neither torch nor Ray.
"""

from dsw_ray.config import JobConfig, load_job
from dsw_ray.errors import ConfigError, DataError, UserError
from dsw_ray.tasks import get_task
from dsw_ray.vote import majority_vote
from dsw_ray.filters import METHODS
from dsw_ray.weights import ds_weights, keep_lowest, official_ds_weights, official_keep


def run_job(job: JobConfig) -> dict:
    """Run every round of ``job`` on Ray; see ``dsw_ray.pipeline``."""
    from dsw_ray.pipeline import run_job as run

    return run(job)


__all__ = [
    "METHODS", "ConfigError", "DataError", "JobConfig", "UserError",
    "ds_weights", "get_task", "keep_lowest", "load_job", "majority_vote", "official_ds_weights", "official_keep",
    "run_job",
]
