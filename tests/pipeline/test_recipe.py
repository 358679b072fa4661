"""Recipes: every shipped recipe validates, YAML round-trips, and bad recipes fail with their YAML path."""

from __future__ import annotations

from pathlib import Path

import _fake_passes  # noqa: F401  (registers test_scale / test_needs_train)
import pytest
import yaml

from compress.core.errors import CompressError
from compress.pipeline.recipe import dump_recipe, load_recipe, parse_recipe, plan

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "tests" / "recipes").glob("*.yaml"))


def base() -> dict:
    return {"name": "t", "model": "tiny:cnn",
            "data": {"source": "builtin:digits", "train": "train", "eval": {"split": "test", "limit": 32}},
            "stages": [{"name": "scaled", "pass": {"type": "test_scale", "factor": 2.0}},
                       {"name": "onnx", "pass": {"type": "export_onnx"}}]}


def error_of(data: dict) -> str:
    with pytest.raises(CompressError) as info:
        parse_recipe(data, "r.yaml")
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates_and_round_trips(path):
    # setup / execute
    recipe = load_recipe(path)
    again = parse_recipe(yaml.safe_load(dump_recipe(recipe)))
    # assert
    assert again == recipe
    assert dump_recipe(again) == dump_recipe(recipe)
    assert len(plan(recipe)) == len(recipe.stages)


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "minilm-sst2.yaml", "bert-base-sst2-hub.yaml"} <= names


def test_round_trip_keeps_pass_options():
    recipe = parse_recipe(base())
    text = dump_recipe(recipe)
    assert "factor: 2.0" in text and "from:" in text and "pass:" in text
    assert parse_recipe(yaml.safe_load(text)).stages[0].pass_.factor == 2.0


def test_wrong_key_is_rejected_with_its_path():
    data = base()
    data["stages"][0]["pass"]["factr"] = 3
    assert "stages[0].pass.factr: unknown key" in error_of(data)


def test_wrong_type_is_rejected_with_its_path():
    data = base()
    data["stages"][1]["pass"]["opset"] = "seventeen"
    assert "stages[1].pass.opset:" in error_of(data)
    data = base()
    data["eval"] = {"batch_size": "big"}
    assert "eval.batch_size:" in error_of(data)


def test_unknown_top_level_key_and_unknown_pass():
    data = base()
    data["stagez"] = []
    assert "stagez: unknown key" in error_of(data)
    data = base()
    data["stages"][0]["pass"]["type"] = "no_such_pass"
    assert "stages[0].pass: unknown pass 'no_such_pass'" in error_of(data)


def test_incompatible_pass_order_is_rejected():
    # export_onnx takes a torch model, but its input is the ONNX model of the stage before
    data = base()
    data["stages"].append({"name": "again", "pass": {"type": "export_onnx"}})
    message = error_of(data)
    assert "stages[2].pass" in message and "onnx" in message


def test_bad_references_are_rejected():
    data = base()
    data["stages"][1]["from"] = "later"
    assert "stages[1].from" in error_of(data)
    data = base()
    data["stages"][1]["name"] = "scaled"
    assert "stages[1].name" in error_of(data)
    data = base()
    data["baselines"] = ["nope"]
    assert "baselines" in error_of(data)


def test_missing_data_split_is_rejected():
    data = base()
    data["stages"][0]["pass"] = {"type": "test_needs_train"}
    del data["data"]["train"]
    assert "needs data.train" in error_of(data)


def test_teacher_stage_resolution():
    # a stage named `teacher` is the teacher; `from: teacher` elsewhere points at it
    data = base()
    data["stages"] = [{"name": "teacher", "pass": {"type": "test_scale"}},
                      {"name": "a", "pass": {"type": "test_scale", "factor": 0.5}},
                      {"name": "b", "from": "teacher", "pass": {"type": "export_onnx"}}]
    recipe = parse_recipe(data)
    assert recipe.teacher_stage() == "teacher"
    assert recipe.inputs() == {"teacher": "model", "a": "teacher", "b": "teacher"}


def test_cli_rejects_bad_recipe_with_exit_2(cli, tmp_path):
    data = base()
    data["stages"][0]["pass"]["factor"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = cli(["run", path, "--dry-run"])
    assert result.exit_code == 2
    assert "stages[0].pass.factor" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_dry_run_prints_plan(cli, tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(base()))
    result = cli(["run", path, "--dry-run", "--runs", tmp_path / "runs"])
    assert result.exit_code == 0, result.output
    assert "scaled" in result.output and "torch>onnx" in result.output and "to run" in result.output
    assert not (tmp_path / "runs").exists()  # nothing ran


# --- preflight: what the data and the model can tell, before the first stage (issue 26) -------------------------

PROSE = "The harbour was quiet in the morning, and the boats rocked slowly on the grey water. "


def causal(tmp_path, **eval_options) -> dict:
    """A tiny-llama recipe on a JSONL of real sentences (validation and eval splits in a folder)."""
    folder = tmp_path / "text"
    folder.mkdir(exist_ok=True)
    for split in ("validation", "eval"):
        path = folder / f"{split}.jsonl"
        if not path.exists():
            path.write_text("".join(f'{{"text": "{i}. {PROSE * 3}"}}\n' for i in range(6)))
    return {"name": "c", "model": "tiny:llama", "task": "text-generation",
            "data": {"source": str(folder), "validation": "validation", "eval": "eval"},
            "stages": [{"name": "int4", "pass": {"type": "quantize_ort", "mode": "int4", "block_size": 32}}],
            "eval": {"window": 32, "latency": None, **eval_options}}


def preflight_error(data: dict, model=None) -> str:
    from compress.pipeline.preflight import validate_recipe

    with pytest.raises(CompressError) as info:
        validate_recipe(parse_recipe(data), model)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_preflight_passes_a_good_causal_recipe(tmp_path, llama):
    from compress.pipeline.preflight import validate_recipe

    validate_recipe(parse_recipe(causal(tmp_path)), llama)  # no error


@pytest.mark.parametrize("split, content, needles", [
    ("eval", "", ["data.eval", "empty (0 examples)", "point data.eval at"]),
    ("validation", "\n\n", ["data.validation", "0 examples", "or drop data.validation"]),
    ("eval", '{"text": ""}\n{"text": "  "}\n', ["data.eval", "0 documents"]),
])
def test_preflight_refuses_an_empty_split(tmp_path, llama, split, content, needles):
    data = causal(tmp_path)
    (tmp_path / "text" / f"{split}.jsonl").write_text(content)
    message = preflight_error(data, llama)
    for needle in needles:
        assert needle in message


def test_preflight_refuses_an_empty_classifier_split_without_loading_the_model(tmp_path, monkeypatch):
    from compress.models import load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("a classifier recipe loads no model"))
    (tmp_path / "dev.jsonl").write_text("")
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": 1}\n')
    data = base() | {"task": "image-classification"}
    data["data"] = {"source": str(tmp_path), "train": "train", "eval": "dev"}
    assert "data.eval: " in preflight_error(data)


@pytest.mark.parametrize("change, needles", [
    ({"eval": {"window": 512}}, ["eval.window 512 is longer than the model's context of 256 tokens",
                                 "set eval.window to 256 or less"]),
    ({"eval": {"block_size": 300}}, ["eval.block_size 300", "context of 256"]),
    ({"stages": [{"name": "kd", "pass": {"type": "distill", "block_size": 512}}]},
     ["stages[0].pass.block_size 512", "set stages[0].pass.block_size to 256 or less"]),
    ({"stages": [{"name": "p", "pass": {"type": "prune_structured", "unit": "neurons", "sparsity": 0.5,
                                        "calibration_block_size": 300}}]},
     ["stages[0].pass.calibration_block_size 300"]),
    ({"stages": [{"name": "p", "pass": {"type": "prune_structured", "unit": "neurons", "sparsity": 0.5,
                                        "recover": {"block_size": 300}}}]},
     ["stages[0].pass.recover.block_size 300"]),
    ({"stages": [{"name": "q", "pass": {"type": "quantize_ort", "mode": "int4", "max_drop": 0.1,
                                        "block_tokens": 300}}]},
     ["stages[0].pass.block_tokens 300"]),
])
def test_preflight_refuses_a_window_longer_than_the_context(tmp_path, llama, change, needles):
    data = causal(tmp_path)
    data["eval"].update(change.get("eval", {}))
    if "stages" in change:
        data["stages"] = change["stages"]
        data["data"]["train"] = "eval"  # distill and recovery train on text
    message = preflight_error(data, llama)
    for needle in needles:
        assert needle in message


def test_preflight_quantization_block_is_not_a_token_window(tmp_path, llama):
    from compress.pipeline.preflight import validate_recipe

    data = causal(tmp_path)  # block_tokens 300 is unused without a budget; block_size 256 is a quantization group
    data["stages"] = [{"name": "q", "pass": {"type": "quantize_ort", "mode": "int4", "block_size": 256,
                                             "block_tokens": 300}}]
    validate_recipe(parse_recipe(data), llama)


def test_preflight_checks_the_eval_domains(tmp_path, llama):
    good = {"name": "prose", "source": str(tmp_path / "text" / "eval.jsonl")}
    # a missing file
    message = preflight_error(causal(tmp_path, domains=[good, {"name": "gone", "source": str(tmp_path / "no.txt")}]),
                              llama)
    assert "eval.domains[1].source" in message and "'gone'" in message and "not found" in message
    # an empty file
    (tmp_path / "empty.txt").write_text("\n")
    message = preflight_error(causal(tmp_path, domains=[{"name": "e", "source": str(tmp_path / "empty.txt")}]), llama)
    assert "eval.domains[0]" in message and "0 documents" in message
    # fewer tokens than one window
    (tmp_path / "short.txt").write_text("Calm sea.\n")
    message = preflight_error(causal(tmp_path, domains=[good, {"name": "s", "source": str(tmp_path / "short.txt")}]),
                              llama)
    assert "eval.domains[1]: 's' has" in message and "fewer than one eval.window (32)" in message
    assert "add documents" in message
    # the eval split stands in for the domains when there are none
    (tmp_path / "text" / "eval.jsonl").write_text('{"text": "Calm sea."}\n')
    assert "data.eval: 'eval' has" in preflight_error(causal(tmp_path), llama)


def test_preflight_refuses_a_domain_that_is_all_training_text(tmp_path, llama):
    data = causal(tmp_path, domains=[{"name": "seen", "source": str(tmp_path / "text" / "eval.jsonl")}])
    data["data"]["train"] = "eval"
    assert "every document of 'seen' is also in the training text" in preflight_error(data, llama)


def test_run_validates_before_the_first_stage(tmp_path):
    from compress.pipeline.runner import run

    data = causal(tmp_path)
    data["eval"]["window"] = 512
    with pytest.raises(CompressError, match="eval.window 512"):
        run(parse_recipe(data), runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs" / "c").exists()  # no stage folder, no lock


def mix_recipe() -> dict:
    """A decoder recipe whose training split is a mix of a data folder's two text fields and a corpus."""
    return {"name": "m", "model": "tiny:llama", "task": "text-generation",
            "data": {"source": "data/rte", "text_pair_field": "text_pair",
                     "train": {"mix": [{"source": "data/rte", "split": "train", "part": "train"},
                                       {"source": "corpus:kjv"},
                                       {"source": "data/notes.jsonl", "fields": ["body"], "limit": 10}],
                               "dedup_against_eval": True, "seed": 1},
                     "validation": {"split": "train", "part": "heldout"}, "eval": "validation"},
            "stages": [{"name": "kd", "pass": {"type": "distill", "max_steps": 1}}]}


def test_mix_train_split_validates_round_trips_and_resolves_its_fields():
    from compress.data.causal import MixSpec

    # setup / execute
    recipe = parse_recipe(mix_recipe())
    again = parse_recipe(yaml.safe_load(dump_recipe(recipe)))
    spec = recipe.data.spec("train")

    # assert: a file source without fields reads data.text_field and data.text_pair_field; corpora have none
    assert again == recipe
    assert isinstance(spec, MixSpec) and spec.seed == 1 and spec.dedup_against_eval
    assert [s.fields for s in spec.sources] == [["text", "text_pair"], None, ["body"]]
    assert spec.sources[0].part == "train" and spec.sources[2].limit == 10
    assert recipe.data.spec("validation").part == "heldout"  # the other splits are as before


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["data"]["train"].update(source="data/rte"),
     "data.train: a mix takes no source of its own (the documents are always shuffled together); set them on each"),
    (lambda d: d["data"]["train"].update(split="train", part="train"), "data.train: a mix takes no split or part"),
    (lambda d: d["data"].update(validation={"mix": [{"source": "corpus:kjv"}]}),
     "data.validation.mix: only data.train can be a mix; give data.validation a source or split"),
    (lambda d: d.update(task="text-classification"),
     "data.train.mix: a mix is unlabelled text for causal LMs; set task: text-generation"),
    (lambda d: d.pop("task"), "data.train.mix: a mix is unlabelled text for causal LMs"),
    (lambda d: d["data"]["train"]["mix"].append({"source": "corpus:nope"}),
     "data.train.mix[3]: unknown corpus 'corpus:nope' (use one of: corpus:kjv"),
    (lambda d: d["data"]["train"]["mix"][1].update(split="train"),
     "data.train.mix[1]: 'corpus:kjv' is read whole as documents: drop split and fields"),
    (lambda d: d["data"]["train"]["mix"][0].update(text_field="text"), "data.train.mix[0].text_field: unknown key"),
    (lambda d: d["data"]["train"].update(mix=[]), "data.train.mix: List should have at least 1 item"),
    (lambda d: d["data"].update(eval={"split": "validation", "dedup_against_eval": True}),
     "data.eval: dedup_against_eval applies to a mix"),
])
def test_bad_mix_is_refused_in_one_line(change, message):
    data = mix_recipe()
    change(data)
    assert message in error_of(data)


def test_preflight_checks_mix_sources_without_fetching_corpora(tmp_path, monkeypatch):
    import json
    import subprocess

    from compress.pipeline.preflight import check_paths, validate_recipe
    from compress.pipeline.runner import check_data

    # setup: the files exist, the corpus is not cached, and nothing may be downloaded
    def refuse(*a, **k):
        raise AssertionError(f"nothing may be fetched: {a}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "rte").mkdir(parents=True)
    for split in ("train", "validation"):
        rows = [{"text": f"Premise {i} of {split}, a sentence long enough.", "text_pair": f"Hypothesis {i}.",
                 "label": i % 2} for i in range(40)]
        (tmp_path / "data" / "rte" / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "data" / "notes.jsonl").write_text('{"body": "A note."}\n')
    recipe = parse_recipe(mix_recipe())

    # execute / assert: a dry run reads the local sources only
    check_data(recipe)
    check_paths(recipe)
    validate_recipe(recipe)
    (tmp_path / "data" / "notes.jsonl").write_text("\n")
    with pytest.raises(CompressError, match=r"data.train.mix\[2\].source: 'data/notes.jsonl' is empty"):
        check_paths(recipe)
    (tmp_path / "data" / "notes.jsonl").unlink()
    with pytest.raises(CompressError, match=r"data.train.mix\[2\].source: 'data/notes.jsonl' not found"):
        check_data(recipe)
    (tmp_path / "data" / "notes.jsonl").write_text('{"text": "no body field"}\n')
    with pytest.raises(CompressError, match=r"data.train.mix\[2\] \(data/notes.jsonl\): the data has no field 'body'"):
        validate_recipe(recipe)
