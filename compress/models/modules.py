"""Module selection by glob over names, and module swapping: the two helpers every pass uses to find and
replace layers (torchao's `filter_fn` targeting and `_replace_with_custom_fn_if_matches_filter`)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from compress.core.errors import CompressError

# Layers no pass touches unless the user names them: token/position tables and the task head.
DEFAULT_EXCLUDE = ("*embeddings*", "*classifier*", "*lm_head*", "*pooler*")


def matches(name: str, globs, inside: bool = False) -> bool:
    """True when `name` matches one of `globs`; with `inside`, a glob also matches everything inside the
    module it names ("bert.encoder.layer.0" then matches that layer's FFN)."""
    return any(fnmatch.fnmatchcase(name, g) or (inside and fnmatch.fnmatchcase(name, g + ".*")) for g in globs)


def check_globs(names: list[str], globs, what: str = "layer of the model") -> None:
    """Every glob the user gives must match one of `names`, else `CompressError` (a typo must not edit nothing)."""
    for glob in globs:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            raise CompressError(f"the glob '{glob}' matches no {what}",
                                f"check the names (e.g. {', '.join(names[:3])})")


@dataclass
class Targets:
    """Layers a pass will edit, and those it leaves alone with the reason (for the report)."""

    layers: list[tuple[str, object]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def select_modules(module, types: tuple, targets: list[str] | None = None, exclude: list[str] | None = None,
                   exclude_defaults: bool = True, allow_empty: bool = False) -> Targets:
    """Pick the submodules of `types` whose names match `targets` (default: all) and none of `exclude`.

    The output layer (the last Linear) and `DEFAULT_EXCLUDE` are left out unless named in `targets`.
    Every glob the user gives must match some module, else `CompressError`.

    Args:
        module: the `nn.Module`.
        types: layer classes to consider, e.g. `(nn.Linear, nn.Conv2d)`.
        targets: fnmatch globs over module names (`bert.encoder.layer.*.intermediate.dense`).
        exclude: globs of names to leave alone.
        exclude_defaults: also leave out embeddings, the classifier and the output layer.
        allow_empty: return an empty selection instead of raising.
    """
    from torch import nn

    every = [(n, m) for n, m in module.named_modules() if n]
    check_globs([n for n, _ in every], list(targets or []) + list(exclude or []))
    named = [(n, m) for n, m in every if isinstance(m, types)]
    linears = [n for n, m in every if isinstance(m, nn.Linear)]
    output_layer = linears[-1] if linears else None
    out = Targets()
    for name, layer in named:
        if targets and not matches(name, targets):
            continue
        if matches(name, exclude or []):
            out.skipped[name] = "excluded by --exclude"
        elif exclude_defaults and not targets and matches(name, DEFAULT_EXCLUDE):
            out.skipped[name] = "embeddings / task head (excluded by default)"
        elif exclude_defaults and not targets and name == output_layer:
            out.skipped[name] = "output layer (excluded by default)"
        else:
            out.layers.append((name, layer))
    if not out.layers and not allow_empty:
        raise CompressError("no layer left to edit after targets/exclude", "widen --targets or narrow --exclude")
    return out


def swap_module(root, name: str, new) -> None:
    """Replace the submodule at dotted `name` of `root` by `new` (the one swap idiom of the package)."""
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def infer_input_shape(module, channels: int | None = None, forward=None) -> tuple[tuple[int, ...], str]:
    """Shape of one input example of a plain module (no batch dim), and how it was found.

    The first weight layer tells the feature/channel count: Linear(in) takes (in,); Conv1d/Conv2d take
    (C, L) / (C, H, W), where the spatial size is the first of 8, 32, 224 for which a trial forward runs
    (8x8 is the built-in digits data). Anything else raises `CompressError` asking for `--input-shape`.

    Args:
        module: the `nn.Module`.
        channels: the channel count when known (a Hugging Face vision config's `num_channels`).
        forward: `forward(module, x)`; default `module(x)`.
    """
    import torch
    from torch import nn

    forward = forward or (lambda m, x: m(x))
    # Weight layers (any leaf with parameters, e.g. an Embedding, counts: then the shape is not known) and Flattens.
    layers = [m for m in module.modules() if isinstance(m, nn.Flatten) or
              (not list(m.children()) and any(True for _ in m.parameters(recurse=False)))]
    first = next((m for m in layers if not isinstance(m, nn.Flatten)), None)
    if isinstance(first, nn.Linear) and channels is None:
        where = f"inferred from the first layer, Linear({first.in_features}, {first.out_features})"
        if isinstance(layers[0], nn.Flatten) and first.in_features == 64:  # flattens images: digits are 1x8x8
            return (1, 8, 8), where + " after a Flatten (1x8x8 digits)"
        return (first.in_features,), where
    if isinstance(first, (nn.Conv1d, nn.Conv2d)):
        dims = 1 if isinstance(first, nn.Conv1d) else 2
        for size in (8, 32, 224):
            shape = (channels or first.in_channels,) + (size,) * dims
            try:
                with torch.no_grad():
                    forward(module.eval(), torch.zeros((1, *shape)))
            except Exception:  # noqa: BLE001  any failure means "not this size": try the next one
                continue
            return shape, (f"inferred from the first layer, {type(first).__name__}({first.in_channels}, "
                           f"{first.out_channels}), spatial size {size} by a trial forward")
    kind = type(first).__name__ if first is not None else type(module).__name__
    raise CompressError(f"cannot infer the input shape of this {kind} model",
                        "pass --input-shape with the shape of one example, e.g. 64 or 3,32,32")


def parse_shape(text: str) -> tuple[int, ...]:
    """'3,32,32' or '3x32x32' -> (3, 32, 32); `CompressError` for anything else."""
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise CompressError(f"bad --input-shape '{text}'", "give positive sizes of one example, e.g. 64 or 3,32,32")
    return shape


def renumber_layers(blocks) -> None:
    """Give every submodule with a `layer_idx` (attention caches index by it) its block's new position 0..K-1,
    after blocks were dropped or reordered."""
    for new_index, block in enumerate(blocks):
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_index
