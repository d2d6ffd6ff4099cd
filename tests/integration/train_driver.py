"""A driver that runs the train stage's ``fine_tune`` on its own local Ray: the tests kill
it, or its workers, mid-run and check what a rerun makes of the checkpoints.

    python train_driver.py SPEC.json

SPEC: ``job`` (a job config dict), ``model``, ``data`` (parquet of question/text rows),
``out`` (the export folder), ``storage``, ``run_name``, ``num_cpus``; prints ``METRICS <json>``.
"""

import json
import sys

from dsw_ray.config import JobConfig
from dsw_ray.pipeline import start_local_ray
from dsw_ray.train import fine_tune


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    start_local_ray(spec["num_cpus"])
    job = JobConfig.model_validate(spec["job"])
    metrics = fine_tune(spec["data"], job.train, job.model, spec["model"], spec["out"], spec["storage"], spec["run_name"])
    print("METRICS " + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
