"""The run's report: the comparison table in the shape of the paper's Table 1, and plots.

``table_rows`` is shared by the CLI (plain text) and ``report.md`` (markdown). The plots
are the paper's Figure 5 analysis (DS weights of correct and incorrect majority
candidates, with the IWSI keep threshold) and accuracy per method.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from dsw_ray import columns as C
from dsw_ray.filters import METHODS, answers_correct
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


def text_table(summary: dict) -> str:
    rows = [HEADER, *table_rows(summary)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
