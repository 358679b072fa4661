"""Data loading: files, folders of splits, saved datasets, built-in digits, fields, limits and shuffles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.core.errors import CompressError
from compress.data.examples import DataSpec, iter_batches, load_examples


@pytest.fixture
def jsonl(tmp_path):
    rows = [{"text": f"sentence {i}", "premise": f"p{i}", "label": i % 3} for i in range(10)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_jsonl_fields_and_labels(jsonl):
    ex = load_examples(str(jsonl))
    assert len(ex) == 10 and ex.texts[3] == "sentence 3"
    assert ex.labels.tolist() == [i % 3 for i in range(10)] and ex.num_labels == 3


def test_text_pair_and_custom_field(jsonl):
    ex = load_examples(DataSpec(source=str(jsonl), text_field="premise", text_pair_field="text"))
    assert ex.texts[0] == "p0" and ex.text_pairs[0] == "sentence 0"


def test_missing_field_is_a_clear_error(jsonl):
    with pytest.raises(CompressError, match="no field 'sentence'.*--text-field"):
        load_examples(DataSpec(source=str(jsonl), text_field="sentence"))


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv(tmp_path, suffix, sep):
    path = tmp_path / f"d{suffix}"
    path.write_text(f"sentence{sep}y\nhello there{sep}1\ngoodbye{sep}0\n")
    ex = load_examples(DataSpec(source=str(path), text_field="sentence", label_field="y"))
    assert ex.texts == ["hello there", "goodbye"] and ex.labels.tolist() == [1, 0]


def test_folder_of_splits_and_unknown_split(tmp_path, jsonl):
    ex = load_examples(str(tmp_path), split="train")
    assert len(ex) == 10
    with pytest.raises(CompressError, match="no split 'dev'.*train"):
        load_examples(str(tmp_path), split="dev")


def test_saved_datasets_folder(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    ex = load_examples(str(tmp_path / "saved"), split="validation")
    assert ex.texts == ["a", "b"]


def test_limit_and_deterministic_shuffle(jsonl):
    a = load_examples(DataSpec(source=str(jsonl), shuffle=True, seed=3, limit=4))
    b = load_examples(DataSpec(source=str(jsonl), shuffle=True, seed=3, limit=4))
    c = load_examples(DataSpec(source=str(jsonl), shuffle=True, seed=4, limit=4))
    assert a.texts == b.texts and len(a) == 4 and a.texts != c.texts


def test_missing_file():
    with pytest.raises(CompressError, match="not found"):
        load_examples("./nope.jsonl")


def test_builtin_digits_splits_are_disjoint():
    tr, va, te = (load_examples("builtin:digits", split=s) for s in ("train", "validation", "test"))
    assert len(tr) + len(va) + len(te) == 1797
    assert tr.inputs.shape[1:] == (1, 8, 8) and tr.inputs.dtype == np.float32 and 0 <= tr.inputs.max() <= 1


def test_dynamic_padding(tiny_bert, text_examples):
    batches = list(iter_batches(tiny_bert, text_examples, batch_size=5))
    assert [len(b["labels"]) for b in batches] == [5, 5, 2]
    longest = max(len(tiny_bert.tokenizer(t)["input_ids"]) for t in text_examples.texts[:5])
    assert batches[0]["input_ids"].shape[1] == longest


def test_shared_sst2_with_label_names(shared_data):
    ex = load_examples(str(shared_data / "sst2"), split="dev")
    assert len(ex) == 872 and ex.label_names == ["negative", "positive"]
    rte = load_examples(DataSpec(source=str(shared_data / "rte"), split="validation", text_pair_field="text_pair"))
    assert len(rte.text_pairs) == len(rte) == 277
