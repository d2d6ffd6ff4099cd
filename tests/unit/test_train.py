"""What the training settings turn into: DeepSpeed's config, the optimizer, the schedule."""

import math
import types

import pytest
import torch

from dsw_ray.config import JobConfig, load_job
from dsw_ray.errors import ConfigError, UserError
from dsw_ray.deepspeed_settings import deepspeed_config
from dsw_ray.train import train_plan
from dsw_ray.train_worker import (
    TrainPlan, checkpoint_bytes, lr_schedule, make_optimizer, optimizer_steps, require_space,
)  # fmt: skip


def plan(tmp_path, **train) -> TrainPlan:
    job = JobConfig.model_validate(
        {"run_dir": str(tmp_path), "task": {"name": "arith"}, "model": {"path": "m"}, "train": train}
    )
    return train_plan(job.train, job.model, "m", threads=1)


def test_deepspeed_config_follows_the_settings(tmp_path):
    config = plan(
        tmp_path, micro_batch_size=4, gradient_accumulation_steps=3, max_grad_norm=0.5, zero_stage=3,
        offload_optimizer=True, offload_params=True,
    ).deepspeed_config(world_size=2)
    assert config["train_batch_size"] == 4 * 3 * 2 and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False},
    }


def test_raw_deepspeed_dict_is_merged_and_checked(tmp_path):
    raw = {"zero_optimization": {"stage3_param_persistence_threshold": 0}, "wall_clock_breakdown": True}
    config = plan(tmp_path, zero_stage=3, deepspeed=raw).deepspeed_config(world_size=1)
    assert config["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert config["wall_clock_breakdown"] is True
    # Repeating an owned value is fine; contradicting it is not.
    plan(tmp_path, micro_batch_size=2, deepspeed={"train_micro_batch_size_per_gpu": 2}).deepspeed_config(1)
    for bad in ({"gradient_accumulation_steps": 8}, {"train_batch_size": 1000}, {"zero_optimization": {"stage": 1}}):
        with pytest.raises(ValueError, match="contradicts"):
            deepspeed_config({**plan(tmp_path).train.model_dump(), "dtype": "float32", "deepspeed": bad}, 1)


def test_a_contradicting_raw_dict_is_a_config_error_naming_the_field(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("run_dir: r\ntask: {name: arith}\nmodel: {path: m}\ntrain: {deepspeed: {gradient_accumulation_steps: 4}}\n")
    with pytest.raises(ConfigError, match=r"train: .*gradient_accumulation_steps = 4 contradicts"):
        load_job(str(job))
    with pytest.raises(ConfigError, match="offload_params needs zero_stage 3"):
        load_job(str(job), ["train.deepspeed={}", "train.offload_params=true"])


def test_a_plan_travels_as_json_and_starts_each_fine_tune_from_its_own_model_and_seed(tmp_path):
    import json

    lora = plan(tmp_path, lora={"r": 4}, epochs=2)
    lora = TrainPlan(lora.train, lora.model, 3, 2, "chat", (("q", "a"),))
    assert TrainPlan.from_json(json.loads(json.dumps(lora.to_json()))) == lora
    second = lora.starting_from("round-1/iwsi/train/model", 7)
    assert (second.model.path, second.seed, second.train, second.heldout) == ("round-1/iwsi/train/model", 7, lora.train, lora.heldout)


def test_optimizer_honours_betas_and_weight_decay(tmp_path):
    train = plan(tmp_path, learning_rate=1e-3, betas=(0.8, 0.95), weight_decay=0.1).train
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], train)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-3, (0.8, 0.95), 0.1)


def test_schedules_by_hand(tmp_path):
    warm = lr_schedule(0.2, "linear", total_steps=10)
    # floor(0.2 * 10) = 2 warmup steps rise to the peak, then linear decay over the other 8.
    assert [warm(step) for step in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 7 / 8])
    assert warm(10) == pytest.approx(0.0)
    cosine = lr_schedule(0.0, "cosine", total_steps=4)
    assert [cosine(step) for step in range(5)] == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    constant = lr_schedule(0.0, "constant", total_steps=4)
    assert {constant(step) for step in range(4)} == {1.0}


def test_optimizer_steps_by_hand(tmp_path):
    # 10 samples, micro 4 -> 3 micro batches an epoch; 2 epochs -> 6; accumulation 4 -> 1 step (2 left over).
    assert optimizer_steps(10, plan(tmp_path, micro_batch_size=4, epochs=2, gradient_accumulation_steps=4).train) == 1
    assert optimizer_steps(10, plan(tmp_path, micro_batch_size=4, epochs=2, gradient_accumulation_steps=1).train) == 6


def test_every_rank_gets_its_own_rows_and_the_same_count():
    import pyarrow as pa

    from dsw_ray.train_worker import shard

    rows = pa.table({"i": list(range(11))})
    shards = [shard(rows, rank, 3)["i"].to_pylist() for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 9 and 10 would give ranks unequal step counts


def test_each_epoch_visits_every_row_once_in_its_own_seeded_order():
    from dsw_ray.train_worker import micro_batches

    epochs = [micro_batches(10, 4, seed=0, epoch=epoch) for epoch in range(3)]
    for batches in epochs:
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(i for b in batches for i in b) == list(range(10))
    assert len({tuple(i for b in batches for i in b) for batches in epochs}) == 3, "the order changes every epoch"
    assert micro_batches(10, 4, seed=0, epoch=1) == epochs[1], "a resumed epoch repeats its order"
    assert micro_batches(10, 4, seed=1, epoch=1) != epochs[1]


def test_a_checkpoint_is_sized_before_it_is_written_and_a_full_disk_is_a_clear_error(tmp_path):
    """An epoch checkpoint holds the saved weights and AdamW's fp32 copy and two moments (12
    bytes) per trainable parameter, partitioned across ranks above ZeRO stage 0; with LoRA
    only the trainable weights are saved."""
    layer = torch.nn.Linear(10, 10)  # 110 fp32 parameters
    engine = types.SimpleNamespace(module=layer)
    assert checkpoint_bytes(engine, False, 0, 4) == 110 * 4 + 110 * 12
    assert checkpoint_bytes(engine, False, 2, 4) == 110 * 4 + 110 * 12 // 4
    layer.weight.requires_grad_(False)
    assert checkpoint_bytes(engine, True, 0, 1) == 10 * 4 + 10 * 12
    require_space(str(tmp_path), 1, "epoch 1's checkpoint")
    with pytest.raises(UserError, match=rf"epoch 1's checkpoint needs about .* GiB in {tmp_path}, which has .* GiB free.*TMPDIR"):
        require_space(str(tmp_path), 2**60, "epoch 1's checkpoint")
