"""The job: base model, base accuracy, then rounds of generate, vote, score, filter, train, evaluate.

Each stage reads the artifacts of the one before from the run directory and writes its
own (see ``rundir``), so the round below reads like METHOD.md and a rerun resumes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dsw_ray import columns as C
from dsw_ray import progress, stats
from dsw_ray.config import JobConfig, TaskConfig
from dsw_ray.console import attach_run_log
from dsw_ray.errors import UserError, on_signal
from dsw_ray.evaluate import MODEL, evaluate, models_per_pass
from dsw_ray.events import EVENTS, write_training_events
from dsw_ray.filters import answers_correct, variant
from dsw_ray.filters import apply as apply_filter
from dsw_ray.generate import HF_SAMPLING, PAPER_SAMPLING, generate, with_sampling_defaults
from dsw_ray.gguf_import import import_gguf, read_record
from dsw_ray.models import check_model_dir, load_tokenizer, model_identity
from dsw_ray.prompting import check_chat_template
from dsw_ray.rundir import (
    DATA, claim_run_dir, fingerprint, holding, run_stage, run_stages, sharing, stage_fingerprint, write_json,
)
from dsw_ray.stages import spec
from dsw_ray.report import write_report
from dsw_ray.resources import pool_input
from dsw_ray.rate import rate
from dsw_ray.reward import reward
from dsw_ray.score import PAPER_VALID_LOSS, VALID_LOSSES, rows_per_call, score_losses, weigh
from dsw_ray.tasks import Splits, SplitSizes, Task, task_of
from dsw_ray.tasks.rows import question_key
from dsw_ray.toy import build_toy_model
from dsw_ray.tracking import log_job, require_tracking
from dsw_ray.train import LOSS_HISTORY, FineTune, fine_tune_all
from dsw_ray.vote import vote

log = logging.getLogger(__name__)

DRIVER_READ_BYTES = 64 << 20  # stages up to this size on disk are read by the driver (read_dataset)
BASE_EVALUATION = os.path.join("base", "evaluate")  # the base model's graded answers, in the run directory


# ---- artifacts -------------------------------------------------------------------------

def data_dir(stage_dir: str) -> str:
    return os.path.join(stage_dir, DATA)


def count_rows(stage_dir: str) -> int:
    if not os.path.isdir(data_dir(stage_dir)):  # Ray Data writes no file for an empty dataset
        return 0
    return pads.dataset(data_dir(stage_dir), format="parquet").count_rows()


def write_table(table: pa.Table, stage_dir: str) -> dict:
    os.makedirs(data_dir(stage_dir), exist_ok=True)
    pq.write_table(table, os.path.join(data_dir(stage_dir), "part-0.parquet"))
    return {"rows": table.num_rows}


def write_dataset(dataset, stage_dir: str) -> dict:
    dataset.write_parquet(data_dir(stage_dir))
    return {"rows": count_rows(stage_dir)}


def read_table(stage_dir: str, columns: list[str] | None = None) -> pa.Table:
    return pads.dataset(data_dir(stage_dir), format="parquet").to_table(columns=columns)


def read_dataset(stage_dir: str, rows_per_block: int, min_blocks: int = 1):
    """A Ray Dataset of a stage's rows, cut into blocks so that every actor of a pool gets work.

    A stage of at most ``DRIVER_READ_BYTES`` on disk (questions, test sets, the candidates of
    most rounds) is read by the driver and cut there, as Ray Data's repartition cuts it: read
    tasks need worker processes, whose start competed with the pool's actor start and cost
    3-4 s of each pool stage on 2 cores (docs/benchmarks.md). Larger stages are read by
    Ray Data's tasks, spread over the cluster."""
    import ray

    rows = count_rows(stage_dir)
    if rows == 0 or sum(os.path.getsize(f) for f in pads.dataset(data_dir(stage_dir)).files) > DRIVER_READ_BYTES:
        return ray.data.read_parquet(data_dir(stage_dir)).repartition(max(min_blocks, min(256, math.ceil(rows / rows_per_block))))
    return pool_input(read_table(stage_dir), rows_per_block, min_blocks)


def examples_table(examples) -> pa.Table:
    return pa.Table.from_pylist(
        [{C.QUESTION_ID: e.question_id, C.QUESTION: e.question, C.GOLD: e.gold} for e in examples]
    )


# ---- stages that run in the driver -------------------------------------------------------

def answer_parser(task: Task, official: bool):
    """The task's answer parser, as the vote stage's workers call it (picklable)."""
    return functools.partial(task.parse_answer, official=official)


def accuracy(stage_dir: str) -> float:
    correct = read_table(stage_dir, [C.CORRECT])[C.CORRECT].to_pylist()
    return sum(correct) / len(correct) if correct else float("nan")


def correctness(run_dir: str, evaluations: list[str]) -> np.ndarray:
    """Per test question (in question id order), the share of ``evaluations`` (evaluate stage
    folders, relative to ``run_dir``) that answered it correctly."""
    tables = [read_table(os.path.join(run_dir, e), [C.QUESTION_ID, C.CORRECT]).sort_by(C.QUESTION_ID) for e in evaluations]
    return np.mean([t[C.CORRECT].to_numpy(zero_copy_only=False).astype(float) for t in tables], axis=0)


def add_statistics(summary: dict, run_dir: str) -> None:
    """95% bootstrap intervals over test questions: each accuracy, and each method's paired
    difference to the base model and to LMSI of the same round; with repeats, the spread of
    each method's accuracy over training seeds."""
    base = correctness(run_dir, [BASE_EVALUATION])
    summary["base"] = stats.accuracy_interval(base)
    for result in summary["rounds"]:
        methods = result["methods"]
        graded = {m: correctness(run_dir, r["evaluations"]) for m, r in methods.items() if r.get("evaluations")}
        for method, correct in graded.items():
            numbers = methods[method]
            numbers["interval"] = stats.accuracy_interval(correct)
            numbers["vs_base"] = stats.paired_difference(correct, base)
            if "lmsi" in graded and method != "lmsi":
                numbers["vs_lmsi"] = stats.paired_difference(correct, graded["lmsi"])
            numbers["seed_spread"] = stats.seed_spread([s["accuracy"] for s in numbers["seeds"]])


def correct_fraction(table: pa.Table, official: bool) -> float | None:
    """The share of rows whose parsed answer equals the gold label (None without labels or rows)."""
    if table.num_rows == 0 or C.GOLD not in table.column_names or table[C.GOLD].null_count:
        return None
    return float(answers_correct(table, official).mean())


SPLITS = {"questions": "unlabeled question set", "valid": "labeled valid set", "test": "test set"}


def check_splits(splits: Splits, task: TaskConfig) -> None:
    """Every split has rows, every question id is used once, and no valid-set question is also
    an unlabeled or a test question (its gold rationale would leak into what it measures)."""
    source = f"task {task.name}" + (f", task.data_path {task.data_path}" if task.data_path else "")
    left_out = ""
    if splits.rejected:
        first = splits.rejected[0]
        left_out = (
            f"; {len(splits.rejected)} bad rows were left out (task.bad_rows=skip), "
            f"the first at {first.file}, line {first.line}: {first.reason}"
        )
    for name, label in SPLITS.items():
        if not getattr(splits, name):
            raise UserError(
                f"the {label} is empty ({source}{left_out}). Give the data files rows for it (the README's Tasks "
                "paragraph says which rows of each file form each set)."
            )
    where = defaultdict(list)
    for name, label in SPLITS.items():
        for example in getattr(splits, name):
            where[example.question_id].append(label)
    repeated = {question_id: labels for question_id, labels in where.items() if len(labels) > 1}
    if repeated:
        question_id, labels = next(iter(repeated.items()))
        raise UserError(
            f"{len(repeated)} question ids are used more than once ({source}), e.g. {question_id!r}, "
            f"{len(labels)} times in the {' and the '.join(dict.fromkeys(labels))}. Give every row of the data "
            "files its own id."
        )
    valid = {question_key(example.question): index for index, example in enumerate(splits.valid)}
    for name in ("questions", "test"):
        shared = [(valid[key], e) for e in getattr(splits, name) if (key := question_key(e.question)) in valid]
        if shared:
            index, example = min(shared, key=lambda pair: pair[0])
            cap = f", or set task.num_valid={index} to keep only the valid rows before the first of them" if index else ""
            raise UserError(
                f"{len(shared)} questions of the labeled valid set are also in the {SPLITS[name]} ({source}), e.g. "
                f"{splits.valid[index].question_id} and {example.question_id}: {example.question[:80]!r}. The valid "
                f"set must not share questions with the other sets: delete one of each pair from the data files{cap}."
            )


def base_model(job: JobConfig, splits: Splits) -> str:
    """The round-1 model path, building the toy model or importing the GGUF file there first if
    the job asks for it. It and the rm method's reward model are checked here, before any actor
    loads them."""
    if job.model.toy is not None:
        # Test and valid questions stay out of the toy model's pre-training corpus.
        build_toy_model(job.model.path, job.model.toy, {e.question for e in splits.test + splits.valid})
    if job.model.gguf is not None:
        import_gguf(job.model.gguf, job.model.path)
    check_model_dir(job.model.path, "causal LM", job.model.trust_remote_code, "model.path")
    if job.task.prompt_format == "chat":
        check_chat_template(load_tokenizer(job.model.path, job.model.trust_remote_code), f"model.path {job.model.path!r}")
    if job.uses("rm"):
        check_model_dir(job.reward.model_path, "sequence classifier", job.model.trust_remote_code, "reward.model_path")
    return os.path.abspath(job.model.path)


# ---- a round -------------------------------------------------------------------------------

@dataclass
class Candidates:
    """The stages a round's methods share: generate, vote, score (and reward, for rm)."""

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
    official = job.semantics == "official"
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
                task_of(job.task), model_path, round_index,
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
            vote(read_dataset(stage("generate"), 1024), answer_parser(task_of(job.task), official)), out
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
    if job.uses("rm"):
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
    if job.uses("self"):
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
    official = job.semantics == "official"
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


def run_method(
    job: JobConfig, method: str, candidates: Candidates, where: str, model_path: str
) -> tuple[dict, list[Tune]]:
    """One method's filter on a round's shared candidates, and the fine-tunes it asks for (one per
    seed of ``repeats``; none when it keeps nothing)."""
    chosen = variant(method)
    spec, settings = chosen.spec, chosen.settings(job.filter)
    official = job.semantics == "official"

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


def train_round(job: JobConfig, run_dir: str, round_dir: str, tunes: list[Tune], splits: Splits) -> list[dict]:
    """Every fine-tune of the round not done already, in one Ray Train run: its workers start
    once (``train.fine_tune_all``), each fine-tune's stage folder gets its model and manifest.
    Per tune: its seed, train metrics, model and evaluation."""
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
        results.append({
            "seed": tune.seed,
            "evaluation": Evaluation(os.path.relpath(os.path.join(tune.where, "evaluate"), run_dir), model_dir, tune.fingerprint),
            "train": {
                k: trained[k] for k in ("optimizer_steps", "final_loss", "heldout_loss", "resumed_from_epoch") if k in trained
            },
            "model": model_dir,
            "model_fingerprint": tune.fingerprint,
        })  # fmt: skip
    return results


def run_round(
    job: JobConfig, run_dir: str, round_index: int, lineages: dict[str, tuple[str, str]], splits: Splits,
    evaluations: list[Evaluation] = (),
) -> dict:
    """One round of METHOD.md for every method. ``lineages`` maps a method to the model it
    starts from (path, fingerprint): in round 1 all share the base model, and so share one
    set of candidates; later each method generates from its own fine-tuned model. The
    round's fine-tuned models are evaluated together, with ``evaluations`` (the base model's,
    in round 1)."""
    round_dir = os.path.join(run_dir, f"round-{round_index}")
    shared: dict[str, Candidates] = {}  # model fingerprint -> candidates
    methods, tunes = {}, []
    for method in job.methods:
        model_path, model_fp = lineages[method]
        if model_fp not in shared:
            where = round_dir if round_index == 1 else os.path.join(round_dir, method)
            shared[model_fp] = make_candidates(job, run_dir, where, round_index, model_path, model_fp, splits)
        candidates = shared[model_fp]
        result, method_tunes = run_method(job, method, candidates, os.path.join(round_dir, method), model_path)
        methods[method] = {**result, "candidates": candidates.summary}
        tunes += method_tunes
    # The round's fine-tunes train in one Ray Train run, its models are evaluated in one pass.
    for tune, tuned in zip(tunes, train_round(job, run_dir, round_dir, tunes, splits) if tunes else []):
        result = methods[tune.method]
        if "evaluations" not in result:  # the first seed's model is the one the next round starts from
            result.update(evaluations=[], seeds=[], train=tuned["train"], model=tuned["model"],
                          model_fingerprint=tuned["model_fingerprint"])  # fmt: skip
        result["evaluations"].append(tuned["evaluation"])
        result["seeds"].append({"seed": tuned["seed"]})
    trained = [e for result in methods.values() for e in result.get("evaluations", [])]
    accuracy_of = evaluate_round(job, run_dir, list(evaluations) + trained, splits)
    for result in methods.values():
        if result.get("evaluations"):
            for seed, evaluation in zip(result["seeds"], result["evaluations"]):
                seed["accuracy"] = accuracy_of[evaluation.stage_dir]
            result["accuracy"] = sum(s["accuracy"] for s in result["seeds"]) / len(result["seeds"])
            result["evaluations"] = [e.stage_dir for e in result["evaluations"]]
    return {"round": round_index, "methods": methods}


@dataclass(frozen=True)
class Evaluation:
    """A model to evaluate: its stage folder (relative to the run directory), path and fingerprint."""

    stage_dir: str
    model_path: str
    model_fp: str


def evaluate_round(job: JobConfig, run_dir: str, evaluations: list[Evaluation], splits: Splits) -> dict[str, float]:
    """Greedy accuracy on the test set of each model, by stage folder. Each model's answers are
    cached in its own stage folder; the models not answered yet are answered in one pass of
    one pool (``evaluate.models_per_pass``)."""
    import ray

    test = os.path.join(run_dir, "inputs", "test")
    test_fp = split_fingerprint(splits, "test")
    fps = [evaluation_fingerprint(job, test_fp, e.model_fp) for e in evaluations]
    paths = [os.path.join(run_dir, e.stage_dir) for e in evaluations]
    model_of = dict(zip(paths, (e.model_path for e in evaluations)))

    def answer(outs: list[str]) -> list[dict]:
        models = [model_of[out.removesuffix(".partial")] for out in outs]
        questions = read_table(test)
        rows = pa.concat_tables(
            [questions.append_column(MODEL, pa.array([model] * questions.num_rows, pa.string())) for model in models]
        )
        answered = evaluate(
            pool_input(rows, job.evaluate.batch_size, job.evaluate.actors), job.evaluate, job.model, task_of(job.task),
            job.semantics == "official",
        )
        answers = pa.concat_tables(ray.get(answered.to_arrow_refs()), promote_options="default")
        return [
            write_table(answers.filter(pc.field(MODEL) == model).drop_columns([MODEL]).sort_by(C.QUESTION_ID), out)
            for model, out in zip(models, outs)
        ]

    step = models_per_pass(job.evaluate) or max(1, len(paths))
    for start in range(0, len(paths), step):
        run_stages(paths[start : start + step], fps[start : start + step], answer, rows_in=len(splits.test),
                   force=job.forced("evaluate"))  # fmt: skip
    return {e.stage_dir: accuracy(path) for e, path in zip(evaluations, paths)}


# The task settings that choose rows, not how a row is prompted or parsed: the split
# fingerprints already say which rows a stage read.
TASK_ROWS = {"data_path", "num_questions", "num_valid", "num_test", "seed", "bad_rows"}


def evaluation_fingerprint(job: JobConfig, test_fp: str, model_fp: str) -> str:
    """A model's evaluation: the test rows, how they are prompted and graded, and the model; the
    size of the other splits is not part of it, so points of a study that differ in the number
    of unlabeled questions share the base model's evaluation."""
    prompt = job.task.model_dump(mode="json", exclude=TASK_ROWS)
    return stage_fingerprint("evaluate", test_fp, prompt, job.evaluate, job.semantics, model_fp)


QUARANTINE = "quarantine.jsonl"  # in inputs/: the data rows task.bad_rows=skip left out


def split_fingerprint(splits: Splits, name: str) -> str:
    """What a split holds, row by row: stages that read it rerun when the data changes, not
    only when the job's task settings do."""
    return fingerprint(name, [asdict(e) for e in getattr(splits, name)])


def write_inputs(run_dir: str, splits: Splits, job: JobConfig) -> None:
    """The round's inputs as parquet, so that actors read them instead of the driver shipping
    them, and the rows left out of the task's data as ``inputs/quarantine.jsonl``."""
    for name, examples in (("questions", splits.questions), ("test", splits.test)):
        run_stage(
            os.path.join(run_dir, "inputs", name),
            stage_fingerprint(name, split_fingerprint(splits, name)),
            lambda out, examples=examples: write_table(examples_table(examples), out),
            rows_in=len(examples),
        )
    # Rewritten on every run, so that it lists what this run's data left out and no more.
    quarantine = os.path.join(run_dir, "inputs", QUARANTINE)
    if splits.rejected:
        with open(quarantine + ".partial", "w") as f:
            f.writelines(json.dumps(asdict(row)) + "\n" for row in splits.rejected)
        os.replace(quarantine + ".partial", quarantine)
    elif os.path.exists(quarantine):
        os.remove(quarantine)


# Workers log our stage lines, not one download-style progress bar per model load.
QUIET_WORKERS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def guard_submitted_job(job: JobConfig) -> None:
    """Under `ray job submit` with a working_dir the driver starts inside Ray's unpacked copy of
    it, which Ray may delete and unpack afresh while the job runs (when the workers that used
    it exit). A run directory there would be lost, and the driver's working directory can
    vanish, which torch's MKL loader cannot survive (it asks for it when libtorch loads)."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    if not os.path.isabs(job.run_dir):
        raise UserError(
            f"run_dir {job.run_dir!r} is relative: in a Ray job it would land in the job's working_dir, "
            "which Ray deletes. Give an absolute path on storage every node mounts (e.g. /mnt/dsw/runs/...)."
        )
    import torch  # noqa: F401  (now, while the working directory exists)


# Every worker runs the hook at its start. A runtime environment's worker_process_setup_hook is
# carried by this variable (ray/_private/runtime_env/setup_hook.py), which a worker of a
# private instance can inherit instead.
SETUP_HOOK = "dsw_ray.console.quiet_worker_logs"
SETUP_HOOK_VARIABLE = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"


def start_ray(job: JobConfig) -> None:
    import ray
    import ray.data

    if not ray.is_initialized():
        # `ray job submit` sets RAY_ADDRESS for its entrypoint: the job joins that cluster.
        address = job.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            # A cluster's workers get their settings from the job's runtime environment.
            ray.init(address=address, runtime_env={"env_vars": QUIET_WORKERS, "worker_process_setup_hook": SETUP_HOOK})
        else:
            start_local_ray(job.ray.num_cpus)
    # Ray Data's bars count blocks; the CLI shows each stage's progress in its own units.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if threading.current_thread() is threading.main_thread():
        # Now, after ray.init: Ray's core worker installs a SIGTERM handler that aborts the
        # process. SIGTERM (Kubernetes, `kill`) then stops the run as Ctrl-C does.
        signal.signal(signal.SIGTERM, on_signal)


STARTUP_ATTEMPTS = 3  # tries at starting a local Ray node before giving up


def start_local_ray(num_cpus: int | None) -> None:
    """A private Ray instance on this machine, as a job without a cluster starts it ("local":
    even when `ray start` left one running here)."""
    import ray

    # Its dashboard stays off; Ray 2.60's other ports listen on every interface, guarded by its
    # token authentication (on by default for a new local Ray). Ray Train's preemption watcher
    # watches for drained nodes, which a private instance never has; each fine-tune it started
    # logged a false alarm about restarts.
    env_vars = {**QUIET_WORKERS, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", SETUP_HOOK_VARIABLE: SETUP_HOOK}
    # The instance's processes start now, as children of this one, and its workers inherit
    # their environment: the workers' settings travel there, not in a runtime environment,
    # which starts every worker through Ray's set-up process (a second Python and Ray start; a
    # small round took 8% less time without it, docs/benchmarks.md). This process's own
    # environment is left as it was.
    saved = {name: os.environ.get(name) for name in env_vars}
    os.environ.update(env_vars)
    try:
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            try:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
                break
            except Exception as error:
                # Ray waits a fixed 30 s for its new node to register; a machine under heavy
                # load (the test suite's two processes on two cores) can take longer.
                if "timed out during startup" not in str(error) or attempt == STARTUP_ATTEMPTS:
                    raise
                log.warning("Ray's local node did not start within its 30 s (a busy machine?); starting it again.")
                ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def run_job(job: JobConfig) -> dict:
    """Run every round of the job and write ``summary.json``; returns the summary."""
    task = task_of(job.task)
    splits = task.load(job.task.data_path, SplitSizes.of(job.task))
    check_splits(splits, job.task)
    model_path = base_model(job, splits)
    guard_submitted_job(job)
    require_tracking(job)
    run_dir = os.path.abspath(job.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with holding(run_dir), sharing(job.store):
        return run_held(job, run_dir, splits, model_path)


def run_held(job: JobConfig, run_dir: str, splits: Splits, model_path: str) -> dict:
    """``run_job`` in the run directory this process holds."""
    claim_run_dir(run_dir, {"task": job.task.name, "model": model_path})
    attach_run_log(run_dir)
    start_ray(job)
    write_inputs(run_dir, splits, job)
    if splits.rejected:
        log.warning(
            "%d bad rows of the task's data were left out (task.bad_rows=skip); they and the reasons are in %s",
            len(splits.rejected),
            os.path.join(run_dir, "inputs", QUARANTINE),
        )

    # The base model is known by what its folder holds, not only by its path (and an imported
    # GGUF model by its file's content).
    imported = [read_record(model_path)["sha256"]] if job.model.gguf is not None else []
    model_fp = fingerprint("base", model_path, job.model.toy, job.model.dtype, model_identity(model_path), *imported)
    summary = {
        "task": job.task.name,
        "model": model_path,
        "semantics": job.semantics,
        "questions": len(splits.questions),
        "valid": len(splits.valid),
        "test": len(splits.test),
        "quarantined": len(splits.rejected),
        "repeats": job.repeats,
        "rounds": [],
    }
    lineages = {method: (model_path, model_fp) for method in job.methods}
    base = [Evaluation(BASE_EVALUATION, model_path, model_fp)]  # evaluated with round 1's models
    for round_index in range(1, job.rounds + 1):
        result = run_round(job, run_dir, round_index, lineages, splits, base if round_index == 1 else [])
        summary["rounds"].append(result)
        lineages = {m: (r["model"], r["model_fingerprint"]) for m, r in result["methods"].items()}
    summary["base_accuracy"] = accuracy(os.path.join(run_dir, BASE_EVALUATION))
    summary["methods"] = summary["rounds"][-1]["methods"]
    add_statistics(summary, run_dir)
    write_json(os.path.join(run_dir, "summary.json"), summary)
    write_report(run_dir, summary, job.filter.keep_fraction)
    log_job(job, run_dir, summary)
    return summary
