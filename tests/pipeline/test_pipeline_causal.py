"""A decoder recipe through the pipeline and its report."""

from __future__ import annotations

from pathlib import Path

import pytest

RTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rte"


@pytest.mark.skipif(not RTE.exists(), reason="../shared/data is not beside the checkout")
def test_recipe_pipeline_and_report(tmp_path, monkeypatch):
    from compress import load_recipe, run_recipe
    from compress.report import write

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    recipe = load_recipe("tests/recipes/tiny-llama.yaml")
    results = run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False)
    written = write(results, tmp_path / "report")
    built = written.results
    names = [s["name"] for s in built["stages"]]
    assert names == ["teacher", "teacher-onnx", "int8", "int4"]
    for s in built["stages"]:
        assert s["perplexity"] > 1 and s["decode_tokens_per_s"] > 0 and s["ttft_ms"] > 0 and s["peak_rss_mb"] > 0
        assert s["agreement"]["greedy_prefix"] is not None
    onnx_stage = built["stages"][1]
    assert onnx_stage["ppl_increase"] == pytest.approx(0, abs=1e-4) and onnx_stage["agreement"]["top1_agreement"] == 1
    assert built["summary"]["best"] in names[1:] and built["summary"]["best"] != "int8"  # int8 is a baseline
    md = written.markdown.read_text()
    assert "perplexity" in md and "decode tok/s" in md and "perplexity_vs_decode.png" in md
    assert (tmp_path / "report" / "perplexity_vs_decode.png").stat().st_size > 1000
    # A second run reuses every stage and every evaluation (perplexity identical, nothing recomputed).
    again = run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False)
    assert [s["perplexity"] for s in again["stages"]] == [s["perplexity"] for s in results["stages"]]
    assert all(s["cached"] for s in again["stages"][1:])
