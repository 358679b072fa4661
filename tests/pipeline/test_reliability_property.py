"""Issue 12, class 7: property tests. Arbitrary bytes and arbitrary YAML-shaped data into the recipe loader, and
arbitrary rows into the data loader: the only outcomes are success or a CompressError (never another exception)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.core.errors import CompressError
from compress.data.examples import check_labels, load_examples
from compress.pipeline.recipe import load_recipe, parse_recipe

# 60 examples keep `make test` fast; COMPRESS_HYPOTHESIS_EXAMPLES=1000 searches harder. No example database:
# nothing is written into the checkout.
SETTINGS = settings(max_examples=int(os.environ.get("COMPRESS_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["tiny:cnn", "builtin:digits", "test", "~nosuchuser/x.onnx",
                                                    "quantize_torch", "finetune", "teacher", "model", "a\x00b"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(["type", "name", "from", "pass"]),
                                        inner, max_size=4), max_leaves=24)
# Recipe-shaped: the real top-level keys, with arbitrary values (and sometimes plausible ones).
stage = st.fixed_dictionaries({"name": values | st.just("s1"),
                               "pass": values | st.fixed_dictionaries({"type": st.sampled_from(
                                   ["quantize_torch", "finetune", "export_onnx", "nope"])})},
                              optional={"from": values, "evaluate": values})
recipes = st.fixed_dictionaries(
    {"name": values | st.just("r"), "model": values | st.just("tiny:cnn"),
     "data": values | st.fixed_dictionaries({"source": values | st.just("builtin:digits"), "eval": values})},
    optional={"stages": st.lists(stage, max_size=3) | values, "eval": values, "goals": values,
              "teacher": values, "baselines": values, "seed": values})


def _only_compress_error(fn, *args):
    try:
        return fn(*args)
    except CompressError as e:
        assert str(e) and "\n" not in str(e)  # one line
        return None


@SETTINGS
@given(st.binary(max_size=3000))
def test_recipe_loader_takes_arbitrary_bytes(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_bytes(content)
        _only_compress_error(load_recipe, path)


@SETTINGS
@given(recipes | values)
def test_recipe_loader_takes_arbitrary_yaml_shaped_data(data):
    _only_compress_error(parse_recipe, data)
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, ValueError, TypeError):
        return  # not representable as YAML: nothing to feed the file loader
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(text, encoding="utf-8")
        _only_compress_error(load_recipe, path)


rows = st.lists(st.fixed_dictionaries({}, optional={"text": values | st.text(max_size=20),
                                                     "label": values | st.integers(-2, 3),
                                                     "extra": values}) | values, max_size=8)
raw_lines = st.lists(st.text(max_size=30), max_size=6)


@SETTINGS
@given(rows, raw_lines, st.integers(1, 4))
def test_data_loader_takes_arbitrary_rows(rows, junk, classes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        lines = [json.dumps(r) for r in rows] + (junk if len(rows) % 2 else [])
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        examples = _only_compress_error(load_examples, str(path))
        if examples is None:
            return
        # what loaded is what the models expect: strings, and integer labels or none
        assert all(isinstance(t, str) for t in examples.texts)
        assert examples.labels is None or (examples.labels.dtype == np.int64 and (examples.labels >= 0).all())
        _only_compress_error(check_labels, examples, classes)
