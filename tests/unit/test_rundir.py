"""The run directory's contract: atomic stage folders with manifests, skip or rerun, and the
states `dsw-ray status` shows."""

import json
import logging
import os

import pytest

from dsw_ray.errors import StageFailed, UserError
from dsw_ray.rundir import STAGE_VERSIONS, read_manifest, run_stage, stage_fingerprint, stage_states


def writer(rows: int, calls: list):
    def produce(out: str) -> dict:
        calls.append(out)
        with open(os.path.join(out, "rows.txt"), "w") as f:
            f.write("x\n" * rows)
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
        "stage": "generate", "version": STAGE_VERSIONS["generate"], "fingerprint": "fp-a", "rows_in": 2, "rows": 3,
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

    def crash(out: str) -> dict:
        raise RuntimeError("killed")

    with pytest.raises(StageFailed, match="round-1/score failed") as failed:
        run_stage(stage, "fp", crash)
    assert isinstance(failed.value.__cause__, RuntimeError), "the cause stays chained, for the run's log"
    assert os.path.isdir(stage + ".partial") and not os.path.exists(stage)
    assert [s["state"] for s in stage_states(str(tmp_path))] == ["partial"]
    def refuse(out: str) -> dict:
        raise UserError("the user's to fix")

    with pytest.raises(UserError, match="the user's to fix"):  # as it stands: the CLI prints it as it is
        run_stage(stage, "fp", refuse)
    run_stage(stage, "fp", writer(1, []))
    assert "an earlier run stopped before it finished" in caplog.text
    assert [s["state"] for s in stage_states(str(tmp_path))] == ["done"]


def test_stage_fingerprints_carry_the_stage_version(monkeypatch):
    before = stage_fingerprint("vote", "x")
    monkeypatch.setitem(STAGE_VERSIONS, "vote", STAGE_VERSIONS["vote"] + 1)
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
