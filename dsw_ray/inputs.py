"""A job's inputs: the task's splits, checked and written as parquet, and the base model,
built, imported or checked before any actor loads it."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict

import pyarrow as pa

from dsw_ray import columns as C
from dsw_ray.config import JobConfig, TaskConfig
from dsw_ray.errors import UserError
from dsw_ray.gguf_import import import_gguf
from dsw_ray.models import check_model_dir, load_tokenizer
from dsw_ray.prompting import check_chat_template
from dsw_ray.rundir import fingerprint, run_stage, stage_fingerprint, write_table
from dsw_ray.tasks import Splits
from dsw_ray.tasks.rows import question_key
from dsw_ray.toy import build_toy_model

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
    if job.needs("reward"):
        check_model_dir(job.reward.model_path, "sequence classifier", job.model.trust_remote_code, "reward.model_path")
    return os.path.abspath(job.model.path)


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


def examples_table(examples) -> pa.Table:
    return pa.Table.from_pylist(
        [{C.QUESTION_ID: e.question_id, C.QUESTION: e.question, C.GOLD: e.gold} for e in examples]
    )
