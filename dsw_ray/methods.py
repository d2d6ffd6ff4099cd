"""What each method does with a round's candidates: its filter, then its fine-tunes (one per
seed of ``repeats``), all of a round's fine-tunes in one Ray Train run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from dsw_ray.candidates import Candidates
from dsw_ray.config import JobConfig
from dsw_ray.errors import UserError
from dsw_ray.evaluation import Evaluation
from dsw_ray.events import EVENTS, write_training_events
from dsw_ray.filters import apply as apply_filter
from dsw_ray.filters import correct_fraction, variant
from dsw_ray.rundir import data_dir, fingerprint, run_stage, run_stages, stage_fingerprint, write_table
from dsw_ray.tasks import Splits
from dsw_ray.train import LOSS_HISTORY, FineTune, fine_tune_all

log = logging.getLogger(__name__)


def run_method(
    job: JobConfig, method: str, candidates: Candidates, where: str, model_path: str
) -> tuple[dict, list[Tune]]:
    """One method's filter on a round's shared candidates, and the fine-tunes it asks for (one per
    seed of ``repeats``; none when it keeps nothing)."""
    chosen = variant(method)
    spec, settings = chosen.spec, chosen.settings(job.filter)
    official = job.official

    def stage(name: str) -> str:
        return os.path.join(where, name)

    filter_fp = stage_fingerprint(
        "filter",
        method,
        candidates.fingerprints["vote"],
        candidates.fingerprints.get(spec.needs),
        {name: getattr(settings, name) for name in spec.settings},
    )

    def keep(out: str) -> dict:
        try:
            filtered = apply_filter(method, candidates.table(spec.needs), job.filter, official)
        except ValueError as error:
            raise UserError(f"method {method}: {error}") from error
        return {
            **write_table(filtered.kept, out),
            "dropped": filtered.dropped,
            "kept_correct": correct_fraction(filtered.kept, official),
        }

    kept = run_stage(
        stage("filter"), filter_fp, keep, rows_in=candidates.summary["generated"], force=job.forced("filter")
    )
    result = {"kept": kept["rows"], "dropped": kept["dropped"], "kept_correct": kept["kept_correct"]}
    if kept["rows"] == 0:
        log.warning("method %s kept no candidate: it is not fine-tuned or evaluated.", method)
        return {**result, "accuracy": None, "model": model_path, "model_fingerprint": filter_fp}, []

    # Repeat r fine-tunes the same kept set with seed train.seed + r; the first repeat's stages
    # sit where a single run's do, and its model is the one the next round starts from.
    tunes = []
    for repeat in range(job.repeats):
        seed = job.train.seed + repeat
        # How many failures to survive and where workers go do not change the fine-tuned model.
        settings = {**job.train.model_dump(exclude={"max_failures", "resources_per_worker"}), "seed": seed}
        tunes.append(Tune(
            method, where if repeat == 0 else os.path.join(where, f"seed-{seed}"), stage("filter"), model_path, seed,
            stage_fingerprint("train", filter_fp, settings, job.model.dtype), kept["rows"],
        ))  # fmt: skip
    return result, tunes


@dataclass(frozen=True)
class Tune:
    """A fine-tune of the round: a method's kept set, trained from ``model_path`` with ``seed``
    into ``where/train``, evaluated in ``where/evaluate``."""

    method: str
    where: str
    filter_dir: str
    model_path: str
    seed: int
    fingerprint: str  # the train stage's
    kept_rows: int


@dataclass(frozen=True)
class Tuned:
    """A fine-tune done: its model, the evaluation that will grade it, and its train metrics."""

    tune: Tune
    evaluation: Evaluation
    train: dict  # optimizer_steps, final_loss, heldout_loss (and resumed_from_epoch)
    model: str


def train_round(job: JobConfig, run_dir: str, round_dir: str, tunes: list[Tune], splits: Splits) -> list[Tuned]:
    """Every fine-tune of the round not done already, in one Ray Train run: its workers start
    once (``train.fine_tune_all``), each fine-tune's stage folder gets its model and manifest.
    Per tune, its fine-tuned model."""
    paths = [os.path.join(t.where, "train") for t in tunes]

    def produce(outs: list[str]) -> list[dict]:
        pending = [tunes[paths.index(out.removesuffix(".partial"))] for out in outs]
        return fine_tune_all(
            [FineTune(data_dir(t.filter_dir), t.model_path, os.path.join(out, "model"), t.seed) for t, out in zip(pending, outs)],
            job.train,
            job.model,
            os.path.join(round_dir, "ray_train"),
            # An interrupted run of these same fine-tunes resumes from its last epoch checkpoint.
            run_name="train-" + fingerprint("train", [t.fingerprint for t in pending]),
            heldout=[(e.question, e.rationale) for e in splits.valid],
            prompt_format=job.task.prompt_format,
        )

    manifests = run_stages(
        paths, [t.fingerprint for t in tunes], produce, rows_in=[t.kept_rows for t in tunes], force=job.forced("train"),
        resumable=True,  # a fine-tune an interrupted run finished is not trained again
    )
    results = []
    for tune, path, trained in zip(tunes, paths, manifests):
        write_training_events(
            os.path.join(path, "model", LOSS_HISTORY),
            os.path.join(run_dir, EVENTS, os.path.relpath(tune.where, run_dir)),
            job.train.gradient_accumulation_steps,
            rewrite=not trained["skipped"] or "reused_from" in trained,
        )
        if trained.get("resumed_from_epoch") and not trained["skipped"]:
            log.warning(
                "method %s: a training worker failed; Ray Train restarted the workers from the epoch %d checkpoint "
                "and the fine-tune finished (see %s).",
                tune.method, trained["resumed_from_epoch"], os.path.join(path, "manifest.json"),
            )  # fmt: skip
        model_dir = os.path.join(path, "model")
        results.append(Tuned(
            tune, Evaluation(os.path.relpath(os.path.join(tune.where, "evaluate"), run_dir), model_dir, tune.fingerprint),
            {k: trained[k] for k in ("optimizer_steps", "final_loss", "heldout_loss", "resumed_from_epoch") if k in trained},
            model_dir,
        ))  # fmt: skip
    return results
