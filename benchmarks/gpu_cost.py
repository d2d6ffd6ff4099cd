"""Model FLOPs, GPU peaks and the projection of a paper-sized round onto N GPU nodes.

Plain arithmetic on a model's config (a ``config.json`` dict): ``benchmarks/gpu_proof.py``
uses it for model FLOPs utilisation (MFU), ``dsw-ray bench`` for its GPU cost model. The
projection's per-GPU rates come from a GPU proof run (``docs/gpu_proof.json``) when there
is one, else from the assumptions below, and it says which.

FLOPs follow the PaLM paper's accounting (appendix B): a forward pass costs ``2 N`` per
token for the ``N`` parameters of its matrix multiplications (every projection and the
LM head; the embedding lookup is free) plus ``4 L H Q T`` for attention at context ``T``
(``L`` layers, ``H`` heads of size ``Q``; the causal mask's halving is not taken). Full
training is three forwards (the backward computes gradients for activations and weights);
LoRA training is two (the frozen weights get no gradient; the adapters' share is small).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, in TFLOP/s, matched
# against torch.cuda.get_device_name in this order.
PEAK_BF16_TFLOPS = (
    ("H200", 989.4),  # H200 SXM and GH200 (H100's tensor cores, more memory)
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM
    ("A100", 312.0),
)
PASSES = {"forward": 1, "train": 3, "lora": 2}


def peak_tflops(device_name: str) -> float | None:
    """The bf16 peak of a GPU by its name, None for one not in ``PEAK_BF16_TFLOPS``."""
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in device_name), None)


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def matmul_parameters(config: dict) -> int:
    """Parameters of a Llama-style decoder's matrix multiplications: q, k, v, o, the gated
    MLP's three, and the LM head (counted once when tied to the embedding, since the
    lookup costs nothing)."""
    d, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    attention = d * head_dim(config) * (2 * heads + 2 * kv_heads)
    mlp = 3 * d * config["intermediate_size"]
    return config["num_hidden_layers"] * (attention + mlp) + d * config["vocab_size"]


def flops_per_token(config: dict, context: float, mode: str = "forward") -> float:
    """Model FLOPs of one token at ``context`` tokens of attention; ``mode`` is ``forward``,
    ``train`` (full fine-tuning) or ``lora``."""
    attention = 4 * config["num_hidden_layers"] * config["num_attention_heads"] * head_dim(config) * context
    return PASSES[mode] * (2 * matmul_parameters(config) + attention)


def sequence_flops(config: dict, lengths, mode: str = "forward") -> float:
    """Model FLOPs of whole sequences of ``lengths`` tokens (each token attends to its sequence)."""
    return sum(length * flops_per_token(config, length, mode) for length in lengths)


def utilisation(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (TFLOP/s); None without a peak."""
    return flops / seconds / (peak * 1e12) if peak and seconds > 0 else None


# ---- a paper-sized round on N GPU nodes -----------------------------------------------------

# Llama-3-8B, the paper's model (its config.json, the fields FLOPs need).
LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256}


@dataclass(frozen=True)
class RoundWork:
    """The paper's gsm8k round (jobs/gsm8k_llama3_8b.yaml), in tokens."""

    questions: int = 7099
    samples: int = 15  # m
    new_tokens: int = 130  # per candidate
    prompt_tokens: int = 900  # the 8-shot prompt, prefilled once per question
    majority: float = 0.7  # share of candidates in the majority (scored)
    text_tokens: int = 200  # one scored or trained text
    keep: float = 0.8
    epochs: int = 4  # the authors' code; LoRA


# Per-GPU rates and fixed costs assumed without a GPU measurement (docs/benchmarks.md says why).
ASSUMED_RATES = {"decode_tokens_per_s": 5000.0, "prefill_tokens_per_s": 25000.0, "score_tokens_per_s": 25000.0,
                 "train_tokens_per_s": 8300.0}
FIXED_S = {"ray_start": 10.0, "generate": 120.0, "score": 60.0, "train": 120.0}
GPUS_PER_NODE = 8
NODES = (1, 2, 4, 8, 16, 32)


def measured_rates(proof: dict, model: dict = LLAMA3_8B, work: RoundWork = RoundWork()) -> dict:
    """Per-GPU rates for ``model`` from a GPU proof run: each stage's measured MFU on the proof's
    realistic model, held at the same value for ``model`` (compute-bound work scales with FLOPs
    per token; decoding at a fixed batch reads every weight once per step, so its time per
    token scales with the parameters too). Raises KeyError or ValueError for a proof that
    lacks a measurement."""
    peak = proof["peak_tflops"]["value"]
    if not peak:
        raise ValueError("the proof has no bf16 peak for its GPU")
    measured = {r["name"]: r for r in proof["results"]}
    decode = measured["generate/realistic"]
    score = measured["score/realistic"]
    train = measured["train/realistic/lora_zero2"]
    for result, key in ((decode, "decode_mfu"), (score, "mfu"), (train, "mfu")):
        if result.get(key) is None:
            raise ValueError(f"{result['name']} has no {key}")
    # A decoded token attends to the prompt and, on average, half the new tokens.
    at = lambda context, mode="forward": flops_per_token(model, context, mode)  # noqa: E731
    scale = peak * 1e12
    return {
        "decode_tokens_per_s": decode["decode_mfu"] * scale / at(work.prompt_tokens + work.new_tokens / 2),
        "prefill_tokens_per_s": score["mfu"] * scale / at(work.prompt_tokens),
        "score_tokens_per_s": score["mfu"] * scale / at(work.text_tokens),
        "train_tokens_per_s": train["mfu"] * scale / at(work.text_tokens, "lora"),
    }


def gpu_projection(proof: dict | None, model: dict = LLAMA3_8B, work: RoundWork = RoundWork()) -> dict:
    """Generate, score and train seconds of ``work`` on N nodes of 8 GPUs, ``T = F + W / (8 N r)``,
    with the rates of ``proof`` (a gpu_proof.json result) when it has them, else ``ASSUMED_RATES``;
    ``rates_source`` says which and why."""
    rates, source = ASSUMED_RATES, "assumed (no GPU proof given)"
    if proof is not None:
        try:
            rates = measured_rates(proof, model, work)
            machine = proof["machine"]
            source = (f"measured: MFU of {proof['models']['realistic']['name']} on {machine['gpu']} "
                      f"({proof['date']}, {proof['peak_tflops']['value']} TFLOP/s bf16 peak), held for Llama-3-8B")
        except (KeyError, ValueError, TypeError) as error:
            source = f"assumed (the GPU proof has no usable rates: {error!r})"
    candidates = work.questions * work.samples
    scored = candidates * work.majority
    tokens = {
        "decode": candidates * work.new_tokens,
        "prefill": work.questions * work.prompt_tokens,
        "score": scored * work.text_tokens,
        "train": scored * work.keep * work.text_tokens * work.epochs,
    }
    rows = []
    for nodes in NODES:
        gpus = GPUS_PER_NODE * nodes
        generate = tokens["decode"] / (gpus * rates["decode_tokens_per_s"]) + tokens["prefill"] / (
            gpus * rates["prefill_tokens_per_s"])
        score = tokens["score"] / (gpus * rates["score_tokens_per_s"])
        train = tokens["train"] / (gpus * rates["train_tokens_per_s"])
        round_s = generate + score + train + sum(FIXED_S.values())
        rows.append({"nodes": nodes, "generate_s": generate, "score_s": score, "train_s": train, "round_s": round_s,
                     "candidates_per_s_generate": candidates / (generate + FIXED_S["generate"])})
    return {"rates_source": source, "rates": rates, "fixed_s": FIXED_S, "work": asdict(work),
            "gpus_per_node": GPUS_PER_NODE, "projection": rows}


def load_proof(path: str | None) -> dict | None:
    """A gpu_proof.json result, or None when ``path`` is None or missing."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def projection_table(projection: dict) -> str:
    """The projection as markdown, with its rates and where they come from."""
    r = projection["rates"]
    lines = [
        f"Per-GPU rates, {projection['rates_source']}: decode {r['decode_tokens_per_s']:,.0f}, prefill "
        f"{r['prefill_tokens_per_s']:,.0f}, score {r['score_tokens_per_s']:,.0f}, LoRA train "
        f"{r['train_tokens_per_s']:,.0f} tokens/s; fixed {sum(projection['fixed_s'].values()):.0f} s a round.",
        "",
        f"| nodes ({projection['gpus_per_node']} GPUs each) | generate s | score s | train s | round s | candidates/s in generate |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {p['nodes']} | {p['generate_s']:,.0f} | {p['score_s']:,.0f} | {p['train_s']:,.0f} | {p['round_s']:,.0f} "
          f"| {p['candidates_per_s_generate']:,.0f} |" for p in projection["projection"]],
    ]
    return "\n".join(lines)
