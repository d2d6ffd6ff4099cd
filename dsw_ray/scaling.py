"""The scaling report of a study (``study``), from its points' run directories alone.

Per stage and point: the wall time, what the stage did (questions, candidates, new tokens,
training samples) and how fast, the actors or workers it held, and against the point that
held the fewest (the smallest): the speedup and the scaling efficiency, the work per second
per actor relative to the smallest point's. That efficiency is strong scaling where the two
points did the same work, weak scaling where the work per actor was the same.

Beside each measured time, a cost model's: ``T = F + W / (A r)``, ``F`` the smallest
point's fixed seconds (its wall time less the time its actors were busy: starts, model
loads, Ray Data's planning), ``r`` its work per busy second per actor, ``W`` and ``A`` the
point's own work and actors. Where the measured time departs from it, the model is wrong
there: a machine with fewer cores than actors, a fixed cost that grows with the actors.

A stage a point took from the study's store was computed once, in the point it names, and
counts there only. Accuracy against the grid closes the report, with 95% intervals.
"""

from __future__ import annotations

import math
import os

from dsw_ray import columns as C
from dsw_ray.rundir import count_rows, read_json, read_table, stage_states, write_json
from dsw_ray.stages import spec

REPORT, NUMBERS = "scaling.md", "scaling.json"  # in the study's folder
PLOTS = ("scaling_stages.png", "scaling_accuracy.png")
POOLS = ("generate", "score", "reward", "rate", "evaluate")  # stages run by an actor pool of their section


def stage_passes(run_dir: str) -> list[dict]:
    """Each pass of a run's stages in the order they ran (stages one pass computed together,
    such as the models one evaluation pool answered for, share a manifest time): its stage
    name, label (``round-1/generate``), wall seconds, work seconds (the pool's busy time or the
    fine-tunes' loops; None where not measured), rows in and out, its stage folders, and for a
    stage taken from a store, where it was computed."""
    groups: dict[tuple, list[dict]] = {}
    for state in stage_states(run_dir):
        if state["state"] == "done" and not state["stage"].startswith("inputs"):
            groups.setdefault((state["started"], state["finished"]), []).append(state)
    passes = []
    for manifests in groups.values():
        first = manifests[0]
        if "busy_seconds" in first:
            work = first["busy_seconds"]
        elif any("loop_seconds" in m for m in manifests):  # one Ray Train run trains them one after another
            work = sum(m.get("loop_seconds", 0.0) for m in manifests)
        else:
            work = None
        folders = [m["stage"] for m in manifests]
        where = folders[-1].split("/")[0]
        passes.append({
            "stage": os.path.basename(folders[0]),
            "label": f"{where}/{os.path.basename(folders[0])}",
            "seconds": first["seconds"],
            "work_s": None if work is None else min(work, first["seconds"]),
            "rows_in": sum(m.get("rows_in") or 0 for m in manifests),
            "rows": sum(m.get("rows") or 0 for m in manifests),
            "stages": folders,
            "reused_from": first.get("reused_from"),
        })  # fmt: skip
    return passes


def new_tokens(run_dir: str, folders: list[str]) -> int:
    """The tokens the stage folders' models generated (their ``completion_tokens``)."""
    import pyarrow.compute as pc

    stages = [os.path.join(run_dir, folder) for folder in folders]
    return sum(pc.sum(read_table(s, [C.COMPLETION_TOKENS])[C.COMPLETION_TOKENS]).as_py() or 0
               for s in stages if count_rows(s))  # fmt: skip


def held(job, stage: str) -> tuple[int | None, str]:
    """The actors (or training workers) a stage held, and their resources in words."""
    if stage in POOLS:
        section = getattr(job, stage)
        count, cpus, gpus = section.actors, section.cpus_per_actor, section.gpus_per_actor
        what = "actor"
    elif stage == "train":
        count, cpus, gpus = job.train.num_workers, job.train.cpus_per_worker, int(job.train.use_gpu)
        what = "worker"
    else:
        return None, "Ray Data tasks" if stage == "vote" else "the driver"
    each = ["CPUs shared" if cpus is None else f"{cpus:g} CPU"] + ([f"{gpus:g} GPU"] if gpus else [])
    return count, f"{count} {what}{'s' if count > 1 else ''} ({', '.join(each)}{' each' if count > 1 else ''})"


def work_of(run_dir: str, job, stage: str, passes: list[dict]) -> tuple[float, str]:
    """What the stage did at this point, in the unit its time grows with: new tokens for the
    stages that decode, training samples (kept rows times epochs) for train, else rows in."""
    folders = [folder for p in passes for folder in p["stages"]]
    if stage in ("generate", "evaluate"):  # both backends write completion_tokens (columns)
        return new_tokens(run_dir, folders), "new tokens"
    rows = sum(p["rows_in"] for p in passes)
    if stage == "train":
        return rows * job.train.epochs, "samples"
    return rows, spec(stage).reads


def point_stages(point) -> dict[str, dict]:
    """Label -> the point's numbers for that stage: computed passes and reused ones apart."""
    run_dir = point.job.run_dir
    by_label: dict[str, list[dict]] = {}
    for p in stage_passes(run_dir):
        by_label.setdefault(p["label"], []).append(p)
    rows = {}
    for label, passes in by_label.items():
        stage = passes[0]["stage"]
        computed = [p for p in passes if not p["reused_from"]]
        reused = [p for p in passes if p["reused_from"]]
        units, resources = held(point.job, stage)
        row = {"stage": stage, "units": units, "held": resources,
               "reused_from": sorted({reused_point(p["reused_from"]) for p in reused})}  # fmt: skip
        if computed:
            work, unit = work_of(run_dir, point.job, stage, computed)
            busy = [p["work_s"] for p in computed]
            row.update(seconds=sum(p["seconds"] for p in computed), work=work, unit=unit,
                       work_s=None if None in busy else sum(busy), rows_in=sum(p["rows_in"] for p in computed),
                       reads=spec(stage).reads)  # fmt: skip
        rows[label] = row
    return rows


def reused_point(computed_in: str) -> str:
    """The point (``points/<name>``) or run directory a stored stage was computed in."""
    parts = os.path.normpath(computed_in).split(os.sep)
    return parts[parts.index("points") + 1] if "points" in parts[:-1] else computed_in


def compare(rows: dict[str, dict]) -> None:
    """Against each stage's smallest point (fewest actors, then least work): speedup,
    efficiency and its kind, and the cost model's time and error, added to each row of a
    stage that holds a pool (the driver's and Ray Data's own stages take a second or two)."""
    measured = {name: row for name, row in rows.items() if row.get("seconds", 0) > 0 and row["units"] is not None}
    if not measured:
        return
    base_name, base = min(measured.items(), key=lambda item: (item[1]["units"], item[1]["work"]))
    units_b = base["units"]
    rate_b = base["work"] / (base["seconds"] * units_b)
    fixed = per_unit = None
    if base["work_s"]:
        fixed, per_unit = base["seconds"] - base["work_s"], base["work"] / (base["work_s"] * units_b)
    for name, row in measured.items():
        units = row["units"]
        row["smallest"] = base_name
        row["speedup"] = base["seconds"] / row["seconds"]
        row["efficiency"] = row["work"] / (row["seconds"] * units) / rate_b if rate_b else None
        if name == base_name:
            row["kind"] = "smallest"
        elif units == units_b:
            row["kind"] = "same actors"
        elif math.isclose(row["work"], base["work"], rel_tol=0.02):
            row["kind"] = "strong"
        elif math.isclose(row["work"] / units, base["work"] / units_b, rel_tol=0.02):
            row["kind"] = "weak"
        else:
            row["kind"] = "mixed"
        if per_unit:
            row["model_s"] = fixed + row["work"] / (units * per_unit)
            row["model_error"] = row["seconds"] / row["model_s"] - 1


def accuracy_of(run_dir: str) -> dict[str, dict]:
    """Base and each method's last-round accuracy with its 95% interval, from summary.json."""
    summary = read_json(os.path.join(run_dir, "summary.json")) or {}
    found = {"base": summary["base"]} if "base" in summary else {}
    for method, result in summary.get("methods", {}).items():
        if result.get("interval"):
            found[method] = result["interval"]
    return found


def study_numbers(grid: dict, points: list, cluster: dict | None) -> dict:
    """Everything the report shows, per point and per stage label."""
    stages: dict[str, dict[str, dict]] = {}
    for point in points:
        for label, row in point_stages(point).items():
            stages.setdefault(label, {})[point.name] = row
    for rows in stages.values():
        compare(rows)
    return {
        "grid": grid,
        "cluster": cluster,
        "points": [{"name": p.name, "values": p.values, "run_dir": p.job.run_dir, "accuracy": accuracy_of(p.job.run_dir)}
                   for p in points],  # fmt: skip
        "stages": stages,
    }


def number(value, digits: int = 1, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.0f}%" if percent else f"{value:,.{digits}f}"


def markdown(numbers: dict) -> str:
    """The report: the points, then per stage the measured and modelled times, then accuracy."""
    cluster = numbers["cluster"]
    keys = list(numbers["grid"])
    lines = [f"# Scaling study: {len(numbers['points'])} points over {', '.join(keys)}", ""]
    if cluster:
        lines += [
            f"Ray cluster: {cluster['nodes']} node{'s' if cluster['nodes'] > 1 else ''}, {cluster['cpus']:g} CPUs, "
            f"{cluster['gpus']:g} GPUs. "
            f"Points whose stages hold more actors than there are CPUs (or GPUs) share them: their efficiency "
            "shows the machine, not dsw-ray's scaling.",
            "",
        ]
    lines += ["| point | " + " | ".join(keys) + " | stages computed | computed s | stages taken from the store |",
              "|" + " --- |" * (len(keys) + 4)]  # fmt: skip
    for point in numbers["points"]:
        rows = [stages[point["name"]] for stages in numbers["stages"].values() if point["name"] in stages]
        computed = [r for r in rows if "seconds" in r]
        reused = sorted({f"{label} (from {', '.join(r['reused_from'])})" for label, stages in numbers["stages"].items()
                         if (r := stages.get(point["name"])) and r["reused_from"]})  # fmt: skip
        lines.append(f"| {point['name']} | " + " | ".join(str(point["values"][k]) for k in keys)
                     + f" | {len(computed)} | {sum(r['seconds'] for r in computed):,.1f} | {'; '.join(reused) or '-'} |")
    lines += ["", "## Stages", "",
              "The stages each point computed (a stage taken from the store counts where it was computed). Speedup "
              "and efficiency are against the stage's smallest point; the cost model is fitted there "
              "(T = F + W / (A r)) and projected to the other points.", "",
              "| stage | point | held | work | wall s | work/s | rows in/s | speedup | efficiency | kind | model s "
              "| model error |", "|" + " --- |" * 12]  # fmt: skip
    for label, rows in numbers["stages"].items():
        for name, r in rows.items():
            if "seconds" not in r:  # taken from the store: listed with the points above
                continue
            lines.append(
                f"| {label} | {name} | {r['held']} | {r['work']:,.0f} {r['unit']} | {r['seconds']:,.1f} "
                f"| {number(r['work'] / r['seconds'])} | {number(r['rows_in'] / r['seconds'])} {r['reads']} "
                f"| {number(r.get('speedup'), 2)} | {number(r.get('efficiency'), 2)} "
                f"| {r.get('kind', '-')} | {number(r.get('model_s'))} | {number(r.get('model_error'), percent=True)} |"
            )
    methods = list(dict.fromkeys(m for p in numbers["points"] for m in p["accuracy"]))
    lines += ["", "## Accuracy (%, greedy, test set, 95% interval)", "",
              "| point | " + " | ".join(methods) + " |", "|" + " --- |" * (len(methods) + 1)]  # fmt: skip
    for point in numbers["points"]:
        cells = []
        for method in methods:
            a = point["accuracy"].get(method)
            cells.append("-" if a is None else f"{100 * a['accuracy']:.1f} [{100 * a['low']:.1f}, {100 * a['high']:.1f}]")
        lines.append(f"| {point['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(numbers: dict, out: str) -> None:
    """Each pool stage's wall time against the point, measured and modelled; accuracy with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p["name"] for p in numbers["points"]]
    xs = range(len(names))
    labels = [label for label, rows in numbers["stages"].items() if any("model_s" in r for r in rows.values())]
    figure, axes = plt.subplots(1, max(1, len(labels)), figsize=(4.2 * max(1, len(labels)), 3.8), squeeze=False)
    for ax, label in zip(axes[0], labels):
        rows = numbers["stages"][label]
        measured = [rows.get(n, {}).get("seconds") for n in names]
        model = [rows.get(n, {}).get("model_s") for n in names]
        ax.plot(xs, [math.nan if v is None else v for v in measured], "o-", label="measured")
        ax.plot(xs, [math.nan if v is None else v for v in model], "k:", marker="x", label="cost model")
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("wall s")
        ax.set_ylim(bottom=0)
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(out, PLOTS[0]), dpi=100)
    plt.close(figure)

    methods = list(dict.fromkeys(m for p in numbers["points"] for m in p["accuracy"]))
    figure, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(names)), 3.8))
    for offset, method in enumerate(methods):
        found = [(i, p["accuracy"][method]) for i, p in enumerate(numbers["points"]) if method in p["accuracy"]]
        shift = (offset - (len(methods) - 1) / 2) * 0.08
        ax.errorbar([i + shift for i, _ in found], [100 * a["accuracy"] for _, a in found],
                    yerr=[[100 * (a["accuracy"] - a["low"]) for _, a in found], [100 * (a["high"] - a["accuracy"]) for _, a in found]],
                    fmt="o", capsize=3, label=method)  # fmt: skip
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(out, PLOTS[1]), dpi=100)
    plt.close(figure)


def cluster_now() -> dict | None:
    """The Ray cluster the study ran on: its live nodes, CPUs and GPUs (None without Ray)."""
    import ray

    if not ray.is_initialized():
        return None
    resources = ray.cluster_resources()
    return {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "cpus": resources.get("CPU", 0.0),
            "gpus": resources.get("GPU", 0.0)}  # fmt: skip


def write_scaling_report(out: str, grid: dict, points: list, cluster: dict | None) -> str:
    """The report (``scaling.md``), its numbers (``scaling.json``) and two plots in ``out``;
    returns the report."""
    numbers = study_numbers(grid, points, cluster)
    write_json(os.path.join(out, NUMBERS), numbers)
    text = markdown(numbers)
    with open(os.path.join(out, REPORT), "w") as f:
        f.write(text)
    plot(numbers, out)
    return text
