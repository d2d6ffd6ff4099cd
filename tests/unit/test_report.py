"""The comparison table in the shape of the paper's Table 1, from a summary."""

from dsw_ray.report import markdown_table, table_rows, text_table, HEADER


def summary(accuracies: dict) -> dict:
    methods = {
        name: {"kept": kept, "kept_correct": correct, "accuracy": accuracy, "dropped": {}}
        for name, (kept, correct, accuracy) in accuracies.items()
    }
    return {"base_accuracy": 0.12, "rounds": [{"round": 1, "methods": methods}]}


def test_rows_are_base_then_methods_in_job_order_with_paper_names():
    rows = table_rows(summary({"iwsi": (255, 0.259, 0.07), "lmsi": (319, 0.223, 0.05), "oracle": (0, None, None)}))
    assert [row[:5] for row in rows] == [
        ("base", "-", "-", "-", "12.0%"),
        ("IWSI", "1", "255", "25.9%", "7.0%"),
        ("LMSI", "1", "319", "22.3%", "5.0%"),
        ("oracle", "1", "0", "-", "-"),
    ]
    assert all(row[5:] == ("-", "-", "-") for row in rows), "no statistics in the summary, none shown"


def test_intervals_paired_differences_and_seed_spread():
    s = summary({"lmsi": (319, 0.5, 0.42), "iwsi": (255, 0.6, 0.45)})
    s["base"] = {"accuracy": 0.12, "low": 0.094, "high": 0.148}
    lmsi, iwsi = s["rounds"][0]["methods"]["lmsi"], s["rounds"][0]["methods"]["iwsi"]
    lmsi.update(interval={"low": 0.377, "high": 0.463}, vs_base={"difference": 0.30, "low": 0.254, "high": 0.346})
    iwsi.update(
        interval={"low": 0.41, "high": 0.49},
        vs_base={"difference": 0.33, "low": 0.28, "high": 0.38},
        vs_lmsi={"difference": 0.03, "low": -0.012, "high": 0.07},
        seed_spread={"mean": 0.45, "std": 0.0123, "seeds": 3},
    )
    rows = table_rows(s)
    assert rows[0][5] == "[9.4, 14.8]"
    assert rows[1][4:] == ("42.0%", "[37.7, 46.3]", "+30.0 [+25.4, +34.6]", "-")
    assert rows[2][4:] == ("45.0% ± 1.2", "[41.0, 49.0]", "+33.0 [+28.0, +38.0]", "+3.0 [-1.2, +7.0]")


def test_text_and_markdown_render_every_row():
    s = summary({"iwsi_w": (10, 0.5, 0.25), "entropy": (3, 1.0, 0.5)})
    text = text_table(s).splitlines()
    assert text[0].split() == ["method", "round", "kept", "kept", "correct", "accuracy", "95%", "interval", "vs", "base", "vs", "LMSI"]
    assert [line.split()[0] for line in text[2:]] == ["base", "IWSI-w", "Entropy-filter"]
    assert len({len(line.rstrip()) for line in text[2:]}) == 1, "columns line up"
    markdown = markdown_table(HEADER, table_rows(s)).splitlines()
    assert markdown[0] == "| method | round | kept | kept correct | accuracy | 95% interval | vs base | vs LMSI |"
    assert markdown[3] == "| IWSI-w | 1 | 10 | 50.0% | 25.0% | - | - | - |"


def test_status_lists_stages_and_the_table_so_far(tmp_path):
    import json
    import subprocess
    import sys

    from dsw_ray.rundir import run_stage

    def rows(n):
        return lambda out: {"rows": n}

    run_stage(str(tmp_path / "round-1" / "generate"), "a", rows(24), rows_in=12)
    run_stage(str(tmp_path / "round-1" / "vote"), "b", rows(24), rows_in=24)
    (tmp_path / "round-1" / "score.partial").mkdir()
    status = subprocess.run(
        [sys.executable, "-m", "dsw_ray", "status", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    lines = status.splitlines()
    assert lines[0].split() == ["stage", "state", "rows", "in", "rows", "out", "seconds", "finished"]
    assert lines[2].split()[:4] == ["round-1/generate", "done", "12", "24"]
    assert lines[3].split()[:4] == ["round-1/vote", "done", "24", "24"]
    assert lines[4].split()[:2] == ["round-1/score", "partial"]
    assert "1 stage(s) unfinished" in status and "no summary.json yet" in status

    summary = {"base_accuracy": 0.1, "rounds": [{"round": 1, "methods": {"iwsi": {"kept": 3, "kept_correct": 0.5, "accuracy": 0.2}}}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    status = subprocess.run([sys.executable, "-m", "dsw_ray", "status", str(tmp_path)], capture_output=True, text=True).stdout
    assert "IWSI        1     3         50.0%     20.0%             -        -        -" in status

    missing = subprocess.run([sys.executable, "-m", "dsw_ray", "status", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such run directory" in missing.stderr and "Traceback" not in missing.stderr


def test_diagnostics_give_the_papers_figure_4_and_5_as_numbers(tmp_path):
    """Correct share and IWSI's kept share per DS-weight bin, and the loss quartiles, from a run
    directory's score stage (here written by hand: six majority candidates, two valid rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dsw_ray.report import diagnostic_tables, diagnostics

    score = tmp_path / "round-1" / "score"
    (score / "data").mkdir(parents=True)
    ds = [1.0, 1.05, 1.2, 1.4, 1.7, 3.0]
    pq.write_table(pa.table({
        "ds_weight": ds, "loss": [1.0, 1.05, 0.8, 1.4, 0.6, 3.0],
        "answer": ["1", "2", "3", "4", "5", "6"], "gold": ["1", "0", "3", "0", "5", "6"],
    }), score / "data" / "part-0.parquet")  # fmt: skip
    pq.write_table(pa.table({"question_id": ["v0", "v1"], "loss": [0.9, 1.1]}), score / "valid_losses.parquet")
    run = {"semantics": "paper", "rounds": [{"methods": {"iwsi": {"candidates": {"dir": "round-1"}}}}]}

    numbers = diagnostics(str(tmp_path), run, keep_fraction=0.5)
    bins = {b["bin"]: (b["candidates"], b["correct"], b["kept_by_iwsi"]) for b in numbers["ds_weight_bins"]}
    assert bins == {
        "[1, 1.1)": (2, 0.5, 1.0), "[1.1, 1.3)": (1, 1.0, 1.0), "[1.3, 1.5)": (1, 0.0, 0.0),
        "[1.5, 2)": (1, 1.0, 0.0), "[2, inf)": (1, 1.0, 0.0),
    }  # fmt: skip
    losses = numbers["losses"]
    assert losses["valid set"]["mean"] == 1.0 and losses["kept by IWSI"]["n"] == 3
    assert losses["majority, correct"]["n"] == 4 and losses["majority, incorrect"]["median"] == 1.225

    tables = "\n".join(diagnostic_tables(numbers))
    assert "the paper's Figure 5" in tables and "| [1.5, 2) | 1 | 100.0% | 0.0% |" in tables
    assert "| kept by IWSI | 3 | 0.950 |" in tables


def test_kept_sets_give_each_filters_precision_beside_the_majority_and_the_oracle():
    from dsw_ray.report import KEPT_HEADER, kept_sets

    candidates = {"generated": 100, "correct": 0.5, "majority": 60, "majority_correct": 0.7}
    s = summary({"lmsi": (60, 0.7, 0.3), "iwsi": (48, 0.75, 0.31), "oracle": (50, 1.0, 0.4)})
    for numbers in s["rounds"][0]["methods"].values():
        numbers["candidates"] = candidates
    rows = {row[0]: dict(zip(KEPT_HEADER, row)) for row in kept_sets(s)}
    # IWSI keeps 48 * 0.75 = 36 of the 50 correct candidates; LMSI 42; the oracle all 50.
    assert rows["IWSI"]["precision"] == "75.0%" and rows["IWSI"]["vs majority"] == "+5.0"
    assert rows["IWSI"]["of all correct"] == "72.0%" and rows["LMSI"]["of all correct"] == "84.0%"
    assert rows["oracle"]["of all correct"] == "100.0%" and rows["oracle"]["vs majority"] == "+30.0"
    nobody = summary({"none": (24, 0.0, 0.1)})  # no majority: no majority share to compare with
    nobody["rounds"][0]["methods"]["none"]["candidates"] = {**candidates, "correct": 0.0, "majority_correct": None}
    assert kept_sets(nobody)[0][4:] == ("-", "-", "-")
    unlabeled = summary({"lmsi": (60, None, 0.3)})
    unlabeled["rounds"][0]["methods"]["lmsi"]["candidates"] = {**candidates, "correct": None}
    assert kept_sets(unlabeled) == []


def test_a_k_sweep_is_tabled_and_plotted_by_keep_fraction(tmp_path):
    """``iwsi`` at the filter's keep fraction and ``iwsi@k`` at others make one curve, ordered by
    k; a method run at one k only, or without a k, makes none."""
    from dsw_ray.report import plot_sweep, sweep_rows, sweeps

    s = summary({"lmsi": (60, 0.7, 0.3), "iwsi@0.9": (54, 0.72, 0.33), "iwsi": (48, 0.75, 0.31),
                 "iwsi@0.5": (30, 0.8, 0.29), "random": (48, 0.7, 0.3)})  # fmt: skip
    for numbers in s["rounds"][0]["methods"].values():
        numbers["interval"] = {"low": numbers["accuracy"] - 0.02, "high": numbers["accuracy"] + 0.02}
    s["task"] = "arith"
    found = sweeps(s, keep_fraction=0.8)
    assert list(found) == ["IWSI"] and [k for k, _ in found["IWSI"]] == [0.5, 0.8, 0.9]
    assert [row[:5] for row in sweep_rows(s, 0.8)] == [
        ("IWSI", "0.5", "30", "80.0%", "29.0%"), ("IWSI", "0.8", "48", "75.0%", "31.0%"), ("IWSI", "0.9", "54", "72.0%", "33.0%"),
    ]  # fmt: skip
    path = plot_sweep(s, 0.8, str(tmp_path / "k.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert plot_sweep(summary({"iwsi": (48, 0.75, 0.31)}), 0.8, str(tmp_path / "none.png")) is None


def test_a_gsm8k_run_prints_its_lv_beside_the_papers():
    from dsw_ray.report import paper_valid_loss_line

    s = summary({"lmsi": (60, 0.7, 0.3)})
    s.update(task="gsm8k", semantics="official")
    s["rounds"][0]["methods"]["lmsi"]["candidates"] = {"valid_loss": {"mean": 2.1969, "stderr": 0.0969, "n": 16}}
    line = paper_valid_loss_line(s)
    assert line.startswith("Lv = 2.1969 ± 0.0969 (n = 16, semantics official); the paper's: about 2.05-2.09")
    assert paper_valid_loss_line({**s, "task": "arith"}) is None


def test_the_loss_plot_leaves_out_an_empty_kept_set(tmp_path):
    """One scored candidate at k = 0.3 keeps none: the plot shows the others (the paper's Figure 4)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dsw_ray.report import plot_losses

    score = tmp_path / "round-1" / "score"
    (score / "data").mkdir(parents=True)
    pq.write_table(pa.table({"ds_weight": [1.2], "loss": [0.8], "answer": ["1"], "gold": ["1"]}), score / "data" / "p.parquet")
    pq.write_table(pa.table({"question_id": ["v0", "v1"], "loss": [0.9, 1.1]}), score / "valid_losses.parquet")
    run = {"semantics": "paper", "rounds": [{"methods": {"iwsi": {"candidates": {"dir": "round-1"}}}}]}
    with open(plot_losses(str(tmp_path), run, 0.3, str(tmp_path / "losses.png")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
