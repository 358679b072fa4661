"""Issue 12, class 4: a recipe that is not UTF-8, nests too deep, expands aliases or is huge is one line."""

from __future__ import annotations

import pytest
from _reliability import assert_one_line_error, checksum

from compress.pipeline.recipe import MAX_YAML_ALIASES, load_recipe


def _laughs(levels: int) -> str:
    """The 'billion laughs' shape: each level lists the previous one three times."""
    text = "l0: &l0 [ha, ha, ha]\n"
    for i in range(1, levels):
        text += f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}]\n"
    return text


@pytest.mark.parametrize("content, needles", [
    (bytes(range(256)) * 8, ["not UTF-8 text (byte 128)"]),
    (b"name: x\nstages: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", ["nested deeper than 64 levels", "line 2"]),
    (("name: x\nmodel: " + "{a: " * 100 + "b" + "}" * 100 + "\n").encode(), ["nested deeper"]),
    (_laughs(40).encode(), [f"more than {MAX_YAML_ALIASES} YAML aliases"]),
    (b"name: x\n" + b"# padding\n" * 200_000, ["too large for a recipe"]),
    (b"name: [unclosed\n", ["not valid YAML at line"]),
    (b"- just\n- a list\n", ["a recipe is a YAML mapping"]),
])
def test_bad_recipe_is_one_line(tmp_path, cli, content, needles):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    before = checksum(recipe)
    for args in (["run", recipe, "--dry-run"], ["run", recipe, "--runs", tmp_path / "runs", "-o", tmp_path / "rep"]):
        assert_one_line_error(cli(args), str(recipe), *needles)
    assert checksum(recipe) == before and not (tmp_path / "runs").exists() and not (tmp_path / "rep").exists()


def test_aliases_within_the_bound_still_load(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: aliased\nmodel: tiny:cnn\ndata: &d {source: builtin:digits, eval: test}\n"
                      "stages:\n  - {name: int8, pass: {type: quantize_torch}}\n")
    assert load_recipe(recipe).name == "aliased"
