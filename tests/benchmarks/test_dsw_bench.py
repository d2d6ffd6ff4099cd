"""`dsw-ray bench --size tiny` as CI runs it: every section measured, numbers usable, plot written.
It checks that the benchmark runs, not how fast anything is."""

import json
import math
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.bench]


def numbers(value, path=""):
    """Every number in a nested result, with its dotted path."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{path}[{index}]")


# Rates, times and counts that are positive whenever the section ran.
POSITIVE = [
    "generate.stage.candidates_per_s", "generate.stage.new_tokens_per_s", "generate.actor_loop.candidates_per_s",
    "generate.authors.candidates_per_s", "generate.authors.new_tokens_per_s", "generate.limit.tokens_per_s",
    "generate.ratios.stage_vs_authors", "generate.ratios.actor_loop_vs_authors", "generate.ratios.stage_vs_limit",
    "score.stage.tokens_per_s", "score.pool.steady_tokens_per_s",
    "score.actor_loop.tokens_per_s", "score.authors.tokens_per_s", "score.limit.tokens_per_s",
    "score.ratios.pool_vs_authors", "score.ratios.pool_vs_limit",
    "train.stage.loop_samples_per_s", "train.stage.samples_per_s", "train.plain_loop.samples_per_s",
    "train.ratios.loop_vs_plain",
    "end_to_end.ray_start_s", "end_to_end.actor_start_s", "end_to_end.run_job_s", "end_to_end.total_s",
    "cost_model.per_candidate_s", "cost_model.per_score_token_s", "cost_model.per_train_sample_s",
]


def lookup(result: dict, path: str):
    for part in path.split("."):
        result = result[part]
    return result


def test_tiny_bench_writes_every_section(toy_model, tmp_path):
    out, plot = tmp_path / "bench.json", tmp_path / "scaling.png"
    completed = subprocess.run(
        [sys.executable, "-m", "dsw_ray.cli", "bench", "--size", "tiny", "--out", str(out), "--plot", str(plot),
         "--model", toy_model, "-q"],
        capture_output=True, text=True, timeout=850,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())

    for section in ("machine", "quickstart_round", "generate", "score", "train", "end_to_end", "scaling", "cost_model"):
        assert result[section], section
    assert result["size"] == "tiny" and result["command"].startswith("dsw-ray bench --size tiny")
    assert result["machine"]["cpus"] >= 1 and result["machine"]["torch"] and result["machine"]["ray"]
    for path, value in numbers({k: result[k] for k in ("generate", "score", "train", "end_to_end", "scaling", "cost_model")}):
        assert math.isfinite(value), path
    for path in POSITIVE:
        assert lookup(result, path) > 0, path

    stages = result["end_to_end"]["stages_s"]
    for stage in ("round-1/generate", "round-1/vote", "round-1/score", "iwsi/train", "base/evaluate + iwsi/evaluate"):
        assert stages[stage] > 0, stage
    assert result["end_to_end"]["other_s"] >= 0, "a pass's seconds are counted once"
    scaling = result["scaling"]
    assert [p["questions"] for p in scaling["questions"]] == [4, 8]
    points = scaling["questions"] + scaling["samples"] + scaling["actors"]
    assert all(p["generate_s"] > 0 and p["vote_s"] > 0 and p["score_s"] > 0 for p in points)
    assert all(p["candidates"] == p["questions"] * p["samples"] for p in points)
    assert scaling["fit_generate_score_vs_questions"]["slope"] == pytest.approx(
        (points[1]["generate_score_s"] - points[0]["generate_score_s"]) / 4, rel=0.01, abs=0.01
    )  # the JSON keeps 4 significant digits

    # The quickstart's job on a few rows: every stage's wall time is its work plus fixed cost,
    # the pools' work is measured (not zero) and never more than the stage's wall time.
    split = result["quickstart_round"]
    assert split["methods"] == ["lmsi", "iwsi", "random", "oracle"] and split["questions"] == 8
    stages = {s["stage"]: s for s in split["stages"]}
    # The four fine-tunes ran in one Ray Train run, the base model and the four exports in one
    # evaluation pass: each pass is one row, named after one of its stages.
    (train,) = [s for s in split["stages"] if s["stage"].endswith("/train")]
    (evaluate,) = [s for s in split["stages"] if s["stage"].endswith("/evaluate")]
    assert train["models"] == 4 and evaluate["models"] == 5
    for s in split["stages"]:
        assert 0 <= s["work_s"] <= s["seconds"] and s["fixed_s"] == pytest.approx(s["seconds"] - s["work_s"], rel=1e-3, abs=2e-3)
    for s in (stages["round-1/generate"], stages["round-1/score"], train, evaluate):
        assert s["work_s"] > 0, s["stage"]
    assert split["total_s"] == pytest.approx(split["work_s"] + split["fixed_s"], rel=1e-3)
    assert 0 < split["fixed_share"] < 1
    assert "| **round** |" in result["table_markdown"] and "| round-1/generate |" in completed.stdout

    assert "| generate, stage" in result["table_markdown"] and "| score, pool" in result["table_markdown"]
    assert "| generate, stage" in completed.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
