"""The bottom-layer helpers every pass shares: the registry, module selection by glob, the swap helper and the
input-shape inference used to export a user's own module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.core.errors import CompressError
from compress.core.registry import Registry
from compress.models.modules import infer_input_shape, matches, parse_shape, select_modules, swap_module


def test_registry_registers_and_names_the_choices():
    reg = Registry("widget")

    @reg.register("a")
    def a():
        return 1

    reg.register("b", 2)
    assert reg.lookup("a") is a and reg["b"] == 2 and sorted(reg) == ["a", "b"]
    with pytest.raises(CompressError, match="unknown widget 'c'; use one of: a, b"):
        reg.lookup("c")


def test_select_and_swap():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)))
    chosen = select_modules(net, (nn.Linear,))
    # the output layer is left out by default, with the reason
    assert [n for n, _ in chosen.layers] == ["0", "2.0"] and chosen.skipped == {"2.1": "output layer (excluded by default)"}
    assert matches("2.0", ["2"], inside=True) and not matches("2.0", ["2"])
    with pytest.raises(CompressError, match="the glob 'nope' matches no layer"):
        select_modules(net, (nn.Linear,), targets=["nope"])
    swap_module(net, "2.0", nn.Identity())
    assert isinstance(net[2][0], nn.Identity)


def test_input_shape_from_the_first_layer():
    assert infer_input_shape(nn.Sequential(nn.Linear(64, 128), nn.ReLU()))[0] == (64,)
    assert infer_input_shape(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))[0] == (1, 8, 8)  # digits
    # 3 channels, then a Linear sized for 32x32 maps: the trial forward finds the spatial size
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    assert infer_input_shape(conv)[0] == (3, 32, 32)
    with pytest.raises(CompressError, match="--input-shape"):
        infer_input_shape(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)))
    assert parse_shape("3,32,32") == parse_shape("3x32x32") == (3, 32, 32)
    with pytest.raises(CompressError, match="bad --input-shape"):
        parse_shape("a,b")
    assert torch.zeros(1, *parse_shape("64")).shape == (1, 64)
