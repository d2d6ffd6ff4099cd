"""The run's report: the comparison table in the shape of the paper's Table 1, and plots.

``table_rows`` is shared by the CLI (plain text) and ``report.md`` (markdown). The plots
are the paper's Figure 5 analysis (DS weights of correct and incorrect majority
candidates, with the IWSI keep threshold) and accuracy per method; ``diagnostics`` gives the
same analyses as numbers a reader can quote (``diagnostics.json`` and tables in the report):
the share of correct candidates and of IWSI's kept ones per DS-weight bin (Figure 5's bins),
and the losses of the valid set, the majority candidates and IWSI's kept set (Figure 4).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from dsw_ray import columns as C
from dsw_ray.errors import UserError
from dsw_ray.filters import answers_correct, variant
from dsw_ray.rundir import stage_states, write_json
from dsw_ray.score import PAPER_VALID_LOSS, VALID_LOSSES
from dsw_ray.train import LOSS_HISTORY
from dsw_ray.weights import keep_lowest, official_keep

REPORT = "report.md"
DIAGNOSTICS = "diagnostics.json"
DS_BINS = (1.0, 1.1, 1.3, 1.5, 2.0, float("inf"))  # the bins of the paper's Figure 5
HEADER = ("method", "round", "kept", "kept correct", "accuracy", "95% interval", "vs base", "vs LMSI")


def percent(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def bounds(numbers: dict | None, signed: bool = False) -> str:
    """``[low, high]`` of an interval in points (``+`` signs for a difference)."""
    if not numbers or numbers.get("low") is None:
        return "-"
    sign = "+" if signed else ""
    return f"[{numbers['low'] * 100:{sign}.1f}, {numbers['high'] * 100:{sign}.1f}]"


def difference(numbers: dict | None) -> str:
    """A paired difference in points with its interval, e.g. ``+6.0 [+2.2, +9.8]``."""
    if not numbers or numbers.get("difference") is None:
        return "-"
    return f"{numbers['difference'] * 100:+.1f} {bounds(numbers, signed=True)}"


def accuracy_cell(numbers: dict) -> str:
    """The accuracy; with several training seeds their mean and standard deviation."""
    spread = numbers.get("seed_spread")
    if spread and spread["seeds"] > 1:
        return f"{spread['mean'] * 100:.1f}% ± {spread['std'] * 100:.1f}"
    return percent(numbers["accuracy"])


def table_rows(summary: dict) -> list[tuple[str, ...]]:
    """One row for the base model, then one per method and round. Intervals are 95% bootstrap
    intervals over test questions; differences are paired (the same questions)."""
    rows = [("base", "-", "-", "-", percent(summary["base_accuracy"]), bounds(summary.get("base")), "-", "-")]
    for result in summary["rounds"]:
        for method, numbers in result["methods"].items():
            rows.append(
                (
                    variant(method).title,
                    str(result["round"]),
                    str(numbers["kept"]),
                    percent(numbers["kept_correct"]),
                    accuracy_cell(numbers),
                    bounds(numbers.get("interval")),
                    difference(numbers.get("vs_base")),
                    difference(numbers.get("vs_lmsi")),
                )
            )
    return rows


def aligned(rows) -> str:
    """Plain-text columns: the first left-aligned, the rest right-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def paper_valid_loss_line(summary: dict) -> str | None:
    """The first round's Lv beside the paper's, for a task the paper reports one for."""
    if summary["task"] not in PAPER_VALID_LOSS:
        return None
    candidates = next(iter(summary["rounds"][0]["methods"].values()))["candidates"]
    if "valid_loss" not in candidates:
        return None
    v = candidates["valid_loss"]
    return (
        f"Lv = {v['mean']:.4f} ± {v['stderr']:.4f} (n = {v['n']}, semantics {summary['semantics']}); "
        f"the paper's: {PAPER_VALID_LOSS[summary['task']]}"
    )


def text_table(summary: dict) -> str:
    return aligned([HEADER, *table_rows(summary)])


def status_text(run_dir: str) -> str:
    """``dsw-ray status``: every stage of ``run_dir`` (done or unfinished, rows, seconds, when)
    and the comparison table so far."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run directory; give a job's run_dir (e.g. runs/quickstart).")
    states = stage_states(run_dir)
    if not states:
        raise UserError(f"{run_dir} holds no stage yet (no manifest.json below it); is it a job's run_dir?")

    def cell(value) -> str:
        return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)

    rows = [("stage", "state", "rows in", "rows out", "seconds", "finished")]
    for state in states:
        rows.append(
            (
                state["stage"],
                state["state"],
                cell(state.get("rows_in")),
                cell(state.get("rows")),
                cell(state.get("seconds")),
                (state.get("finished") or "-")[:19].replace("T", " "),
            )
        )
    text = [aligned(rows)]
    unfinished = sum(state["state"] == "partial" for state in states)
    if unfinished:
        text.append(
            f"{unfinished} stage(s) unfinished: running now, or stopped before the end; "
            "rerunning the same `dsw-ray run` resumes there."
        )
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            text.append(text_table(json.load(f)))
    else:
        text.append("no summary.json yet: the job has not finished.")
    return "\n\n".join(text)


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def read_stage(run_dir: str, stage: str, columns: list[str]) -> pa.Table | None:
    path = os.path.join(run_dir, stage, "data")
    return pads.dataset(path, format="parquet").to_table(columns=columns) if os.path.isdir(path) else None


def first_round_scores(run_dir: str, summary: dict) -> tuple[str, pa.Table | None]:
    """The first round's candidates folder and its scored majority candidates (None if unscored)."""
    candidates_dir = next(iter(summary["rounds"][0]["methods"].values()))["candidates"]["dir"]
    columns = [C.DS_WEIGHT, C.LOSS, C.ANSWER, C.GOLD]
    scored = read_stage(run_dir, os.path.join(candidates_dir, "score"), columns)
    return candidates_dir, scored if scored is not None and scored.num_rows else None


def iwsi_kept(summary: dict, scored: pa.Table, keep_fraction: float) -> np.ndarray:
    """Which scored majority candidates IWSI keeps at ``keep_fraction``, in the run's semantics."""
    keep = official_keep if summary["semantics"] == "official" else keep_lowest
    return keep(scored[C.DS_WEIGHT].to_numpy(), keep_fraction)


def pyplot():
    """matplotlib's pyplot, drawing to files only (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    return path


def quartiles(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"n": 0}
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    return {"n": len(values), "mean": float(values.mean()), "p25": float(p25), "median": float(p50), "p75": float(p75)}


def diagnostics(run_dir: str, summary: dict, keep_fraction: float) -> dict | None:
    """The first round's DS weights and losses as numbers: per DS-weight bin (``DS_BINS``), the
    majority candidates, the share correct (when the questions have gold labels) and the share
    IWSI keeps; the losses of the valid set, the majority candidates (correct and not) and the
    kept set (mean and quartiles). None when the round scored nothing."""
    candidates_dir, scored = first_round_scores(run_dir, summary)
    if scored is None:
        return None
    official = summary["semantics"] == "official"
    ds, loss = scored[C.DS_WEIGHT].to_numpy(), scored[C.LOSS].to_numpy()
    kept = iwsi_kept(summary, scored, keep_fraction)
    correct = answers_correct(scored, official) if scored[C.GOLD].null_count == 0 else None
    bins = []
    for low, high in zip(DS_BINS, DS_BINS[1:]):
        inside = (ds >= low) & (ds < high)
        n = int(inside.sum())
        bins.append({
            "bin": f"[{low:g}, {high:g})", "candidates": n,
            "correct": float(correct[inside].mean()) if correct is not None and n else None,
            "kept_by_iwsi": float(kept[inside].mean()) if n else None,
        })  # fmt: skip
    losses = {
        "valid set": quartiles(valid_losses(run_dir, candidates_dir)),
        "majority candidates": quartiles(loss),
        "kept by IWSI": quartiles(loss[kept]),
    }
    if correct is not None:
        losses["majority, correct"] = quartiles(loss[correct])
        losses["majority, incorrect"] = quartiles(loss[~correct])
    return {"round": 1, "keep_fraction": keep_fraction, "ds_weight_bins": bins, "losses": losses}


def diagnostic_tables(numbers: dict) -> list[str]:
    """``diagnostics`` as two markdown tables."""
    bins = [
        (b["bin"], str(b["candidates"]), percent(b["correct"]), percent(b["kept_by_iwsi"]))
        for b in numbers["ds_weight_bins"]
    ]
    figure = lambda q, key: f"{q[key]:.3f}" if q["n"] else "-"  # noqa: E731
    losses = [
        (name, str(q["n"]), figure(q, "mean"), figure(q, "p25"), figure(q, "median"), figure(q, "p75"))
        for name, q in numbers["losses"].items()
    ]
    return [
        f"## DS weights and correctness (round 1; the paper's Figure 5)\n\nThe majority candidates in each bin of "
        f"DS weight, the share of them whose answer is the gold one, and the share IWSI keeps (k = "
        f"{numbers['keep_fraction']}; it keeps the lowest weights first).",
        markdown_table(("DS weight", "candidates", "correct", "kept by IWSI"), bins),
        "## Losses (round 1; the paper's Figure 4)\n\nPer-sequence loss under the base model: the valid set's gold "
        "rationales (their mean is Lv), the majority candidates and the set IWSI keeps.",
        markdown_table(("texts", "n", "mean", "25%", "median", "75%"), losses),
    ]


def kept_sets(summary: dict) -> list[tuple[str, ...]]:
    """Per method and round, how right its kept set is beside the oracle's (every correct
    candidate): its precision, the majority's (what LMSI keeps), and the share of all correct
    candidates it keeps. Empty when the questions have no gold labels."""
    rows = []
    for result in summary["rounds"]:
        for method, numbers in result["methods"].items():
            c = numbers["candidates"]
            if numbers["kept_correct"] is None or c["correct"] is None:
                continue
            all_correct = c["correct"] * c["generated"]
            share = numbers["kept"] * numbers["kept_correct"] / all_correct if all_correct else None
            majority = c["majority_correct"]  # None when no candidate is in a majority
            rows.append((
                variant(method).title, str(result["round"]), str(numbers["kept"]), percent(numbers["kept_correct"]),
                percent(majority), "-" if majority is None else f"{(numbers['kept_correct'] - majority) * 100:+.1f}",
                percent(share),
            ))  # fmt: skip
    return rows


KEPT_HEADER = ("method", "round", "kept", "precision", "majority's", "vs majority", "of all correct")


def keep_fraction_of(method: str, default: float) -> float | None:
    """The keep fraction a method ran with (``iwsi@0.6``: 0.6), None for a method without one."""
    chosen = variant(method)
    if "keep_fraction" not in chosen.spec.settings:
        return None
    return default if chosen.keep_fraction is None else chosen.keep_fraction


def sweeps(summary: dict, keep_fraction: float) -> dict[str, list[tuple[float, dict]]]:
    """The last round's methods run at two or more keep fractions: method title -> [(k, numbers)] by k."""
    by_method: dict[str, list] = {}
    for method, numbers in summary["rounds"][-1]["methods"].items():
        k = keep_fraction_of(method, keep_fraction)
        if k is not None:
            by_method.setdefault(variant(method).spec.title, []).append((k, numbers))
    return {title: sorted(points, key=lambda p: p[0]) for title, points in by_method.items() if len(points) > 1}


def sweep_rows(summary: dict, keep_fraction: float) -> list[tuple[str, ...]]:
    return [
        (title, f"{k:g}", str(numbers["kept"]), percent(numbers["kept_correct"]), accuracy_cell(numbers),
         bounds(numbers.get("interval")), difference(numbers.get("vs_lmsi")))
        for title, points in sweeps(summary, keep_fraction).items()
        for k, numbers in points
    ]  # fmt: skip


def plot_sweep(summary: dict, keep_fraction: float, path: str) -> str | None:
    """Accuracy against the keep fraction k with 95% intervals (the paper's Figure 2), LMSI and
    the base model as lines."""
    plt = pyplot()
    found = sweeps(summary, keep_fraction)
    if not found:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 4))
    for title, points in found.items():
        ks = [k for k, _ in points]
        values = [100 * (n["accuracy"] or 0.0) for _, n in points]
        low = [v - 100 * n["interval"]["low"] if n.get("interval") else 0 for v, (_, n) in zip(values, points)]
        high = [100 * n["interval"]["high"] - v if n.get("interval") else 0 for v, (_, n) in zip(values, points)]
        axis.errorbar(ks, values, yerr=[low, high], marker="o", capsize=3, label=title)
    lmsi = summary["rounds"][-1]["methods"].get("lmsi")
    if lmsi and lmsi.get("accuracy") is not None:
        axis.axhline(100 * lmsi["accuracy"], color="tab:gray", linestyle=":", label="LMSI")
    axis.axhline(100 * summary["base_accuracy"], color="black", linestyle="--", label="base model")
    axis.set_xlabel("keep fraction k")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{summary['task']}: accuracy against k (95% intervals)")
    axis.legend()
    return save(figure, path)


def plot_losses(run_dir: str, summary: dict, keep_fraction: float, path: str) -> str | None:
    """The first round's loss distributions under the base model (the paper's Figure 4): the
    valid set's gold rationales, the majority candidates and the set IWSI keeps."""
    plt = pyplot()
    candidates_dir, scored = first_round_scores(run_dir, summary)
    if scored is None:
        return None
    loss = scored[C.LOSS].to_numpy()
    kept = iwsi_kept(summary, scored, keep_fraction)
    groups = [("majority candidates", loss), (f"kept by IWSI (k = {keep_fraction})", loss[kept])]
    valid = valid_losses(run_dir, candidates_dir)
    groups = [(name, values) for name, values in [("valid set", valid), *groups] if len(values)]
    figure, axis = plt.subplots(figsize=(6.4, 4))
    bins = np.linspace(min(g.min() for _, g in groups), max(g.max() for _, g in groups), 40)
    for name, values in groups:
        axis.hist(values, bins=bins, density=True, histtype="step", linewidth=1.5, label=f"{name} ({len(values)})")
    if len(valid):
        axis.axvline(valid.mean(), color="black", linestyle="--", label=f"Lv = {valid.mean():.3f}")
    axis.set_xlabel("per-sequence loss under the base model")
    axis.set_ylabel("density")
    axis.set_title("Loss distributions, round 1")
    axis.legend()
    return save(figure, path)


def valid_losses(run_dir: str, candidates_dir: str) -> np.ndarray:
    path = os.path.join(run_dir, candidates_dir, "score", VALID_LOSSES)
    return pads.dataset(path).to_table()[C.LOSS].to_numpy() if os.path.exists(path) else np.array([])


def plot_ds_weights(run_dir: str, summary: dict, keep_fraction: float, path: str) -> str | None:
    """Histogram of the first round's DS weights, split by correctness when labels exist."""
    plt = pyplot()
    _, scored = first_round_scores(run_dir, summary)
    if scored is None:
        return None
    official = summary["semantics"] == "official"
    ds = scored[C.DS_WEIGHT].to_numpy()
    kept = iwsi_kept(summary, scored, keep_fraction)
    figure, axis = plt.subplots(figsize=(6.4, 4))
    bins = np.linspace(1.0, max(float(ds.max()), 1.0 + 1e-6), 30)
    if scored[C.GOLD].null_count == 0:
        correct = answers_correct(scored, official)
        axis.hist(ds[correct], bins=bins, alpha=0.6, label=f"correct ({correct.sum()})", color="tab:green")
        axis.hist(ds[~correct], bins=bins, alpha=0.6, label=f"incorrect ({(~correct).sum()})", color="tab:red")
    else:
        axis.hist(ds, bins=bins, alpha=0.7, label=f"majority candidates ({len(ds)})")
    if kept.any() and not kept.all():
        axis.axvline(ds[kept].max(), color="black", linestyle="--", label=f"IWSI keeps below (k = {keep_fraction})")
    axis.set_xlabel("DS weight")
    axis.set_ylabel("majority candidates")
    axis.set_title("DS weights of the round-1 majority candidates")
    axis.legend()
    return save(figure, path)


def plot_accuracy(summary: dict, path: str) -> str:
    plt = pyplot()
    last = summary["rounds"][-1]
    names = [variant(m).title for m in last["methods"]]
    values = [100 * (r["accuracy"] or 0.0) for r in last["methods"].values()]
    figure, axis = plt.subplots(figsize=(6.4, 4))
    axis.bar(names, values, color="tab:blue")
    axis.axhline(100 * summary["base_accuracy"], color="black", linestyle="--", label="base model")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{summary['task']}: greedy accuracy after round {last['round']}")
    axis.legend()
    return save(figure, path)


def loss_history(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, LOSS_HISTORY)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def plot_training(summary: dict, path: str) -> str | None:
    """Each fine-tune's training loss per optimizer step (mean over its micro batches), and its
    held-out loss on the valid set after each epoch; epoch 0 is the base model's ``Lv``
    (the same loss in the paper's semantics), so a rising curve shows overfitting at once."""
    plt = pyplot()
    figure, (steps_axis, epochs_axis) = plt.subplots(1, 2, figsize=(11, 4))
    plotted = False
    for result in summary["rounds"]:
        for method, numbers in result["methods"].items():
            history = loss_history(numbers.get("model", "")) if numbers.get("accuracy") is not None else None
            if not history or not history["history"]:
                continue
            label = variant(method).title + (f" (round {result['round']})" if len(summary["rounds"]) > 1 else "")
            per_step: dict[int, list[float]] = {}
            for entry in history["history"]:
                per_step.setdefault(entry["optimizer_step"], []).append(entry["loss"])
            line = steps_axis.plot(list(per_step), [float(np.mean(v)) for v in per_step.values()], label=label, alpha=0.8)
            heldout = history.get("heldout_history") or []
            if heldout:
                start = numbers["candidates"].get("valid_loss") if summary["semantics"] == "paper" else None
                epochs = ([0] if start else []) + [h["epoch"] for h in heldout]
                losses = ([start["mean"]] if start else []) + [h["loss"] for h in heldout]
                epochs_axis.plot(epochs, losses, marker="o", color=line[0].get_color(), label=label)
            plotted = True
    if not plotted:
        plt.close(figure)
        return None
    steps_axis.set_xlabel("optimizer step")
    steps_axis.set_ylabel("training loss (mean token loss x weight)")
    steps_axis.set_title("Training loss")
    epochs_axis.set_xlabel("epoch (0: the model before fine-tuning)")
    epochs_axis.set_ylabel("valid-set loss")
    epochs_axis.set_title("Held-out loss on the labeled valid set")
    for axis in (steps_axis, epochs_axis):
        axis.legend()
    return save(figure, path)


def candidate_lines(summary: dict) -> list[str]:
    lines, seen = [], set()
    for result in summary["rounds"]:
        for numbers in result["methods"].values():
            c = numbers["candidates"]
            if c["dir"] in seen:
                continue
            seen.add(c["dir"])
            text = (
                f"- `{c['dir']}`: {c['generated']} candidates, {c['no_answer']} without a parsable answer, "
                f"{c['majority']} in the majority; correct: {percent(c['correct'])} of all, "
                f"{percent(c['majority_correct'])} of the majority"
            )
            if "valid_loss" in c:
                v = c["valid_loss"]
                text += f"; Lv = {v['mean']:.4f} ± {v['stderr']:.4f} (n = {v['n']})"
                if summary["task"] in PAPER_VALID_LOSS:
                    text += f"; the paper's Lv: {PAPER_VALID_LOSS[summary['task']]}"
            lines.append(text + ".")
    return lines


def kept_section(summary: dict) -> list[str]:
    rows = kept_sets(summary)
    if not rows:
        return []
    return [
        "## Kept sets beside the oracle\n\n`precision`: the share of a method's kept samples whose answer is the gold "
        "one; `majority's`: the same share over every majority candidate (what LMSI keeps), and the difference in "
        "points; `of all correct`: the share of every correct candidate, majority or not (what the oracle keeps), "
        "that the method keeps.",
        markdown_table(KEPT_HEADER, rows),
    ]


def sweep_section(summary: dict, keep_fraction: float) -> list[str]:
    rows = sweep_rows(summary, keep_fraction)
    if not rows:
        return []
    return [
        "## Accuracy against the keep fraction k (the paper's Figure 2)\n\nThe same candidates and scores, one "
        "fine-tune per k; `vs LMSI` is the paired difference in points with its 95% interval.",
        markdown_table(("method", "k", "kept", "kept correct", "accuracy", "95% interval", "vs LMSI"), rows),
    ]


def write_report(run_dir: str, summary: dict, keep_fraction: float) -> str:
    """Write ``report.md``, its PNGs and ``diagnostics.json`` into the run directory; returns the report's path."""
    numbers = diagnostics(run_dir, summary, keep_fraction)
    write_json(os.path.join(run_dir, DIAGNOSTICS), numbers)
    figures = [
        ("DS weights", plot_ds_weights(run_dir, summary, keep_fraction, os.path.join(run_dir, "ds_weights.png"))),
        ("Loss distributions", plot_losses(run_dir, summary, keep_fraction, os.path.join(run_dir, "losses.png"))),
        ("Accuracy per method", plot_accuracy(summary, os.path.join(run_dir, "accuracy.png"))),
        ("Accuracy against k", plot_sweep(summary, keep_fraction, os.path.join(run_dir, "keep_fraction.png"))),
        ("Training and held-out loss", plot_training(summary, os.path.join(run_dir, "training.png"))),
    ]
    dropped = [
        (variant(m).title, str(r["round"]), ", ".join(f"{k} {v}" for k, v in n["dropped"].items()) or "-")
        for r in summary["rounds"]
        for m, n in r["methods"].items()
    ]
    parts = [
        f"# dsw-ray run: {summary['task']}",
        f"{summary['questions']} questions, {summary['valid']} valid, {summary['test']} test; "
        f"semantics: {summary['semantics']}; base model `{summary['model']}`.",
        "## Accuracy (greedy, test set)",
        "`kept correct`: the share of the kept training samples whose answer equals the gold label. "
        "`95% interval`: a bootstrap over the test questions; `vs base` and `vs LMSI`: the paired difference in "
        "points on the same questions, with its 95% interval (an interval that holds 0 is no evidence of a "
        "difference)" + (
            f". Each method was fine-tuned {summary['repeats']} times with different training seeds: its accuracy "
            "is the mean ± standard deviation over seeds, and the intervals are of the per-question mean."
            if summary.get("repeats", 1) > 1 else "."
        ),
        markdown_table(HEADER, table_rows(summary)),
        "## Candidates",
        "\n".join(candidate_lines(summary)),
        "## What each method dropped",
        markdown_table(("method", "round", "dropped"), dropped),
        *kept_section(summary),
        *sweep_section(summary, keep_fraction),
        *(diagnostic_tables(numbers) if numbers else []),
        "## Figures",
        *[f"![{title}]({os.path.basename(path)})" for title, path in figures if path],
    ]
    path = os.path.join(run_dir, REPORT)
    with open(path, "w") as f:
        f.write("\n\n".join(parts) + "\n")
    return path
