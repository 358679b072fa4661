"""Issue 12, class 3: labels must be integer classes of the model and texts strings; errors name the file, the
line and the field, through the real CLI; unlabelled data is still fine where no labels are needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _reliability import assert_one_line_error, checksum

from compress.core.errors import CompressError
from compress.data.examples import check_labels, load_examples

GOOD = {"text": "a good movie", "label": 1}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("bad, needles", [
    ({"text": "no label here"}, ["field 'label' is missing", "no label"]),
    ({"text": "half", "label": 0.5}, ["field 'label' is a number (0.5), not an integer class index"]),
    ({"text": "yes", "label": True}, ["field 'label' is a boolean"]),
    ({"text": "word", "label": "maybe"}, ["field 'label' is 'maybe'"]),
    ({"text": "too far", "label": 7}, ["field 'label' has label 7 but the model has 2 outputs"]),
    ({"text": "negative", "label": -3}, ["field 'label' is -3, outside the classes"]),
    ({"text": None, "label": 0}, ["field 'text' is null, not a string"]),
    ({"text": 42, "label": 0}, ["field 'text' is a number (42), not a string"]),
    ({"text": ["a", "list"], "label": 0}, ["field 'text' is a list, not a string"]),
    ({"label": 0}, ["field 'text' is missing"]),
    ("[1, 2]", ["a list, not a JSON object"]),
    ("{not json", ["not valid JSON"]),
])
def test_bad_row_names_file_line_field(tmp_path, cli, bad, needles):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad, GOOD])
    before = checksum(data)
    result = cli(["eval", "tiny:bert", "--data", data])
    assert_one_line_error(result, f"{data}:3", *needles)
    assert checksum(data) == before


def test_blank_lines_keep_line_numbers(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD, "", "  ", {"text": "x", "label": 1.5}])
    with pytest.raises(CompressError, match=r"d.jsonl:4: field 'label'"):
        load_examples(str(data))


def test_csv_rows_are_checked_with_their_line(tmp_path, cli):
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood,1\nbad,0.5\n")
    assert_one_line_error(cli(["eval", "tiny:bert", "--data", data]), f"{data}:3", "0.5")
    data.write_text("text,label\ngood,1\n,0\n")
    assert_one_line_error(cli(["eval", "tiny:bert", "--data", data]), f"{data}:3", "field 'text' is null")


def test_labels_outside_the_named_classes(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps({"0": "negative", "1": "positive"}))
    _jsonl(folder / "dev.jsonl", [GOOD, {"text": "x", "label": 2}])
    with pytest.raises(CompressError, match=r"dev.jsonl:2: field 'label' is 2, outside the classes 0..1"):
        load_examples(str(folder), split="dev")
    _jsonl(folder / "dev.jsonl", [GOOD, {"text": "x", "label": "negative"}])
    assert load_examples(str(folder), split="dev").labels.tolist() == [1, 0]  # a label given by its name


def test_label_range_is_checked_against_the_model(tmp_path, cli):
    # ten digit classes, but a CNN built with 4 outputs
    result = cli(["eval", "tiny:cnn", "--num-labels", "4", "--data", "builtin:digits", "--split", "test"])
    assert_one_line_error(result, "builtin:digits:test row", "but the model has 4 outputs")
    examples = load_examples(str(_jsonl(tmp_path / "d.jsonl", [GOOD, {"text": "b", "label": 0}])))
    check_labels(examples, 2)
    with pytest.raises(CompressError, match=r"d.jsonl:1: .* has label 1 but the model has 1 outputs"):
        check_labels(examples.subset([1, 0]), 1)  # a subset keeps the lines


def test_unlabelled_data_is_fine_where_no_labels_are_needed(tmp_path, cli):
    data = _jsonl(tmp_path / "u.jsonl", [{"text": "a good movie"}, {"text": "a bad one"}, {"text": "fine"}])
    examples = load_examples(str(data))
    assert examples.labels is None and len(examples) == 3
    assert load_examples(str(_jsonl(tmp_path / "m.jsonl", [{"text": "t", "label": -1}]))).labels is None
    # eval without labels has nothing to score: one line (unless a reference is given)
    assert_one_line_error(cli(["eval", "tiny:bert", "--data", data]), "has no labels")
    result = cli(["eval", "tiny:bert", "--data", data, "--reference", "tiny:bert"])
    assert result.exit_code == 0, result.output
    # calibration needs no labels
    result = cli(["quantize", "tiny:bert", "-o", tmp_path / "q", "--mode", "static", "--calibration-data", data,
                  "--calibration-samples", "3"])
    assert result.exit_code == 0, result.output


def test_good_data_still_loads(tmp_path):
    examples = load_examples(str(_jsonl(tmp_path / "d.jsonl", [GOOD, {"text": "b", "label": 0}])))
    assert examples.texts == ["a good movie", "b"] and examples.labels.dtype == np.int64
    assert examples.where(1) == f"{tmp_path / 'd.jsonl'}:2"
