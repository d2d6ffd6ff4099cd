"""Starting Ray for a job: a private local instance, or the cluster `ray job submit` named;
the workers' quiet logs; SIGTERM as Ctrl-C; and the guard a submitted job's driver needs."""

from __future__ import annotations

import logging
import os
import signal
import threading

from dsw_ray.config import JobConfig
from dsw_ray.errors import UserError, on_signal

log = logging.getLogger(__name__)

# Workers log our stage lines, not one download-style progress bar per model load.
QUIET_WORKERS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def guard_submitted_job(job: JobConfig) -> None:
    """Under `ray job submit` with a working_dir the driver starts inside Ray's unpacked copy of
    it, which Ray may delete and unpack afresh while the job runs (when the workers that used
    it exit). A run directory there would be lost, and the driver's working directory can
    vanish, which torch's MKL loader cannot survive (it asks for it when libtorch loads)."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    if not os.path.isabs(job.run_dir):
        raise UserError(
            f"run_dir {job.run_dir!r} is relative: in a Ray job it would land in the job's working_dir, "
            "which Ray deletes. Give an absolute path on storage every node mounts (e.g. /mnt/dsw/runs/...)."
        )
    import torch  # noqa: F401  (now, while the working directory exists)


# Every worker runs the hook at its start. A runtime environment's worker_process_setup_hook is
# carried by this variable (ray/_private/runtime_env/setup_hook.py), which a worker of a
# private instance can inherit instead.
SETUP_HOOK = "dsw_ray.console.quiet_worker_logs"
SETUP_HOOK_VARIABLE = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"


def start_ray(job: JobConfig) -> None:
    import ray
    import ray.data

    if not ray.is_initialized():
        # `ray job submit` sets RAY_ADDRESS for its entrypoint: the job joins that cluster.
        address = job.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            # A cluster's workers get their settings from the job's runtime environment.
            ray.init(address=address, runtime_env={"env_vars": QUIET_WORKERS, "worker_process_setup_hook": SETUP_HOOK})
        else:
            start_local_ray(job.ray.num_cpus)
    # Ray Data's bars count blocks; the CLI shows each stage's progress in its own units.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if threading.current_thread() is threading.main_thread():
        # Now, after ray.init: Ray's core worker installs a SIGTERM handler that aborts the
        # process. SIGTERM (Kubernetes, `kill`) then stops the run as Ctrl-C does.
        signal.signal(signal.SIGTERM, on_signal)


STARTUP_ATTEMPTS = 3  # tries at starting a local Ray node before giving up


def start_local_ray(num_cpus: int | None) -> None:
    """A private Ray instance on this machine, as a job without a cluster starts it ("local":
    even when `ray start` left one running here)."""
    import ray

    # Its dashboard stays off; Ray 2.60's other ports listen on every interface, guarded by its
    # token authentication (on by default for a new local Ray). Ray Train's preemption watcher
    # watches for drained nodes, which a private instance never has; each fine-tune it started
    # logged a false alarm about restarts.
    env_vars = {**QUIET_WORKERS, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", SETUP_HOOK_VARIABLE: SETUP_HOOK}
    # The instance's processes start now, as children of this one, and its workers inherit
    # their environment: the workers' settings travel there, not in a runtime environment,
    # which starts every worker through Ray's set-up process (a second Python and Ray start; a
    # small round took 8% less time without it, docs/benchmarks.md). This process's own
    # environment is left as it was.
    saved = {name: os.environ.get(name) for name in env_vars}
    os.environ.update(env_vars)
    try:
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            try:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
                break
            except Exception as error:
                # Ray waits a fixed 30 s for its new node to register; a machine under heavy
                # load (the test suite's two processes on two cores) can take longer.
                if "timed out during startup" not in str(error) or attempt == STARTUP_ATTEMPTS:
                    raise
                log.warning("Ray's local node did not start within its 30 s (a busy machine?); starting it again.")
                ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
