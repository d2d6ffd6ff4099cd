"""Everything around the vLLM engine, without vLLM: engine arguments, sampling parameters,
the mapping of its outputs to our rows, LoRA naming per round, and the config's checks."""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from dsw_ray import columns as C
import yaml

from dsw_ray.config import JobConfig, load_job
from dsw_ray.errors import ConfigError
from dsw_ray.decoding import OUTPUT_COLUMNS, Decoding, requests, sample_seed
from dsw_ray.generate import TransformersGenerator
from dsw_ray.models import STOPS, ModelSpec, load_tokenizer
from dsw_ray.prompting import Prompter
from dsw_ray.tasks import get_task
from dsw_ray.vllm_backend import (
    completion,
    engine_args,
    lora_adapter,
    placement,
    pool_settings,
    sampling_params,
    served_lora_rank,
)


def vllm_job(**generate) -> JobConfig:
    return JobConfig.model_validate(
        {
            "run_dir": "runs/x",
            "task": {"name": "arith"},
            "model": {"path": "/models/base", "dtype": "bfloat16"},
            "generate": {"backend": "vllm", "gpus_per_actor": 1, **generate},
        }
    )


def request_output(text: str, prompt_len: int, tokens: int, finish_reason: str = "stop"):
    """The attributes of vllm.RequestOutput / CompletionOutput that the backend reads."""
    sample = SimpleNamespace(text=text, token_ids=list(range(tokens)), finish_reason=finish_reason)
    return SimpleNamespace(prompt_token_ids=list(range(prompt_len)), outputs=[sample])


def test_importing_the_package_never_imports_vllm():
    code = (
        "import sys, dsw_ray, dsw_ray.pipeline, dsw_ray.vllm_backend, dsw_ray.cli; "
        "assert 'vllm' not in sys.modules, 'vllm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_args_from_the_job():
    job = vllm_job(
        vllm={
            "tensor_parallel_size": 4,
            "gpu_memory_utilization": 0.8,
            "max_model_len": 2048,
            "engine_kwargs": {"kv_cache_dtype": "fp8"},
        }
    )
    args = engine_args(ModelSpec("/models/base", job.model.dtype), 7, job.generate.vllm.model_dump(), None)
    assert args == {
        "model": "/models/base",
        "tokenizer": "/models/base",
        "dtype": "bfloat16",
        "seed": 7,
        "trust_remote_code": False,
        "tensor_parallel_size": 4,
        "gpu_memory_utilization": 0.8,
        "enforce_eager": False,
        "load_format": "safetensors",
        "max_model_len": 2048,
        "kv_cache_dtype": "fp8",
        "distributed_executor_backend": "ray",
    }
    one_gpu = engine_args(ModelSpec("/m", "float16", True), 0, vllm_job().generate.vllm.model_dump(), None)
    assert "distributed_executor_backend" not in one_gpu and "max_model_len" not in one_gpu
    assert one_gpu["trust_remote_code"] is True


def test_on_cpu_the_engine_gets_a_kv_cache_of_a_fixed_size():
    cpu_job = JobConfig.model_validate(
        {"run_dir": "r", "task": {"name": "arith"}, "model": {"path": "/m"}, "generate": {"backend": "vllm"}}
    )
    engine = cpu_job.generate.vllm.model_dump()
    assert placement(cpu_job.generate) == {"num_gpus": 0}
    assert pool_settings(cpu_job.generate) == ({"engine": engine, "on_gpu": False}, {"num_gpus": 0})
    assert pool_settings(vllm_job().generate)[0]["on_gpu"] is True
    assert engine_args(ModelSpec("/m"), 0, engine, None, on_gpu=False)["kv_cache_memory_bytes"] == 256 << 20
    assert "kv_cache_memory_bytes" not in engine_args(ModelSpec("/m"), 0, engine, None, on_gpu=True)
    assert engine_args(ModelSpec("/m"), 0, engine, None, on_gpu=False)["enable_chunked_prefill"] is False
    assert "enable_chunked_prefill" not in engine_args(ModelSpec("/m"), 0, engine, None, on_gpu=True)
    sized = {**engine, "kv_cache_memory_bytes": 64 << 20}
    assert engine_args(ModelSpec("/m"), 0, sized, None, on_gpu=False)["kv_cache_memory_bytes"] == 64 << 20


def test_a_model_with_narrow_heads_is_refused_on_cpu(tiny_model):
    """The tests' tiny model has heads 16 wide; vLLM's CPU attention fails on them mid-stage."""
    from dsw_ray.vllm_backend import check_cpu_model

    with pytest.raises(ValueError, match="heads of width 16; vLLM on CPU needs at least 32"):
        check_cpu_model(tiny_model, False)


def test_a_loss_from_prompt_logprobs_averages_the_labeled_tokens_only():
    from dsw_ray.sft import IGNORE
    from dsw_ray.vllm_backend import sequence_loss

    logprob = lambda value: SimpleNamespace(logprob=value)  # noqa: E731
    token_ids = [5, 6, 7, 8]
    prompt_logprobs = [None, {6: logprob(-0.5)}, {7: logprob(-1.0), 1: logprob(-0.1)}, {8: logprob(-2.0)}]
    # The prompt (5, 6) is not a target; 7 and 8 are: (1.0 + 2.0) / 2.
    assert sequence_loss(token_ids, [IGNORE, IGNORE, 7, 8], prompt_logprobs) == pytest.approx(1.5)
    # loss_on: full: every token after the first.
    assert sequence_loss(token_ids, token_ids, prompt_logprobs) == pytest.approx(3.5 / 3)
    assert sequence_loss(token_ids, [IGNORE] * 4, prompt_logprobs) == 0.0


def test_sampling_params_one_request_per_candidate_with_its_own_seed():
    seeds = [sample_seed(0, 1, "q-0", i) for i in range(3)]
    params = sampling_params(seeds, Decoding(64, 1.1, 3, 0.95))
    assert [p["seed"] for p in params] == seeds
    assert all(p["n"] == 1 and p["temperature"] == 1.1 and p["top_p"] == 0.95 for p in params)
    assert all(p["max_tokens"] == 64 and p["stop"] == list(STOPS) for p in params)
    greedy = sampling_params(seeds[:1], Decoding(32))
    assert greedy == [{"n": 1, "max_tokens": 32, "stop": list(STOPS), "skip_special_tokens": True, "temperature": 0.0}]


def test_outputs_become_the_transformers_backends_rows(tiny_model):
    """The same columns, types and keys as the transformers backend, from vLLM-shaped outputs."""
    batch = {
        C.QUESTION_ID: np.array(["q-0", "q-1"]),
        C.QUESTION: np.array(["What is 2 + 3?", "What is 4 * 5?"]),
        C.GOLD: np.array(["5", "20"]),
    }
    decoding = Decoding(8, temperature=1.0, samples=2, round_index=1)
    reference = TransformersGenerator(ModelSpec(tiny_model), get_task("arith"), decoding)(batch)

    prompter = Prompter(load_tokenizer(tiny_model), get_task("arith"))
    _, _, seeds = requests(batch, prompter, decoding)
    from dsw_ray.decoding import candidate_rows

    outputs = [request_output(f" 2 + 3 = 5. The answer is {i}. ", 40, 9, "stop") for i in range(3)]
    outputs.append(request_output("4 * 5 =", 41, 8, "length"))
    rows = candidate_rows(batch, ["q-0", "q-1"], 2, seeds, [completion(o) for o in outputs])

    assert list(rows) == list(reference) == list(OUTPUT_COLUMNS)
    for name in OUTPUT_COLUMNS:
        assert {type(v) for v in rows[name]} == {type(v) for v in reference[name]}, name
    assert rows[C.QUESTION_ID] == reference[C.QUESTION_ID] == ["q-0", "q-0", "q-1", "q-1"]
    assert rows[C.SAMPLE_INDEX] == reference[C.SAMPLE_INDEX] == [0, 1, 0, 1]
    assert rows[C.SEED] == reference[C.SEED]
    assert rows[C.TEXT][0] == "2 + 3 = 5. The answer is 0."
    assert rows[C.PROMPT_TOKENS] == [40, 40, 40, 41]
    assert rows[C.COMPLETION_TOKENS] == [9, 9, 9, 8]
    assert rows[C.FINISH_REASON] == ["stop", "stop", "stop", "length"]


def test_an_aborted_request_or_a_missing_output_is_an_error():
    with pytest.raises(RuntimeError, match="abort"):
        completion(request_output("x", 3, 1, "abort"))
    from dsw_ray.decoding import candidate_rows

    batch = {C.QUESTION_ID: np.array(["q"]), C.QUESTION: np.array(["What is 1 + 1?"])}
    with pytest.raises(RuntimeError, match="1 completions for 1 x 2"):
        candidate_rows(batch, ["q"], 2, [1, 2], [completion(request_output("x", 3, 1))])


def save_adapter(base_model: str, export: str, rank: int) -> None:
    """What the train stage writes beside a LoRA export: peft's adapter folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_model), LoraConfig(r=rank, target_modules=["q_proj", "v_proj"])
    )
    model.save_pretrained(os.path.join(export, "adapter"))


def test_lora_adapter_is_named_by_round_and_method(tiny_model, tmp_path):
    round_2 = tmp_path / "run" / "round-1" / "iwsi" / "train" / "model"
    round_3 = tmp_path / "run" / "round-2" / "iwsi" / "train" / "model"
    save_adapter(tiny_model, str(round_2), 16)
    save_adapter(tiny_model, str(round_3), 16)
    first, second = lora_adapter(str(round_2)), lora_adapter(str(round_3))
    assert first["name"] == "round-1/iwsi" and second["name"] == "round-2/iwsi"
    assert first["base"] == tiny_model and first["rank"] == 16
    assert first["path"] == str(round_2 / "adapter")
    assert first["id"] != second["id"] and 0 < first["id"] < 2**31
    assert lora_adapter(str(round_2))["id"] == first["id"]  # stable across processes and reruns
    assert lora_adapter(tiny_model) is None  # a merged-only model serves its own weights

    job = vllm_job(vllm={"serve_lora": True})
    args = engine_args(ModelSpec(str(round_2), "bfloat16"), 0, job.generate.vllm.model_dump(), first)
    assert args["model"] == tiny_model and args["tokenizer"] == str(round_2)
    assert (args["enable_lora"], args["max_loras"], args["max_lora_rank"]) == (True, 1, 16)


def test_lora_adapter_whose_base_is_gone(tiny_model, tmp_path):
    import json

    export = tmp_path / "round-1" / "iwsi" / "train" / "model"
    save_adapter(tiny_model, str(export), 8)
    config_path = export / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved")
    config_path.write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="serve the merged weights"):
        lora_adapter(str(export))


def test_served_lora_rank_rounds_up():
    assert [served_lora_rank(r) for r in (1, 2, 8, 9, 64, 65, 500)] == [1, 8, 8, 16, 64, 128, 512]
    with pytest.raises(ValueError):
        served_lora_rank(1024)


def test_placement_one_gpu_or_a_tensor_parallel_group():
    assert placement(vllm_job().generate) == {"num_gpus": 1}
    assert placement(vllm_job(gpus_per_actor=0.5).generate) == {"num_gpus": 0.5}
    tensor_parallel = placement(vllm_job(vllm={"tensor_parallel_size": 2}).generate)
    assert tensor_parallel["num_gpus"] == 0 and tensor_parallel["ray_remote_args_fn"].args == (2,)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"generate": {"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}}, "tensor_parallel_size > 1 needs GPUs"),
        (
            {"generate": {"backend": "vllm", "gpus_per_actor": 2, "vllm": {"tensor_parallel_size": 2}}},
            "gpus_per_actor is per rank",
        ),
        (
            {"generate": {"backend": "vllm", "gpus_per_actor": 1, "vllm": {"engine_kwargs": {"seed": 3}}}},
            r"engine_kwargs sets \['seed'\]",
        ),
        (  # pickle weights (load_format pt) stay out, as everywhere else
            {"generate": {"backend": "vllm", "gpus_per_actor": 1, "vllm": {"engine_kwargs": {"load_format": "pt"}}}},
            r"engine_kwargs sets \['load_format'\]",
        ),
        ({"evaluate": {"backend": "vllm", "vllm": {"kv_cache_memory_bytes": 1000}}}, "evaluate.vllm.kv_cache_memory_bytes"),
        ({"generate": {"backend": "vlm"}}, "generate.backend"),
        ({"semantics": "official", "score": {"backend": "vllm"}}, "score.backend vllm scores with semantics: paper only"),
        ({"generate": {"backend": "vllm", "gpus_per_actor": 1, "temperature": 2.5}}, "temperatures up to 2"),
        (
            {"evaluate": {"backend": "vllm", "gpus_per_actor": 1, "vllm": {"serve_lora": True}}},
            "evaluate.vllm.serve_lora needs model.dtype bfloat16",
        ),
        (
            {"model": {"path": "m", "dtype": "bfloat16"}, "score": {"backend": "vllm", "vllm": {"serve_lora": True}}},
            "score.vllm.serve_lora needs GPUs",
        ),
    ],
)
def test_bad_vllm_settings_are_config_errors(tmp_path, section, message):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "r", "task": {"name": "arith"}, "model": {"path": "m"}, **section}))
    with pytest.raises(ConfigError, match=message):
        load_job(str(path))
