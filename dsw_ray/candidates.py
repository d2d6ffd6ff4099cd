"""The stages a round's methods share: generate, vote and score once on a model (and reward
or rate when a method needs them); every method's filter reads the result."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsw_ray import columns as C
from dsw_ray import progress
from dsw_ray.config import JobConfig
from dsw_ray.filters import correct_fraction
from dsw_ray.generate import HF_SAMPLING, PAPER_SAMPLING, generate, with_sampling_defaults
from dsw_ray.inputs import split_fingerprint
from dsw_ray.models import model_identity
from dsw_ray.rate import rate
from dsw_ray.reward import reward
from dsw_ray.rundir import count_rows, read_dataset, read_table, run_stage, stage_fingerprint, write_dataset, write_table
from dsw_ray.score import PAPER_VALID_LOSS, VALID_LOSSES, rows_per_call, score_losses, weigh
from dsw_ray.stages import spec
from dsw_ray.tasks import Splits, task_of
from dsw_ray.vote import answer_parser, vote

log = logging.getLogger(__name__)


@dataclass
class Candidates:
    """The stages a round's methods share: generate, vote, score (and reward or rate, when a method reads them)."""

    dir: str
    fingerprints: dict[str, str]  # stage name -> fingerprint
    summary: dict

    def stage(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def table(self, needs: str | None) -> pa.Table:
        """Every candidate with its vote, joined with the stage a method needs ("score", "reward", "rate")."""
        table = read_table(self.stage("vote"))
        if needs is not None:
            extra = list(spec(needs).adds)
            if count_rows(self.stage(needs)) == 0:  # nothing had a majority answer
                for name in extra:
                    table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
            else:
                table = table.join(read_table(self.stage(needs), list(C.KEY) + extra), keys=list(C.KEY))
        return table


def make_candidates(
    job: JobConfig, run_dir: str, where: str, round_index: int, model_path: str, model_fp: str, splits: Splits
) -> Candidates:
    """Generate, vote and score once on ``model_path``; every method of the round reads them."""

    def stage(name: str) -> str:
        return os.path.join(where, name)

    questions = os.path.join(run_dir, "inputs", "questions")
    official, task = job.official, task_of(job.task)
    sampling = with_sampling_defaults(job.generate, model_path, HF_SAMPLING if official else PAPER_SAMPLING)
    fps = {
        "generate": stage_fingerprint(
            "generate", split_fingerprint(splits, "questions"), job.task, sampling, model_fp, round_index
        )
    }
    generated = run_stage(
        stage("generate"),
        fps["generate"],
        lambda out: write_dataset(
            generate(
                read_dataset(questions, job.generate.batch_size, job.generate.actors), sampling, job.model,
                task, model_path, round_index,
            ),
            out,
        ),
        rows_in=len(splits.questions),
        force=job.forced("generate"),
    )

    fps["vote"] = stage_fingerprint("vote", fps["generate"], job.semantics)
    run_stage(
        stage("vote"),
        fps["vote"],
        lambda out: write_dataset(
            vote(read_dataset(stage("generate"), 1024), answer_parser(task, official)), out
        ),
        rows_in=generated["rows"],
        force=job.forced("vote"),
    )

    fps["score"] = stage_fingerprint(
        "score", fps["vote"], split_fingerprint(splits, "valid"), job.score, job.train.max_length, model_fp, job.task,
        job.semantics,
    )  # fmt: skip

    def score_stage(out: str) -> dict:
        # One pass of the scoring pool over the valid set and the majority candidates (each actor
        # loads the model once), then Lv and the DS weights in the driver from keys and losses.
        # The valid set's per-example losses are kept beside the scores.
        voted = read_dataset(stage("vote"), rows_per_call(job.score), job.score.actors)
        majority = read_table(stage("vote")).filter(pc.field(C.IS_MAJORITY))
        progress.expect(len(splits.valid) + majority.num_rows)
        losses = score_losses(
            splits.valid, voted, job.score, job.model, model_path, job.train.max_length, official, job.task.prompt_format
        )
        scored, valid, valid_loss = weigh(majority, losses, official)
        pq.write_table(valid, os.path.join(out, VALID_LOSSES))
        paper = f"; the paper's Lv: {PAPER_VALID_LOSS[job.task.name]}" if job.task.name in PAPER_VALID_LOSS else ""
        log.info(
            "round %d: Lv = %.4f +- %.4f (n = %d)%s", round_index, valid_loss["mean"], valid_loss["stderr"], valid_loss["n"], paper
        )
        return {**write_table(scored, out), "valid_loss": valid_loss}

    scored = run_stage(stage("score"), fps["score"], score_stage, rows_in=generated["rows"], force=job.forced("score"))
    if job.needs("reward"):
        fps["reward"] = stage_fingerprint(
            "reward", fps["vote"], job.reward, job.train.max_length, job.semantics, model_identity(job.reward.model_path)
        )

        def reward_stage(out: str) -> dict:
            progress.expect(scored["rows"])  # the reward model reads the majority candidates only
            return write_dataset(
                reward(
                    read_dataset(stage("vote"), job.reward.batch_size * 4, job.reward.actors), job.reward, job.model,
                    job.train.max_length, official,
                ),
                out,
            )

        run_stage(stage("reward"), fps["reward"], reward_stage, rows_in=generated["rows"], force=job.forced("reward"))
    if job.needs("rate"):
        rate_stage(job, fps, stage("rate"), model_path, generated["rows"])
    if scored["rows"] == 0:
        log.warning(
            "round %d: no candidate has a parsable majority answer (see %s); raise generate.max_new_tokens "
            "or check the task's prompt. Only methods that keep other candidates can fine-tune.",
            round_index,
            stage("vote"),
        )
    voted = read_table(stage("vote"), [C.ANSWER, C.IS_MAJORITY, C.GOLD])
    summary = {
        "dir": os.path.relpath(where, run_dir),
        "generated": generated["rows"],
        "no_answer": voted[C.ANSWER].null_count,
        "majority": scored["rows"],  # only majority candidates are scored
        "correct": correct_fraction(voted, official),
        "majority_correct": correct_fraction(voted.filter(pc.field(C.IS_MAJORITY)), official),
    }
    return Candidates(where, fps, {**summary, "valid_loss": scored["valid_loss"]})


def rate_stage(job: JobConfig, fps: dict[str, str], where: str, model_path: str, rows_in: int) -> None:
    """The self method's ratings of the majority candidates by ``model_path``, which generated
    them; a new keep fraction reuses them (it is part of the filter's fingerprint only)."""
    vote_dir = os.path.join(os.path.dirname(where), "vote")
    official = job.official
    # The authors' ratings may be sampled, from seeds of the generate section's seed.
    authors = [job.semantics, job.generate.seed] if official else []
    fps["rate"] = stage_fingerprint("rate", fps["vote"], job.rate, job.train.max_length, job.model.dtype, *authors)
    run_stage(
        where,
        fps["rate"],
        lambda out: write_dataset(
            rate(read_dataset(vote_dir, job.rate.batch_size * 4, job.rate.actors), job.rate, job.model, model_path,
                 job.train.max_length, official, job.generate.seed),
            out,
        ),
        rows_in=rows_in,
        force=job.forced("rate"),
    )
