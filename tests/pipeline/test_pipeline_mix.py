"""`compress run` of a decoder recipe whose training split is a mix of local files and a corpus."""

from __future__ import annotations

import json

import yaml

from compress.data import corpora

KJV = "\n".join(f"Ge{c}:{v} And the {c}th chapter of the book of beginnings holds its verse number {v} here."
                for c in range(1, 9) for v in range(1, 6))
SENTENCES = [f"Sentence {i} of the shared set says that the {w} is on the table." for i, w in
             enumerate(["cup", "book", "lamp", "plate", "phone", "key", "pen", "coin"] * 5)]


def test_run_recovers_a_pruned_student_on_a_mix(cli, tmp_path, monkeypatch):
    # setup: a data folder (its train side is in the mix, its validation side is the eval split and a domain), a
    # second file that repeats two eval sentences, and corpus:kjv in the cache (nothing is downloaded)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "corpora" / "kjv").mkdir(parents=True)
    (tmp_path / "cache" / "corpora" / "kjv" / "text.txt").write_text(KJV)
    monkeypatch.setattr(corpora, "fetch_corpus", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no download")))
    (tmp_path / "data").mkdir()
    rows = lambda texts: "\n".join(json.dumps({"text": t, "text_pair": t.upper(), "label": 0}) for t in texts)  # noqa: E731
    (tmp_path / "data" / "train.jsonl").write_text(rows(SENTENCES[:30]))
    (tmp_path / "data" / "validation.jsonl").write_text(rows(SENTENCES[30:]))
    (tmp_path / "notes.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in SENTENCES[30:32] + ["A note."] * 3))
    recipe = {
        "name": "mix", "model": "tiny:llama", "task": "text-generation",
        "data": {"source": "data",
                 "train": {"mix": [{"source": "data", "split": "train", "fields": ["text", "text_pair"]},
                                   {"source": "corpus:kjv"}, {"source": "notes.jsonl", "fields": ["body"]}],
                           "dedup_against_eval": True},
                 "validation": {"split": "train", "limit": 8}, "eval": "validation"},
        "stages": [{"name": "ffn50", "pass": {
            "type": "prune_structured", "unit": "neurons", "sparsity": 0.5, "calibration_blocks": 2,
            "calibration_block_size": 16, "recover": {"max_steps": 2, "batch_size": 2, "block_size": 16,
                                                      "max_blocks": 8, "top_k": 8}}}],
        "eval": {"window": 16, "new_tokens": 2, "latency": None,
                 "domains": [{"name": "held", "source": "data", "split": "validation", "max_documents": 4}]}}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(recipe))

    # execute
    result = cli(["run", "mix.yaml", "--runs", tmp_path / "runs", "--output", tmp_path / "reports"])

    # assert: every source is in the mix; the eval sentences repeated in the notes are dropped and counted
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "reports" / "mix" / "results.json").read_text())
    mix = {row["source"]: row for row in results["data"]["train_mix"]}
    assert (mix["data"]["documents"], mix["data"]["dropped"]) == (60, 0)
    assert mix["corpus:kjv"]["documents"] == 8 and mix["corpus:kjv"]["licence"] == "public domain"
    assert (mix["notes.jsonl"]["documents"], mix["notes.jsonl"]["dropped"]) == (3, 2)
    assert [s["name"] for s in results["stages"]] == ["teacher", "ffn50"]
    recovery = results["pipeline"][0]["pass_metrics"]["recovery"]
    assert recovery
    domain = results["stages"][1]["metrics"]["domains"]["held"]
    assert domain["dropped_duplicates"] == 0  # the mix holds no eval document
    assert domain["trained_on"]  # its folder is a mix source (the flag compares sources, as for a plain train split)
    # tokens per source by the model's tokenizer, and the report's recovery-data table with the domain marked
    from compress.models.load import load_model

    tokenizer = load_model("tiny:llama").tokenizer
    assert mix["notes.jsonl"]["tokens"] == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                                               for t in ["A note."] * 3)
    assert all(row["tokens"] > 0 for row in mix.values())
    md = (tmp_path / "reports" / "mix" / "report.md").read_text()
    assert "## Recovery data" in md and "held (in-domain) ppl" in md
    assert "Recovery data" in (tmp_path / "reports" / "mix" / "report.html").read_text()
