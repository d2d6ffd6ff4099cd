"""Real DeepSpeed on two ranks (torchrun, gloo) with the same rows under every engine:
DDP (ZeRO stage 0), ZeRO-2, ZeRO-3 and LoRA under ZeRO-3 with partitioning forced, and DDP
with each micro batch packed into one sequence."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from dsw_ray import get_task
from dsw_ray.config import JobConfig
from dsw_ray.models import ModelSpec
from dsw_ray.score import LossModel
from dsw_ray.tasks import SplitSizes
from dsw_ray.train import train_plan
from dsw_ray.train_worker import load_weights_only

# LoRA on the barely pre-trained tiny model learns slowly: its loss falls by about 1% here.
LORA = {"lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj"]}, "learning_rate": 1e-2}
HARNESS = os.path.join(os.path.dirname(__file__), "train_harness.py")
ROWS, WORLD = 24, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Learnable rows (gold rationales of arith questions) and held-out pairs."""
    valid = get_task("arith").load(None, SplitSizes(4, ROWS + 8, 4, seed=7)).valid
    path = tmp_path_factory.mktemp("data") / "rows.parquet"
    rows = valid[:ROWS]
    pq.write_table(pa.table({"question": [e.question for e in rows], "text": [e.rationale for e in rows]}), path)
    return str(path), [(e.question, e.rationale) for e in valid[ROWS:]]


def plan_for(model_path, heldout, **train):
    job = JobConfig.model_validate(
        {
            "run_dir": "unused",
            "task": {"name": "arith"},
            "model": {"path": model_path},
            "train": {"epochs": 3, "micro_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 3e-3,
                      "lr_schedule": "constant", "num_workers": WORLD, **train},
        }
    )
    return train_plan(job.train, job.model, model_path, threads=1, heldout=heldout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(runs: list[tuple]) -> list[tuple[list, list]]:
    """Fine-tunes ``(plan, data_path, out)`` or ``(plan, data_path, out, restore)`` one
    after the other in one ``torchrun`` launch of WORLD ranks; each one's per-rank metrics and
    loss history, or its per-rank errors."""
    for _, _, out, *_ in runs:
        os.makedirs(out, exist_ok=True)
    spec = os.path.join(runs[0][2], "spec.json")
    with open(spec, "w") as f:
        json.dump([{"plan": run[0].to_json(), "data": run[1], "out": str(run[2]), "restore": (run[3:] or [None])[0]} for run in runs], f)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port", str(free_port()),
         HARNESS, spec],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = []
    for _, _, out, *_ in runs:
        if os.path.exists(os.path.join(out, "error-0.txt")):
            results.append([open(os.path.join(out, f"error-{rank}.txt")).read() for rank in range(WORLD)])
            continue
        metrics = []
        for rank in range(WORLD):
            with open(os.path.join(out, f"metrics-{rank}.json")) as f:
                metrics.append(json.load(f))
        with open(os.path.join(out, "export", "loss_history.json")) as f:
            results.append((metrics, json.load(f)["history"]))
    return results


def epoch_means(history):
    return [np.mean([h["loss"] for h in history if h["epoch"] == e]) for e in range(3)]


@pytest.fixture(scope="module")
def runs(tiny_model, data, tmp_path_factory):
    data_path, heldout = data
    base = tmp_path_factory.mktemp("engines")
    configs = {
        "ddp": {"zero_stage": 0},
        "ddp_packed": {"zero_stage": 0, "packing": True},
        "zero2": {"zero_stage": 2},
        "zero3": {"zero_stage": 3, "deepspeed": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
        # ZeRO-Offload: optimizer states and parameters on CPU, DeepSpeed's CPU Adam (built on first use).
        "zero3_offload": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
        "lora_ddp": {"zero_stage": 0, **LORA},
        "lora_zero3": {
            "zero_stage": 3,
            **LORA,
            "deepspeed": {"zero_optimization": {"stage3_param_persistence_threshold": 0}},
        },
    }
    runs = [(plan_for(tiny_model, heldout, **train), data_path, base / name) for name, train in configs.items()]
    # Last, in the same launch: rows whose loss turns NaN on one rank only (a NaN loss weight
    # in rank 1's shard; bf16 overflow does the same on GPUs).
    rows = pq.read_table(data_path)
    weights = [float("nan") if i == 5 else 1.0 for i in range(rows.num_rows)]
    pq.write_table(rows.append_column("loss_weight", pa.array(weights)), base / "nan_rows.parquet")
    runs.append((plan_for(tiny_model, heldout, zero_stage=2), str(base / "nan_rows.parquet"), base / "diverged"))
    # And the loss-weight pairs of test_loss_weights_scale_each_rows_loss, one launch for all.
    weighted = loss_weight_runs(tiny_model, base)
    results = launch(runs + list(weighted.values()))
    diverged = results[len(configs)]
    return ({name: (*result, str(base / name / "export")) for name, result in zip(configs, results)}
            | {"diverged": diverged} | {name: str(run[2] / "export") for name, run in weighted.items()})  # fmt: skip


def loss_weight_runs(tiny_model, base) -> dict:
    """Rows (a, b) with weights (2, 0) and rows (a, a) with weights (1, 1), under plain data
    parallel and ZeRO-3: each rank's whole shard is one micro batch, whose mean loss does not
    depend on the epoch's order."""
    examples = get_task("arith").load(None, SplitSizes(4, 32, 4, seed=9)).valid
    kept, ignored = examples[:16], examples[16:]
    weighted, doubled = [], []  # rank r reads rows r, r + 2, ...: (kept i, ignored i) against (kept i, kept i)
    for i in range(0, 16, 2):
        weighted += [(kept[i], 2.0), (kept[i + 1], 2.0), (ignored[i], 0.0), (ignored[i + 1], 0.0)]
        doubled += [(kept[i], 1.0), (kept[i + 1], 1.0), (kept[i], 1.0), (kept[i + 1], 1.0)]
    for name, rows in (("weighted", weighted), ("doubled", doubled)):
        pq.write_table(pa.table({"question": [e.question for e, _ in rows], "text": [e.rationale for e, _ in rows],
                                 "loss_weight": [w for _, w in rows]}), base / f"{name}.parquet")  # fmt: skip
    common = {"epochs": 3, "micro_batch_size": 16, "gradient_accumulation_steps": 1, "learning_rate": 1e-3}
    found = {}
    for stage in (0, 3):
        extra = {"deepspeed": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}} if stage == 3 else {}
        plan = plan_for(tiny_model, [], zero_stage=stage, **common, **extra)
        for name in ("weighted", "doubled"):
            found[f"{name}-{stage}"] = (plan, str(base / f"{name}.parquet"), base / f"{name}-{stage}")
    return found


def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_step(runs):
    """A NaN or infinite loss stops the fine-tune on every rank together (the check is a
    collective), naming the optimizer step and what to change."""
    errors = runs["diverged"]
    assert len(errors) == WORLD and all("loss became NaN or infinite at optimizer step" in e for e in errors)
    assert len({e.split("optimizer step ")[1].split(" ")[0] for e in errors}) == 1
    assert "this rank's loss: nan" in errors[1] and "this rank's loss: nan" not in errors[0]
    assert "train.learning_rate" in errors[0]


@pytest.mark.parametrize("name", ["ddp", "ddp_packed", "zero2", "zero3", "zero3_offload", "lora_ddp", "lora_zero3"])
def test_loss_falls_steps_match_and_ranks_agree(runs, name):
    metrics, history, _ = runs[name]
    means = epoch_means(history)
    assert means[2] < means[1] < means[0], means
    if "lora" not in name:
        assert means[2] < means[0] * 0.9, means
    # 12 rows per rank, micro batch 2: 6 micro batches an epoch, 18 in all; accumulation 2 -> 9 steps.
    for rank_metrics in metrics:
        assert rank_metrics["optimizer_steps"] == rank_metrics["expected_optimizer_steps"] == 9
        assert rank_metrics["micro_batches"] == 18
    assert len(set(metrics[0]["parameter_digests"])) == 1, "every rank holds the same weights"
    assert metrics[0]["workers"] == ["rank-0", "rank-1"]


@pytest.mark.parametrize(
    "name, reference",
    [("zero2", "ddp"), ("zero3", "ddp"), ("zero3_offload", "ddp"), ("lora_zero3", "lora_ddp"), ("ddp_packed", "ddp")],
)
def test_zero_stages_and_packing_give_the_weights_of_plain_data_parallel(runs, name, reference):
    expected = load_file(os.path.join(runs[reference][2], "model.safetensors"))
    weights = load_file(os.path.join(runs[name][2], "model.safetensors"))
    assert expected.keys() == weights.keys()
    # DeepSpeed's CPU Adam is a different implementation of the same update.
    atol = 2e-4 if "offload" in name else 2e-5
    for key in expected:
        torch.testing.assert_close(weights[key], expected[key], atol=atol, rtol=1e-4, msg=key)
    assert epoch_means(runs[name][1]) == pytest.approx(epoch_means(runs[reference][1]), rel=1e-4)


def test_lora_adapter_under_zero3_holds_real_weights(runs, tiny_model):
    export = runs["lora_zero3"][2]
    adapter = load_file(os.path.join(export, "adapter", "adapter_model.safetensors"))
    lora_b = [tensor for key, tensor in adapter.items() if "lora_B" in key]
    assert lora_b and all(t.numel() > 0 for t in adapter.values()), "an adapter saved without gathering is empty"
    assert all(t.abs().sum() > 0 for t in lora_b), "lora_B starts at zero and must have been trained"
    with open(os.path.join(export, "adapter", "adapter_config.json")) as f:
        assert not json.load(f).get("modules_to_save")
    # The merged export is the base model plus the adapter's update on the adapted modules only.
    base = load_file(os.path.join(tiny_model, "model.safetensors"))
    merged = load_file(os.path.join(export, "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(any(m in k for m in ("q_proj", "v_proj", "up_proj")) for k in changed)


@pytest.mark.parametrize("name", ["ddp", "zero3", "lora_zero3"])
def test_export_round_trip_gives_the_workers_heldout_loss(runs, data, name):
    metrics, _, export = runs[name]
    heldout = data[1]
    losses = LossModel(ModelSpec(export)).losses([q for q, _ in heldout], [a for _, a in heldout], 4)
    assert losses.mean() == pytest.approx(metrics[0]["heldout_loss"], abs=1e-5)


class Poison:
    """Unpickled, it creates a file: what a checkpoint planted on the shared volume could do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def checkpoint_of(runs, name: str, epoch: int) -> str:
    """The epoch checkpoint (every rank's part) that run ``name`` saved."""
    return os.path.join(os.path.dirname(runs[name][2]), "checkpoints", f"epoch-{epoch}")


@pytest.fixture(scope="module")
def resumed(runs, data, tiny_model, tmp_path_factory):
    """Fine-tunes resumed from the runs' epoch checkpoints (ZeRO-2 after epoch 2, LoRA under
    ZeRO-3 after epoch 1), and one from a ZeRO-2 checkpoint whose optimizer states were
    replaced by a pickle that runs code."""
    data_path, heldout = data
    base = tmp_path_factory.mktemp("resumed")
    poisoned = base / "poisoned_checkpoint"
    shutil.copytree(checkpoint_of(runs, "zero2", 1), poisoned)
    marker = base / "the_pickle_ran"
    for states in poisoned.glob("epoch-1/*optim_states.pt"):
        torch.save({"optimizer_state_dict": Poison(str(marker))}, states)
    lora_zero3 = {"zero_stage": 3, **LORA, "deepspeed": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}}
    results = launch([
        (plan_for(tiny_model, heldout, zero_stage=2), data_path, base / "zero2", checkpoint_of(runs, "zero2", 2)),
        (plan_for(tiny_model, heldout, **lora_zero3), data_path, base / "lora_zero3", checkpoint_of(runs, "lora_zero3", 1)),
        (plan_for(tiny_model, heldout, zero_stage=2), data_path, base / "poisoned", str(poisoned)),
    ])  # fmt: skip
    return {"zero2": results[0], "lora_zero3": results[1], "poisoned": (results[2], poisoned), "marker": marker}


@pytest.mark.parametrize("name, epoch", [("zero2", 2), ("lora_zero3", 1)])
def test_a_resumed_fine_tune_ends_with_the_weights_of_one_never_stopped(runs, resumed, name, epoch):
    metrics, history = resumed[name]
    assert metrics[0]["resumed_from_epoch"] == epoch and metrics[0]["optimizer_steps"] == 9
    assert metrics[0]["micro_batches"] == 6 * (3 - epoch), "only the epochs after the checkpoint ran"
    assert history == runs[name][1], "the loss history goes on from the checkpoint's"
    assert metrics[0]["parameter_digests"] == runs[name][0][0]["parameter_digests"]


@pytest.mark.parametrize("name, states", [("lora_ddp", "mp_rank_00_model_states.pt"),
                                          ("lora_zero3", "zero_pp_rank_0_mp_rank_00_model_states.pt")])
def test_a_lora_checkpoint_holds_the_adapter_not_the_frozen_model(runs, tiny_model, name, states):
    """The base weights are in the model folder already: a LoRA checkpoint that saved them too
    would be as large as the model, every epoch. (DeepSpeed keeps a tied output embedding
    under its own name: at most that much of the base.)"""
    saved = load_weights_only(os.path.join(checkpoint_of(runs, name, 1), "epoch-1", states))
    adapter = [key for key in saved["module"] if "lora_" in key]
    assert len(adapter) == 12, "A and B for 3 modules in 2 layers"
    frozen = sum(t.numel() for k, t in saved["module"].items() if k not in adapter)
    frozen += sum(t.numel() for t in (saved.get("frozen_param_fragments") or {}).values())
    assert frozen <= load_file(os.path.join(tiny_model, "model.safetensors"))["model.embed_tokens.weight"].numel()


def test_a_checkpoint_that_would_run_code_is_refused(resumed):
    errors, poisoned = resumed["poisoned"]
    assert len(errors) == WORLD and all("was not resumed: it holds more than weights" in e for e in errors), errors
    assert "ray_train folder" in errors[0]
    assert not resumed["marker"].exists(), "the checkpoint's pickle ran"
    # The poison is real: DeepSpeed's own loader would have run it.
    states = next(poisoned.glob("epoch-1/*optim_states.pt"))
    torch.load(states, weights_only=False)
    assert resumed["marker"].exists()


@pytest.mark.parametrize("stage", [0, 3])
def test_loss_weights_scale_each_rows_loss(runs, tiny_model, stage):
    """Rows (a, b) with weights (2, 0) have the loss of (a, a) with weights (1, 1): so training
    on one equals training on the other (``loss_weight_runs``), under plain data parallel and
    ZeRO-3."""
    weighted_model = load_file(os.path.join(runs[f"weighted-{stage}"], "model.safetensors"))
    doubled_model = load_file(os.path.join(runs[f"doubled-{stage}"], "model.safetensors"))
    base = load_file(os.path.join(tiny_model, "model.safetensors"))
    moved = max(float((base[k] - doubled_model[k]).abs().max()) for k in base)
    assert moved > 1e-3, "training moved the weights far more than the tolerance below"
    off, total = 0, 0
    for key in doubled_model:
        # Adam divides by the gradient's own scale, so where a gradient is ~0 float noise can
        # flip a step's sign (lr = 1e-3): allow that in a handful of elements, not in general.
        torch.testing.assert_close(weighted_model[key], doubled_model[key], atol=5e-5, rtol=1e-3)
        off += int(((weighted_model[key] - doubled_model[key]).abs() > 1e-6).sum())
        total += doubled_model[key].numel()
    assert off <= total * 0.001, f"{off} of {total} weights differ by more than 1e-6"
