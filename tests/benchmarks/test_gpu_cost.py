"""Model FLOPs, MFU and the GPU round projection (benchmarks/gpu_cost.py), the GPU proof kit's
tables, and bench's use of a proof run."""

import importlib.util
import json
import os
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import gpu_cost
from dsw_bench import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA_32_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
               "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True}


def load_kit():
    spec = importlib.util.spec_from_file_location("gpu_proof", os.path.join(ROOT, "benchmarks", "gpu_proof.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def linear_parameters(config: dict) -> int:
    """Weights of every nn.Linear of a real (meta-device) Llama: what its matmuls multiply by."""
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("config", [
    LLAMA_32_1B,
    {**gpu_cost.LLAMA3_8B, "tie_word_embeddings": False},
    # head_dim apart from hidden / heads, grouped-query attention, a tiny vocabulary
    {"hidden_size": 96, "intermediate_size": 200, "num_hidden_layers": 3, "num_attention_heads": 4,
     "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 300},
])
def test_matmul_parameters_are_the_linear_weights_of_the_real_model(config):
    assert gpu_cost.matmul_parameters(config) == linear_parameters(config)


def test_llama_32_1b_has_its_published_size():
    # 1.24 B parameters with the tied embedding counted once; the norms are the rest.
    norms = (2 * 16 + 1) * 2048
    assert gpu_cost.matmul_parameters(LLAMA_32_1B) + norms == 1_235_814_400


def test_flops_per_token_follow_the_palm_accounting():
    config = LLAMA_32_1B
    n = gpu_cost.matmul_parameters(config)
    attention_per_context_token = 4 * 16 * 32 * 64
    assert gpu_cost.flops_per_token(config, 0) == 2 * n
    assert gpu_cost.flops_per_token(config, 100) == 2 * n + 100 * attention_per_context_token
    assert gpu_cost.flops_per_token(config, 100, "train") == 3 * gpu_cost.flops_per_token(config, 100)
    assert gpu_cost.flops_per_token(config, 100, "lora") == 2 * gpu_cost.flops_per_token(config, 100)
    assert gpu_cost.sequence_flops(config, [10, 20]) == 10 * gpu_cost.flops_per_token(config, 10) + 20 * gpu_cost.flops_per_token(config, 20)


def test_utilisation_and_peaks():
    assert gpu_cost.utilisation(989.4e12, 2.0, 989.4) == pytest.approx(0.5)
    assert gpu_cost.utilisation(1e12, 1.0, None) is None
    assert gpu_cost.peak_tflops("NVIDIA H200") == 989.4
    assert gpu_cost.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_cost.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_cost.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_cost.peak_tflops("Tesla T4") is None


def proof(decode_mfu=0.05, score_mfu=0.4, train_mfu=0.3, drop=None) -> dict:
    results = [
        {"name": "generate/realistic", "status": "ok", "mfu": 0.2, "decode_mfu": decode_mfu},
        {"name": "score/realistic", "status": "ok", "mfu": score_mfu},
        {"name": "train/realistic/lora_zero2", "status": "ok", "mfu": train_mfu},
    ]
    return {"date": "2026-12-01", "machine": {"gpu": "NVIDIA H200"}, "peak_tflops": {"value": 989.4},
            "models": {"realistic": {"name": "Llama-3.2-1B layout, random"}},
            "results": [r for r in results if r["name"] != drop]}


def test_projection_without_a_proof_is_the_documented_assumption():
    projection = gpu_cost.gpu_projection(None)
    assert projection["rates_source"].startswith("assumed") and projection["rates"] == gpu_cost.ASSUMED_RATES
    one_node = projection["projection"][0]
    # docs/benchmarks.md's table: 378 s generate, 75 s score, 718 s train, 1,481 s a round on one node
    assert (round(one_node["generate_s"]), round(one_node["score_s"]), round(one_node["train_s"])) == (378, 75, 718)
    assert round(one_node["round_s"]) == 1481


def test_projection_rests_on_the_measured_utilisation():
    projection = gpu_cost.gpu_projection(proof())
    assert projection["rates_source"].startswith("measured") and "NVIDIA H200" in projection["rates_source"]
    rates, peak, model = projection["rates"], 989.4e12, gpu_cost.LLAMA3_8B
    assert rates["train_tokens_per_s"] == pytest.approx(0.3 * peak / gpu_cost.flops_per_token(model, 200, "lora"))
    assert rates["score_tokens_per_s"] == pytest.approx(0.4 * peak / gpu_cost.flops_per_token(model, 200))
    assert rates["decode_tokens_per_s"] == pytest.approx(0.05 * peak / gpu_cost.flops_per_token(model, 965))
    # Twice the training MFU halves the training time.
    faster = gpu_cost.gpu_projection(proof(train_mfu=0.6))
    assert faster["projection"][0]["train_s"] == pytest.approx(projection["projection"][0]["train_s"] / 2)


@pytest.mark.parametrize("broken", [proof(drop="train/realistic/lora_zero2"), proof(score_mfu=None),
                                    {**proof(), "peak_tflops": {"value": None}}])
def test_a_proof_without_usable_rates_falls_back_to_the_assumptions_and_says_why(broken):
    projection = gpu_cost.gpu_projection(broken)
    assert projection["rates"] == gpu_cost.ASSUMED_RATES
    assert projection["rates_source"].startswith("assumed (the GPU proof has no usable rates")


def test_load_proof_reads_a_file_or_gives_none(tmp_path):
    assert gpu_cost.load_proof(None) is None and gpu_cost.load_proof(str(tmp_path / "absent.json")) is None
    (tmp_path / "p.json").write_text(json.dumps(proof()))
    assert gpu_cost.load_proof(str(tmp_path / "p.json")) == proof()


def test_bench_table_shows_the_gpu_projection_and_its_source():
    with open(os.path.join(ROOT, "docs", "bench.json")) as f:
        result = json.load(f)
    result["cost_model"]["gpu_nodes"] = gpu_cost.gpu_projection(proof())
    table = markdown_table(result)
    assert "GPU nodes: a paper-sized round" in table and "measured: MFU of Llama-3.2-1B layout" in table
    assert "| 32 |" in table.split("GPU nodes")[1]


def test_kit_tables_show_every_part_and_list_failed_checks():
    kit = load_kit()
    result = {
        "size": "tiny", "dtype": "float32", "machine": {"device_name": "CPU (2 cores)"},
        "peak_tflops": {"value": None, "source": "CPU: no MFU"},
        "results": [
            {"name": "train/realistic/zero2", "status": "ok", "seconds": 3.0, "tokens_per_s": 1234.5,
             "samples_per_s": 20.0, "mfu": None, "peak_memory_mb": 600.0, "heldout_before": 6.9, "heldout_after": 5.5,
             "export_heldout": 5.5},
            {"name": "train/realistic/zero3", "status": "error", "seconds": 1.0, "error": "Traceback ..."},
            {"name": "generate/toy", "status": "ok", "seconds": 2.0, "questions_per_call": 8, "samples_per_question": 4,
             "max_new_tokens": 8, "candidates_per_s": 30.0, "new_tokens_per_s": 240.0, "limit": {"tokens_per_s": 9000.0},
             "new_tokens_vs_limit": 0.027, "mfu": None, "decode_mfu": None, "first_call_s": 0.3},
            {"name": "score/toy", "status": "ok", "seconds": 1.5, "tokens_per_s": 30000.0, "limit": {"tokens_per_s": 90000.0},
             "fraction_of_limit": 0.33, "mfu": None,
             "bf16_vs_float32": {"mean_relative_difference": 0.004, "kept_set_agreement": 0.96}},
        ],
        "checks": [
            {"part": "train/realistic/zero2", "check": "held-out loss falls", "passed": True, "detail": "6.9 -> 5.5"},
            {"part": "train/realistic/zero3", "check": "ran", "passed": False, "detail": "RuntimeError: boom"},
            {"part": "score/toy", "check": "bf16 losses near float32", "passed": True, "detail": "0.004"},
        ],
    }
    table = kit.markdown_tables(result)
    assert "| train/realistic/zero2 | ok | 3 | 1,234 | 20 | - | 600 | 6.900 -> 5.500 | 0.0e+00 | pass |" in table
    assert "| train/realistic/zero3 | error | 1 |" in table and "| generate/toy | ok | 2 | 8 x 4, 8 | 30 |" in table
    assert "| score/toy | ok | 1.5 | 30,000 | 90,000 | 0.33 | - | 4.00e-03, 0.960 | pass |" in table
    assert "| train | status | part s |" in table and "| generate | status |" in table
    assert "2 of 3 checks passed:" in table and "- FAIL train/realistic/zero3: ran (RuntimeError: boom)" in table


def test_padded_tokenizer_keeps_the_encoding_and_decodes_every_id(tiny_model):
    from dsw_ray.models import load_tokenizer

    kit = load_kit()
    tokenizer = load_tokenizer(tiny_model)
    padded = kit.padded_tokenizer(tokenizer, 1000)
    assert len(padded) == 1000 and padded.eos_token_id == tokenizer.eos_token_id
    text = "Q: Mia has 12 apples.\nA: 12 + 7 = 19. The answer is 19."
    assert padded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert padded.decode([999]) == "<|filler_999|>"
