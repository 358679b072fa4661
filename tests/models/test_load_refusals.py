"""Nothing loads silently re-initialised: weights of another architecture (or renamed, or extra layers) are one
CompressError line naming some of them and how many; a backbone with a new classification head, tied weights
and buffers still load. A folder without a tokenizer says so (not "invalid config")."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from compress.core.errors import CompressError


def _hf(model, folder):
    """A plain Hugging Face folder (config, safetensors, tokenizer) with no compress manifest."""
    model.module.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from compress.models.load import load_model

    root = tmp_path_factory.mktemp("refusals")
    return {"bert": _hf(load_model("tiny:bert"), root / "bert"), "llama": _hf(load_model("tiny:llama"), root / "llama"),
            "root": root}


def _rename_keys(path, rename):
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file({rename(k): v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def test_bert_config_with_llama_weights_is_refused(folders, tmp_path):
    from compress.models.load import load_model

    bad = shutil.copytree(folders["bert"], tmp_path / "bad")
    shutil.copy(folders["llama"] / "model.safetensors", bad / "model.safetensors")
    before = _digests(bad)
    with pytest.raises(CompressError) as e:
        load_model(bad)
    text = str(e.value)
    assert "do not match its config" in text and "missing (bert.embeddings" in text and "unexpected (" in text
    assert "model.layers.0" in text and "pass the folder the weights were saved with" in text
    assert "\n" not in text and _digests(bad) == before


def test_wrong_architecture_is_one_line_through_the_cli(cli, folders, tmp_path):
    bad = shutil.copytree(folders["bert"], tmp_path / "bad")
    shutil.copy(folders["llama"] / "model.safetensors", bad / "model.safetensors")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(["a b", "c d"] * 2)))
    result = cli(["eval", bad, "--data", data])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0], result.output


@pytest.mark.parametrize("rename, needle", [
    (lambda k: k.replace("attention.self.query", "attention.self.q"), "4 missing (bert.encoder.layer.0.attention.self.query"),
    (lambda k: k.replace("bert.", "encoder_model."), "corrupted"),  # no name fits: transformers' own refusal
])
def test_renamed_weights_are_refused(folders, tmp_path, rename, needle):
    from compress.models.load import load_model

    bad = shutil.copytree(folders["bert"], tmp_path / "bad")
    _rename_keys(bad / "model.safetensors", rename)
    with pytest.raises(CompressError, match="do not match its config") as e:
        load_model(bad)
    assert needle in str(e.value)


def test_extra_layers_beyond_the_config_are_refused(folders, tmp_path):
    from compress.models.load import load_model

    bad = shutil.copytree(folders["bert"], tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["num_hidden_layers"] = 1  # the weights hold 2 layers
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompressError, match=r"unexpected \(bert.encoder.layer.1"):
        load_model(bad)


def test_saved_folder_with_other_weights_names_counts(tmp_path):
    from compress.models.load import load_model

    load_model("tiny:bert").save(tmp_path / "bert")
    load_model("tiny:llama").save(tmp_path / "llama")
    shutil.copy(tmp_path / "llama" / "model.safetensors", tmp_path / "bert" / "model.safetensors")
    with pytest.raises(CompressError, match=r"do not match the architecture: \d+ missing .*; \d+ unexpected"):
        load_model(tmp_path / "bert")


# --- what must still load ----------------------------------------------------------------------------------------


def test_backbone_with_a_new_head_still_loads(folders):
    from compress.models.load import load_model

    model = load_model(folders["llama"], task="text-classification", num_labels=3)  # score.* new, lm_head dropped
    assert model.task == "text-classification" and model.num_labels == 3
    encoder = load_model(folders["bert"], task="feature-extraction")  # classifier.* dropped
    assert encoder.task == "feature-extraction"
    assert load_model(folders["llama"]).task == "text-generation"  # tied lm_head / rotary buffers are fine


def test_packaged_minilm_gets_a_new_head(folders):
    from compress.models.load import load_model

    try:
        model = load_model("minilm", task="text-classification", num_labels=3)
    except CompressError as e:
        if "not installed" in str(e):
            pytest.skip(str(e))
        raise
    assert model.num_labels == 3


# --- 6. a missing tokenizer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_missing_tokenizer_is_named(folders, tmp_path, which):
    from compress.models.load import TOKENIZER_FILES, load_model

    bare = shutil.copytree(folders[which], tmp_path / "bare")
    for name in (*TOKENIZER_FILES, "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(CompressError) as e:
        load_model(bare)
    assert str(e.value).startswith(f"no tokenizer in '{bare}'") and "tokenizer.save_pretrained" in str(e.value)
    assert "config" not in str(e.value).split(";")[0].replace("config.json", "")


def test_missing_tokenizer_of_a_saved_model_is_named(tmp_path):
    from compress.models.load import TOKENIZER_FILES, load_model

    load_model("tiny:bert").save(tmp_path / "m")
    for name in (*TOKENIZER_FILES, "special_tokens_map.json"):
        (tmp_path / "m" / name).unlink(missing_ok=True)
    with pytest.raises(CompressError, match="no tokenizer in"):
        load_model(tmp_path / "m")


def test_vision_models_need_no_tokenizer(tmp_path):
    from compress.models.load import load_model

    load_model("tiny:cnn").save(tmp_path / "cnn")
    assert load_model(tmp_path / "cnn").tokenizer is None
