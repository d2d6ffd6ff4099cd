"""The whole job on a real local Ray with a tiny model: every stage, its artifacts, a rerun."""

import glob
import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as pads
import pytest

from dsw_ray import columns as C
from dsw_ray import get_task, keep_lowest
from dsw_ray.config import JobConfig
from dsw_ray.decoding import Decoding
from dsw_ray.models import ModelSpec
from dsw_ray.tasks import SplitSizes

pytestmark = pytest.mark.ray


def table(run_dir, stage):
    return pads.dataset(os.path.join(run_dir, stage, "data"), format="parquet").to_table().to_pandas()


def tiny_job(model_path, run_dir, **overrides):
    job = {
        "run_dir": str(run_dir),
        "task": {"name": "arith", "num_questions": 12, "num_valid": 6, "num_test": 10, "seed": 1},
        "model": {"path": model_path},
        "generate": {"samples_per_question": 3, "max_new_tokens": 24, "batch_size": 4},
        "score": {"batch_size": 8},
        "train": {"epochs": 1, "micro_batch_size": 4, "learning_rate": 1e-3},
        "evaluate": {"max_new_tokens": 24, "batch_size": 5},
        "ray": {"num_cpus": 2},
        **overrides,
    }
    return JobConfig.model_validate(job)


def manifest_times(run_dir, stages):
    return {stage: os.path.getmtime(os.path.join(run_dir, stage, "manifest.json")) for stage in stages}


def test_workers_inherit_their_settings_and_run_the_set_up_hook(ray_session):
    """A private Ray's workers get the job's settings from the environment its processes
    started with (no runtime environment); the driver's own environment is unchanged."""
    import logging

    import ray

    from dsw_ray.ray_session import QUIET_WORKERS, SETUP_HOOK_VARIABLE

    @ray.remote
    def worker_view():
        cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
        names = [*QUIET_WORKERS, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"]
        return {name: os.environ.get(name) for name in names}, logging.getLogger(cleaner).level

    settings, cleaner_level = ray.get(worker_view.remote())
    assert settings == {**QUIET_WORKERS, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    assert cleaner_level == logging.ERROR, "the set-up hook ran in the worker"
    assert ray.get_runtime_context().runtime_env == {}, "no runtime environment: no set-up process per worker"
    assert SETUP_HOOK_VARIABLE not in os.environ, "the driver's environment is restored after ray.init"


@pytest.fixture(scope="module")
def two_methods(toy_model, tmp_path_factory, ray_session):
    """One round of iwsi and oracle, run once for the tests below: each checks one stage's
    artifacts, the last changes the run (a new keep fraction and a second seed)."""
    from dsw_ray.pipeline import run_job

    where = tmp_path_factory.mktemp("two-methods")
    job = tiny_job(toy_model, where / "run", methods=["iwsi", "oracle"])
    summary = run_job(job)
    run_dir = job.run_dir
    return {
        "job": job, "summary": summary, "run_dir": run_dir, "model": toy_model,
        "generated": table(run_dir, "round-1/generate"), "voted": table(run_dir, "round-1/vote"),
        "scored": table(run_dir, "round-1/score"), "kept": table(run_dir, "round-1/iwsi/filter"),
    }  # fmt: skip


def test_generate_writes_each_candidate_once_with_its_own_seed(two_methods):
    generated = two_methods["generated"]
    assert len(generated) == 12 * 3
    keys = list(zip(generated[C.QUESTION_ID], generated[C.SAMPLE_INDEX]))
    assert len(set(keys)) == len(keys), "every (question_id, sample_index) exactly once"
    assert set(generated[C.SAMPLE_INDEX]) == {0, 1, 2}
    assert set(generated[C.FINISH_REASON]) <= {"stop", "length"}
    assert generated[C.SEED].nunique() == len(generated)
    assert not generated[C.TEXT].str.contains("\nQ:").any()
    assert (generated[C.COMPLETION_TOKENS] <= 24).all() and (generated[C.COMPLETION_TOKENS] > 0).all()
    with open(os.path.join(two_methods["run_dir"], "round-1", "generate", "manifest.json")) as f:
        done = json.load(f)
    assert 0 < done["busy_seconds"] <= done["seconds"]


def test_vote_marks_the_candidates_that_give_the_majority_answer(two_methods):
    voted, task = two_methods["voted"], get_task("arith")
    assert len(voted) == len(two_methods["generated"])
    for _, row in voted.iterrows():
        answer = None if pd.isna(row[C.ANSWER]) else row[C.ANSWER]
        assert row[C.IS_MAJORITY] == (answer is not None and answer == row[C.MAJORITY_ANSWER])
        assert task.parse_answer(row[C.TEXT]) == answer
    with open(os.path.join(two_methods["run_dir"], "round-1", "vote", "manifest.json")) as f:
        vote = json.load(f)
    assert (vote["stage"], vote["rows_in"], vote["rows"]) == ("vote", len(two_methods["generated"]), len(voted))


def test_score_weighs_each_majority_candidate_by_the_valid_sets_loss(two_methods):
    """Lv, computed once through the pool, is the valid set's mean loss computed directly, and a
    DS weight is the ratio of Lv and the candidate's loss, the larger over the smaller."""
    from dsw_ray.score import LossModel

    scored, voted, run_dir = two_methods["scored"], two_methods["voted"], two_methods["run_dir"]
    assert len(scored) == int(voted[C.IS_MAJORITY].sum())
    assert (scored[C.DS_WEIGHT] >= 1).all() and scored[C.VALID_LOSS_MEAN].nunique() == 1
    ratio = scored[C.VALID_LOSS_MEAN] / scored[C.LOSS]
    assert ((scored[C.DS_WEIGHT] - ratio.where(ratio >= 1, 1 / ratio)).abs() < 1e-9).all()
    with open(os.path.join(run_dir, "round-1", "score", "manifest.json")) as f:
        done = json.load(f)
    assert 0 < done["busy_seconds"] <= done["seconds"]

    candidates = two_methods["summary"]["methods"]["iwsi"]["candidates"]
    assert candidates["generated"] == len(two_methods["generated"]) and candidates["majority"] == len(scored)
    assert candidates["valid_loss"]["n"] == 6 and candidates["valid_loss"]["mean"] == scored[C.VALID_LOSS_MEAN][0]
    valid = get_task("arith").load(None, SplitSizes(12, 6, 10, seed=1)).valid
    direct = LossModel(ModelSpec(two_methods["model"])).losses(
        [e.question for e in valid], [e.rationale for e in valid], batch_size=2
    )
    assert candidates["valid_loss"]["mean"] == pytest.approx(direct.mean(), abs=1e-6)
    per_example = pd.read_parquet(os.path.join(run_dir, "round-1", "score", "valid_losses.parquet"))
    assert sorted(per_example[C.QUESTION_ID]) == sorted(e.question_id for e in valid)


def test_iwsi_keeps_the_lowest_weights_and_the_oracle_the_right_answers(two_methods):
    scored, voted, kept, run_dir = two_methods["scored"], two_methods["voted"], two_methods["kept"], two_methods["run_dir"]
    ordered = scored.sort_values([C.QUESTION_ID, C.SAMPLE_INDEX])
    mask = keep_lowest(ordered[C.DS_WEIGHT].to_numpy(), 0.8)
    assert list(zip(kept[C.QUESTION_ID], kept[C.SAMPLE_INDEX])) == list(
        zip(ordered[C.QUESTION_ID][mask], ordered[C.SAMPLE_INDEX][mask])
    )
    assert (kept[C.LOSS_WEIGHT] == 1.0).all()

    task = get_task("arith")
    oracle = table(run_dir, "round-1/oracle/filter")
    correct = voted[[task.is_correct(None if pd.isna(a) else a, g) for a, g in zip(voted[C.ANSWER], voted[C.GOLD])]]
    assert sorted(zip(oracle[C.QUESTION_ID], oracle[C.SAMPLE_INDEX])) == sorted(
        zip(correct[C.QUESTION_ID], correct[C.SAMPLE_INDEX])
    )


def test_both_fine_tunes_run_in_one_ray_train_run_each_as_it_would_alone(two_methods, tmp_path):
    from transformers import AutoModelForCausalLM

    from dsw_ray.train import fine_tune

    job, run_dir = two_methods["job"], two_methods["run_dir"]
    trained = {}
    for method in ("iwsi", "oracle"):
        assert AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "round-1", method, "train", "model"))
        with open(os.path.join(run_dir, "round-1", method, "train", "manifest.json")) as f:
            trained[method] = json.load(f)
        assert trained[method]["optimizer_steps"] == trained[method]["expected_optimizer_steps"] > 0
    # Both fine-tunes ran in one Ray Train run, and the second gives the weights it gives alone.
    assert trained["iwsi"]["started"] == trained["oracle"]["started"] and trained["oracle"]["computed_with"] == 2
    valid = get_task("arith").load(None, SplitSizes(12, 6, 10, seed=1)).valid
    alone = fine_tune(
        os.path.join(run_dir, "round-1", "oracle", "filter", "data"), job.train, job.model, two_methods["model"],
        str(tmp_path / "oracle-alone"), str(tmp_path / "ray_train"), heldout=[(e.question, e.rationale) for e in valid],
    )
    assert alone["parameter_digests"] == trained["oracle"]["parameter_digests"]
    assert alone["final_loss"] == trained["oracle"]["final_loss"]


def test_one_evaluation_pass_answers_as_each_model_alone(two_methods):
    """The base model and both exports were answered in one pass of one pool, each model's
    answers what that model alone answers greedily to the same batches of test questions."""
    from dsw_ray.generate import TransformersGenerator

    run_dir, task = two_methods["run_dir"], get_task("arith")
    for method in ("iwsi", "oracle"):
        assert len(table(run_dir, f"round-1/{method}/evaluate")) == 10
    evaluations = {"base/evaluate": two_methods["model"]}
    evaluations.update({f"round-1/{m}/evaluate": os.path.join(run_dir, "round-1", m, "train", "model") for m in ("iwsi", "oracle")})
    passes = set()
    test = pads.dataset(os.path.join(run_dir, "inputs", "test", "data")).to_table().to_pydict()
    for stage, model in evaluations.items():
        with open(os.path.join(run_dir, stage, "manifest.json")) as f:
            done = json.load(f)
        passes.add((done["started"], done["computed_with"]))
        assert 0 < done["busy_seconds"] <= done["seconds"]
        alone = TransformersGenerator(ModelSpec(model), task, Decoding(24))
        texts = [text for start in (0, 5) for text in alone({k: v[start : start + 5] for k, v in test.items()})[C.TEXT]]
        answered = table(run_dir, stage).set_index(C.QUESTION_ID).loc[test[C.QUESTION_ID]]
        assert answered[C.TEXT].tolist() == texts, stage
    assert len(passes) == 1 and passes.pop()[1] == 3


def test_the_summary_and_report_count_what_each_stage_kept_and_dropped(two_methods):
    summary, run_dir, task = two_methods["summary"], two_methods["run_dir"], get_task("arith")
    generated, voted, scored, kept = (two_methods[k] for k in ("generated", "voted", "scored", "kept"))
    with open(os.path.join(run_dir, "summary.json")) as f:
        written = json.load(f)
    assert summary == written
    assert written["task"] == "arith" and written["model"] == two_methods["model"] and written["semantics"] == "paper"
    iwsi = written["methods"]["iwsi"]
    no_answer = int(voted[C.ANSWER].isna().sum())
    assert iwsi["dropped"] == {
        "no_answer": no_answer,
        "not_majority": len(generated) - len(scored) - no_answer,
        "high_ds_weight": len(scored) - len(kept),
    }
    assert iwsi["kept"] == len(kept)
    kept_correct = [task.is_correct(a, g) for a, g in zip(kept[C.ANSWER], kept[C.GOLD])]
    assert iwsi["kept_correct"] == pytest.approx(sum(kept_correct) / len(kept))
    assert written["methods"]["oracle"]["kept_correct"] == 1.0
    assert iwsi["accuracy"] == pytest.approx(table(run_dir, "round-1/iwsi/evaluate")[C.CORRECT].mean())
    assert written["base_accuracy"] == pytest.approx(table(run_dir, "base/evaluate")[C.CORRECT].mean())

    with open(os.path.join(run_dir, "report.md")) as f:
        report = f.read()
    assert "| IWSI | 1 | " + str(len(kept)) in report and "| oracle | 1 |" in report
    assert "## Kept sets beside the oracle" in report and "| oracle | 1 | " in report.split("beside the oracle")[1]
    for png in ("ds_weights.png", "losses.png", "accuracy.png"):
        with open(os.path.join(run_dir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report


def test_a_rerun_skips_every_stage_and_a_new_keep_fraction_reruns_only_what_reads_it(two_methods):
    """Last: it changes the run. A rerun skips every finished stage and reproduces the summary.
    Then a changed keep fraction, the old one kept as iwsi@0.8 (a k sweep), and a second training
    seed: candidates and scores are reused, oracle (which does not read keep_fraction) keeps
    its filter, first fine-tune and evaluation, iwsi is redone, iwsi@0.8 keeps what iwsi kept
    before, and each method gets a second fine-tune and evaluation with train.seed + 1.
    (`--from` is the terminal test's.)"""
    from dsw_ray.pipeline import run_job

    job, summary, run_dir = two_methods["job"], two_methods["summary"], two_methods["run_dir"]
    scored, kept = two_methods["scored"], two_methods["kept"]
    shared = ["round-1/generate", "round-1/vote", "round-1/score"]
    per_method = [f"round-1/{m}/{s}" for m in ("iwsi", "oracle") for s in ("filter", "train", "evaluate")]
    before = manifest_times(run_dir, shared + per_method)
    assert run_job(job) == summary
    assert manifest_times(run_dir, shared + per_method) == before

    changed = tiny_job(
        two_methods["model"], run_dir, methods=["iwsi", "oracle", "iwsi@0.8"], filter={"keep_fraction": 0.5}, repeats=2
    )
    evaluations = ["base/evaluate", "round-1/oracle/evaluate"]
    before = manifest_times(run_dir, shared + per_method + evaluations)
    resumed = run_job(changed)
    after = manifest_times(run_dir, shared + per_method + evaluations)
    for stage in shared + evaluations + ["round-1/oracle/filter", "round-1/oracle/train"]:
        assert after[stage] == before[stage], stage
    for stage in ("round-1/iwsi/filter", "round-1/iwsi/train", "round-1/iwsi/evaluate"):
        assert after[stage] != before[stage], stage
    assert resumed["base_accuracy"] == summary["base_accuracy"]
    oracle, first = resumed["methods"]["oracle"], summary["methods"]["oracle"]
    assert oracle["seeds"][0] == first["seeds"][0] and oracle["train"] == first["train"]
    assert oracle["model"] == first["model"], "the next round starts from the first seed's model"
    for method, numbers in resumed["methods"].items():
        assert [s["seed"] for s in numbers["seeds"]] == [0, 1]
        assert numbers["evaluations"] == [f"round-1/{method}/evaluate", f"round-1/{method}/seed-1/evaluate"]
        second = table(run_dir, f"round-1/{method}/seed-1/evaluate")
        assert numbers["seeds"][1]["accuracy"] == pytest.approx(second[C.CORRECT].mean())
        assert numbers["accuracy"] == pytest.approx((numbers["seeds"][0]["accuracy"] + numbers["seeds"][1]["accuracy"]) / 2)
        spread = numbers["seed_spread"]
        assert spread["seeds"] == 2 and spread["std"] == pytest.approx(
            abs(numbers["seeds"][0]["accuracy"] - numbers["seeds"][1]["accuracy"]) / 2**0.5
        )
        with open(os.path.join(run_dir, "round-1", method, "seed-1", "train", "manifest.json")) as f:
            assert json.load(f)["stage"] == "train"
        # Paired differences are over the same test questions, per-question means over both seeds.
        base = table(run_dir, "base/evaluate").sort_values(C.QUESTION_ID)[C.CORRECT].to_numpy(float)
        both = [table(run_dir, e).sort_values(C.QUESTION_ID)[C.CORRECT].to_numpy(float) for e in numbers["evaluations"]]
        assert numbers["vs_base"]["difference"] == pytest.approx((both[0] + both[1]).mean() / 2 - base.mean())
        assert numbers["interval"]["low"] <= numbers["accuracy"] <= numbers["interval"]["high"]
    assert resumed["methods"]["iwsi"]["kept"] == round(0.5 * len(scored))
    assert list(resumed["methods"]) == ["iwsi", "oracle", "iwsi@0.8"]
    assert table(run_dir, "round-1/iwsi@0.8/filter").equals(kept)
    with open(os.path.join(run_dir, "report.md")) as f:
        report = f.read()
    assert "| IWSI (k = 0.8) | 1 | " + str(len(kept)) in report and "(the paper's Figure 2)" in report
    assert "| IWSI | 0.5 | " in report and "| IWSI | 0.8 | " in report and "](keep_fraction.png)" in report


@pytest.mark.slow  # a second whole job: the authors' semantics and the reward model
def test_official_semantics_reward_model_and_weighted_loss(toy_model, tiny_reward_model, tmp_path, ray_session):
    """The authors' semantics end to end, the rm method's reward stage on an actor pool, and
    iwsi_w's loss weights reaching the trainer."""
    from dsw_ray.pipeline import run_job
    from dsw_ray.weights import official_ds_weights, official_ratios

    job = tiny_job(
        toy_model,
        tmp_path / "run",
        methods=["rm", "iwsi_w"],
        semantics="official",
        reward={"model_path": tiny_reward_model, "batch_size": 4},
        filter={"keep_fraction": 0.5, "weight_clip": 1.2},
    )
    summary = run_job(job)
    run_dir = job.run_dir
    voted = table(run_dir, "round-1/vote")
    parsed = voted[C.ANSWER].dropna()
    assert all("." not in answer for answer in parsed), "official answers are integers"

    scored = table(run_dir, "round-1/score")
    ds = official_ds_weights(scored[C.LOSS].to_numpy(), scored[C.VALID_LOSS_MEAN][0])
    assert (scored[C.DS_WEIGHT].to_numpy() == ds).all() and ds.max() <= 5

    rewards = table(run_dir, "round-1/reward").sort_values(C.REWARD, ascending=False, kind="stable")
    assert len(rewards) == len(scored)
    kept = table(run_dir, "round-1/rm/filter")
    # The authors' rule: every reward at or above the one at int(n k), highest first.
    threshold = rewards[C.REWARD].iloc[int(0.5 * len(scored))]
    assert len(kept) == (rewards[C.REWARD] >= threshold).sum() == int(0.5 * len(scored)) + 1
    assert kept[C.REWARD].min() == threshold

    weighted = table(run_dir, "round-1/iwsi_w/filter").sort_values([C.QUESTION_ID, C.SAMPLE_INDEX])
    expected = official_ratios(weighted[C.LOSS].to_numpy(), weighted[C.VALID_LOSS_MEAN].iloc[0]).clip(0, 1.2)
    assert weighted[C.LOSS_WEIGHT].to_numpy() == pytest.approx(expected)
    assert summary["semantics"] == "official" and summary["methods"]["iwsi_w"]["train"]["optimizer_steps"] > 0


@pytest.mark.slow  # a second whole job: rounds 2 and the trackers
def test_two_rounds_each_method_continues_its_own_model(tiny_model, tmp_path, ray_session):
    """Round 2 generates from each method's round-1 export; a method that keeps nothing is
    reported as such, not fine-tuned, and goes on from the model it had. With tracking on,
    MLflow holds the job and each method's round (read back through MLflow's client)."""
    from dsw_ray.pipeline import run_job
    from dsw_ray.tracking import log_job

    job = tiny_job(
        tiny_model,
        tmp_path / "run",
        rounds=2,
        methods=["none", "oracle"],
        task={"name": "arith", "num_questions": 6, "num_valid": 4, "num_test": 4, "seed": 2},
        generate={"samples_per_question": 2, "max_new_tokens": 8, "batch_size": 6},
        evaluate={"max_new_tokens": 8, "batch_size": 4},
        tracking={"mlflow": {"enabled": True, "experiment": "two-rounds"}, "wandb": {"enabled": True}},
    )
    summary = run_job(job)
    run_dir = job.run_dir
    first, second = summary["rounds"]
    # The untrained tiny model never answers correctly: the oracle keeps nothing.
    assert first["methods"]["oracle"]["kept"] == 0 and first["methods"]["oracle"]["accuracy"] is None
    assert not os.path.exists(os.path.join(run_dir, "round-1", "oracle", "train"))
    assert first["methods"]["none"]["kept"] == 12 and first["methods"]["none"]["accuracy"] is not None
    # Round 2: each method has its own candidates, from its own model.
    assert second["methods"]["none"]["candidates"]["dir"] == "round-2/none"
    assert second["methods"]["oracle"]["candidates"]["dir"] == "round-2/oracle"
    round_two = table(run_dir, "round-2/none/generate")
    assert len(round_two) == 12
    assert set(round_two[C.SEED]).isdisjoint(table(run_dir, "round-1/generate")[C.SEED]), "new samples each round"
    with open(os.path.join(run_dir, "round-2", "none", "train", "manifest.json")) as f:
        assert json.load(f)["optimizer_steps"] > 0
    assert second["methods"]["none"]["model"] == os.path.join(run_dir, "round-2", "none", "train", "model")
    assert summary["methods"] == second["methods"]
    with open(os.path.join(run_dir, "report.md")) as f:
        report = f.read()
    assert "| oracle | 1 | 0 | - | - |" in report and "round-2/none" in report
    check_wandb(run_dir, summary)
    check_mlflow(run_dir, summary, log_again=lambda: log_job(job, run_dir, summary))


def wandb_records(path: str) -> list:
    """The records of a W&B offline run file (``run-ID.wandb``): W&B's 7-byte header, then
    LevelDB's log format (32 KiB blocks of chunks: CRC, length, type; FULL or FIRST..LAST),
    each record a protobuf ``Record``. W&B ships no reader of its own."""
    import struct

    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    position, records, pending = 7, [], b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header is padding
            position += 32768 - position % 32768
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def check_wandb(run_dir: str, summary: dict) -> None:
    """What a job with tracking.wandb (offline) wrote in its run directory: a run for the job and
    one per method and round, each method's curves and final numbers."""
    runs = {}
    for path in glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb")):
        records = wandb_records(path)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                   for r in records if r.WhichOneof("record_type") == "history"]  # fmt: skip
        final = {}
        for r in records:
            if r.WhichOneof("record_type") == "summary":
                final.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        runs[run.display_name] = (run, history, final)
    assert sorted(runs) == ["round-1/none", "round-1/oracle", "round-2/none", "round-2/oracle", "run"]
    assert {run.run_group for run, _, _ in runs.values()} == {"run"}
    job_config = {i.key: json.loads(i.value_json) for i in runs["run"][0].config.update}
    assert job_config["train.learning_rate"] == 0.001
    assert runs["run"][2]["base_accuracy"] == summary["base_accuracy"]
    _, history, final = runs["round-2/none"]
    assert final["accuracy"] == summary["rounds"][1]["methods"]["none"]["accuracy"]
    with open(os.path.join(run_dir, "round-2", "none", "train", "manifest.json")) as f:
        steps = json.load(f)["optimizer_steps"]
    assert [h["_step"] for h in history if "train/loss" in h] == list(range(1, steps + 1))
    assert os.path.exists(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "files", "report.md"))[0])


def check_mlflow(run_dir: str, summary: dict, log_again) -> None:
    """What a job with tracking.mlflow logged to the file store in its run directory."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file://{run_dir}/mlruns")
    experiment = client.get_experiment_by_name("two-rounds").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    assert sorted(runs) == ["round-1/none", "round-1/oracle", "round-2/none", "round-2/oracle", "run"]
    job_run = runs["run"]
    assert job_run.data.params["train.learning_rate"] == "0.001" and job_run.data.params["methods"] == '["none", "oracle"]'
    assert job_run.data.metrics["base_accuracy"] == summary["base_accuracy"]
    with open(os.path.join(run_dir, "round-2", "none", "train", "manifest.json")) as f:
        trained = json.load(f)
    assert job_run.data.metrics["round-2/none/train/seconds"] == trained["seconds"]
    assert {a.path for a in client.list_artifacts(job_run.info.run_id)} >= {"report.md", "summary.json", "accuracy.png"}
    for name in ("round-1/none", "round-1/oracle", "round-2/none", "round-2/oracle"):
        assert runs[name].data.tags["mlflow.parentRunId"] == job_run.info.run_id
    second = runs["round-2/none"]
    assert second.data.metrics["accuracy"] == summary["rounds"][1]["methods"]["none"]["accuracy"]
    assert "accuracy" not in runs["round-1/oracle"].data.metrics, "a method that kept nothing has no accuracy"
    losses = client.get_metric_history(second.info.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(1, trained["optimizer_steps"] + 1))
    with open(os.path.join(run_dir, "round-2", "none", "train", "model", "loss_history.json")) as f:
        history = json.load(f)["history"]
    assert losses[0].value == pytest.approx(history[0]["loss"])  # one micro batch a step here
    assert len(client.get_metric_history(second.info.run_id, "train/learning_rate")) == len(losses)
    # A rerun logs the job again (as run_job does at its end) in place of the earlier runs.
    log_again()
    again = client.search_runs([experiment])
    assert len(again) == 5 and not {r.info.run_id for r in again} & {r.info.run_id for r in runs.values()}


def test_same_seed_same_candidates_whatever_the_batching(tiny_model, tmp_path, ray_session):
    """Per-candidate seeds: batch size and actor count do not change what is sampled."""
    import ray

    from dsw_ray.generate import generate
    from dsw_ray.inputs import examples_table

    job = tiny_job(tiny_model, tmp_path / "a")
    questions = get_task("arith").load(None, SplitSizes(6, 2, 2, seed=5)).questions
    dataset = ray.data.from_arrow(examples_table(questions))
    arith = get_task("arith")
    one = generate(dataset, job.generate, job.model, arith, tiny_model, round_index=1).to_pandas()
    other_job = tiny_job(tiny_model, tmp_path / "b", generate={**job.generate.model_dump(), "batch_size": 1, "actors": 2})
    two = generate(dataset.repartition(6), other_job.generate, job.model, arith, tiny_model, round_index=1).to_pandas()
    key = [C.QUESTION_ID, C.SAMPLE_INDEX]
    one, two = one.sort_values(key).reset_index(drop=True), two.sort_values(key).reset_index(drop=True)
    assert one[C.TEXT].tolist() == two[C.TEXT].tolist()
    assert one[C.SEED].tolist() == two[C.SEED].tolist()
    third = generate(dataset, job.generate, job.model, arith, tiny_model, round_index=2).to_pandas().sort_values(key)
    assert third[C.SEED].tolist() != one[C.SEED].tolist(), "each round samples afresh"


def test_a_small_stage_read_by_the_driver_has_the_blocks_ray_data_reads(tmp_path, ray_session, monkeypatch):
    """``read_dataset`` reads a small stage in the driver: the same rows in blocks of the same
    sizes as Ray Data's read and repartition give, in the files' order (Ray Data's own order
    across files is the order its read tasks finish in)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from dsw_ray import rundir

    os.makedirs(tmp_path / "stage" / "data")
    for part, rows in enumerate((range(0, 6), range(6, 10))):
        pq.write_table(pa.table({"n": list(rows)}), tmp_path / "stage" / "data" / f"part-{part}.parquet")

    def blocks(min_blocks):
        return [t["n"].to_pylist() for t in ray.get(rundir.read_dataset(str(tmp_path / "stage"), 4, min_blocks).to_arrow_refs())]

    by_driver = blocks(1), blocks(5)
    monkeypatch.setattr(rundir, "DRIVER_READ_BYTES", -1)
    by_ray = blocks(1), blocks(5)
    for driver, ray_data in zip(by_driver, by_ray):
        assert [len(b) for b in driver] == [len(b) for b in ray_data]
        assert sorted(sum(driver, [])) == sorted(sum(ray_data, [])) == list(range(10))
    assert by_driver[0] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert by_driver[1] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_cli_reports_user_errors_without_traceback(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("run_dir: r\ntask: {name: arith}\nmodel: {path: m}\nfilter: {keep_fraction: 2}\n")
    result = subprocess.run(
        [sys.executable, "-m", "dsw_ray.cli", "run", str(job)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "filter.keep_fraction" in result.stderr and str(job) in result.stderr
    assert "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "dsw_ray.cli", "run", str(job), "filter.keep_fraction=0.5", f"model.path={tmp_path}/none"],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.timeout(300)
def test_two_default_actors_on_two_cpus_do_not_starve_ray_data(tiny_model, tmp_path):
    """The trap of this machine: actors that reserve every CPU leave Ray Data's read tasks none
    and the job waits forever. With default CPUs a two-actor pool on two CPUs must finish."""
    script = f"""
from dsw_ray import ray_session, rundir
from dsw_ray.config import JobConfig
from dsw_ray.inputs import examples_table
from dsw_ray.rundir import read_dataset, write_table
from dsw_ray.generate import generate
from dsw_ray.tasks import SplitSizes, get_task
job = JobConfig.model_validate({{"run_dir": "{tmp_path}", "task": {{"name": "arith"}}, "model": {{"path": "{tiny_model}"}},
    "generate": {{"actors": 2, "samples_per_question": 2, "max_new_tokens": 8, "batch_size": 2}}}})
ray_session.start_local_ray(2)
write_table(examples_table(get_task("arith").load(None, SplitSizes(8, 2, 2)).questions), "{tmp_path}/q")
rundir.DRIVER_READ_BYTES = -1  # Ray Data's read tasks, not the driver, read the questions
rows = generate(read_dataset("{tmp_path}/q", 2, 2), job.generate, job.model, get_task("arith"), "{tiny_model}", 1).count()
print("ROWS", rows)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ROWS 16" in result.stdout


def test_a_batch_that_kills_every_actor_fails_its_stage_in_bounded_time(ray_session):
    """An actor pool restarts a dead actor and retries its batch a bounded number of times
    (Ray Data's default is without end): a batch that always kills its actor fails the stage."""
    import time

    import pyarrow as pa

    from dsw_ray.resources import ACTOR_RESTARTS, pool_input, pool_map

    class Poisoned:  # defined here, so that Ray ships it by value
        def __init__(self, threads):
            self.pid = os.getpid()

        def __call__(self, batch):
            if "poison" in list(batch["question_id"]):
                os._exit(1)  # as a segfault or the OOM killer would
            return {**batch, "pid": [self.pid] * len(batch["question_id"])}

    class Section:
        actors, cpus_per_actor, gpus_per_actor, batch_size = 1, None, 0, 2

    rows = pa.table({"question_id": ["q0", "q1", "poison", "q3"]})
    started = time.time()
    with pytest.raises(Exception) as failure:
        pool_map(pool_input(rows, 2), Poisoned, {}, Section, "poisoned").take_all()
    assert time.time() - started < 300, "bounded: it did not loop until the test's timeout"
    assert "ActorDiedError" in repr(failure.value) or "died" in str(failure.value), failure.value
    assert ACTOR_RESTARTS == 3
    # A pool without the poisoned row still answers, through the same code.
    assert len(pool_map(pool_input(rows.slice(0, 2), 2), Poisoned, {}, Section, "healthy").take_all()) == 2
