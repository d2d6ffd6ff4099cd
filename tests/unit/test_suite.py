"""The Table 1 suite: loading and checking every job before any runs, and the table across datasets."""

import json
import os

import pytest
import yaml

from dsw_ray.errors import ConfigError
from dsw_ray.suite import load_suite, markdown, write_table

JOB = {"task": {"name": "arith"}, "model": {"path": "m"}, "methods": ["iwsi"]}


def suite_file(tmp_path, **suite):
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**JOB, "run_dir": str(tmp_path / "runs" / name)}))
    data = {"methods": ["lmsi", "self"], "jobs": {"A": str(tmp_path / "a.yaml"), "B": str(tmp_path / "b.yaml")},
            "out": str(tmp_path / "table"), **suite}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_every_job_gets_the_suites_methods_and_overrides(tmp_path):
    suite, jobs = load_suite(suite_file(tmp_path, overrides=["train.epochs=3"]))
    assert list(jobs) == ["A", "B"]
    assert all(job.methods == ["lmsi", "self"] and job.train.epochs == 3 for job in jobs.values())


def test_a_bad_job_or_suite_fails_before_anything_runs(tmp_path):
    path = suite_file(tmp_path)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**JOB, "run_dir": "x", "train": {"epochs": 0}}))
    with pytest.raises(ConfigError, match=r"b.yaml: the job config is not valid: train.epochs: Input should be greater"):
        load_suite(path)
    with pytest.raises(ConfigError, match=r"suite.yaml: the suite is not valid: jobz: Extra inputs are not permitted \(did you mean jobs\?\)"):
        load_suite(suite_file(tmp_path, jobz={}))
    path = suite_file(tmp_path)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**JOB, "run_dir": str(tmp_path / "runs" / "a")}))
    with pytest.raises(ConfigError, match="two jobs share a run_dir"):
        load_suite(path)


def test_table_has_datasets_as_columns_and_their_average(tmp_path):
    summaries = {
        "gsm8k": {"base_accuracy": 0.2, "methods": {"lmsi": {"accuracy": 0.25}, "self": {"accuracy": 0.3}}, "run_dir": "r1"},
        "SVAMP": {"base_accuracy": 0.4, "methods": {"lmsi": {"accuracy": 0.45}, "self": {"accuracy": None}}, "run_dir": "r2"},
    }
    suite, _ = load_suite(suite_file(tmp_path))
    text = write_table(suite, summaries)
    assert text.splitlines() == [
        "| method | gsm8k | SVAMP | avg |",
        "| --- | --- | --- | --- |",
        "| base | 20.0 | 40.0 | 30.0 |",
        "| LMSI | 25.0 | 45.0 | 35.0 |",
        "| Self-filter | 30.0 | - | - |",  # a method that kept nothing has no accuracy, and no average
    ]
    with open(os.path.join(suite.out, "table1.json")) as f:
        written = json.load(f)
    assert written["accuracy"]["Self-filter"] == {"gsm8k": 0.3, "SVAMP": None} and written["run_dirs"]["SVAMP"] == "r2"
    assert open(os.path.join(suite.out, "table1.md")).read().endswith(text + "\n")
    assert markdown({"x": {"a": float("nan")}}, ["a"]).splitlines()[-1] == "| x | - | - |"
