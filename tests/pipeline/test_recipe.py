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
