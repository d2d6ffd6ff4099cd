"""``dsw-ray table SUITE.yaml``: several jobs (one per dataset) run with one list of methods,
and one table of their accuracies, datasets as columns, as the paper prints its Table 1.

A suite file names the jobs and what to set in each of them::

    methods: [lmsi, entropy, self, rm, iwsi_w, iwsi, random, oracle]
    overrides: [reward.model_path=/mnt/dsw/models/reward]   # key=value, as on the command line
    jobs: {gsm8k: jobs/gsm8k_llama3_8b.yaml, svamp: jobs/svamp_llama3_8b.yaml}
    out: /mnt/dsw/runs/table1                                # table1.md and table1.json

Every job is loaded and validated (with the suite's methods and overrides) before the first
one starts, so a mistake in the last job file does not surface days into the run. The jobs
then run one after another in one Ray session; each keeps its own run directory, so a rerun
of the suite resumes every job where it stopped and redoes only what changed.
"""

from __future__ import annotations

import math
import os

from pydantic import Field, ValidationError

from dsw_ray.config import JobConfig, Section, format_validation_error, load_job, read_mapping
from dsw_ray.errors import ConfigError
from dsw_ray.filters import variant
from dsw_ray.rundir import write_json

TABLE = "table1"  # table1.md and table1.json in the suite's out folder


class SuiteConfig(Section):
    methods: list[str] = Field(min_length=1, description="Methods every job runs (replaces each job's methods).")
    overrides: list[str] = Field([], description="key=value settings applied to every job, e.g. reward.model_path=...")
    jobs: dict[str, str] = Field(min_length=1, description="Column title (dataset) -> job file, in table order.")
    out: str = Field(description="Folder for the table (table1.md, table1.json).")


def load_suite(path: str, overrides: list[str] = (), per_job=None) -> tuple[SuiteConfig, dict[str, JobConfig]]:
    """The suite and every job it runs, validated; a mistake is a ConfigError naming its file.
    ``per_job(job_path)`` may add overrides for one job (the tests: its data elsewhere)."""
    try:
        suite = SuiteConfig.model_validate(read_mapping(path, "suite"))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, path, "suite", SuiteConfig)) from None
    methods = "methods=[" + ", ".join(suite.methods) + "]"
    jobs = {}
    for title, job_path in suite.jobs.items():
        jobs[title] = load_job(job_path, [*suite.overrides, *overrides, methods, *(per_job(job_path) if per_job else [])])
    run_dirs = [os.path.abspath(job.run_dir) for job in jobs.values()]
    if len(set(run_dirs)) != len(run_dirs):
        raise ConfigError(f"{path}: two jobs share a run_dir; give every job its own.")
    return suite, jobs


def percent(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:.1f}"


def accuracy_table(summaries: dict[str, dict], methods: list[str]) -> dict[str, dict[str, float | None]]:
    """Row (base, then each method's title) -> dataset -> accuracy of the last round."""
    rows = {"base": {title: s["base_accuracy"] for title, s in summaries.items()}}
    for method in methods:
        rows[variant(method).title] = {title: s["methods"][method]["accuracy"] for title, s in summaries.items()}
    return rows


def markdown(rows: dict[str, dict[str, float | None]], titles: list[str]) -> str:
    """Accuracy in %, datasets as columns and their average last (only over datasets with a number)."""
    lines = ["| method | " + " | ".join(titles) + " | avg |", "|" + " --- |" * (len(titles) + 2)]
    for name, by_dataset in rows.items():
        values = [by_dataset.get(title) for title in titles]
        known = [v for v in values if v is not None and not math.isnan(v)]
        average = sum(known) / len(known) if len(known) == len(values) else None
        lines.append(f"| {name} | " + " | ".join(percent(v) for v in values) + f" | {percent(average)} |")
    return "\n".join(lines)


def write_table(suite: SuiteConfig, summaries: dict[str, dict]) -> str:
    rows = accuracy_table(summaries, suite.methods)
    os.makedirs(suite.out, exist_ok=True)
    write_json(os.path.join(suite.out, TABLE + ".json"), {"accuracy": rows, "run_dirs": {t: s["run_dir"] for t, s in summaries.items()}})
    text = markdown(rows, list(summaries))
    with open(os.path.join(suite.out, TABLE + ".md"), "w") as f:
        f.write("# Accuracy (%, greedy, test set)\n\n" + text + "\n")
    return text


def run_suite(path: str, overrides: list[str] = ()) -> str:
    """Run every job of the suite, then write and return its table."""
    from dsw_ray.pipeline import run_job

    suite, jobs = load_suite(path, overrides)
    summaries = {}
    for title, job in jobs.items():
        summaries[title] = {**run_job(job), "run_dir": os.path.abspath(job.run_dir)}
    return write_table(suite, summaries)
