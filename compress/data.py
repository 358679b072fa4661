"""Datasets: read labelled examples from files, `datasets` folders or the hub, and turn them into model batches.

Sources (`DataSpec.source`):
- a JSONL / JSON / CSV / TSV file;
- a folder holding `<split>.jsonl` (or .csv/.tsv) files, e.g. `../shared/data/sst2` with split `dev`;
- a folder written by `datasets.Dataset(Dict).save_to_disk`;
- `builtin:digits`: scikit-learn's 8x8 digits (1,797 real images, ships with scikit-learn), for non-text models;
- a hub dataset name, e.g. `glue/sst2` (needs network).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import CompressError

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


@dataclass
class Examples:
    """Loaded examples: texts (and pairs) for text models, or `inputs` arrays for plain models."""

    texts: list[str] | None = None
    text_pairs: list[str] | None = None
    inputs: np.ndarray | None = None  # (N, C, H, W) float32 for image models
    labels: np.ndarray | None = None  # (N,) int64, or None when the data has no labels
    label_names: list[str] | None = None

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
        )


def load_examples(spec: DataSpec | str, split: str | None = None, **overrides) -> Examples:
    """Load examples described by `spec` (a `DataSpec` or a source string plus keyword overrides)."""
    if isinstance(spec, str):
        spec = DataSpec(source=spec, split=split, **overrides)
    if spec.source.startswith("builtin:"):
        examples = _load_builtin(spec.source.split(":", 1)[1], spec.split)
    else:
        examples = _from_dataset(_load_hf_dataset(spec), spec)
    if spec.shuffle:
        examples = examples.subset(np.random.default_rng(spec.seed).permutation(len(examples)))
    if spec.limit is not None and spec.limit < len(examples):
        examples = examples.subset(np.arange(spec.limit))
    return examples


def iter_batches(model, examples: Examples, batch_size: int = 32, max_length: int = 128,
                 shuffle: bool = False, seed: int = 0) -> Iterator[dict]:
    """Yield batches of torch tensors for `model` (a TorchModel or OnnxModel): dynamic padding per batch.

    Text batches hold the tokenizer outputs and `labels`; image batches hold `inputs` and `labels`.
    """
    import torch

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
    kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # malformed file
        raise CompressError(f"cannot parse '{path}' as {path.suffix[1:].upper()} ({type(e).__name__})",
                            "fix the file or pass another one") from e


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
            raise CompressError(f"the data has no field '{field}' (fields: {', '.join(columns)})",
                                "pass --text-field / --text-pair-field naming one of them")
    labels = None
    if spec.label_field in columns:
        labels = np.asarray(ds[spec.label_field], dtype=np.int64)
    label_names = _label_names(spec.source, ds, spec.label_field)
    pairs = [str(t) for t in ds[spec.text_pair_field]] if spec.text_pair_field else None
    return Examples(texts=[str(t) for t in ds[spec.text_field]], text_pairs=pairs, labels=labels,
                    label_names=label_names)


def _label_names(source: str, ds, label_field: str) -> list[str] | None:
    """Label names from a `labels.json` beside the data ({"0": "negative", ...}) or the dataset features."""
    path = Path(source).expanduser()
    for candidate in (path / "labels.json", path.parent / "labels.json"):
        if candidate.is_file():
            mapping = json.loads(candidate.read_text())
            return [mapping[str(i)] for i in range(len(mapping))]
    feature = ds.features.get(label_field) if hasattr(ds, "features") else None
    return list(feature.names) if hasattr(feature, "names") else None
