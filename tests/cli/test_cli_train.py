"""`compress finetune` and `compress distill` through the real CLI: outputs, and one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def text_file(tmp_path):
    """A small labelled JSONL file, and the same sentences without labels."""
    rows = [("a good film", 1), ("bad plot", 0), ("great acting", 1), ("awful script", 0)] * 3
    labelled, unlabelled = tmp_path / "train.jsonl", tmp_path / "nolabels.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    unlabelled.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in rows))
    return labelled, unlabelled


def _bert_folder(path, layers=2, hidden=32, num_labels=2, extra_token=None):
    """A saved tiny BERT classifier (optionally with another vocabulary)."""
    from transformers import BertConfig, BertForSequenceClassification

    from compress.models.artifacts import TorchModel
    from compress.models.builders import _tiny_tokenizer
    from compress.training.loop import save_trained

    torch.manual_seed(0)
    tok = _tiny_tokenizer()
    if extra_token:
        tok.add_tokens([extra_token])
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=num_labels)
    model = TorchModel(BertForSequenceClassification(config).eval(), "text-classification", tokenizer=tok)
    return save_trained(model, path, {})


def test_finetune_writes_a_model_and_metrics(cli, tmp_path):
    # execute
    result = cli(["finetune", "tiny:mlp", "--data", "builtin:digits", "--split", "train", "--limit", "128",
                  "--eval-split", "validation", "--max-steps", "3", "--batch-size", "32", "-o", tmp_path / "ft",
                  "--no-progress"])

    # assert
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["eval"][0]["accuracy"] >= 0 and metrics["config"]["max_steps"] == 3
    assert (tmp_path / "ft" / "model.pt").exists() and (tmp_path / "ft" / "model.safetensors").exists()
    assert not (tmp_path / ".ft.work").exists()


def test_distill_student_from_teacher_layers(cli, tmp_path, text_file):
    # setup
    from transformers import AutoModelForSequenceClassification

    teacher = _bert_folder(tmp_path / "teacher")

    # execute: `distill TEACHER 1` derives a 1-layer student
    result = cli(["distill", teacher, "1", "--data", text_file[0], "--max-steps", "2", "--batch-size", "4",
                  "--hidden-weight", "1", "--attention-weight", "1", "-o", tmp_path / "student", "--no-progress",
                  "--cache-dir", tmp_path / "cache"])

    # assert
    assert result.exit_code == 0, result.output
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert student.config.num_hidden_layers == 1 and metrics["layer_map"] == [1] and metrics["steps"] == 2
    assert len(list((tmp_path / "cache").glob("teacher-logits-*.npy"))) == 1


@pytest.mark.parametrize("case", ["labels", "vocab", "wider", "unlabelled"])
def test_distill_bad_input_is_one_line_exit_2(cli, tmp_path, text_file, case):
    # setup
    teacher = _bert_folder(tmp_path / "teacher")
    student, data, extra, message = None, text_file[0], [], ""
    if case == "labels":
        student, message = _bert_folder(tmp_path / "s", layers=1, num_labels=3), "labels"
    elif case == "vocab":
        student, message = _bert_folder(tmp_path / "s", layers=1, extra_token="zzzword"), "vocabularies"
    elif case == "wider":
        student, message = _bert_folder(tmp_path / "s", layers=1, hidden=64), "wider than"
        extra = ["--hidden-weight", "1", "--no-projection"]
    else:
        student, data, message = "1", text_file[1], "no labels"
        extra = ["--alpha", "0.5"]

    # execute
    result = cli(["distill", teacher, student, "--data", data, "--max-steps", "1", "-o", tmp_path / "out",
                  "--no-progress", "--cache-dir", tmp_path / "cache", *extra])

    # assert
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_distill_unlabelled_data_defaults_to_pure_kd(cli, tmp_path, text_file):
    teacher = _bert_folder(tmp_path / "teacher")
    result = cli(["distill", teacher, "1", "--data", text_file[1], "--max-steps", "1", "-o", tmp_path / "out",
                  "--no-progress", "--cache-dir", tmp_path / "cache"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]["alpha"] == 1.0
