"""The cost model: per-unit and fixed costs from this run, and the round on N nodes like this one."""

from __future__ import annotations


def cost_model(result: dict) -> dict:
    """Per-unit costs of one actor and fixed costs per stage, from this run's numbers, and the
    time of the round's generate + score + train on N nodes like this one.

    Assumptions (each a simplification the numbers here support or do not contradict):
    candidates, scored rows and training samples are independent, so a pool of N actors (one
    per node) divides the work evenly when the data has at least N blocks; each actor runs at
    the steady rate measured here; fixed costs (Ray Data start-up, actor start-up) happen on
    every node at once and so do not shrink with N; training is data parallel with a gradient
    all-reduce whose cost (1 M parameters) is negligible."""
    g, s, t, e = result["generate"], result["score"], result["train"], result["end_to_end"]
    per_candidate = 1 / g["actor_loop"]["candidates_per_s"]
    per_token = 1 / s["pool"]["steady_tokens_per_s"]
    per_sample = 1 / t["stage"]["loop_samples_per_s"]
    fixed = {
        "ray_start_s": e["ray_start_s"],
        "actor_start_s": e["actor_start_s"],
        "generate_s": g["stage"]["seconds"] - g["stage"]["candidates"] * per_candidate,
        "score_s": s["stage"]["seconds"] - s["stage"]["tokens"] * per_token,
        "train_s": t["stage"]["fixed_seconds"],
    }
    work = {"candidates": g["stage"]["candidates"], "score_tokens": s["stage"]["tokens"], "train_samples": t["stage"]["samples"]}

    def seconds(nodes: int, scale: float) -> float:
        return (fixed["generate_s"] + fixed["score_s"] + fixed["train_s"]
                + scale * (work["candidates"] * per_candidate + work["score_tokens"] * per_token
                           + work["train_samples"] * per_sample) / nodes)

    projection = [
        {"nodes": n, "round_x1_s": seconds(n, 1), "round_x100_s": seconds(n, 100),
         "candidates_per_s_x100": 100 * work["candidates"] / seconds(n, 100)}
        for n in (1, 2, 4, 8, 16, 32)
    ]
    return {
        "per_candidate_s": per_candidate,
        "per_new_token_s": 1 / g["actor_loop"]["new_tokens_per_s"],
        "per_score_token_s": per_token,
        "per_train_sample_s": per_sample,
        "fixed_s": fixed,
        "work": work,
        "projection_cpu_nodes": projection,
    }
