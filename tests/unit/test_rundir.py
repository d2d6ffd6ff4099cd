"""The run directory's contract: atomic stage folders with manifests, skip or rerun, and the
states `dsw-ray status` shows."""

import dataclasses
import json
import logging
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsw_ray.errors import StageFailed, UserError
from dsw_ray.rundir import read_manifest, run_stage, run_stages, sharing, stage_fingerprint, stage_states
from dsw_ray.stages import BY_NAME, spec


def writer(rows: int, calls: list):
    def produce(out: str) -> dict:
        calls.append(out)
        os.makedirs(os.path.join(out, "data"))
        pq.write_table(pa.table({"x": list(range(rows))}), os.path.join(out, "data", "part-0.parquet"))
        return {"rows": rows}

    return produce


def test_a_stage_runs_once_then_is_skipped_until_its_fingerprint_changes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dsw_ray.rundir")
    stage = str(tmp_path / "round-1" / "generate")
    calls = []
    first = run_stage(stage, "fp-a", writer(3, calls), rows_in=2)
    assert first["skipped"] is False and len(calls) == 1
    manifest = read_manifest(stage)
    assert {k: manifest[k] for k in ("stage", "version", "fingerprint", "rows_in", "rows")} == {
        "stage": "generate", "version": spec("generate").version, "fingerprint": "fp-a", "rows_in": 2, "rows": 3,
    }  # fmt: skip
    assert manifest["started"] <= manifest["finished"] and manifest["seconds"] >= 0
    assert not os.path.exists(stage + ".partial")

    again = run_stage(stage, "fp-a", writer(3, calls))
    assert again["skipped"] is True and len(calls) == 1
    assert "round-1/generate: skipped, done already" in caplog.text

    forced = run_stage(stage, "fp-a", writer(4, calls), force=True)
    assert forced["skipped"] is False and len(calls) == 2 and read_manifest(stage)["rows"] == 4
    assert "rerun as asked" in caplog.text

    changed = run_stage(stage, "fp-b", writer(5, calls))
    assert changed["skipped"] is False and read_manifest(stage)["rows"] == 5
    assert "settings, its inputs or its code changed" in caplog.text


def test_a_stage_that_failed_leaves_its_last_good_output_and_says_so_next_time(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dsw_ray.rundir")
    stage = str(tmp_path / "round-1" / "score")
    run_stage(stage, "fp-old", writer(2, []))  # the last good output, of other settings

    def crash(out: str) -> dict:
        raise RuntimeError("killed")

    with pytest.raises(StageFailed, match="round-1/score failed") as failed:
        run_stage(stage, "fp", crash)
    assert isinstance(failed.value.__cause__, RuntimeError), "the cause stays chained, for the run's log"
    assert os.path.isdir(stage + ".partial")
    assert read_manifest(stage)["fingerprint"] == "fp-old" and pq.read_table(os.path.join(stage, "data")).num_rows == 2
    assert sorted(s["state"] for s in stage_states(str(tmp_path))) == ["done", "partial"]
    shutil.rmtree(stage)
    def refuse(out: str) -> dict:
        raise UserError("the user's to fix")

    with pytest.raises(UserError, match="the user's to fix"):  # as it stands: the CLI prints it as it is
        run_stage(stage, "fp", refuse)
    run_stage(stage, "fp", writer(1, []))
    assert "an earlier run stopped before it finished" in caplog.text
    assert [s["state"] for s in stage_states(str(tmp_path))] == ["done"]


def test_a_resumable_stage_goes_on_from_its_own_partial_folder_only(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dsw_ray.rundir")
    stages = [str(tmp_path / "round-1" / m / "train") for m in ("lmsi", "iwsi")]
    seen = []

    def first_done_then_killed(outs: list[str]) -> list[dict]:
        with open(os.path.join(outs[0], "finished"), "w") as f:
            f.write("lmsi")
        raise RuntimeError("killed")

    def look(outs: list[str]) -> list[dict]:
        seen.append(sorted(os.listdir(outs[0])))
        return [{} for _ in outs]

    with pytest.raises(StageFailed):
        run_stages(stages, ["fp-a", "fp-b"], first_done_then_killed, resumable=True)
    run_stages(stages, ["fp-a", "fp-b"], look, resumable=True)
    assert seen == [["finished", "partial_of.json"]] and "going on from what it left" in caplog.text
    assert sorted(os.listdir(stages[0])) == ["finished", "manifest.json"], "the marker goes with the partial folder"

    # Another fingerprint's partial folder, or one of a stage that cannot resume, is emptied.
    for fingerprints, resumable in ((["fp-c", "fp-d"], True), (["fp-a2", "fp-b2"], False)):
        with pytest.raises(StageFailed):
            run_stages(stages, ["fp-a2", "fp-b2"], first_done_then_killed, resumable=True)
        run_stages(stages, fingerprints, look, resumable=resumable)
        assert seen[-1] == ["partial_of.json"]


def test_stage_fingerprints_carry_the_stage_version(monkeypatch):
    before = stage_fingerprint("vote", "x")
    monkeypatch.setitem(BY_NAME, "vote", dataclasses.replace(spec("vote"), version=spec("vote").version + 1))
    assert stage_fingerprint("vote", "x") != before


def test_stage_states_lists_stages_in_the_order_they_ran(tmp_path):
    for name in ("inputs/questions", "round-1/generate", "round-1/vote", "round-1/iwsi/train"):
        run_stage(str(tmp_path / name), "fp", writer(1, []))
    os.makedirs(tmp_path / "round-1" / "iwsi" / "train" / "model")  # not a stage
    os.makedirs(tmp_path / "round-1" / "iwsi" / "evaluate.partial")
    states = stage_states(str(tmp_path))
    assert [(s["stage"], s["state"]) for s in states] == [
        ("inputs/questions", "done"),
        ("round-1/generate", "done"),
        ("round-1/vote", "done"),
        ("round-1/iwsi/train", "done"),
        ("round-1/iwsi/evaluate", "partial"),
    ]
    assert json.dumps(states)  # plain data, printable as JSON


def test_a_run_directory_belongs_to_one_run(tmp_path):
    from dsw_ray.errors import UserError
    from dsw_ray.rundir import claim_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    identity = {"task": "gsm8k", "model": "/models/llama"}
    claim_run_dir(str(run_dir), identity)
    claim_run_dir(str(run_dir), identity)  # its own rerun
    with pytest.raises(UserError, match=r"holds another run \(task: 'gsm8k' there, 'svamp' in this job\)"):
        claim_run_dir(str(run_dir), {**identity, "task": "svamp"})

    old = tmp_path / "old"
    (old / "round-1" / "generate").mkdir(parents=True)
    with pytest.raises(UserError, match="not empty and has no run.json"):
        claim_run_dir(str(old), identity)
    (run_dir / "run.json").write_text("{broken")
    with pytest.raises(UserError, match="damaged"):
        claim_run_dir(str(run_dir), identity)


@pytest.mark.parametrize(
    "harm, why",
    [
        (lambda stage: os.truncate(os.path.join(stage, "data", "part-0.parquet"), 40), "ArrowInvalid"),
        (lambda stage: shutil.rmtree(os.path.join(stage, "data")), "its parquet files hold 0 rows, its manifest 3"),
        (lambda stage: pq.write_table(pa.table({"x": [1]}), os.path.join(stage, "data", "part-0.parquet")),
         "its parquet files hold 1 rows, its manifest 3"),
    ],
)
def test_a_finished_stage_whose_output_is_damaged_is_computed_again(tmp_path, caplog, harm, why):
    """A skip trusts the fingerprint only while the output is whole: a cut, missing or replaced
    parquet file is noticed from its footer and the stage runs again."""
    caplog.set_level(logging.INFO, logger="dsw_ray.rundir")
    stage, calls = str(tmp_path / "round-1" / "vote"), []
    run_stage(stage, "fp", writer(3, calls))
    assert run_stage(stage, "fp", writer(3, calls))["skipped"] and len(calls) == 1
    harm(stage)
    again = run_stage(stage, "fp", writer(3, calls))
    assert again["skipped"] is False and len(calls) == 2 and "its output is damaged" in caplog.text and why in caplog.text
    assert pq.read_table(os.path.join(stage, "data")).num_rows == 3


def test_a_fine_tune_without_its_model_is_computed_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dsw_ray.rundir")
    stage, calls = str(tmp_path / "round-1" / "iwsi" / "train"), []

    def fine_tune(out: str) -> dict:
        calls.append(out)
        os.makedirs(os.path.join(out, "model"))
        for name in ("config.json", "model.safetensors"):
            with open(os.path.join(out, "model", name), "w") as f:
                f.write("{}")
        return {"optimizer_steps": 3, "final_loss": 0.5}

    run_stage(stage, "fp", fine_tune)
    assert run_stage(stage, "fp", fine_tune)["skipped"]
    os.remove(os.path.join(stage, "model", "model.safetensors"))
    assert run_stage(stage, "fp", fine_tune)["skipped"] is False and len(calls) == 2
    assert "its model folder has no config.json or no weights" in caplog.text


def test_json_files_are_replaced_whole(tmp_path):
    from dsw_ray.rundir import write_json

    path = str(tmp_path / "summary.json")
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert json.load(open(path)) == {"a": 2} and os.listdir(tmp_path) == ["summary.json"]


def test_a_run_directory_has_one_writer_and_the_second_is_told_who(tmp_path, tiny_model):
    """A second process that claims a held run directory is refused, naming the holder; the CLI
    exits 2 with that one line; once the holder is gone, the directory is free again."""
    import subprocess
    import sys

    import yaml

    from dsw_ray.rundir import holding

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dsw_ray.rundir import holding\n"
         f"with holding({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"run_dir {run_dir} is in use by dsw-ray \(pid {holder.pid} on "):
            with holding(str(run_dir)):
                pass
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump({
            "run_dir": str(run_dir), "task": {"name": "arith", "num_questions": 4, "num_valid": 2, "num_test": 2},
            "model": {"path": tiny_model},
        }))  # fmt: skip
        cli = subprocess.run([sys.executable, "-m", "dsw_ray", "run", str(job)], capture_output=True, text=True, timeout=300)
        assert cli.returncode == 2 and f"is in use by dsw-ray (pid {holder.pid}" in cli.stderr, cli.stderr
        assert "Traceback" not in cli.stderr
    finally:
        holder.kill()
        holder.wait()
    with holding(str(run_dir)):  # the holder's end released it
        pass


def test_a_store_gives_a_stage_to_every_run_with_its_fingerprint_and_no_other(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dsw_ray.rundir")
    store, calls = str(tmp_path / "store"), []
    first, second, third = (str(tmp_path / run / "round-1" / "score") for run in ("a", "b", "c"))
    with sharing(store):
        run_stage(first, "fp-1", writer(3, calls), rows_in=2)
        taken = run_stage(second, "fp-1", writer(3, calls), rows_in=2)
        other = run_stage(third, "fp-2", writer(5, calls), rows_in=2)
    assert calls == [first + ".partial", third + ".partial"]
    assert taken["skipped"] is True and taken["reused_from"] == first
    assert read_manifest(second)["reused_from"] == first and "reused_from" not in read_manifest(first)
    assert "round-1/score: taken from the store, computed in " + os.path.join("a", "round-1", "score") in caplog.text
    part = lambda stage: os.path.join(stage, "data", "part-0.parquet")  # noqa: E731
    assert os.path.samefile(part(first), part(second)) and other["rows"] == 5
    # The store keeps its own manifest: where each stage was computed.
    assert sorted(os.listdir(store)) == ["score-fp-1", "score-fp-2"]
    assert read_manifest(os.path.join(store, "score-fp-1"))["computed_in"] == first

    # A damaged store entry is computed again, and --from computes even what the store has.
    os.remove(part(os.path.join(store, "score-fp-2")))
    with sharing(store):
        fourth = run_stage(str(tmp_path / "d" / "round-1" / "score"), "fp-2", writer(5, calls))
        forced = run_stage(str(tmp_path / "e" / "round-1" / "score"), "fp-1", writer(3, calls), force=True)
    assert fourth["skipped"] is False and forced["skipped"] is False and len(calls) == 4
    # Without a store nothing is shared.
    run_stage(str(tmp_path / "f" / "round-1" / "score"), "fp-1", writer(3, calls))
    assert len(calls) == 5
