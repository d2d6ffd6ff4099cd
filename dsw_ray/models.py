"""Loading a causal LM and its tokenizer the same way in every stage."""

from __future__ import annotations

import os

from dsw_ray.errors import UserError

STOP = "\nQ:"  # a candidate ends where the model starts the next few-shot question


def check_model_dir(path: str) -> None:
    """A clear error before any actor starts, instead of a traceback from inside one."""
    if not os.path.isdir(path):
        raise UserError(f"model path {path!r} is not a directory; give a Hugging Face model folder.")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise UserError(f"model path {path!r} has no config.json; is it a Hugging Face model folder?")


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

    auto_class = {"causal LM": transformers.AutoModelForCausalLM, "sequence classifier": transformers.AutoModelForSequenceClassification}[kind]
    try:
        model = auto_class.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (ValueError, OSError) as error:
        raise UserError(f"cannot load {path!r} as a {kind} from safetensors: {error}") from error
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()
