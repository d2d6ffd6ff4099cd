"""Tracking: a finished job in MLflow and Weights & Biases, one run per method and round.

``log_job`` reads what the run directory holds once the summary is written and logs it to
each tracker the job's ``tracking`` section turns on. In MLflow: the job as a parent run
(its config as params, each stage's seconds and rows, the base model's accuracy;
``report.md``, ``summary.json`` and the plots as artifacts) and, nested under it, each
method's round (its accuracy with its interval and differences, what its filter kept, the
fine-tune's loss and learning rate per optimizer step and its held-out loss per epoch, each
seed of ``repeats`` under its own prefix).

Logged from the driver after the stages, not from the training workers: every number is in
the run directory already, so the workers need no tracking server or credentials, and a
stage skipped on a rerun is logged as it is on disk. A rerun logs the job again and, in
MLflow, deletes the runs an earlier attempt logged for the same run directory: an experiment
holds each run directory once. W&B gets the same runs (grouped by the run directory's name,
as it has no nesting) and keeps every run it was sent.
"""

from __future__ import annotations

import glob
import importlib
import json
import logging
import os
import shutil

from dsw_ray.config import JobConfig, MlflowConfig
from dsw_ray.errors import UserError
from dsw_ray.events import step_series
from dsw_ray.rundir import stage_states
from dsw_ray.train import LOSS_HISTORY

log = logging.getLogger(__name__)

RUN_DIR_TAG = "dsw_ray.run_dir"  # on every run logged for a run directory
PARAM_CHARS = 6000  # MLflow's longest param value
LOCAL_STORE = "mlruns"  # in the run directory, when no tracking URI is given


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as one level of dotted keys; lists stay values.

    >>> flat({"train": {"lora": {"r": 8}, "epochs": 4}, "methods": ["iwsi"]})
    {'train.lora.r': 8, 'train.epochs': 4, 'methods': ['iwsi']}
    """
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def job_params(job: JobConfig) -> dict[str, str]:
    """The job's config as MLflow params: every field, dotted, as text (JSON for lists)."""
    params = {}
    for key, value in flat(job.model_dump(mode="json")).items():
        text = value if isinstance(value, str) else json.dumps(value)
        params[key] = text[:PARAM_CHARS]
    return params


def method_metrics(result: dict) -> dict[str, float]:
    """A method's numbers of one round (``summary["rounds"][i]["methods"][m]``) as metrics."""
    numbers = {
        key: value for key, value in flat(result).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        and not key.startswith(("candidates.", "seed_spread.seeds"))
    }  # fmt: skip
    # The interval's own "accuracy" repeats the method's.
    numbers.pop("interval.accuracy", None)
    return numbers


def stage_metrics(run_dir: str) -> dict[str, float]:
    """Each finished stage's seconds and rows, keyed by its place (``round-1/generate/seconds``)."""
    metrics = {}
    for state in stage_states(run_dir):
        if state["state"] != "done":
            continue
        for key in ("seconds", "busy_seconds", "rows_in", "rows", "optimizer_steps"):
            if isinstance(state.get(key), (int, float)):
                metrics[f"{state['stage']}/{key}"] = state[key]
    return metrics


def loss_histories(run_dir: str, round_index: int, method: str) -> dict[str, str]:
    """The loss history files of a method's fine-tunes in one round, by metric prefix: ``train``
    for the first seed (where a single run's is), ``seed-N/train`` for the others."""
    where = os.path.join(run_dir, f"round-{round_index}", method)
    found = {}
    first = os.path.join(where, "train", "model", LOSS_HISTORY)
    if os.path.exists(first):
        found["train"] = first
    for path in sorted(glob.glob(os.path.join(where, "seed-*", "train", "model", LOSS_HISTORY))):
        found[f"{path.split(os.sep)[-4]}/train"] = path
    return found


def curves(run_dir: str, round_index: int, method: str, accumulation: int) -> list[tuple[str, int, float]]:
    """``(name, optimizer step, value)`` of a method's fine-tunes in one round: per step
    ``PREFIX/loss`` and ``PREFIX/learning_rate`` (as the TensorBoard files have them), per epoch
    ``PREFIX/heldout_loss`` (PREFIX: ``loss_histories``)."""
    points = []
    for prefix, path in loss_histories(run_dir, round_index, method).items():
        with open(path) as f:
            losses = json.load(f)
        for step, loss, learning_rate in step_series(losses["history"], accumulation):
            points += [(f"{prefix}/loss", step, loss), (f"{prefix}/learning_rate", step, learning_rate)]
        points += [(f"{prefix}/heldout_loss", e["optimizer_step"], e["loss"]) for e in losses.get("heldout_history", [])]
    return points


def artifacts(run_dir: str) -> list[str]:
    """The files a job's run carries: its report, summary and plots."""
    names = ["report.md", "summary.json", *sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "*.png")))]
    return [os.path.join(run_dir, name) for name in names if os.path.exists(os.path.join(run_dir, name))]


def method_runs(summary: dict):
    """``(round, method, its result)`` for every method of every round."""
    for round_summary in summary["rounds"]:
        for method, result in round_summary["methods"].items():
            yield round_summary["round"], method, result


def tracking_uri(section: MlflowConfig, run_dir: str) -> str:
    """The job's tracking URI, else MLFLOW_TRACKING_URI, else a file store in the run directory.
    MLflow 3 keeps its file store in maintenance mode and refuses it unless asked: it is asked
    here, for that default only (a database store would need SQLAlchemy, which mlflow-skinny
    leaves out)."""
    uri = section.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file://{os.path.join(run_dir, LOCAL_STORE)}"


def require_tracking(job: JobConfig) -> None:
    """Fail before any stage runs when the job asks for a tracker that is not installed."""
    for name in ("mlflow", "wandb"):  # each section is named after the package it needs
        if getattr(job.tracking, name).enabled:
            try:
                importlib.import_module(name)
            except ImportError:
                raise UserError(
                    f"tracking.{name}.enabled needs {name}: pip install 'dsw-ray[tracking]', or turn it off."
                ) from None


def log_job(job: JobConfig, run_dir: str, summary: dict) -> None:
    """Log the finished job in ``run_dir`` to the trackers its ``tracking`` section turns on."""
    if job.tracking.mlflow.enabled:
        log_mlflow(job, run_dir, summary)
    if job.tracking.wandb.enabled:
        log_wandb(job, run_dir, summary)


def log_mlflow(job: JobConfig, run_dir: str, summary: dict) -> str:
    """Log the finished job in ``run_dir`` to MLflow (``job.tracking.mlflow``); the parent run's id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    section = job.tracking.mlflow
    client = MlflowClient(tracking_uri(section, run_dir))
    experiment = client.get_experiment_by_name(section.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(section.experiment)
    for earlier in client.search_runs([experiment_id], f"tags.`{RUN_DIR_TAG}` = '{run_dir}'"):
        client.delete_run(earlier.info.run_id)

    parent = client.create_run(experiment_id, run_name=os.path.basename(run_dir), tags={RUN_DIR_TAG: run_dir})
    parent_id = parent.info.run_id
    params = [Param(key, value) for key, value in job_params(job).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(parent_id, params=params[start : start + 100])
    numbers = {"base_accuracy": summary["base_accuracy"], **stage_metrics(run_dir)}
    client.log_batch(parent_id, metrics=[Metric(k, v, 0, 0) for k, v in numbers.items() if v is not None])
    for path in artifacts(run_dir):
        client.log_artifact(parent_id, path)
    client.set_terminated(parent_id)

    for round_index, method, result in method_runs(summary):
        child = client.create_run(experiment_id, run_name=f"round-{round_index}/{method}", tags={
            RUN_DIR_TAG: run_dir, "mlflow.parentRunId": parent_id, "method": method, "round": str(round_index),
        })  # fmt: skip
        run_id = child.info.run_id
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in method_metrics(result).items()],
            params=[Param("method", method), Param("round", str(round_index))],
        )
        points = [Metric(name, value, 0, step) for name, step, value in
                  curves(run_dir, round_index, method, job.train.gradient_accumulation_steps)]  # fmt: skip
        for start in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics a batch
            client.log_batch(run_id, metrics=points[start : start + 1000])
        client.set_terminated(run_id)
    log.info("tracking: the job's runs are in MLflow (%s, experiment %s)", client.tracking_uri, section.experiment)
    return parent_id


def log_wandb(job: JobConfig, run_dir: str, summary: dict) -> list[str]:
    """Log the finished job in ``run_dir`` to Weights & Biases (``job.tracking.wandb``): a run for
    the job and one per method and round, grouped by the run directory's name; their ids.
    W&B has no nested runs and keeps every run it was sent: a rerun logs new ones."""
    import wandb

    section = job.tracking.wandb
    os.environ.setdefault("WANDB_SILENT", "true")  # its warnings on the terminal; the run's log has ours
    config = flat(job.model_dump(mode="json"))
    common = {
        "project": section.project, "group": os.path.basename(run_dir), "dir": section.dir or run_dir,
        "mode": section.mode, "settings": wandb.Settings(console="off", x_disable_stats=True, silent=True),
    }  # fmt: skip
    ids = []
    with wandb.init(name=os.path.basename(run_dir), job_type="job", config=config, **common) as run:
        run.summary.update({"base_accuracy": summary["base_accuracy"], **stage_metrics(run_dir)})
        for path in artifacts(run_dir):  # files in the run's folder go with it (run.save would link them)
            shutil.copy(path, run.dir)
        ids.append(run.id)
    for round_index, method, result in method_runs(summary):
        name = f"round-{round_index}/{method}"
        with wandb.init(name=name, job_type="method", config={**config, "method": method, "round": round_index}, **common) as run:
            steps: dict[int, dict] = {}  # W&B wants each step logged once, in order
            for metric, step, value in curves(run_dir, round_index, method, job.train.gradient_accumulation_steps):
                steps.setdefault(step, {})[metric] = value
            for step in sorted(steps):
                run.log(steps[step], step=step)
            run.summary.update(method_metrics(result))
            ids.append(run.id)
    # W&B's service writes the runs' files after finish() returns: wait for it, so that they
    # are whole when the job ends (for `wandb sync`, or a reader right after).
    wandb.teardown()
    log.info("tracking: the job's %d runs are in W&B (project %s, %s)", len(ids), section.project, section.mode)
    return ids
