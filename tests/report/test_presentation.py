"""Report presentation (issue 26): no signed zeros, the search page styled with a Result box, a legend on every plot,
a record of quantities drawn one unit per panel, point names that do not collide, pages that fit 1400 px."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compress.report import html as report_html
from compress.report import search, write
from compress.report.browser import check_html, find_chromium
from compress.report.build import build
from compress.report.intervals import number, with_ci
from compress.report.plots import (
    layer_series,
    place_labels,
    png_legend,
    record_panels,
    record_series,
    unit_of,
)
from compress.report.render import markdown
from compress.report.schema import load_results

REPORTS = Path(__file__).resolve().parents[2] / "reports"
# A minus before a figure that is all zeros, not inside a range such as `[0.10-0.00]`.
SIGNED_ZERO = re.compile(r"(?<![\w.])-0(\.0+)?(?![0-9.])")


def committed(kind: str) -> list[Path]:
    return sorted(p.parent for p in REPORTS.glob(f"*/{kind}"))


def test_number_writes_zero_without_a_sign():
    assert number(-0.0) == "0.00" and number(-1e-7, "{:.4f}") == "0.0000" and number(1e-7, "{:+.2f}") == "0.00"
    assert number(-0.0, "{:.1f}", "%") == "0.0%" and number(-0.0, "{:.2f}x") == "0.00x"
    assert number(-0.01) == "-0.01" and number(0.01, "{:+.2f}") == "+0.01" and number(-0.1, "{:.1f}") == "-0.1"
    assert number(-1e-7, "{:.3g}") == "-1e-07" and number(None) == "-"
    assert with_ci(-0.0, [-0.001, 0.5]) == "0.00 [0.00-0.50]"


def test_negative_zero_never_reaches_a_report(results):
    # setup: a stage that is exactly as accurate as the teacher, with a KL of -1e-9 (float noise) and -0.0 timings
    results["stages"][2]["accuracy"] = results["stages"][0]["accuracy"]
    results["stages"][2]["agreement"]["mean_kl"] = -1e-9
    results["stages"][2]["pass_metrics"] = {"delta": -0.0}
    # execute
    built = build(results)
    text = markdown(built) + report_html.report_html(built, []) + built["summary"]["note"]
    # assert
    assert not SIGNED_ZERO.search(text), SIGNED_ZERO.search(text)
    assert "| distill-3l | distill | teacher | pytorch | 88.00 | 0.00 |" in text


@pytest.mark.parametrize("folder", committed("results.json"), ids=lambda p: p.name)
def test_committed_reports_render_without_signed_zeros(folder):
    built = build(load_results(folder))
    text = markdown(built) + report_html.report_html(built, [])
    assert not SIGNED_ZERO.search(text), SIGNED_ZERO.search(text)


@pytest.mark.parametrize("folder", committed("search.json"), ids=lambda p: p.name)
def test_committed_search_reports_render_without_signed_zeros(folder):
    results = json.loads((folder / "search.json").read_text())
    text = search.markdown(results, None) + search.html_report(results, None)
    assert not SIGNED_ZERO.search(text), SIGNED_ZERO.search(text)


def _visible(page: str) -> str:
    """The page's text as a reader sees it: no <style>/<script>, no tags."""
    page = re.sub(r"<(style|script)>.*?</\1>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", "", page)


def test_search_report_is_styled_with_code_spans_and_a_result_box(search_results_chosen):
    # execute
    page = search.html_report(search_results_chosen, None)
    md = search.markdown(search_results_chosen, None)
    # assert: the run report's stylesheet, code spans as <code>, no raw backtick or ** left for the reader
    assert report_html.CSS in page and "<code>int8</code>" in page and "<code>prune.sparsity</code>" in page
    assert "`" not in _visible(page) and "**" not in _visible(page)
    # the Result box: the best trial, its figures and where its artifacts are, in both renderings
    box = re.search(r'<p class="note"><b>Result\.</b>(.*?)</p>', page).group(1)
    assert "Best trial #1" in box and "89.30%" in box and "87.00% vs 88.00% (-1.00 pt)" in box
    assert "2.900 ms" in box and "6.90x as fast as <code>teacher</code>" in box and "<code>runs/s/best/</code>" in box
    assert "**Result.** Best trial #1 (prune.sparsity=0.1)" in md and "`runs/s/int8-1/model.onnx`" in md
    assert '<tr class="best"><td>chosen (trial 1)</td>' in page  # the chosen row stands out as in the run report
    assert '<div class="table">' in page  # and wide tables scroll in their own box


def test_search_report_without_a_choice_still_has_a_result_box(search_results):
    page = search.html_report(search_results, None)
    assert '<p class="note"><b>Result.</b> No model chosen yet' in page
    assert "3 trials, 2 within the budget" in page


def test_every_plot_has_a_legend_for_its_colours_and_goal_line(results, tmp_path):
    # execute
    folder = write(results, tmp_path / "synthetic").folder
    legends = {p.stem: png_legend(p.read_bytes()) for p in folder.glob("*.png")}
    # assert: every plot carries one, and it names what the colours and lines mean
    assert legends.keys() == {"accuracy_vs_latency", "size", "goals", "layers_0"} and all(legends.values())
    scatter = legends["accuracy_vs_latency"]
    assert {"teacher (reference)", "baseline", "stage (compressed or exported)", "best stage",
            "Pareto front (outlined)"} <= set(scatter)
    assert any(label.startswith("goal: accuracy at most 1.50 pt") for label in scatter)  # the dotted line
    assert {"goal met", "goal missed", "goal threshold"} <= set(legends["goals"])
    assert "zipped (any stage)" in legends["size"] and "on disk: best stage" in legends["size"]


def test_search_plot_has_a_legend(search_results_chosen):
    legend = png_legend(search.pareto_png(search_results_chosen))
    assert "chosen trial" in legend and "full fidelity, within budget" in legend and "Pareto front (outlined)" in legend
    assert any(label.startswith("budget: teacher -1.00 pt accuracy") for label in legend)


def test_a_record_of_quantities_gets_one_panel_per_unit():
    # setup: what causal distillation records (smollm2's topk_check): a count next to KL values and fractions
    metrics = {"topk_check": {"k": 64, "kd_full": 2.0, "kd_topk": 1.75, "relative_gap": 0.12,
                              "teacher_mass_in_topk": 0.87, "blocks": 4}}
    # execute
    records = record_series(metrics)
    panels = record_panels(records)
    # assert: not a per-layer table, and k never shares an axis with a KL
    assert layer_series(metrics) == [] and [t for t, _ in records] == ["topk_check"]
    assert {unit: [n for n, _ in items] for (_, unit), items in panels.items()} == {
        "count": ["k", "blocks"], "KL divergence, nats": ["kd_full", "kd_topk"],
        "fraction (0-1)": ["relative_gap", "teacher_mass_in_topk"]}
    assert unit_of("sparsity_per_layer") == "fraction (0-1)" and unit_of("rank_per_layer") == "count"


def test_stage_with_a_record_is_drawn_per_unit(results, tmp_path):
    results["stages"][4]["pass_metrics"] = {"topk_check": {"k": 64, "kd_full": 2.0, "blocks": 4}}
    folder = write(results, tmp_path / "synthetic").folder
    assert "![too-lossy (quantize_ort): topk_check (one panel per unit)](layers_0.png)" in (folder / "report.md").read_text()
    assert png_legend((folder / "layers_0.png").read_bytes()) == ["too-lossy: topk_check, one panel per unit"]


def test_point_names_do_not_collide():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # setup: quickstart's crowded corner: two points a few pixels apart, a third just above them
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    xy = [(0.050, 98.06), (0.055, 98.06), (0.052, 98.2), (0.2, 77.5)]
    ax.scatter(*zip(*xy, strict=True), s=60)
    ax.set_xscale("log")
    fig.tight_layout()
    # execute
    labels = place_labels(ax, xy, ["baseline-int8", "teacher-onnx", "distill", "prune-ch50"])
    # assert: no two names overlap, and every name stays inside the axes
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    for label in labels:
        label.update_positions(renderer)
    boxes = [Text.get_window_extent(label, renderer) for label in labels]  # the name, not its leader line
    frame = ax.get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)
    plt.close(fig)


def test_wide_tables_wrap_and_scroll(results):
    page = report_html.report_html(build(results), [])
    assert page.count('<div class="table"><table') == page.count("<table")  # every table in a scrolling box
    assert "position:sticky" in report_html.CSS  # whose first column stays in view
    assert '<td class=wrap><span class="nw">accuracy</span>' not in page  # words break only between words
    assert re.search(r"<td class=wrap>accuracy <span class=\"ok\">ok</span> speedup", page)


@pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("folder", committed("results.json"), ids=lambda p: p.name)
def test_committed_reports_fit_a_1400px_window(folder, tmp_path):
    # execute: render the committed results afresh (the committed folder is left alone) and load it at 1400 px
    written = write(load_results(folder), tmp_path / folder.name)
    check = check_html(written.html, tmp_path / "shot.png", width=1400, height=1000)
    # assert: the page never scrolls sideways; every plot decoded
    assert check["page_width"] <= check["window_width"] <= 1400
    assert check["images"] == check["images_ok"] > 0


def test_every_committed_markdown_table_has_as_many_cells_as_its_header():
    import re
    from pathlib import Path

    cell = re.compile(r"(?<!\\)\|")
    for report in Path(__file__).resolve().parents[2].glob("reports/*/report.md"):
        lines = report.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.fullmatch(r"\|(---\|)+", line.strip()):
                continue
            width = line.count("---")
            header = len(cell.findall(lines[i - 1])) - 1
            assert header == width, f"{report}:{i}: header has {header} cells, separator {width}"
            for j in range(i + 1, len(lines)):
                if not lines[j].startswith("|"):
                    break
                assert len(cell.findall(lines[j])) - 1 == width, f"{report}:{j + 1}: {lines[j][:80]}"
