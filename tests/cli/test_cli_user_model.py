"""A new user's own plain module through the CLI: the input shape comes from the first layer (or
`--input-shape`), the CLI says which it used, and a shape it cannot know is a one-line error without colours."""

from __future__ import annotations

import torch
from torch import nn

from compress.models.load import load_model


class EmbeddingBag(nn.Module):
    """Token ids in, classes out: the first layer (an Embedding) does not tell the input shape."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):  # (B, T) float ids -> (B, 2)
        return self.out(self.embed(x.abs().long().clamp(max=9)).mean(1))


def test_pickled_sequential_quantizes_with_the_shape_of_its_first_layer(cli, tmp_path):
    # setup: what the user did: torch.save(model) of a plain MLP whose first layer takes 64 features
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)), tmp_path / "model.pt")
    # execute
    result = cli(["quantize", tmp_path / "model.pt", "--allow-pickle", "-o", tmp_path / "out"])
    # assert: it ran on 64-wide inputs (the digits' 8x8 pixels, flattened) and said where the shape came from
    assert result.exit_code == 0, result.output
    assert "input shape 64 per example: inferred from the first layer, Linear(64, 128)" in result.output
    assert load_model(tmp_path / "out").input_names == ["inputs"]


def test_unknown_shape_is_one_line_and_input_shape_fixes_it(cli, tmp_path):
    torch.save(EmbeddingBag(), tmp_path / "bag.pt")
    result = cli(["export", tmp_path / "bag.pt", "--allow-pickle", "-o", tmp_path / "onnx"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--input-shape" in lines[0] and "Embedding" in lines[0], result.output
    assert "\x1b[" not in result.output  # no terminal colour codes in errors
    result = cli(["export", tmp_path / "bag.pt", "--allow-pickle", "--input-shape", "6", "-o", tmp_path / "onnx"])
    assert result.exit_code == 0, result.output
    assert "input shape 6 per example: given (--input-shape)" in result.output
