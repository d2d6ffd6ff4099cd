"""How much of the cluster an actor pool takes, so that no default job can hang.

Ray Data's read and map tasks need CPU too: a pool whose actors reserve every CPU starves
them and the job waits forever without an error. Pools leave RESERVED_CPUS free, and a pool
asked to take more is a configuration error, raised before any work starts. The light
tasks a stage runs beside its pool (selecting the majority candidates, grading answers)
ask for TASK_CPUS, not a whole CPU: on nodes of one CPU each, a pool of two actors
leaves half a CPU on each node, where no task asking for a whole one would ever start.
"""

from __future__ import annotations

import contextlib
import math
import warnings

from dsw_ray.errors import ConfigError

RESERVED_CPUS = 1.0
TASK_CPUS = 0.25  # a light Ray Data task that runs beside a pool (map_batches, filter, select_columns)
# A pool's actor is restarted, and its batch retried, this many times (Ray Data's default is
# without end): a batch that kills every actor it reaches fails its stage instead of looping
# until the job's deadline, and a one-off death (a node lost, an OOM kill) is still survived.
ACTOR_RESTARTS = 3


def pool_cpus(actors: int, cpus_per_actor: float | None, cluster_cpus: float, what: str) -> float:
    """CPUs Ray reserves for each actor of a pool of ``actors`` on ``cluster_cpus``."""
    free = cluster_cpus - RESERVED_CPUS
    if cpus_per_actor is None:
        # Share the cluster: at most one CPU per actor, never all of it.
        return round(min(1.0, free / actors), 3)
    if actors * cpus_per_actor > free:
        raise ConfigError(
            f"{what}: {actors} actor(s) x {cpus_per_actor} CPU leave less than {RESERVED_CPUS} of the "
            f"cluster's {cluster_cpus:g} CPUs for Ray Data's tasks, and the job would hang; "
            f"lower {what}.actors or {what}.cpus_per_actor (or leave it unset)."
        )
    return cpus_per_actor


def training_cpus(workers: int, node_cpus: list[float]) -> float:
    """CPUs for each of ``workers`` CPU training workers that share the cluster: the most whole
    CPUs that still place every worker on some node (a worker cannot span nodes), each one a
    torch thread. Training reads its rows itself, so unlike a pool it leaves no CPU to Ray
    Data; with more workers than CPUs they share as pools do."""
    fits = [c for c in range(1, int(max(node_cpus, default=0)) + 1) if sum(n // c for n in node_cpus) >= workers]
    return float(max(fits)) if fits else pool_cpus(workers, None, sum(node_cpus), "train")


def torch_threads(cpus: float) -> int:
    """Intra-op threads for a worker holding ``cpus`` CPUs (at least one)."""
    return max(1, math.floor(cpus))


def pool_input(table, rows_per_block: int, min_blocks: int = 1):
    """A Ray Dataset of a pyarrow table's rows, in order, cut as Ray Data's repartition cuts:
    into blocks of about ``rows_per_block`` rows, at least ``min_blocks`` of them (at most
    256), so that every actor of a pool gets work."""
    import ray

    blocks = max(min_blocks, min(256, math.ceil(table.num_rows / rows_per_block)))
    bounds = [i * table.num_rows // blocks for i in range(blocks + 1)]
    return ray.data.from_arrow([table.slice(start, end - start) for start, end in zip(bounds, bounds[1:])])


def pool_map(
    dataset, actor_class, constructor_kwargs: dict, section, what: str, batch_size: int | None = None, **placement
):
    """``dataset.map_batches`` through a pool of ``section.actors`` stateful actors of
    ``actor_class`` (model loaded once in ``__init__``, which takes ``threads``), sized here.
    ``placement`` replaces the GPU request (``num_gpus``, ``ray_remote_args_fn``). While a stage is
    tracked the actors report each call's rows and times (``progress.counted``)."""
    import ray
    from ray.data import ActorPoolStrategy

    from dsw_ray import progress

    if progress.tracking_pools():
        actor_class = progress.counted(actor_class)
    cpus = pool_cpus(section.actors, section.cpus_per_actor, ray.cluster_resources().get("CPU", 1), what)
    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts and max_task_retries only among the remote arguments it
        # deprecates (for 2.64), and has no other way to bound them.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(
            actor_class,
            fn_constructor_kwargs={**constructor_kwargs, "threads": torch_threads(cpus)},
            batch_size=batch_size or section.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=section.actors),
            num_cpus=cpus,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
            **{"num_gpus": section.gpus_per_actor, **placement},
        )


# Placement groups this process made for its pools' actors, oldest first (see pool_group).
_GROUPS: list = []


def pool_group(bundles: list[dict], strategy: str = "STRICT_PACK"):
    """A placement group for one actor of a pool, removed when the stage that made it ends
    (``groups_released``): a group outlives its actor and would keep its GPUs from the next
    stage's engines until the job ends (ray#64035)."""
    from ray.util.placement_group import placement_group

    group = placement_group(bundles, strategy=strategy)
    _GROUPS.append(group)
    return group


@contextlib.contextmanager
def groups_released():
    """Remove the placement groups ``pool_group`` made while the block ran, however it ends."""
    first = len(_GROUPS)
    try:
        yield
    finally:
        made = _GROUPS[first:]
        del _GROUPS[first:]
        if made:
            from ray.util.placement_group import remove_placement_group

            for group in made:
                remove_placement_group(group)
