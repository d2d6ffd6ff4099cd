"""The DeepSpeed config a fine-tune's settings imply: pure data, read by the train section's
validation (a raw ``deepspeed`` dict that contradicts the settings is a config error) and by
every training worker.

>>> deepspeed_config({"dtype": "float32", "zero_stage": 2, "offload_optimizer": False, "offload_params": False,
...                   "micro_batch_size": 4, "gradient_accumulation_steps": 2, "max_grad_norm": 1.0}, 2)["train_batch_size"]
16
"""

from __future__ import annotations


# DeepSpeed keys that the typed training settings own: a raw `deepspeed` dict may repeat
# them only with the same value, so the step count we promise is the one DeepSpeed makes.
OWNED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping")


def merge(base: dict, extra: dict) -> dict:
    """``extra`` laid over ``base``, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def deepspeed_config(settings: dict, world_size: int) -> dict:
    """The DeepSpeed config the training settings imply, with the raw ``deepspeed`` dict
    merged over it. Batch sizes and accumulation agree by construction; a raw dict that
    contradicts them (or asks for a different ZeRO stage) is rejected."""
    dtype = settings["dtype"]
    zero = {"stage": settings["zero_stage"]}
    if settings["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": settings["use_gpu"]}
    if settings["offload_params"]:
        zero["offload_param"] = {"device": "cpu", "pin_memory": settings["use_gpu"]}
    config = {
        "train_micro_batch_size_per_gpu": settings["micro_batch_size"],
        "gradient_accumulation_steps": settings["gradient_accumulation_steps"],
        "train_batch_size": settings["micro_batch_size"] * settings["gradient_accumulation_steps"] * world_size,
        "gradient_clipping": settings["max_grad_norm"],
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        # torch's AdamW is our optimizer without offload; DeepSpeed supports it but does not list it as tested.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    extra = settings.get("deepspeed") or {}
    for key in OWNED_KEYS:
        if key in extra and extra[key] != config[key]:
            raise ValueError(f"train.deepspeed.{key} = {extra[key]!r} contradicts the train settings, which imply {config[key]!r}.")
    stage = extra.get("zero_optimization", {}).get("stage", zero["stage"])
    if stage != zero["stage"]:
        raise ValueError(f"train.deepspeed.zero_optimization.stage = {stage} contradicts train.zero_stage = {zero['stage']}.")
    return merge(config, extra)
