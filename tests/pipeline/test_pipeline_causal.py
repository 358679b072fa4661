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
    # Every domain scored per document for every stage, the teacher's own figures included, and the task accuracy
    # with its interval; the ONNX export is the teacher on every domain.
    for s in built["stages"]:
        domains = s["metrics"]["domains"]
        assert set(domains) == {"rte", "sst2"} and all(d["documents"] == 24 and d["bits_per_byte"] > 0
                                                       for d in domains.values())
        task = s["metrics"]["tasks"]["sst2"]
        assert task["examples"] == 16 and task["ci95"]["accuracy"][0] <= task["accuracy"] <= task["ci95"]["accuracy"][1]
    assert onnx_stage["metrics"]["domains"]["sst2"]["perplexity"] == pytest.approx(
        built["stages"][0]["metrics"]["domains"]["sst2"]["perplexity"], rel=1e-4)
    assert "## Perplexity by domain" in md and "## Zero-shot tasks" in md
    assert (tmp_path / "report" / "perplexity_vs_decode.png").stat().st_size > 1000
    # A second run reuses every stage and every evaluation (perplexity identical, nothing recomputed).
    again = run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False)
    assert [s["perplexity"] for s in again["stages"]] == [s["perplexity"] for s in results["stages"]]
    assert all(s["cached"] for s in again["stages"][1:])
