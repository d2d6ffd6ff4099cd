"""The run directory: one folder per stage artifact, written atomically, with a manifest.

A stage writes its rows as parquet in ``<name>/data`` (``write_table``, ``write_dataset``; the
next stage reads them with ``read_table`` or, as a Ray Dataset, ``read_dataset``), into
``<name>.partial`` renamed to ``<name>`` once complete, with ``manifest.json`` inside. A
finished stage whose fingerprint (its config and its inputs' fingerprints) is unchanged is
skipped on a rerun; a changed one is recomputed, and since fingerprints chain, so is
everything downstream of it.

A stage store (``job.store``, which a study's points share) holds finished stages by
fingerprint: a stage found there is linked into the run directory instead of computed, and
every stage computed is linked into it. The fingerprint already says "the same settings and
inputs", so a store entry is what this run would have computed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import time
from typing import Callable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dsw_ray import progress
from dsw_ray.errors import Interrupted, StageFailed, UserError, stop_requested
from dsw_ray.resources import groups_released, pool_input
from dsw_ray.stages import spec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTIAL_OF = "partial_of.json"  # in a partial folder: the fingerprint of the stage run writing it
DATA = "data"  # the parquet folder inside a stage's artifact folder
LOG_FILE = "dsw-ray.log"  # the run's log: Ray's, the libraries' and the workers' output (see console)

# ---- a stage's rows -------------------------------------------------------------------

DRIVER_READ_BYTES = 64 << 20  # stages up to this size on disk are read by the driver (read_dataset)


def data_dir(stage_dir: str) -> str:
    return os.path.join(stage_dir, DATA)


def count_rows(stage_dir: str) -> int:
    if not os.path.isdir(data_dir(stage_dir)):  # Ray Data writes no file for an empty dataset
        return 0
    return pads.dataset(data_dir(stage_dir), format="parquet").count_rows()


def write_table(table: pa.Table, stage_dir: str) -> dict:
    os.makedirs(data_dir(stage_dir), exist_ok=True)
    pq.write_table(table, os.path.join(data_dir(stage_dir), "part-0.parquet"))
    return {"rows": table.num_rows}


def write_dataset(dataset, stage_dir: str) -> dict:
    dataset.write_parquet(data_dir(stage_dir))
    return {"rows": count_rows(stage_dir)}


def read_table(stage_dir: str, columns: list[str] | None = None) -> pa.Table:
    return pads.dataset(data_dir(stage_dir), format="parquet").to_table(columns=columns)


def read_dataset(stage_dir: str, rows_per_block: int, min_blocks: int = 1):
    """A Ray Dataset of a stage's rows, cut into blocks so that every actor of a pool gets work.

    A stage of at most ``DRIVER_READ_BYTES`` on disk (questions, test sets, the candidates of
    most rounds) is read by the driver and cut there, as Ray Data's repartition cuts it: read
    tasks need worker processes, whose start competed with the pool's actor start and cost
    3-4 s of each pool stage on 2 cores (docs/benchmarks.md). Larger stages are read by
    Ray Data's tasks, spread over the cluster."""
    import ray

    rows = count_rows(stage_dir)
    if rows == 0 or sum(os.path.getsize(f) for f in pads.dataset(data_dir(stage_dir)).files) > DRIVER_READ_BYTES:
        return ray.data.read_parquet(data_dir(stage_dir)).repartition(max(min_blocks, min(256, math.ceil(rows / rows_per_block))))
    return pool_input(read_table(stage_dir), rows_per_block, min_blocks)


# ---- fingerprints and stage runs ---------------------------------------------------------

def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def damaged(path: str, manifest: dict) -> str | None:
    """What is wrong with a finished stage's output, or None: its parquet files must hold the
    rows its manifest counts (their footers are read, not the data), and a fine-tune's model
    must have its config and weights. A stage found damaged is computed again, not trusted."""
    data = os.path.join(path, DATA)
    if "rows" in manifest:
        try:
            files = sorted(f for f in os.listdir(data) if f.endswith(".parquet")) if os.path.isdir(data) else []
            found = sum(pq_rows(os.path.join(data, f)) for f in files)
        except Exception as error:  # a cut or overwritten file: pyarrow says why
            return f"{type(error).__name__}: {error}"
        if found != manifest["rows"]:
            return f"its parquet files hold {found} rows, its manifest {manifest['rows']}"
    if manifest.get("stage") == "train":
        model = os.path.join(path, "model")
        weights = [f for f in os.listdir(model) if f.endswith(".safetensors")] if os.path.isdir(model) else []
        if not os.path.exists(os.path.join(model, "config.json")) or not weights:
            return "its model folder has no config.json or no weights"
    return None


def pq_rows(path: str) -> int:
    return pq.read_metadata(path).num_rows


def write_json(path: str, data) -> None:
    """``data`` as JSON at ``path``, atomically: a crash leaves the old file or the new one,
    never a cut one (written beside it, flushed to disk, then renamed over it)."""
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def read_json(path: str):
    """The JSON in ``path``, or None where it is missing or cut."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def partial_of(partial: str) -> str | None:
    """The fingerprint of the stage run that made a partial folder, or None."""
    return read_json(os.path.join(partial, PARTIAL_OF))


def read_manifest(path: str) -> dict | None:
    return read_json(os.path.join(path, MANIFEST))


def display_name(path: str) -> str:
    """A stage's path from its round (``round-1/iwsi/train``), or its last two parts."""
    parts = os.path.normpath(path).split(os.sep)
    starts = [i for i, part in enumerate(parts) if part.startswith("round-")]
    return "/".join(parts[starts[-1] :] if starts else parts[-2:])


_store: list[str] = []  # the store of the run now running (``sharing``), if any


@contextlib.contextmanager
def sharing(store: str | None):
    """While the block runs, stages are taken from and given to ``store`` (None: no store)."""
    if store is None:
        yield
        return
    os.makedirs(store, exist_ok=True)
    _store.append(os.path.abspath(store))
    try:
        yield
    finally:
        _store.pop()


def link_tree(source: str, target: str) -> None:
    """A copy of the folder ``source`` at ``target`` whose files are hard links (no bytes copied:
    finished artifacts are never written again), or copies where the filesystem refuses links."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or one without hard links
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def store_entry(stage: str, stage_fp: str) -> str | None:
    return os.path.join(_store[-1], f"{stage}-{stage_fp}") if _store else None


def take_from_store(path: str, stage: str, stage_fp: str) -> dict | None:
    """The manifest of ``path`` after linking the store's finished stage of this fingerprint
    there, or None when the store has none (or a damaged one, which is then computed again)."""
    entry = store_entry(stage, stage_fp)
    manifest = read_manifest(entry) if entry else None
    if manifest is None or manifest.get("fingerprint") != stage_fp or damaged(entry, manifest):
        return None
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    link_tree(entry, partial)
    manifest = {**manifest, "reused_from": manifest.get("computed_in", entry)}
    write_json(os.path.join(partial, MANIFEST), manifest)  # a new file: the store's stays as it is
    shutil.rmtree(path, ignore_errors=True)
    os.rename(partial, path)
    where = os.path.relpath(manifest["reused_from"], os.path.dirname(_store[-1]))  # the study's points/...
    log.info("%s: taken from the store, computed in %s", display_name(path), where)
    return manifest


def give_to_store(path: str, manifest: dict) -> None:
    """Link a stage just finished at ``path`` into the store, recording where it was computed."""
    entry = store_entry(manifest["stage"], manifest["fingerprint"])
    if entry is None or os.path.isdir(entry):
        return
    partial = f"{entry}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    link_tree(path, partial)
    write_json(os.path.join(partial, MANIFEST), {**manifest, "computed_in": path})
    try:
        os.rename(partial, entry)
    except OSError:  # another run gave the same stage first
        shutil.rmtree(partial, ignore_errors=True)


def stage_fingerprint(stage: str, *parts) -> str:
    """The fingerprint of a ``stage`` run: its code version and ``parts`` (its settings and its
    inputs' fingerprints, so that a change anywhere upstream reaches every later stage)."""
    return fingerprint(stage, spec(stage).version, *parts)


def run_stage(
    path: str, stage_fp: str, produce: Callable[[str], dict], rows_in: int | None = None, force: bool = False
) -> dict:
    """Run ``produce(partial_dir) -> info`` unless ``path`` already holds this fingerprint's output
    (or ``force``). ``rows_in``: the rows the stage reads, for the manifest.

    Returns the manifest: ``stage``, ``version``, ``fingerprint``, ``rows_in``, ``started``,
    ``finished``, ``seconds``, ``busy_seconds`` (a pool stage's: ``progress``), and what
    ``produce`` returned (``rows`` out, among others).
    """
    return run_stages([path], [stage_fp], lambda partials: [produce(partials[0])], rows_in, force)[0]


def run_stages(
    paths: list[str], stage_fps: list[str], produce: Callable[[list[str]], list[dict]],
    rows_in: int | list[int] | None = None, force: bool = False, resumable: bool = False,
) -> list[dict]:
    """``run_stage`` for stages of one kind that one pass computes (the models one evaluation pool
    answers for, the fine-tunes one Ray Train run holds): ``produce(partial_dirs) -> infos``
    runs once, for the stages not done already with their fingerprints; each of their
    manifests has the pass's times. ``rows_in``: each stage's (one number: the same for all).
    ``resumable``: ``produce`` can go on from what an interrupted run with the same
    fingerprint left in a partial folder, so that folder is kept (any other is emptied)."""
    if stop_requested() is not None:  # a signal Ray swallowed while the last stage ran
        raise Interrupted(display_name(paths[0]))
    rows = rows_in if isinstance(rows_in, list) else [rows_in] * len(paths)
    manifests = [read_manifest(path) for path in paths]
    current = [m is not None and m.get("fingerprint") == fp and not force for m, fp in zip(manifests, stage_fps)]
    damage = [damaged(path, m) if fresh else None for path, m, fresh in zip(paths, manifests, current)]
    done = [fresh and not harm for fresh, harm in zip(current, damage)]
    for path, manifest, skip in zip(paths, manifests, done):
        if skip:
            log.info("%s: skipped, done already with these settings and inputs (%s)", display_name(path), manifest.get("finished", "?"))
            manifest["skipped"] = True
    stage = os.path.basename(paths[0])
    for i, skip in enumerate(done):
        if not skip and not force and (taken := take_from_store(paths[i], stage, stage_fps[i])) is not None:
            done[i], manifests[i] = True, {**taken, "skipped": True}
    pending = [i for i, skip in enumerate(done) if not skip]
    if not pending:
        return manifests
    for i in pending:
        if force:
            why = "rerun as asked (--from)"
        elif damage[i]:
            why = f"its output is damaged: {damage[i]}"
        elif manifests[i] is not None:
            why = "its settings, its inputs or its code changed since it ran"
        elif os.path.isdir(paths[i] + ".partial"):
            why = "an earlier run stopped before it finished"
        else:
            why = "not run yet"
        partial = paths[i] + ".partial"
        if resumable and not force and partial_of(partial) == stage_fps[i]:
            why += "; going on from what it left"
        else:
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
            write_json(os.path.join(partial, PARTIAL_OF), stage_fps[i])
        log.info("%s: started (%s)%s", display_name(paths[i]), why, "" if rows[i] is None else f", {rows[i]} {spec(stage).reads} in")
    name = display_name(paths[pending[0]]) + (f" and {len(pending) - 1} more" if len(pending) > 1 else "")
    started = time.time()
    try:
        total = None if any(rows[i] is None for i in pending) else sum(rows[i] for i in pending)
        with progress.tracking(name, stage, total) as measured, groups_released():
            infos = produce([paths[i] + ".partial" for i in pending])
        if stop_requested() is not None:  # the signal came while the stage ran, and Ray swallowed it
            raise KeyboardInterrupt()
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (errors.on_signal)
        raise Interrupted(name) from interrupt
    except Exception as error:
        import ray.exceptions

        # A UserError from our driver code is the user's to fix, as it stands; anything else,
        # and whatever a Ray worker raised, fails the stage: the CLI names it and the log.
        if isinstance(error, UserError) and not isinstance(error, ray.exceptions.RayError):
            raise
        raise StageFailed(name) from error
    finished = time.time()
    for i, info in zip(pending, infos):
        manifest = {
            "stage": stage,
            "version": spec(stage).version,
            "fingerprint": stage_fps[i],
            "rows_in": rows[i],
            "started": timestamp(started),
            "finished": timestamp(finished),
            "seconds": round(finished - started, 2),
            **({"busy_seconds": measured.busy_seconds} if measured.busy_seconds is not None else {}),
            **({"computed_with": len(pending)} if len(pending) > 1 else {}),
            **info,
        }
        partial = paths[i] + ".partial"
        os.remove(os.path.join(partial, PARTIAL_OF))
        write_json(os.path.join(partial, MANIFEST), manifest)
        shutil.rmtree(paths[i], ignore_errors=True)
        os.rename(partial, paths[i])
        give_to_store(paths[i], manifest)
        together = f" (one pass for {len(pending)} stages)" if len(pending) > 1 else ""
        log.info("%s: done in %.1f s%s%s", display_name(paths[i]), manifest["seconds"], together, outcome(manifest))
        manifests[i] = {**manifest, "skipped": False}
    return manifests


def outcome(manifest: dict) -> str:
    """``, 12 questions in, 24 candidates out``; a fine-tune's steps and last loss."""
    into, out = spec(manifest["stage"]).reads, spec(manifest["stage"]).writes
    parts = [] if manifest.get("rows_in") is None else [f"{manifest['rows_in']} {into} in"]
    if "rows" in manifest:
        parts.append(f"{manifest['rows']} {out} out")
    if "optimizer_steps" in manifest:
        parts.append(f"{manifest['optimizer_steps']} {out}, final loss {manifest['final_loss']:.4f}")
    return "".join(f", {part}" for part in parts)


def timestamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="microseconds")


def stage_states(run_dir: str) -> list[dict]:
    """Every stage folder under ``run_dir`` in the order it ran: ``done`` (with its manifest's
    rows and times) or ``partial`` (running now, or stopped before it finished)."""
    states = []
    for folder, children, files in os.walk(run_dir):
        children[:] = [c for c in children if c not in ("data", "model", "ray_train", "adapter")]
        if folder.endswith(".partial"):
            children[:] = []
            states.append({"stage": os.path.relpath(folder, run_dir).removesuffix(".partial"), "state": "partial"})
        elif MANIFEST in files:
            children[:] = []
            manifest = read_manifest(folder) or {}
            states.append({**manifest, "stage": os.path.relpath(folder, run_dir), "state": "done"})
    return sorted(states, key=lambda s: (s.get("started") or "~", s["stage"]))


RUN_FILE = "run.json"
LOCK_FILE = "run.lock"  # held by the one process writing the run directory; says who it is


@contextlib.contextmanager
def holding(run_dir: str):
    """Hold ``run_dir`` for this process while the block runs: a second run of it (another
    job with the same run_dir, or the same job started twice) is refused, naming the holder,
    instead of interleaving its stage folders with this one's. A POSIX lock: released when
    the process ends, however it ends, and honoured on NFS."""
    import fcntl
    import socket

    handle = open(os.path.join(run_dir, LOCK_FILE), "a+")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"run_dir {run_dir} is in use by {holder}: two runs writing one run directory would mix their "
            "stages. Wait for that run to end (or stop it), or give this job its own run_dir."
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"dsw-ray (pid {os.getpid()} on {socket.gethostname()}, since {timestamp(time.time())[:19]})\n")
        handle.flush()
        yield
    finally:
        handle.close()
LAYOUT = 2  # the run directory's layout: 2 since stage manifests carry versions and times


def claim_run_dir(run_dir: str, identity: dict) -> None:
    """Record what run ``run_dir`` holds (``identity``: the task and the base model), or check
    that it is this one: a rerun resumes its own run, never overwrites another's."""
    from dsw_ray.errors import UserError

    path = os.path.join(run_dir, RUN_FILE)
    wanted = {"layout": LAYOUT, **identity}
    try:
        with open(path) as f:
            found = json.load(f)
    except FileNotFoundError:
        if any(entry.name not in (LOG_FILE, LOCK_FILE) for entry in os.scandir(run_dir)):
            raise UserError(
                f"run_dir {run_dir} is not empty and has no {RUN_FILE}: it was not written by this version of "
                "dsw-ray (or is not a run directory). Give a new run_dir, or empty this one to start over."
            ) from None
        write_json(path, wanted)
        return
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is damaged ({error}); restore it, or give a new run_dir.") from None
    differ = {key: (found.get(key), value) for key, value in wanted.items() if found.get(key) != value}
    if differ:
        listed = "; ".join(f"{key}: {old!r} there, {new!r} in this job" for key, (old, new) in differ.items())
        raise UserError(
            f"run_dir {run_dir} holds another run ({listed}). Rerunning here would replace its results: "
            "give this job its own run_dir, or delete that one to start over."
        )
