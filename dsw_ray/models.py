"""Loading a causal LM and its tokenizer the same way in every stage."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from dsw_ray.errors import UserError

# A few-shot candidate ends where the model starts the next question, or at the blank line that
# ends every exemplar's answer (a real model often goes on after it with an answer of its own).
STOPS = ("\nQ:", "\n\n")


AUTO_CLASSES = {"causal LM": "AutoModelForCausalLM", "sequence classifier": "AutoModelForSequenceClassification"}
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


SMALL_FILE = 1 << 20  # a model folder's files up to this size are hashed; larger ones are known by size and time


def model_identity(path: str) -> list:
    """What a model folder holds, for the fingerprints of the stages that read it: each file's
    name, and its sha256 (config, tokenizer, generation config: small files) or its size and
    modification time (weights: rewriting them changes both, and hashing gigabytes at every
    start would not pay). New weights at the same path then recompute what they feed."""
    import hashlib

    if "://" in path or not os.path.isdir(path):
        return [path]
    identity = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.is_file():
            continue
        stat = entry.stat()
        if stat.st_size <= SMALL_FILE:
            with open(entry.path, "rb") as f:
                identity.append((entry.name, hashlib.sha256(f.read()).hexdigest()))
        else:
            identity.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return identity


def check_model_dir(
    path: str, kind: str = "causal LM", trust_remote_code: bool = False, field: str = "model.path"
) -> None:
    """A clear error before any actor starts, instead of a traceback from inside one: ``path``
    is a Hugging Face folder whose config.json transformers loads as a ``kind`` ("causal LM"
    or "sequence classifier") and which holds safetensors weights. Reads config.json only."""
    where = f"{field} {path!r}"
    if not os.path.isdir(path):
        raise UserError(f"{where} is not a directory; give a Hugging Face model folder (config.json, model.safetensors).")
    files = set(os.listdir(path))
    if "config.json" not in files:
        if "adapter_config.json" in files:
            raise UserError(
                f"{where} holds a LoRA adapter, not a model; give the merged model "
                "(peft's merge_and_unload, then save_pretrained; a dsw-ray train stage writes it to train/model/)."
            )
        raise UserError(f"{where} has no config.json; is it a Hugging Face model folder?")
    config = read_model_config(path, trust_remote_code, where)
    auto_class = AUTO_CLASSES[kind]
    if not loadable_as(config, auto_class):
        architectures = ", ".join(getattr(config, "architectures", None) or []) or "no architectures listed"
        raise UserError(
            f"{where} is a {config.model_type!r} model ({architectures}), which transformers cannot load as a {kind} "
            f"({auto_class}); give a {'decoder-only model such as Llama, Qwen or GPT-2' if kind == 'causal LM' else 'model with a sequence-classification head'}."
        )
    if not files & set(SAFETENSORS):
        if files & set(PICKLES):
            raise UserError(
                f"{where} has only PyTorch pickle weights (pytorch_model.bin), and dsw-ray loads safetensors only "
                "(unpickling can run code from the file). If you trust the file, convert it once: "
                f"python -c \"import transformers as t; t.{auto_class}.from_pretrained({path!r}).save_pretrained({path!r})\"."
            )
        raise UserError(f"{where} holds no weights: it needs model.safetensors (or shards with model.safetensors.index.json).")


def read_model_config(path: str, trust_remote_code: bool, where: str):
    """config.json as transformers reads it; any failure is a UserError saying why."""
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (ValueError, OSError) as error:  # invalid JSON or UTF-8, unreadable
        raise UserError(f"{config_path} cannot be read as JSON ({error}); the model folder is damaged.") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise UserError(f"{config_path} has no 'model_type'; it is not a transformers model config.")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    # transformers raises ValueError, OSError, TypeError and huggingface_hub's own errors for a
    # config it cannot use; whichever, the folder is what needs fixing, and the text says why.
    except Exception as error:
        if "auto_map" in raw and not trust_remote_code:
            raise UserError(
                f"{where} ships its own code (auto_map in config.json), which runs only with "
                "model.trust_remote_code=true; set it if you trust that code."
            ) from None
        raise UserError(f"{where}: transformers cannot read its config.json ({' '.join(str(error).split())[:300]}).") from None


def loadable_as(config, auto_class: str) -> bool:
    """Whether ``transformers.<auto_class>`` has a model for ``config`` (or its own code does)."""
    from transformers.models.auto import modeling_auto

    mapping = {
        "AutoModelForCausalLM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING,
        "AutoModelForSequenceClassification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    }[auto_class]
    return type(config) in mapping or auto_class in (getattr(config, "auto_map", None) or {})


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:  # Llama-style tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str | None = None,
    kind: str = "causal LM",
):
    """An eval-mode model from safetensors, on ``device`` (default: CUDA if there is one);
    ``kind`` is "causal LM" or "sequence classifier" (a reward model)."""
    import torch
    import transformers
    from safetensors import SafetensorError

    auto_class = getattr(transformers, AUTO_CLASSES[kind])
    try:
        model = auto_class.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (ValueError, OSError, SafetensorError) as error:  # a damaged or incomplete weights file among them
        raise UserError(f"cannot load {path!r} as a {kind} from safetensors: {error}") from error
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


@dataclass(frozen=True)
class ModelSpec:
    """A model as every actor loads it: its folder, the dtype of its weights, and whether to
    run the code it ships (the job's ``model.dtype`` and ``model.trust_remote_code``)."""

    path: str
    dtype: str = "float32"
    trust_remote_code: bool = False

    @classmethod
    def of(cls, path: str, model) -> ModelSpec:
        """``path`` loaded as the job's ``model`` section says (a round's model is not ``model.path``)."""
        return cls(path, model.dtype, model.trust_remote_code)

    def tokenizer(self, padding_side: str = "right"):
        return load_tokenizer(self.path, self.trust_remote_code, padding_side)

    def load(self, threads: int | None = None, padding_side: str = "right", kind: str = "causal LM"):
        """The tokenizer and the eval-mode model of an actor given ``threads`` torch threads
        (its share of the node's CPUs; None: torch's default)."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        return self.tokenizer(padding_side), load_model(self.path, self.dtype, self.trust_remote_code, kind=kind)
