"""dsw-ray: importance-weighted self-improvement (IWSI) of LLMs on Ray.

The public surface: tasks, voting, DS weights and the keep rule as plain functions, and
``run_job`` for a whole job. Importing this package loads neither torch nor Ray.
"""

from dsw_ray.config import JobConfig, load_job
from dsw_ray.errors import ConfigError, DataError, UserError
from dsw_ray.tasks import get_task
from dsw_ray.vote import majority_vote
from dsw_ray.weights import ds_weights, keep_lowest


def run_job(job: JobConfig) -> dict:
    """Run every round of ``job`` on Ray; see ``dsw_ray.pipeline``."""
    from dsw_ray.pipeline import run_job as run

    return run(job)


__all__ = [
    "ConfigError", "DataError", "JobConfig", "UserError",
    "ds_weights", "get_task", "keep_lowest", "load_job", "majority_vote", "run_job",
]
