"""The one loader: every accepted source, safe defaults, and save -> reload without pickle."""

from __future__ import annotations

import pytest
import torch

from compress.core.errors import CompressError
from compress.models.artifacts import OnnxModel, TorchModel
from compress.models.builders import build_tiny
from compress.models.load import load_model


def _same_outputs(a: TorchModel, b: TorchModel, batch) -> float:
    with torch.inference_mode():
        return float((a.logits(batch) - b.logits(batch)).abs().max())


def test_tiny_models_are_deterministic(tiny_bert):
    # setup / execute
    again = build_tiny("bert")
    batch = dict(tiny_bert.tokenizer(["hello world"], return_tensors="pt"))
    # assert
    assert _same_outputs(tiny_bert, again, batch) == 0.0
    assert tiny_bert.task == "text-classification" and tiny_bert.num_labels == 2


@pytest.mark.parametrize("name", ["bert", "cnn"])
def test_save_and_reload_roundtrip(tmp_path, name, digits_examples):
    from compress.data.examples import Examples, iter_batches

    model = build_tiny(name)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    examples = Examples(texts=["a short sentence", "another"]) if name == "bert" else digits_examples
    batch = next(iter_batches(model, examples, batch_size=8))
    assert isinstance(loaded, TorchModel)
    assert not list(tmp_path.glob("m/*.pkl")) and (tmp_path / "m" / "model.safetensors").exists()
    assert _same_outputs(model, loaded, batch) == 0.0


def test_hf_folder_loads_with_task_inferred(tmp_path, tiny_bert):
    tiny_bert.module.save_pretrained(tmp_path / "hf")
    tiny_bert.tokenizer.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    assert loaded.task == "text-classification" and loaded.tokenizer is not None
    encoder = load_model(tmp_path / "hf", task="feature-extraction")
    assert encoder.task == "feature-extraction"


def test_state_dict_needs_arch_and_loads_with_builder(tmp_path, tiny_cnn, digits_examples):
    from compress.data.examples import iter_batches

    path = tmp_path / "cnn.pt"
    torch.save(tiny_cnn.module.state_dict(), path)
    with pytest.raises(CompressError, match="--arch"):
        load_model(path)
    with pytest.raises(CompressError, match="does not fit"):
        load_model(path, arch="digits-cnn")  # default width 32 != tiny width 8
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save(plain.state_dict(), path)
    with pytest.raises(CompressError):
        load_model(path, arch="mlp")
    # an mlp state dict loads with the mlp builder
    from compress.models.builders import build_mlp

    mlp = build_mlp(num_classes=10)
    torch.save(mlp.state_dict(), path)
    loaded = load_model(path, arch="mlp")
    batch = next(iter_batches(loaded, digits_examples, 8))
    assert torch.equal(loaded.module(batch["inputs"]), mlp(batch["inputs"]))


def test_state_dict_with_hf_config_folder(tmp_path, tiny_bert):
    tiny_bert.module.config.save_pretrained(tmp_path / "arch")
    tiny_bert.tokenizer.save_pretrained(tmp_path / "arch")
    torch.save(tiny_bert.module.state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch=str(tmp_path / "arch"))
    batch = dict(tiny_bert.tokenizer(["hello"], return_tensors="pt"))
    assert _same_outputs(tiny_bert, loaded, batch) == 0.0


def test_pickled_module_refused_by_default(tmp_path, tiny_cnn):
    path = tmp_path / "full.pt"
    torch.save(tiny_cnn.module, path)
    with pytest.raises(CompressError, match="--allow-pickle"):
        load_model(path)
    loaded = load_model(path, allow_pickle=True)
    assert isinstance(loaded.module, torch.nn.Module)


def test_torchscript_loads(tmp_path, tiny_cnn):
    path = tmp_path / "ts.pt"
    torch.jit.script(tiny_cnn.module).save(str(path))
    loaded = load_model(path)
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(loaded.module(x), tiny_cnn.module(x))


@pytest.mark.parametrize("source, message", [
    ("does/not/exist.pt", "not found"),
    ("./missing_folder", "not found"),
    ("tiny:gpt", "unknown tiny model"),
])
def test_bad_sources(source, message):
    with pytest.raises(CompressError, match=message):
        load_model(source)


def test_unknown_kind_and_not_onnx(tmp_path):
    (tmp_path / "model.xyz").write_text("hello")
    with pytest.raises(CompressError, match="unknown model kind"):
        load_model(tmp_path / "model.xyz")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all \x00\x01")
    with pytest.raises(CompressError, match="not an ONNX model"):
        load_model(tmp_path / "bad.onnx")


def test_unknown_task():
    with pytest.raises(CompressError, match="unknown task"):
        load_model("tiny:bert", task="translation")


def test_hub_id_without_network_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CompressError, match="cannot load"):
        load_model("nobody-here/no-such-model-xyz")


@pytest.mark.slow
def test_packaged_minilm_loads_offline_as_classifier_and_encoder():
    clf = load_model("minilm", task="text-classification", num_labels=2)
    enc = load_model("minilm")
    assert clf.task == "text-classification" and clf.num_labels == 2
    assert enc.task == "feature-extraction"
    batch = dict(enc.tokenizer(["a fine film"], return_tensors="pt"))
    with torch.inference_mode():
        assert clf.logits(batch).shape == (1, 2)
        assert enc.logits(batch).shape == (1, 384)
    # the new head is initialised deterministically
    again = load_model("minilm", task="text-classification", num_labels=2)
    assert torch.equal(clf.module.classifier.weight, again.module.classifier.weight)
    assert not isinstance(clf, OnnxModel)
