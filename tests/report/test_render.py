"""Report rendering: Markdown tables and sections, HTML self-contained with embedded plots, atomic writes."""

from __future__ import annotations

import json

import pytest

from compress.report import write
from compress.report.browser import check_html, find_chromium
from compress.report.build import build
from compress.report.plots import layer_series
from compress.report.render import markdown


def test_markdown_has_the_tables(results):
    md = markdown(build(results), [("accuracy_vs_latency.png", "Accuracy vs latency")])
    assert md.startswith("# Compression report: synthetic")
    assert "| stage | pass | from | backend | accuracy % |" in md
    assert "| int8 ★ | quantize_ort |" in md
    assert "| too-lossy | quantize_ort | teacher | onnxruntime | 80.00 | -8.00 |" in md
    assert "accuracy MISS" in md and "## Goals" in md and "## Best stage versus references" in md
    assert "![Accuracy vs latency](accuracy_vs_latency.png)" in md


def test_layer_series_finds_tables():
    metrics = {"sparsity_per_layer": {"a": 0.5, "b": 0.4}, "layers": {"a": {"rank": 8, "note": "x"}, "b": {"rank": 4}},
               "rows": [{"layer": "a", "kl": 0.1}, {"layer": "b", "kl": 0.2}], "scalar": 3, "one": {"a": 1}}
    titles = [t for t, _ in layer_series(metrics)]
    assert titles == ["sparsity_per_layer", "layers: rank", "rows: kl"]


def test_write_is_complete_and_self_contained(results, tmp_path):
    written = write(results, tmp_path / "synthetic")
    folder = written.folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["results.json", "report.md", "report.html", "accuracy_vs_latency.png", "size.png", "goals.png", "layers_0.png"])
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html and "<link" not in html  # nothing fetched
    data = json.loads((folder / "results.json").read_text())
    assert data["summary"]["best"] == "int8" and data["schema"] == 1
    # rewriting replaces the folder as a whole and leaves no temporary folder behind
    write(results, folder)
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]


@pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_html_renders_every_plot_in_chromium(results, tmp_path):
    written = write(results, tmp_path / "synthetic")
    check = check_html(written.html, tmp_path / "shot.png")
    assert check["images"] == 4 and check["images_ok"] == 4  # every embedded PNG decoded
    assert check["pixel_std"] > 0.05  # not a blank page


def test_train_mix_table_gives_shares_and_the_expected_tokens_per_student():
    from compress.report import causal

    results = {"data": {"train_mix": [
        {"name": "corpus:kjv", "licence": "public domain", "documents": 10, "dropped": 0, "characters": 400, "tokens": 300},
        {"name": "rte (train)", "licence": "GLUE", "documents": 5, "dropped": 2, "characters": 100, "tokens": 100}]},
        "pipeline": [{"name": "kd", "pass": "distill", "pass_metrics": {"objective": "kd", "tokens_seen": 200}},
                     {"name": "w", "pass": "prune_structured", "pass_metrics": {"recovery": {"token_budget": 100}}}]}
    rows = causal.train_mix_rows(results)
    assert [r[0] for r in rows] == ["corpus:kjv", "rte (train)", "total"]
    assert rows[0][5:] == ["300", "75.0%", "150"] and rows[1][5:] == ["100", "25.0%", "50"]  # of the largest budget
    assert rows[2][2:6] == ["15", "2", "500", "400"]
    assert causal.train_mix_rows({"data": {"train_mix": None}}) == []
