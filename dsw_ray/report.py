"""The run's report: the comparison table in the shape of the paper's Table 1, and plots.

``table_rows`` is shared by the CLI (plain text) and ``report.md`` (markdown). The plots
are the paper's Figure 5 analysis (DS weights of correct and incorrect majority
candidates, with the IWSI keep threshold) and accuracy per method.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from dsw_ray import columns as C
from dsw_ray.errors import UserError
from dsw_ray.filters import METHODS, answers_correct
from dsw_ray.rundir import stage_states
from dsw_ray.weights import keep_lowest, official_keep

REPORT = "report.md"
HEADER = ("method", "round", "kept", "kept correct", "accuracy")


def percent(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def table_rows(summary: dict) -> list[tuple[str, ...]]:
    """One row for the base model, then one per method and round."""
    rows = [("base", "-", "-", "-", percent(summary["base_accuracy"]))]
    for result in summary["rounds"]:
        for method, numbers in result["methods"].items():
            rows.append(
                (
                    METHODS[method].title,
                    str(result["round"]),
                    str(numbers["kept"]),
                    percent(numbers["kept_correct"]),
                    percent(numbers["accuracy"]),
                )
            )
    return rows


def aligned(rows) -> str:
    """Plain-text columns: the first left-aligned, the rest right-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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


def plot_ds_weights(run_dir: str, summary: dict, keep_fraction: float, path: str) -> str | None:
    """Histogram of the first round's DS weights, split by correctness when labels exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates_dir = next(iter(summary["rounds"][0]["methods"].values()))["candidates"]["dir"]
    scored = read_stage(run_dir, os.path.join(candidates_dir, "score"), [C.DS_WEIGHT, C.ANSWER, C.GOLD])
    if scored is None or scored.num_rows == 0:
        return None
    official = summary["semantics"] == "official"
    ds = scored[C.DS_WEIGHT].to_numpy()
    kept = (official_keep if official else keep_lowest)(ds, keep_fraction)
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
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_accuracy(summary: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = summary["rounds"][-1]
    names = [METHODS[m].title for m in last["methods"]]
    values = [100 * (r["accuracy"] or 0.0) for r in last["methods"].values()]
    figure, axis = plt.subplots(figsize=(6.4, 4))
    axis.bar(names, values, color="tab:blue")
    axis.axhline(100 * summary["base_accuracy"], color="black", linestyle="--", label="base model")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{summary['task']}: greedy accuracy after round {last['round']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
            lines.append(text + ".")
    return lines


def write_report(run_dir: str, summary: dict, keep_fraction: float) -> str:
    """Write ``report.md`` and its PNGs into the run directory; returns the report's path."""
    figures = [
        ("DS weights", plot_ds_weights(run_dir, summary, keep_fraction, os.path.join(run_dir, "ds_weights.png"))),
        ("Accuracy per method", plot_accuracy(summary, os.path.join(run_dir, "accuracy.png"))),
    ]
    dropped = [
        (METHODS[m].title, str(r["round"]), ", ".join(f"{k} {v}" for k, v in n["dropped"].items()) or "-")
        for r in summary["rounds"]
        for m, n in r["methods"].items()
    ]
    parts = [
        f"# dsw-ray run: {summary['task']}",
        f"{summary['questions']} questions, {summary['valid']} valid, {summary['test']} test; "
        f"semantics: {summary['semantics']}; base model `{summary['model']}`.",
        "## Accuracy (greedy, test set)",
        "`kept correct`: the share of the kept training samples whose answer equals the gold label.",
        markdown_table(HEADER, table_rows(summary)),
        "## Candidates",
        "\n".join(candidate_lines(summary)),
        "## What each method dropped",
        markdown_table(("method", "round", "dropped"), dropped),
        "## Figures",
        *[f"![{title}]({os.path.basename(path)})" for title, path in figures if path],
    ]
    path = os.path.join(run_dir, REPORT)
    with open(path, "w") as f:
        f.write("\n\n".join(parts) + "\n")
    return path
