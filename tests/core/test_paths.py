"""Issue 12, class 1: an output onto, inside or around an input, an existing file where a folder is needed, or an
unwritable folder is refused through the real CLI before anything is written (exit 2, one line, inputs unchanged)."""

from __future__ import annotations

import os

import pytest
from _reliability import assert_one_line_error, checksum

from compress.core.errors import CompressError
from compress.core.paths import guard_output


@pytest.fixture(scope="module")
def saved_cnn(tmp_path_factory):
    """A model folder saved by compress (safetensors + manifest)."""
    from compress.models.builders import build_tiny

    folder = tmp_path_factory.mktemp("models") / "cnn"
    build_tiny("cnn").save(folder)
    return folder


@pytest.fixture
def model_copy(tmp_path, saved_cnn):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(saved_cnn, folder)
    return folder


@pytest.fixture
def onnx_folder(tmp_path, cli):
    out = tmp_path / "onnx"
    assert cli(["export", "tiny:cnn", "-o", out]).exit_code == 0
    return out


def unwritable(tmp_path):
    """A folder this process cannot create files in (root ignores permissions, so /sys for root)."""
    if os.geteuid() == 0:
        return "/sys/compress-test-out"
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out"


@pytest.mark.parametrize("args, needle", [
    (["export", "{model}", "-o", "{model}"], "is the input"),
    (["prune", "{model}", "--sparsity", "0.5", "-o", "{model}"], "is the input"),
    (["prune", "{model}", "--sparsity", "0.5", "-o", "{model}/pruned"], "is inside the input"),
    (["factorize", "{model}", "--rank", "4", "-o", "{tmp}"], "contains the input"),
    (["quantize", "{model}", "--torch", "-o", "{model}"], "is the input"),
    (["export", "{model}", "-o", "{tmp}/afile"], "is an existing file, not a folder"),
    (["export", "{model}", "-o", "{tmp}/afile/sub"], "is a file, not a folder"),
    (["export", "{model}", "-o", "{tmp}/other"], "folder of other files"),
    (["eval", "{model}", "--data", "builtin:digits", "--json", "{tmp}/other"], "existing folder, not a file"),
    (["eval", "{model}", "--data", "builtin:digits", "--json", "{model}/m.json"], "inside the input"),
    (["finetune", "{model}", "--data", "{tmp}/d.jsonl", "-o", "{tmp}/d.jsonl"], "is the input"),
    (["export", "{model}", "-o", "{unwritable}"], "cannot write in"),
])
def test_bad_output_refused_before_writing(tmp_path, cli, model_copy, args, needle):
    # setup
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("my notes")
    (tmp_path / "d.jsonl").write_text('{"text": "hi", "label": 0}\n')
    readonly = unwritable(tmp_path)
    before = {p: checksum(p) for p in (model_copy, tmp_path / "afile", tmp_path / "other", tmp_path / "d.jsonl")}
    listing = sorted(p.name for p in tmp_path.iterdir())
    # execute
    result = cli([a.format(model=model_copy, tmp=tmp_path, unwritable=readonly) for a in args])
    # assert
    assert_one_line_error(result, needle)
    assert {p: checksum(p) for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no temp folder left behind


def test_onnx_input_folder_is_not_replaced(tmp_path, cli, onnx_folder):
    before = checksum(onnx_folder)
    result = cli(["quantize", onnx_folder / "model.onnx", "-o", onnx_folder])
    assert_one_line_error(result, "contains the input")
    result = cli(["export", "tiny:cnn", "-o", onnx_folder / "model.onnx"])
    assert_one_line_error(result, "existing file")
    assert checksum(onnx_folder) == before


def test_runs_folder_inside_the_model_is_refused(tmp_path, cli, model_copy):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nmodel: {model_copy}\ndata: {{source: builtin:digits, eval: test}}\n"
                      "stages:\n  - {name: int8, pass: {type: quantize_torch}}\neval: {latency: null}\n")
    before = checksum(model_copy)
    result = cli(["run", recipe, "--runs", model_copy, "-o", tmp_path / "reports"])
    assert_one_line_error(result, "--runs", "inside the input")
    assert checksum(model_copy) == before and not (tmp_path / "reports").exists()


def test_rewriting_own_output_is_allowed(tmp_path, cli):
    out = tmp_path / "onnx"
    assert cli(["export", "tiny:cnn", "-o", out]).exit_code == 0
    assert cli(["export", "tiny:cnn", "-o", out]).exit_code == 0  # a folder compress wrote is replaced
    (tmp_path / "empty").mkdir()
    assert cli(["export", "tiny:cnn", "-o", tmp_path / "empty"]).exit_code == 0


def test_guard_ignores_non_paths(tmp_path):
    out = guard_output(tmp_path / "new" / "deep", ["tiny:bert", "org/name", None, "builtin:digits"])
    assert out == (tmp_path / "new" / "deep").resolve() and not (tmp_path / "new").exists()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "y.jsonl").write_text("{}\n")
    with pytest.raises(CompressError, match="contains the input"):
        guard_output(tmp_path, [tmp_path / "x" / "y.jsonl"])
