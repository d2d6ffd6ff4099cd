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
    assert rows == [
        ("base", "-", "-", "-", "12.0%"),
        ("IWSI", "1", "255", "25.9%", "7.0%"),
        ("LMSI", "1", "319", "22.3%", "5.0%"),
        ("oracle", "1", "0", "-", "-"),
    ]


def test_text_and_markdown_render_every_row():
    s = summary({"iwsi_w": (10, 0.5, 0.25), "entropy": (3, 1.0, 0.5)})
    text = text_table(s).splitlines()
    assert text[0].split() == ["method", "round", "kept", "kept", "correct", "accuracy"]
    assert [line.split()[0] for line in text[2:]] == ["base", "IWSI-w", "Entropy-filter"]
    assert len({len(line.rstrip()) for line in text[2:]}) == 1, "columns line up"
    markdown = markdown_table(HEADER, table_rows(s)).splitlines()
    assert markdown[0] == "| method | round | kept | kept correct | accuracy |"
    assert markdown[3] == "| IWSI-w | 1 | 10 | 50.0% | 25.0% |"
