"""Issue 12, class 2: broken weights, missing weights, a config that does not fit, and an unsafe pickle are each
one line through the real CLI, also when they fail inside a benchmark worker process; nothing in a pickle runs."""

from __future__ import annotations

import json
import shutil

import pytest
from _reliability import assert_one_line_error, checksum


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A Hugging Face folder (config, safetensors, tokenizer) of the tiny BERT."""
    from compress.models.builders import build_tiny

    model = build_tiny("bert")
    folder = tmp_path_factory.mktemp("hf") / "bert"
    model.module.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def broken(tmp_path, hf_folder):
    """Every kind of broken model, by name."""
    import os

    import torch

    from compress.models.builders import build_tiny

    made = {}
    made["truncated-hf"] = _copy(hf_folder, tmp_path / "truncated-hf")
    _truncate(made["truncated-hf"] / "model.safetensors")
    made["truncated-file"] = tmp_path / "weights.safetensors"
    shutil.copy(hf_folder / "model.safetensors", made["truncated-file"])
    _truncate(made["truncated-file"], 0.3)
    made["truncated-saved"] = tmp_path / "saved"
    build_tiny("cnn").save(made["truncated-saved"])
    _truncate(made["truncated-saved"] / "model.safetensors")
    made["no-weights"] = _copy(hf_folder, tmp_path / "no-weights")
    (made["no-weights"] / "model.safetensors").unlink()
    made["bad-config"] = _copy(hf_folder, tmp_path / "bad-config")
    config = json.loads((made["bad-config"] / "config.json").read_text())
    config["hidden_size"] = 30  # not a multiple of the 4 heads
    (made["bad-config"] / "config.json").write_text(json.dumps(config))
    made["pickle"] = _copy(hf_folder, tmp_path / "pickle")
    (made["pickle"] / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PAYLOAD-RAN'}",))

    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, made["pickle"] / "pytorch_model.bin")
    return made


@pytest.mark.parametrize("name, needles", [
    ("truncated-hf", ["model.safetensors' is truncated or corrupt"]),
    ("truncated-file", ["weights.safetensors' is truncated or corrupt"]),
    ("truncated-saved", ["model.safetensors' is truncated or corrupt"]),
    ("no-weights", ["has a config.json but no weights"]),
    ("bad-config", ["does not describe a valid model", "hidden size (30) is not a multiple"]),
    ("pickle", ["pytorch_model.bin' holds pickled objects", "--allow-pickle"]),
])
def test_broken_model_is_one_line(tmp_path, cli, broken, name, needles):
    before = checksum(broken[name])
    result = cli(["eval", broken[name], "--arch", "mlp", "--data", "builtin:digits", "--limit", "8"])
    assert_one_line_error(result, *needles)
    assert checksum(broken[name]) == before
    assert not (tmp_path / "PAYLOAD-RAN").exists()  # the pickle was refused, not run


def test_export_of_a_broken_model_writes_nothing(tmp_path, cli, broken):
    result = cli(["export", broken["truncated-hf"], "-o", tmp_path / "out"])
    assert_one_line_error(result, "truncated or corrupt")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out*"))


def test_bench_worker_errors_come_back_as_one_line(tmp_path, cli, broken):
    # a load error inside the worker process
    result = cli(["bench", broken["bad-config"], "-b", "1", "-s", "8", "--iters", "1", "--rounds", "1", "--warmup", "0"])
    line = assert_one_line_error(result, "hidden size (30) is not a multiple")
    assert "worker died" not in line
    # an error that is not a CompressError (ONNX Runtime refuses the graph) inside the worker
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), tmp_path / "bad.onnx")
    result = cli(["bench", tmp_path / "bad.onnx", "-b", "1", "--iters", "1", "--rounds", "1", "--warmup", "0"])
    line = assert_one_line_error(result, "bad.onnx", "failed")
    assert "worker died" not in line
