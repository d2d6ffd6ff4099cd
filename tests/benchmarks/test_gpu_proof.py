"""The GPU proof kit at its tiny size on a CPU, as a real subprocess: every part runs through
the stages' own code and every check passes, and a check that fails makes it exit 1. On a
GPU machine the same file runs it at the tiny size on the GPU.

Optimizer offload is left out here: its first use compiles DeepSpeed's CPU Adam (minutes
on two cores); tests/integration/test_train_engines.py trains with it through the same
``train_worker``."""

import json
import math
import os
import subprocess
import sys

KIT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "gpu_proof.py")
OFFLOAD = "train/realistic/zero2_offload"
TRAIN = ["train/realistic/zero2", "train/realistic/lora_zero2", "train/realistic/zero3", "train/realistic/lora_zero3",
         "train/toy/zero2"]


def run_kit(out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, KIT, "--size", "tiny", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_tiny_proof_runs_every_part_and_passes(tmp_path):
    out = tmp_path / "proof.json"
    # A budget well past the run's length: a loaded CI machine must not skip parts.
    completed = run_kit(out, "--skip", OFFLOAD, "--budget-s", "500")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(out.read_text())

    results = {r["name"]: r for r in result["results"]}
    assert set(results) == {*TRAIN, "generate/realistic", "score/realistic", "generate/toy", "score/toy"}
    assert all(r["status"] == "ok" for r in results.values()), [r.get("error") for r in results.values()]
    assert result["passed"] and all(c["passed"] for c in result["checks"])
    # Three checks per fine-tune (loss falls, steps, export) and one per scoring model.
    assert len(result["checks"]) == 3 * len(TRAIN) + 2

    realistic = result["models"]["realistic"]
    assert realistic["parameters"] > realistic["matmul_parameters"] > 0
    for name in TRAIN:
        r = results[name]
        assert r["tokens_per_s"] > 0 and r["samples_per_s"] > 0 and r["peak_memory_mb"] > 0, name
        assert r["heldout_after"] < r["heldout_before"], name
        if result["dtype"] == "float32":  # in bf16 the kit's own check allows for rounding
            assert math.isclose(r["export_heldout"], r["heldout_after"], abs_tol=1e-4), name
    assert results["train/realistic/lora_zero2"]["settings"]["lora"]["r"] == 16
    for name in ("generate/realistic", "generate/toy"):
        r = results[name]
        assert r["candidates"] == r["calls"] * r["questions_per_call"] * r["samples_per_question"], name
        assert r["new_tokens_per_s"] > 0 and 0 < r["new_tokens_vs_limit"] < 1, name
    for name in ("score/realistic", "score/toy"):
        r = results[name]
        assert r["tokens_per_s"] > 0 and r["fraction_of_limit"] > 0, name
        assert r["bf16_vs_float32"]["rows"] > 0 and 0 <= r["bf16_vs_float32"]["kept_set_agreement"] <= 1, name

    if result["machine"]["gpu"] is None:
        assert result["dtype"] == "float32" and result["peak_tflops"]["value"] is None
        assert all(r["mfu"] is None for r in results.values())
        assert result["projection"]["rates_source"].startswith("assumed")
    assert "checks passed." in completed.stdout and "| train/realistic/zero3 | ok |" in completed.stdout
    assert result["table_markdown"] in completed.stdout


def test_a_failed_check_exits_1_and_is_written(tmp_path):
    out = tmp_path / "proof.json"
    completed = run_kit(out, "--parts", "score/toy", "--budget-s", "0")
    assert completed.returncode == 1, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not result["passed"]
    assert result["results"] == [{"name": "score/toy", "status": "skipped", "error": "the time budget was spent"}]
    assert "- FAIL score/toy: ran (skipped: the time budget was spent)" in completed.stdout
