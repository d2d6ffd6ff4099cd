"""A driver that runs the train stage's ``fine_tune_all`` on its own local Ray: the tests kill
it, or its workers, mid-run and check what a rerun makes of the checkpoints and exports.

    python train_driver.py SPEC.json

SPEC: ``job`` (a job config dict), ``model``, ``data`` (parquet of question/text rows),
``outs`` (one export folder per fine-tune, seeds 0, 1, ...), ``storage``, ``run_name``,
``num_cpus``; prints ``METRICS <json>`` (a list, one per fine-tune).
"""

import json
import sys

from dsw_ray.config import JobConfig
from dsw_ray.ray_session import start_local_ray
from dsw_ray.train import FineTune, fine_tune_all


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    start_local_ray(spec["num_cpus"])
    job = JobConfig.model_validate(spec["job"])
    runs = [FineTune(spec["data"], spec["model"], out, seed) for seed, out in enumerate(spec["outs"])]
    metrics = fine_tune_all(runs, job.train, job.model, spec["storage"], spec["run_name"])
    print("METRICS " + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
