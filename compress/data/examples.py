"""Datasets: read labelled examples from files, `datasets` folders or the hub, and turn them into model batches.

Sources (`DataSpec.source`):
- a JSONL / JSON / CSV / TSV file;
- a folder holding `<split>.jsonl` (or .csv/.tsv) files, e.g. `../shared/data/sst2` with split `dev`;
- a folder written by `datasets.Dataset(Dict).save_to_disk`;
- `builtin:digits`: scikit-learn's 8x8 digits (1,797 real images, ships with scikit-learn), for non-text models;
- a hub dataset name, e.g. `glue/sst2` (needs network).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.core.errors import CompressError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}


class DataSpec(BaseModel):
    """Where examples come from and which fields hold text and labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="File, folder of split files, saved `datasets` folder, `builtin:digits` or hub name.")
    split: str | None = Field(None, description="Split name (file stem in a folder, or dataset split).")
    text_field: str = Field("text", description="Field holding the text.")
    text_pair_field: str | None = Field(None, description="Field holding the second text of a pair (e.g. RTE).")
    label_field: str = Field("label", description="Field holding the integer label; missing labels are allowed.")
    limit: int | None = Field(None, gt=0, description="Keep at most this many examples (after shuffling).")
    shuffle: bool = Field(False, description="Shuffle before `limit`, deterministically with `seed`.")
    seed: int = Field(0, description="Seed of the shuffle.")
    part: Literal["all", "train", "heldout"] = Field(
        "all", description="all, or one side of a deterministic split by a hash of each text (no split file needed; "
        "the same text always lands on the same side, so duplicates cannot leak across).")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of texts on the heldout side of `part`.")


@dataclass
class Examples:
    """Loaded examples: texts (and pairs) for text models, or `inputs` arrays for plain models."""

    texts: list[str] | None = None
    text_pairs: list[str] | None = None
    inputs: np.ndarray | None = None  # (N, C, H, W) float32 for image models
    labels: np.ndarray | None = None  # (N,) int64, or None when the data has no labels
    label_names: list[str] | None = None
    origin: str | None = None  # the file or dataset the examples came from (for error messages)
    lines: np.ndarray | None = None  # (N,) line of each example in `origin` (1-based), when it is a text file
    label_field: str = "label"

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.inputs)

    @property
    def num_labels(self) -> int | None:
        if self.label_names:
            return len(self.label_names)
        return int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else None

    def subset(self, index) -> Examples:
        index = np.asarray(index)
        pick = lambda xs: None if xs is None else [xs[i] for i in index]  # noqa: E731
        return Examples(
            texts=pick(self.texts), text_pairs=pick(self.text_pairs),
            inputs=None if self.inputs is None else self.inputs[index],
            labels=None if self.labels is None else self.labels[index], label_names=self.label_names,
            origin=self.origin, lines=None if self.lines is None else self.lines[index], label_field=self.label_field,
        )

    def where(self, i: int) -> str:
        """Where example `i` comes from: `file:line` for text files, else `source row i`."""
        if self.lines is not None:
            return f"{self.origin}:{int(self.lines[i])}"
        return f"{self.origin or 'the data'} row {i}"


def load_examples(spec: DataSpec | str, split: str | None = None, **overrides) -> Examples:
    """Load examples described by `spec` (a `DataSpec` or a source string plus keyword overrides)."""
    if isinstance(spec, str):
        spec = DataSpec(source=spec, split=split, **overrides)
    if spec.source.startswith("builtin:"):
        examples = _load_builtin(spec.source.split(":", 1)[1], spec.split)
        examples.origin = f"{spec.source}:{spec.split}" if spec.split else spec.source
    else:
        examples = _from_dataset(_load_hf_dataset(spec), spec)
    if spec.part != "all":
        if examples.texts is None:
            raise CompressError(f"data part '{spec.part}' splits by text, but '{spec.source}' holds no texts",
                                "use part: all for image data")
        side = [(text_bucket(t) < spec.heldout_fraction) == (spec.part == "heldout") for t in examples.texts]
        examples = examples.subset(np.flatnonzero(side))
    if spec.shuffle:
        examples = examples.subset(np.random.default_rng(spec.seed).permutation(len(examples)))
    if spec.limit is not None and spec.limit < len(examples):
        examples = examples.subset(np.arange(spec.limit))
    return examples


def text_bucket(text: str) -> float:
    """A stable number in [0, 1) from the text's content (the hash split of `DataSpec.part`)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def text_lengths(examples: Examples) -> np.ndarray | None:
    """Characters per example (text plus pair): a cheap proxy for tokens, to group similar lengths so that dynamic
    padding wastes little; None for array data."""
    if examples.texts is None:
        return None
    pairs = examples.text_pairs or [""] * len(examples.texts)
    return np.array([len(t) + len(p) for t, p in zip(examples.texts, pairs, strict=True)])


def iter_batches(model, examples: Examples, batch_size: int = 32, max_length: int = 128,
                 shuffle: bool = False, seed: int = 0, order: np.ndarray | None = None) -> Iterator[dict]:
    """Yield batches of torch tensors for `model` (a TorchModel or OnnxModel): dynamic padding per batch.

    Text batches hold the tokenizer outputs and `labels`; image batches hold `inputs` and `labels`.
    `order` (indices into `examples`) overrides `shuffle`: e.g. by length, so that padding wastes little.
    """
    import torch

    check_labels(examples, getattr(model, "num_labels", None))
    if order is None:
        order = np.random.default_rng(seed).permutation(len(examples)) if shuffle else np.arange(len(examples))
    for start in range(0, len(examples), batch_size):
        idx = order[start:start + batch_size]
        if examples.texts is not None:
            if model.tokenizer is None:
                raise CompressError("text data given to a model without a tokenizer", "use a text model or image data")
            texts = [examples.texts[i] for i in idx]
            pairs = [examples.text_pairs[i] for i in idx] if examples.text_pairs is not None else None
            batch = dict(model.tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length,
                                         return_tensors="pt"))
        else:
            if examples.inputs is None:
                raise CompressError("the data has neither texts nor inputs", "check the dataset fields")
            batch = {"inputs": torch.from_numpy(examples.inputs[idx])}
        if examples.labels is not None:
            batch["labels"] = torch.from_numpy(examples.labels[idx])
        yield batch


def check_labels(examples: Examples, num_classes: int | None) -> None:
    """Every label is one of the model's `num_classes` classes; else CompressError naming the file and line."""
    if examples.labels is None or not num_classes or not len(examples.labels):
        return
    bad = np.flatnonzero((examples.labels < 0) | (examples.labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise CompressError(f"{examples.where(i)}: field '{examples.label_field}' has label {int(examples.labels[i])} "
                            f"but the model has {num_classes} outputs (classes 0..{num_classes - 1})",
                            "fix the label, or pass --num-labels / a model with as many classes as the data")


def sample_texts() -> list[str]:
    """A few real sentences for export parity checks when the user gives no data."""
    return [
        "the movie was a delight from start to finish .",
        "a tedious , overlong mess that never finds its footing .",
        "compression keeps the model small and fast .",
        "I would not recommend it to anyone.",
        "What time does the train to Boston leave tomorrow?",
        "The committee approved the budget after a long debate.",
        "short",
        "an unexpectedly moving story about friendship , loss and the stubbornness of hope in a small town .",
    ]


# --- internals --------------------------------------------------------------------------------------------


def _load_builtin(name: str, split: str | None) -> Examples:
    if name != "digits":
        raise CompressError(f"unknown built-in dataset '{name}'", "use builtin:digits")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    # A fixed stratification-free split: every 5th image is test, every 10th of the rest is validation.
    index = np.arange(len(y))
    test = index % 5 == 0
    val = ~test & (index % 10 == 1)
    masks = {"train": ~test & ~val, "validation": val, "test": test, None: ~test & ~val}
    if split not in masks:
        raise CompressError(f"unknown split '{split}' of builtin:digits", "use train, validation or test")
    keep = masks[split]
    return Examples(inputs=x[keep], labels=y[keep], label_names=[str(d) for d in range(10)])


def _load_hf_dataset(spec: DataSpec):
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    path = Path(spec.source).expanduser()
    if path.is_file():
        return _load_file(path)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                return _pick_split(loaded, spec.split, path)
            return loaded
        split = spec.split or "train"
        for suffix in FILE_BUILDERS:
            if (path / f"{split}{suffix}").exists():
                return _load_file(path / f"{split}{suffix}")
        found = sorted(p.stem for p in path.iterdir() if p.suffix in FILE_BUILDERS)
        raise CompressError(f"no split '{split}' in '{path}'", f"pass --split with one of: {', '.join(found) or '(none)'}")
    if path.suffix or spec.source.startswith((".", "/", "~")):
        raise CompressError(f"data '{spec.source}' not found", "pass an existing JSONL/CSV/TSV file or folder")
    try:
        name, _, config = spec.source.partition("/")
        return datasets.load_dataset(name, config or None, split=spec.split or "train")
    except Exception as e:  # network, unknown name, offline mode: all mean the same to the user
        raise CompressError(f"cannot load dataset '{spec.source}' from the hub ({type(e).__name__})",
                            "pass a local file or folder, or check the name and network") from e


def _load_file(path: Path):
    import datasets

    builder = FILE_BUILDERS.get(path.suffix)
    if builder is None:
        raise CompressError(f"unknown data file type '{path.suffix}'", "use .jsonl, .json, .csv or .tsv")
    if path.suffix == ".jsonl":
        return JsonLines(path)
    kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # malformed file
        raise CompressError(f"cannot parse '{path}' as {path.suffix[1:].upper()} ({type(e).__name__})",
                            "fix the file or pass another one") from e
    ds.compress_origin = str(path)  # for error messages: row i is line i + 2 of a CSV (after the header)
    return ds


class JsonLines:
    """A JSONL file read row by row (each line one JSON object), keeping the line of every row for messages.

    It offers what `_from_dataset` reads of a `datasets.Dataset`: `column_names`, `ds[field]`, `features`."""

    MISSING = object()  # a row without the field

    def __init__(self, path: Path):
        self.compress_origin = str(path)
        self.rows: list[dict] = []
        lines: list[int] = []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CompressError(f"'{path}' is not UTF-8 text (byte {e.start})", "save it as UTF-8 JSON lines") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise CompressError(f"{path}:{number}: not valid JSON ({e})", "write one JSON object per line") from None
            if not isinstance(row, dict):
                raise CompressError(f"{path}:{number}: a {type(row).__name__}, not a JSON object",
                                    'write one object per line, e.g. {"text": "...", "label": 0}')
            self.rows.append(row)
            lines.append(number)
        self.lines = np.asarray(lines, dtype=np.int64)
        self.column_names = list(dict.fromkeys(k for row in self.rows for k in row))
        self.features: dict = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, field: str) -> list:
        return [row.get(field, self.MISSING) for row in self.rows]


def _pick_split(dataset_dict, split: str | None, path: Path):
    if split is None:
        split = "train" if "train" in dataset_dict else next(iter(dataset_dict))
    if split not in dataset_dict:
        raise CompressError(f"no split '{split}' in '{path}'", f"pass --split with one of: {', '.join(dataset_dict)}")
    return dataset_dict[split]


def _from_dataset(ds, spec: DataSpec) -> Examples:
    columns = ds.column_names
    for field in (spec.text_field, spec.text_pair_field):
        if field is not None and field not in columns:
            # repr: a field name may hold any character (a newline would break the one-line error)
            raise CompressError(f"the data has no field {field!r} (fields: {', '.join(map(repr, columns))})",
                                "pass --text-field / --text-pair-field naming one of them")
    origin = getattr(ds, "compress_origin", None) or spec.source
    lines = getattr(ds, "lines", None)
    if lines is None and Path(origin).suffix in (".csv", ".tsv"):
        lines = np.arange(len(ds), dtype=np.int64) + 2  # line 1 is the header
    found = Examples(origin=origin, lines=lines, label_field=spec.label_field)
    texts = _strings(ds[spec.text_field], spec.text_field, found)
    pairs = _strings(ds[spec.text_pair_field], spec.text_pair_field, found) if spec.text_pair_field else None
    label_names = _label_names(spec.source, ds, spec.label_field)
    labels = _labels(ds[spec.label_field], spec.label_field, label_names, found) if spec.label_field in columns else None
    return Examples(texts=texts, text_pairs=pairs, labels=labels, label_names=label_names, origin=origin,
                    lines=lines, label_field=spec.label_field)


def _kind(value) -> str:
    """How a JSON value reads in an error message."""
    if value is JsonLines.MISSING:
        return "missing"
    if value is None or (isinstance(value, float) and value != value):
        return "null"
    if isinstance(value, (bool, int, float)):
        return f"{'a boolean' if isinstance(value, bool) else 'a number'} ({value!r})"
    if isinstance(value, str):
        return f"{value[:40]!r}"
    return f"a {type(value).__name__}"


def _strings(values: list, field: str, found: Examples) -> list[str]:
    """Text of every row: each must be a string."""
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise CompressError(f"{found.where(i)}: field '{field}' is {_kind(value)}, not a string",
                                "give every row its text as a string")
    return values


def _labels(values: list, field: str, names: list[str] | None, found: Examples) -> np.ndarray | None:
    """Integer class indices of every row; None when no row has a label (or all are -1, the hub's 'no label')."""
    absent = [v is JsonLines.MISSING or v is None or (isinstance(v, float) and v != v) or v == -1 for v in values]
    if all(absent):
        return None
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if isinstance(value, str) and names and value in names:
            value = names.index(value)  # a label given by name (labels.json / dataset features)
        elif isinstance(value, float) and value == value and value.is_integer():
            value = int(value)  # e.g. a CSV column read as floats
        if absent[i]:
            raise CompressError(f"{found.where(i)}: field '{field}' is {_kind(value)}: this row has no label",
                                "label every row, or none (unlabelled data is fine for calibration)")
        if isinstance(value, bool) or not isinstance(value, int):
            raise CompressError(f"{found.where(i)}: field '{field}' is {_kind(value)}, not an integer class index",
                                "labels are 0, 1, ... (one per class)")
        if value < 0 or (names and value >= len(names)) or value >= 2**31:
            classes = f"0..{len(names) - 1} ({len(names)} classes named in the data)" if names else "0 or more"
            raise CompressError(f"{found.where(i)}: field '{field}' is {value}, outside the classes {classes}",
                                "fix the label")
        out[i] = value
    return out


def _label_names(source: str, ds, label_field: str) -> list[str] | None:
    """Label names from a `labels.json` beside the data ({"0": "negative", ...}) or the dataset features."""
    path = Path(source).expanduser()
    for candidate in (path / "labels.json", path.parent / "labels.json"):
        if candidate.is_file():
            try:
                mapping = json.loads(candidate.read_text(encoding="utf-8"))
                return [str(mapping[str(i)]) for i in range(len(mapping))]
            except (ValueError, KeyError, TypeError, AttributeError):
                raise CompressError(f"'{candidate}' is not a label map like {{\"0\": \"negative\", \"1\": \"positive\"}}",
                                    "fix or remove it") from None
    feature = ds.features.get(label_field) if hasattr(ds, "features") else None
    return list(feature.names) if hasattr(feature, "names") else None
