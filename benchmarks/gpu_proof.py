"""GPU proof kit: shows that dsw-ray's GPU path works, and measures how fast it is.

    python benchmarks/gpu_proof.py --size full --out gpu_proof.json      # one GPU, about 6 minutes
    python benchmarks/gpu_proof.py --size tiny --out /tmp/gpu_proof.json  # CPU, float32: what CI runs

No Ray: it calls the stages' own code in this one process. Training is ``train_worker.train_worker``
at world size 1 (DeepSpeed over a single-process NCCL group on a GPU, gloo on CPU);
generation is ``generate.TransformersGenerator`` at the generate stage's default batch
settings; scoring is ``score.Scorer`` and ``score.LossModel``. Two models: a randomly
initialised Llama of realistic shape (``full``: the Llama-3.2-1B layout, 1.24 B parameters;
``tiny``: a few thousand) with the toy model's tokenizer padded to its vocabulary, and the
quickstart's toy model. On a GPU everything runs in bf16; on a CPU in float32 (training)
and both (the bf16 comparison).

Each part runs on its own (an error or an exhausted time budget fails its checks, the rest
still runs) and the JSON is rewritten after every part, so a run cut short keeps what it
measured. Checks: training's held-out loss falls, the optimizer makes the steps promised,
the exported model's held-out loss equals the worker's; bf16 scoring losses are close to
float32. Measures: tokens/s, model FLOPs utilisation (MFU, ``gpu_cost``) against
the GPU's dense bf16 peak, peak GPU memory, candidates/s and new tokens/s, the batched
forward limit of the device, scoring tokens/s as a fraction of it. Prints markdown tables
and the round projection these rates imply; exits 1 when a check fails. docs/gpu_proof.md
says how to carry it to a GPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
import traceback

REALISTIC_1B = {  # Llama-3.2-1B's config.json, the fields that shape the compute (RoPE's settings do not)
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
}
REALISTIC_TINY = {
    "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1024, "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 1024,
}
ENGINES = {
    "zero2": {"zero_stage": 2},
    "zero3": {"zero_stage": 3},
    "lora_zero2": {"zero_stage": 2, "lora": {"r": 16}},
    "lora_zero3": {"zero_stage": 3, "lora": {"r": 16}},
    "zero2_offload": {"zero_stage": 2, "offload_optimizer": True},
}


@dataclasses.dataclass(frozen=True)
class ProofSize:
    """How much work each part does."""

    realistic: dict  # LlamaConfig fields of the randomly initialised model
    toy: dict | None  # ToyModelConfig fields of a toy built for this run; None: the quickstart's toy
    train_rows: int  # gold rationales of arith questions
    offload_rows: int  # fewer for optimizer offload (CPU Adam steps over every parameter)
    heldout_rows: int
    micro_batch: int
    learning_rate: float  # full fine-tuning of the random model
    lora_learning_rate: float
    toy_learning_rate: float
    toy_epochs: int  # > 1: the epoch checkpoint is saved too
    generate_calls: int  # timed calls of the generator, after one warm-up call
    max_new_tokens: int | None  # None: the generate stage's default
    score_rows: int
    compare_rows: int  # scored in float32 and bf16
    limit_tokens: int  # the largest [B, L] forward of the limit
    budget_s: float  # parts that would start later are skipped (and fail)


SIZES = {
    "full": ProofSize(
        realistic=REALISTIC_1B, toy=None, train_rows=512, offload_rows=128, heldout_rows=32, micro_batch=8,
        learning_rate=3e-4, lora_learning_rate=1e-3, toy_learning_rate=2e-4, toy_epochs=2, generate_calls=2,
        max_new_tokens=None, score_rows=2048, compare_rows=256, limit_tokens=16384, budget_s=360,
    ),
    "tiny": ProofSize(
        realistic=REALISTIC_TINY,
        toy={"hidden_size": 32, "num_layers": 2, "num_heads": 2, "pretrain_examples": 300, "steps": 30, "batch_size": 8},
        train_rows=16, offload_rows=8, heldout_rows=8, micro_batch=4, learning_rate=3e-3, lora_learning_rate=1e-2,
        toy_learning_rate=3e-3, toy_epochs=2, generate_calls=1, max_new_tokens=8, score_rows=64, compare_rows=32,
        limit_tokens=2048, budget_s=240,
    ),
}
QUICKSTART_TOY = ".cache/dsw-ray/toy-arith"
# Tolerances of the checks: the export's held-out loss against the worker's (same weights,
# same batches; bf16 rounds a LoRA merge), and bf16 scoring losses against float32.
EXPORT_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
BF16_MEAN_RELATIVE_TOLERANCE = 0.02


# ---- set-up -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process_group(cuda: bool) -> str:
    """A process group of one (what Ray Train gives a worker): NCCL on a GPU, else gloo."""
    import torch
    import torch.distributed as dist

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group(backend)
    return backend


def padded_tokenizer(tokenizer, vocab_size: int):
    """``tokenizer`` with filler tokens up to ``vocab_size`` ids: a model with the real vocabulary's
    LM head can then sample any id and decode it. Fillers are vocabulary entries no merge
    produces, so the encoding of text is unchanged."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for token_id in range(max(vocab.values()) + 1, vocab_size):
        vocab[f"<|filler_{token_id}|>"] = token_id
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
    )


def build_realistic_model(path: str, shape: dict, toy_path: str, device: str, dtype: str) -> int:
    """A randomly initialised Llama of ``shape`` with the toy's tokenizer (padded to its
    vocabulary), saved in ``dtype`` as safetensors (the stages load it from disk); returns
    its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dsw_ray.models import load_tokenizer

    tokenizer = padded_tokenizer(load_tokenizer(toy_path), shape["vocab_size"])
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1 B parameters takes seconds on a GPU, a minute on a CPU
        model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    model.to(getattr(torch, dtype)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return parameters


def toy_model(size: ProofSize, path: str | None, work: str) -> str:
    """The toy: the quickstart's (built once, where the quickstart keeps it, unless ``path``
    names another build) or, at the tiny size, a smaller one built for this run."""
    from dsw_ray.config import ToyModelConfig
    from dsw_ray.toy import build_quickstart_toy, build_toy_model

    if size.toy is not None:
        return build_toy_model(path or os.path.join(work, "toy"), ToyModelConfig(**size.toy))
    return build_quickstart_toy(path or QUICKSTART_TOY)




# ---- parts ------------------------------------------------------------------------------

class Proof:
    """The run's state: models, data, results, checks; each part adds a result and checks."""

    def __init__(self, args, size: ProofSize, cuda: bool, work: str):
        from dsw_ray.tasks import SplitSizes, get_task

        self.args, self.size, self.cuda, self.work = args, size, cuda, work
        self.device = "cuda" if cuda else "cpu"
        self.dtype = "bfloat16" if cuda else "float32"  # what the stages run in here
        self.started = time.time()
        self.deadline = self.started + (size.budget_s if args.budget_s is None else args.budget_s)
        rows = size.train_rows + size.heldout_rows + size.score_rows
        examples = get_task("arith").load(None, SplitSizes(4, rows, 4, seed=17)).valid
        self.train_pairs = [(e.question, e.rationale) for e in examples[: size.train_rows]]
        self.heldout = [(e.question, e.rationale) for e in examples[size.train_rows : size.train_rows + size.heldout_rows]]
        self.score_examples = examples[size.train_rows + size.heldout_rows :]
        self.questions = get_task("arith").load(None, SplitSizes(64, 4, 4, seed=23)).questions
        self.models: dict[str, dict] = {}  # built on first use: a run of a few parts builds only theirs
        self.results: list[dict] = []
        self.checks: list[dict] = []
        self.base_heldout: dict[str, float] = {}

    def check(self, part: str, name: str, passed: bool, detail: str) -> None:
        self.checks.append({"part": part, "check": name, "passed": bool(passed), "detail": detail})

    def model_path(self, model: str) -> str:
        """``toy`` or ``realistic``, built (and described in ``self.models``) on first use."""
        import torch

        import gpu_cost

        if model not in self.models:
            started = time.time()
            if model == "toy":
                path, name, parameters = toy_model(self.size, self.args.toy, self.work), "toy (arith)", None
            else:
                path = os.path.join(self.work, "realistic")
                parameters = build_realistic_model(path, self.size.realistic, self.model_path("toy"), self.device, self.dtype)
                name = "Llama-3.2-1B layout, random" if self.size.realistic == REALISTIC_1B else "tiny Llama, random"
            with open(os.path.join(path, "config.json")) as f:
                config = json.load(f)
            if parameters is None:
                from transformers import AutoConfig, AutoModelForCausalLM

                with torch.device("meta"):  # counted without weights
                    parameters = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).num_parameters()
            self.models[model] = {
                "name": name, "path": path, "parameters": parameters, "build_s": time.time() - started,
                "matmul_parameters": gpu_cost.matmul_parameters(config),
                "config": {k: config.get(k) for k in REALISTIC_1B},
            }
        return self.models[model]["path"]

    def config(self, model: str) -> dict:
        with open(os.path.join(self.model_path(model), "config.json")) as f:
            return json.load(f)

    def run(self, name: str, part) -> None:
        """One part: its result (with its seconds) or its error; never raises."""
        import torch

        if time.time() > self.deadline:
            self.results.append({"name": name, "status": "skipped", "error": "the time budget was spent"})
            self.check(name, "ran", False, "skipped: the time budget was spent")
            return
        print(f"gpu_proof: {name}", flush=True)
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.time()
        try:
            result = {"name": name, "status": "ok", **part()}
        except Exception as error:  # a part's failure is a finding; the other parts still run
            result = {"name": name, "status": "error", "error": "".join(traceback.format_exception(error))[-3000:]}
            self.check(name, "ran", False, f"{type(error).__name__}: {error}"[:300])
        result["seconds"] = time.time() - started
        if self.cuda:
            result["peak_gpu_memory_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            result["gpu_memory_left_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        self.results.append(result)
        print(f"gpu_proof: {name}: {result['status']} in {result['seconds']:.1f} s", flush=True)

    # -- train

    def train_plan(self, model: str, engine: dict, epochs: int, learning_rate: float):
        from dsw_ray.config import JobConfig
        from dsw_ray.train import train_plan

        import torch

        path = self.model_path(model)
        train = {**engine, "use_gpu": self.cuda, "epochs": epochs, "micro_batch_size": self.size.micro_batch,
                 "learning_rate": learning_rate, "lr_schedule": "constant"}
        if "lora" in engine:
            train["lora"] = {**engine["lora"]}
        job = JobConfig.model_validate({"run_dir": "unused", "task": {"name": "arith"},
                                        "model": {"path": path, "dtype": self.dtype}, "train": train})
        return train_plan(job.train, job.model, path, threads=torch.get_num_threads(), heldout=self.heldout)

    def heldout_loss(self, path: str) -> float:
        """Mean held-out loss of a model directory, as the scorer computes it, in the batches the worker uses."""
        from dsw_ray.models import ModelSpec
        from dsw_ray.score import LossModel

        model = LossModel(ModelSpec(path, self.dtype))
        losses = model.losses([q for q, _ in self.heldout], [a for _, a in self.heldout], self.size.micro_batch)
        return float(losses.mean())

    def train(self, model: str, engine_name: str, rows: int, epochs: int, learning_rate: float):
        """``train_worker`` on ``rows`` training pairs; its metrics, rates and checks."""
        def part() -> dict:
            import pyarrow as pa

            import gpu_cost
            from dsw_ray.models import load_tokenizer
            from dsw_ray.sft import encode_example
            from dsw_ray.train_worker import train_worker

            name = f"train/{model}/{engine_name}"
            path = self.model_path(model)
            if model not in self.base_heldout:
                self.base_heldout[model] = self.heldout_loss(path)
            plan = self.train_plan(model, ENGINES[engine_name], epochs, learning_rate)
            pairs = self.train_pairs[:rows]
            table = pa.table({"question": [q for q, _ in pairs], "text": [a for _, a in pairs]})
            tokenizer = load_tokenizer(path)
            lengths = [len(encode_example(tokenizer, q, a, plan.train.max_length)["input_ids"]) for q, a in pairs]
            final = {}

            def report(metrics: dict, out_dir: str | None) -> None:
                if "parameter_digests" not in metrics:  # an epoch's checkpoint
                    return
                final["metrics"] = metrics
                with open(os.path.join(out_dir, "loss_history.json")) as f:
                    final["history"] = [h["loss"] for h in json.load(f)["history"]]
                final["export_heldout"] = self.heldout_loss(out_dir)

            if self.cuda:  # the worker's peak, not the model build's or the base loss's
                import torch

                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            started = time.time()
            train_worker(plan, table, report)
            wall = time.time() - started
            metrics, history = final["metrics"], final["history"]
            mode = "lora" if plan.train.lora else "train"
            flops = gpu_cost.sequence_flops(self.config(model), lengths, mode) * epochs
            quarter = max(1, len(history) // 4)
            before, after, exported = self.base_heldout[model], metrics["heldout_loss"], final["export_heldout"]
            tolerance = EXPORT_TOLERANCE[self.dtype] * max(1.0, abs(after))
            self.check(name, "held-out loss falls", after < before, f"{before:.4f} -> {after:.4f}")
            self.check(name, "optimizer steps", metrics["optimizer_steps"] == metrics["expected_optimizer_steps"],
                       f"{metrics['optimizer_steps']} of {metrics['expected_optimizer_steps']}")
            self.check(name, "export's loss is the worker's", abs(exported - after) <= tolerance,
                       f"export {exported:.5f}, worker {after:.5f}, tolerance {tolerance:.1e}")
            return {
                "model": model, "engine": engine_name, "settings": {**plan.train.model_dump(include={
                    "zero_stage", "offload_optimizer", "lora", "micro_batch_size", "epochs", "learning_rate"}),
                    "dtype": plan.model.dtype},
                "rows": rows, "tokens": sum(lengths) * epochs, "loop_s": metrics["loop_seconds"], "worker_s": wall,
                "tokens_per_s": sum(lengths) * epochs / metrics["loop_seconds"],
                "samples_per_s": rows * epochs / metrics["loop_seconds"],
                "mfu": gpu_cost.utilisation(flops, metrics["loop_seconds"], self.peak),
                "peak_memory_mb": max(metrics["peak_memory_mb"]),
                "train_loss_first_quarter": sum(history[:quarter]) / quarter,
                "train_loss_last_quarter": sum(history[-quarter:]) / quarter,
                "heldout_before": before, "heldout_after": after, "export_heldout": exported,
                "optimizer_steps": metrics["optimizer_steps"],
            }
        return part

    # -- generate

    def generate(self, model: str):
        def part() -> dict:
            import numpy as np
            import torch

            import gpu_cost
            from section_generate import batched_forward_limit
            from dsw_ray.config import GenerateConfig
            from dsw_ray.generate import TransformersGenerator, decoding_of, with_sampling_defaults
            from dsw_ray.models import ModelSpec
            from dsw_ray.tasks import get_task

            # The stage's defaults: questions per call, m, temperature, budget.
            stage = with_sampling_defaults(GenerateConfig(), self.model_path(model))
            max_new_tokens = self.size.max_new_tokens or stage.max_new_tokens
            generator = TransformersGenerator(
                ModelSpec(self.model_path(model), self.dtype), get_task("arith"),
                decoding_of(stage.model_copy(update={"max_new_tokens": max_new_tokens}), 1),
            )
            questions = self.questions

            def batch(call: int) -> dict:
                chosen = questions[call * stage.batch_size : (call + 1) * stage.batch_size]
                return {"question_id": np.array([e.question_id for e in chosen], dtype=object),
                        "question": np.array([e.question for e in chosen], dtype=object)}

            started = time.time()
            generator(batch(0))  # warm-up: kernels, the stop string's token tables
            first_call = time.time() - started
            candidates, new_tokens, prompt_tokens, seconds = 0, [], [], 0.0
            for call in range(1, 1 + self.size.generate_calls):
                started = time.time()
                rows = generator(batch(call))
                seconds += time.time() - started
                candidates += len(rows["text"])
                new_tokens += rows["completion_tokens"]
                prompt_tokens += rows["prompt_tokens"]
            config = self.config(model)
            mean_length = round((sum(prompt_tokens) + sum(new_tokens)) / candidates)
            limit = batched_forward_limit(generator.model, (sum(prompt_tokens) + sum(new_tokens)), mean_length,
                                          [torch.get_num_threads()], self.size.limit_tokens)
            # Prefill (each candidate's prompt, as the generator repeats it) takes about what the
            # batched forward limit takes for those tokens; the rest of the time is decoding.
            prefill_s = sum(prompt_tokens) / limit["tokens_per_s"]
            decode_s = max(seconds - prefill_s, 1e-9)
            prefill_flops = gpu_cost.sequence_flops(config, prompt_tokens)
            decode_flops = sum(gpu_cost.flops_per_token(config, p + n / 2) * n for p, n in zip(prompt_tokens, new_tokens))
            return {
                "model": model, "dtype": self.dtype, "questions_per_call": stage.batch_size,
                "samples_per_question": stage.samples_per_question, "max_new_tokens": max_new_tokens,
                "calls": self.size.generate_calls, "first_call_s": first_call, "seconds": seconds,
                "candidates": candidates, "new_tokens": sum(new_tokens), "prompt_tokens": sum(prompt_tokens),
                "candidates_per_s": candidates / seconds, "new_tokens_per_s": sum(new_tokens) / seconds,
                "limit": {k: v for k, v in limit.items() if k != "runs"},
                "new_tokens_vs_limit": sum(new_tokens) / seconds / limit["tokens_per_s"],
                "mfu": gpu_cost.utilisation(prefill_flops + decode_flops, seconds, self.peak),
                "decode_mfu": gpu_cost.utilisation(decode_flops, decode_s, self.peak),
                "decode_s_estimated": decode_s,
            }
        return part

    # -- score

    def score(self, model: str):
        def part() -> dict:
            import numpy as np
            import torch

            import gpu_cost
            from section_generate import batched_forward_limit
            from dsw_ray.config import ScoreConfig, TrainConfig
            from dsw_ray.models import ModelSpec
            from dsw_ray.score import CALL_BATCHES, LossModel, Scorer
            from dsw_ray.sft import LossTokens
            from dsw_ray.weights import ds_weights, keep_lowest

            path, stage = self.model_path(model), ScoreConfig()
            max_length = TrainConfig().max_length
            scorer = Scorer(ModelSpec(path, self.dtype), stage.batch_size, LossTokens(max_length))
            examples = self.score_examples
            call = stage.batch_size * CALL_BATCHES  # rows per actor call, as the stage sends them
            batches = [{"question_id": np.array([e.question_id for e in chunk], dtype=object),
                        "question": np.array([e.question for e in chunk], dtype=object),
                        "text": np.array([e.rationale for e in chunk], dtype=object)}
                       for chunk in (examples[i : i + call] for i in range(0, len(examples), call))]
            lengths = [len(scorer.model.encode(e.question, e.rationale)["input_ids"]) for e in examples]
            scorer(batches[0])  # warm-up
            started = time.time()
            for batch in batches:
                scorer(batch)
            seconds = time.time() - started
            tokens = sum(lengths)
            limit = batched_forward_limit(scorer.model.model, tokens, round(tokens / len(lengths)),
                                          [torch.get_num_threads()], self.size.limit_tokens)
            del scorer
            gc.collect()

            # The same rows in float32 and bf16: how far bf16 moves the losses, and the kept set
            # (the first 32 rows stand in for the valid set, the rest for majority candidates).
            compared = examples[: self.size.compare_rows]
            losses = {}
            for dtype in ("float32", "bfloat16"):
                loss_model = LossModel(ModelSpec(path, dtype), LossTokens(max_length, stage.loss_on))
                losses[dtype] = loss_model.losses([e.question for e in compared], [e.rationale for e in compared],
                                                  stage.batch_size)
                del loss_model
                gc.collect()
            exact, bf16 = losses["float32"], losses["bfloat16"]
            valid = min(32, len(compared) // 2)
            kept = {d: keep_lowest(ds_weights(v[valid:], float(v[:valid].mean())), 0.8) for d, v in losses.items()}
            difference = np.abs(bf16 - exact)
            mean_relative = float(difference.mean() / np.abs(exact).mean())
            self.check(f"score/{model}", "bf16 losses near float32", mean_relative < BF16_MEAN_RELATIVE_TOLERANCE,
                       f"mean |bf16 - float32| / mean float32 = {mean_relative:.4f} (< {BF16_MEAN_RELATIVE_TOLERANCE})")
            return {
                "model": model, "dtype": self.dtype, "batch_size": stage.batch_size, "rows": len(examples),
                "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                "limit": {k: v for k, v in limit.items() if k != "runs"},
                "fraction_of_limit": tokens / seconds / limit["tokens_per_s"],
                "mfu": gpu_cost.utilisation(gpu_cost.sequence_flops(self.config(model), lengths), seconds, self.peak),
                "bf16_vs_float32": {
                    "rows": len(compared), "mean_float32_loss": float(exact.mean()),
                    "max_abs_difference": float(difference.max()), "mean_abs_difference": float(difference.mean()),
                    "mean_relative_difference": mean_relative,
                    "rank_correlation": float(np.corrcoef(np.argsort(np.argsort(exact)), np.argsort(np.argsort(bf16)))[0, 1]),
                    "kept_set_agreement": float((kept["float32"] & kept["bfloat16"]).sum() / kept["float32"].sum()),
                },
            }
        return part

    def parts(self) -> dict:
        """Every part by name, in the order they run: the realistic model's main path first, so
        that a short budget still measures it; optimizer offload (which compiles DeepSpeed's CPU
        Adam on first use) last."""
        s = self.size
        return {
            "train/realistic/zero2": self.train("realistic", "zero2", s.train_rows, 1, s.learning_rate),
            "generate/realistic": self.generate("realistic"),
            "score/realistic": self.score("realistic"),
            "train/realistic/lora_zero2": self.train("realistic", "lora_zero2", s.train_rows, 1, s.lora_learning_rate),
            "train/realistic/zero3": self.train("realistic", "zero3", s.train_rows, 1, s.learning_rate),
            "train/realistic/lora_zero3": self.train("realistic", "lora_zero3", s.train_rows, 1, s.lora_learning_rate),
            "train/toy/zero2": self.train("toy", "zero2", s.train_rows, s.toy_epochs, s.toy_learning_rate),
            "generate/toy": self.generate("toy"),
            "score/toy": self.score("toy"),
            "train/realistic/zero2_offload": self.train("realistic", "zero2_offload", s.offload_rows, 1, s.learning_rate),
        }


# ---- report -------------------------------------------------------------------------------

def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value)


def markdown_tables(result: dict) -> str:
    """The run's results as markdown: training, generation, scoring, then the failed checks."""
    by_part = {}
    for c in result["checks"]:
        by_part.setdefault(c["part"], []).append(c)

    def table(kind: str, header: list[str], cells) -> list[str]:
        """One table: a row per part of ``kind``; ``cells`` fills the measures of a part that ran."""
        lines = ["", "| " + " | ".join([kind, "status", *header, "checks"]) + " |", "|" + " --- |" * (len(header) + 3)]
        for r in (r for r in result["results"] if r["name"].startswith(kind + "/")):
            checks = by_part.get(r["name"], [])
            verdict = ("pass" if all(c["passed"] for c in checks) else "FAIL") if checks else "-"
            measures = cells(r) if r["status"] == "ok" else [fmt(r.get("seconds"))] + [""] * (len(header) - 1)
            lines.append("| " + " | ".join([r["name"], r["status"], *measures, verdict]) + " |")
        return lines

    lines = [
        f"{result['machine']['device_name']}, {result['dtype']}, size {result['size']}; MFU against "
        f"{fmt(result['peak_tflops']['value'])} TFLOP/s ({result['peak_tflops']['source']}).",
        *table("train", ["part s", "tokens/s", "samples/s", "MFU", "peak memory MB", "held-out loss before -> after",
                         "export - worker"],
               lambda r: [fmt(r["seconds"]), fmt(r["tokens_per_s"]), fmt(r["samples_per_s"]), fmt(r["mfu"]),
                          fmt(r["peak_memory_mb"]), f"{r['heldout_before']:.3f} -> {r['heldout_after']:.3f}",
                          f"{r['export_heldout'] - r['heldout_after']:.1e}"]),
        *table("generate", ["part s", "questions x m, new tokens", "candidates/s", "new tokens/s", "forward limit tokens/s",
                            "new tokens / limit", "MFU (decode)", "first call s"],
               lambda r: [fmt(r["seconds"]), f"{r['questions_per_call']} x {r['samples_per_question']}, {r['max_new_tokens']}",
                          fmt(r["candidates_per_s"]), fmt(r["new_tokens_per_s"]), fmt(r["limit"]["tokens_per_s"]),
                          fmt(r["new_tokens_vs_limit"]), f"{fmt(r['mfu'])} ({fmt(r['decode_mfu'])})",
                          fmt(r["first_call_s"])]),
        *table("score", ["part s", "tokens/s", "forward limit tokens/s", "fraction of limit", "MFU",
                         "bf16 vs float32: mean rel. diff, kept-set agreement"],
               lambda r: [fmt(r["seconds"]), fmt(r["tokens_per_s"]), fmt(r["limit"]["tokens_per_s"]),
                          fmt(r["fraction_of_limit"]), fmt(r["mfu"]),
                          f"{r['bf16_vs_float32']['mean_relative_difference']:.2e}, "
                          f"{r['bf16_vs_float32']['kept_set_agreement']:.3f}"]),
    ]
    failed = [c for c in result["checks"] if not c["passed"]]
    lines += ["", f"{len(result['checks']) - len(failed)} of {len(result['checks'])} checks passed"
              + (":" if failed else ".")]
    lines += [f"- FAIL {c['part']}: {c['check']} ({c['detail']})" for c in failed]
    return "\n".join(lines)


def machine(cuda: bool, backend: str) -> dict:
    import deepspeed
    import torch
    import transformers

    import dsw_ray

    return {
        "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "cuda": torch.version.cuda, "process_group": backend, "cpus": os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "deepspeed": deepspeed.__version__,
        "dsw_ray": os.path.dirname(dsw_ray.__file__),
        # What compiling DeepSpeed's CPU Adam (optimizer offload) needs on first use.
        "compiler": shutil.which("c++") or shutil.which("g++"), "ninja": shutil.which("ninja"),
        "python_headers": os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
    }


def write(result: dict, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".partial", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".partial", out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="tiny: a few rows, for CI on a CPU")
    parser.add_argument("--out", default="gpu_proof.json", help="the JSON result (rewritten after every part)")
    parser.add_argument("--toy", help=f"the toy model (default: {QUICKSTART_TOY}, built if missing; tiny: its own)")
    parser.add_argument("--parts", help="comma-separated part names to run (default: all)")
    parser.add_argument("--skip", help="comma-separated part names not to run")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for a GPU not in gpu_cost.py")
    parser.add_argument("--budget-s", type=float, help="start no part after this many seconds (default: per size)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even where there is a GPU")
    args = parser.parse_args()

    import torch

    import gpu_cost

    size = SIZES[args.size]
    cuda = torch.cuda.is_available() and not args.cpu
    backend = start_process_group(cuda)
    work = tempfile.mkdtemp(prefix="dsw-gpu-proof-")
    proof = Proof(args, size, cuda, work)
    if args.peak_tflops:
        peak = {"value": args.peak_tflops, "source": "--peak-tflops"}
    elif cuda:
        value = gpu_cost.peak_tflops(torch.cuda.get_device_name(0))
        peak = {"value": value, "source": "dense bf16 by GPU name, gpu_cost.py" if value else "unknown GPU: no MFU"}
    else:
        peak = {"value": None, "source": "CPU: no MFU"}
    proof.peak = peak["value"]
    result = {
        "kit": "dsw-ray gpu proof", "command": "python " + " ".join(sys.argv), "size": args.size,
        "settings": dataclasses.asdict(size), "date": datetime.date.today().isoformat(),
        "machine": machine(cuda, backend), "dtype": proof.dtype, "peak_tflops": peak,
    }
    try:
        result["models"] = proof.models
        parts = proof.parts()
        chosen = args.parts.split(",") if args.parts else list(parts)
        skipped = args.skip.split(",") if args.skip else []
        unknown = sorted(set(chosen + skipped) - set(parts))
        if unknown:
            raise SystemExit(f"gpu_proof: unknown parts {unknown}; choose from {list(parts)}")
        for name in (n for n in chosen if n not in skipped):
            proof.run(name, parts[name])
            result.update(results=proof.results, checks=proof.checks, seconds=time.time() - proof.started)
            write(result, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["passed"] = all(c["passed"] for c in proof.checks) and bool(proof.checks)
    result["projection"] = gpu_cost.gpu_projection(result)
    result["table_markdown"] = markdown_tables(result)
    result["seconds"] = time.time() - proof.started
    write(result, args.out)
    print()
    print(result["table_markdown"])
    print()
    print("A paper-sized round (Llama-3-8B, gsm8k) on N nodes, from these rates:")
    print(gpu_cost.projection_table(result["projection"]))
    print(f"\n{result['seconds']:.0f} s; written to {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # DeepSpeed's comm threads can abort an ordinary interpreter exit; every file is written.
    os._exit(code)
