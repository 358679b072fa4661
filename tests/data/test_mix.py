"""A training mix: local files and named corpora read as documents, interleaved, deduplicated against eval texts."""

from __future__ import annotations

import json
import subprocess

import pytest
from pydantic import ValidationError

from compress.core.errors import CompressError

KJV = """Ge1:1 In the beginning God created the heaven and the earth.
Ge1:2 And the earth was without form, and void.
Ge2:1 Thus the heavens and the earth were finished, and all the host of them.
1Sa3:10 And the LORD came, and stood, and called as at other times, Samuel, Samuel.
"""


def fake_kjv(tmp_path, monkeypatch) -> None:
    """corpus:kjv already in the cache ($COMPRESS_CACHE/corpora/kjv/text.txt); nothing may be downloaded."""

    def refuse(*a, **k):
        raise AssertionError(f"nothing may be fetched: {a}")

    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "corpora" / "kjv").mkdir(parents=True)
    (tmp_path / "cache" / "corpora" / "kjv" / "text.txt").write_text(KJV)
    monkeypatch.setattr(subprocess, "run", refuse)


def write_jsonl(path, rows: list[dict]):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def files(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"text": "The cat sat on the mat.", "text_pair": "A cat sat.", "label": 0},
        {"text": "A  Dull Film", "text_pair": "The film is dull.", "label": "not a class index"},
        {"text": "Rain fell all day in Paris.", "text_pair": "It rained in Paris.", "label": 1},
    ])
    notes = write_jsonl(tmp_path / "notes.jsonl", [{"body": "First note of the file."}, {"body": "Second note."}])
    return pairs, notes


def test_mix_reads_every_source_interleaves_and_drops_eval_documents(tmp_path, monkeypatch, files):
    from compress.data.causal import MixSource, MixSpec, load_mix
    from compress.data.corpora import load_corpus

    # setup: two local files (the first read as premises and hypotheses) and a corpus
    fake_kjv(tmp_path, monkeypatch)
    pairs, notes = files
    spec = MixSpec(sources=[MixSource(source=str(pairs), fields=["text", "text_pair"]),
                            MixSource(source=str(notes), fields=["body"]), MixSource(source="corpus:kjv")], seed=3)

    # execute: one premise and one note equal eval texts (after case and whitespace folding)
    examples, rows = load_mix(spec, eval_texts=["a dull film", "SECOND   note.", "not in the mix"])
    again, _ = load_mix(spec, eval_texts=["a dull film", "SECOND   note.", "not in the mix"])

    # assert
    kjv = load_corpus("kjv")
    assert examples.texts == again.texts  # deterministic
    assert sorted(examples.texts) == sorted(["The cat sat on the mat.", "Rain fell all day in Paris.", "A cat sat.",
                                             "The film is dull.", "It rained in Paris.", "First note of the file.",
                                             *kjv])
    assert examples.labels is None and examples.text_pairs is None  # text only, labels never read
    assert [(r["documents"], r["dropped"]) for r in rows] == [(5, 1), (1, 1), (3, 0)]
    assert rows[0]["name"] == f"{pairs} text+text_pair" and rows[2]["name"] == "corpus:kjv"
    assert rows[2]["licence"] == "public domain" and rows[0]["licence"] == "unknown"
    assert rows[2]["characters"] == sum(map(len, kjv))
    owners = [0 if t in kjv else 1 for t in examples.texts]
    assert owners != sorted(owners) and owners != sorted(owners, reverse=True)  # interleaved, not one after another


def test_mix_source_selection_and_total_limit(tmp_path, monkeypatch, files):
    from compress.data.causal import MixSource, MixSpec, load_mix
    from compress.data.examples import text_bucket

    # setup
    fake_kjv(tmp_path, monkeypatch)
    pairs, _ = files

    # execute
    _, rows = load_mix([MixSource(source="corpus:kjv", limit=2), MixSource(source=str(pairs), limit=1)])
    train, _ = load_mix([MixSource(source=str(pairs), fields=["text", "text_pair"], part="train", heldout_fraction=0.5)])
    capped, capped_rows = load_mix(MixSpec(sources=[MixSource(source="corpus:kjv"), MixSource(source=str(pairs))],
                                           limit=4))

    # assert: a file's limit counts rows, a corpus's documents; part splits rows by their first field
    assert [r["documents"] for r in rows] == [2, 1]
    premises = ["The cat sat on the mat.", "A  Dull Film", "Rain fell all day in Paris."]
    kept = [p for p in premises if text_bucket(p) >= 0.5]
    assert set(kept) <= set(train.texts) and len(train.texts) == 2 * len(kept)
    assert len(capped.texts) == 4 and sum(r["documents"] for r in capped_rows) == 4


def test_mix_errors_are_one_line(tmp_path, monkeypatch, files):
    from compress.data.causal import MixSource, load_mix

    # setup
    fake_kjv(tmp_path, monkeypatch)
    pairs, notes = files
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": " "}])

    # execute / assert
    cases = [([MixSource(source=str(notes))], "mix[0] (", "no field 'text'"),
             ([MixSource(source="corpus:kjv"), MixSource(source=str(empty))], "mix[1] (", "no text"),
             ([MixSource(source=str(tmp_path / "missing.jsonl"))], "mix[0] (", "not found")]
    for sources, where, what in cases:
        with pytest.raises(CompressError) as e:
            load_mix(sources)
        assert str(e.value).startswith(where) and what in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CompressError, match=r"mix\[0\] \(.*\): all 2 documents are also in an eval set"):
        load_mix([MixSource(source=str(notes), fields=["body"])], eval_texts=["first note of the file.", "second note."])


@pytest.mark.parametrize(("fields", "message"), [
    ({"source": "corpus:nope"}, "unknown corpus 'corpus:nope' (use one of: corpus:kjv"),
    ({"source": "corpus:kjv", "split": "train"}, "'corpus:kjv' is read whole as documents: drop split and fields"),
    ({"source": "notes.txt", "fields": ["text"]}, "drop split and fields"),
    ({"source": "a.jsonl", "fields": ["text", "text"]}, "names a field twice"),
    ({"source": "a.jsonl", "fields": ["a", "b", "c"]}, "at most 2 items"),
    ({"source": "a.jsonl", "label": "label"}, "Extra inputs are not permitted"),
])
def test_bad_mix_sources_are_refused(fields, message):
    from compress.data.causal import MixSource

    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("[", r"\[")):
        MixSource(**fields)
