"""The run directory: one folder per stage artifact, written atomically, with a manifest.

A stage writes into ``<name>.partial`` and renames it to ``<name>`` once complete, with
``manifest.json`` inside. A finished stage whose fingerprint (its config and its inputs'
fingerprints) is unchanged is skipped on a rerun; a changed one is recomputed, and since
fingerprints chain, so is everything downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Callable

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_manifest(path: str) -> dict | None:
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def display_name(path: str) -> str:
    """A stage's path from its round (``round-1/iwsi/train``), or its last two parts."""
    parts = os.path.normpath(path).split(os.sep)
    starts = [i for i, part in enumerate(parts) if part.startswith("round-")]
    return "/".join(parts[starts[-1] :] if starts else parts[-2:])


def run_stage(path: str, stage_fingerprint: str, produce: Callable[[str], dict]) -> dict:
    """Run ``produce(partial_dir) -> info`` unless ``path`` already holds this fingerprint's output.

    Returns the manifest: ``fingerprint``, ``seconds``, and what ``produce`` returned.
    """
    manifest = read_manifest(path)
    name = display_name(path)
    if manifest is not None and manifest.get("fingerprint") == stage_fingerprint:
        log.info("%s: done already, skipped", name)
        manifest["skipped"] = True
        return manifest
    if manifest is not None:
        log.info("%s: its config or inputs changed since it ran, recomputing", name)
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    started = time.time()
    info = produce(partial)
    manifest = {"fingerprint": stage_fingerprint, "seconds": round(time.time() - started, 2), **info}
    with open(os.path.join(partial, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.rmtree(path, ignore_errors=True)
    os.rename(partial, path)
    log.info("%s: done in %.1f s", name, manifest["seconds"])
    manifest["skipped"] = False
    return manifest
