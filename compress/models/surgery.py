"""Surgeries: structural edits (slice units out of coupled layers, drop attention heads, split a layer into a
low-rank pair, swap in int8 Linears) recorded in a saved model's manifest and re-applied by the loader to a
freshly built module before its weights load, so an edited model reloads without pickle.

This is a bottom-layer module: the loader (`compress.models.load`) reads the registry, the passes call the same
functions when they edit a model, and nothing here imports a pass.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from compress.core.errors import CompressError
from compress.core.registry import Registry
from compress.models.modules import swap_module

SURGERIES = Registry("surgery", "upgrade compress to the version that wrote the model")
register_surgery = SURGERIES.register


def apply_surgery(module, surgery: list[dict]) -> None:
    """Re-apply recorded structural edits, in order, to a freshly built module."""
    for step in surgery:
        SURGERIES.lookup(step["op"], " in the model manifest")(module, **step.get("params", {}))


# --- slicing units (structured pruning) -------------------------------------------------------------------


def _slice_param(layer, attr: str, dim: int, index) -> None:
    import torch

    tensor = getattr(layer, attr)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, torch.nn.Parameter):
        setattr(layer, attr, torch.nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:  # a buffer (BatchNorm running statistics)
        setattr(layer, attr, new)


def slice_outputs(layer, index) -> None:
    """Keep output units `index` of a Linear / Conv / BatchNorm (rows of the weight, bias, running stats)."""
    from torch import nn

    if isinstance(layer, nn.Linear):
        _slice_param(layer, "weight", 0, index); _slice_param(layer, "bias", 0, index)  # noqa: E702
        layer.out_features = len(index)
    elif isinstance(layer, nn.modules.conv._ConvNd):
        if layer.groups != 1:
            raise CompressError(f"cannot prune a grouped convolution ({layer})", "exclude it with --exclude")
        _slice_param(layer, "weight", 0, index); _slice_param(layer, "bias", 0, index)  # noqa: E702
        layer.out_channels = len(index)
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(layer, attr, 0, index)
        layer.num_features = len(index)
    else:
        raise CompressError(f"cannot slice outputs of {type(layer).__name__}", "exclude the layer")


def slice_inputs(layer, index, repeat: int = 1) -> None:
    """Keep input units `index` of a Linear / Conv. `repeat` > 1: a Flatten sits before the Linear, so
    each channel owns `repeat` consecutive features (channel-major: (B, C, H, W) -> (B, C*H*W))."""
    import torch
    from torch import nn

    if repeat > 1:
        index = (index[:, None] * repeat + torch.arange(repeat)[None]).reshape(-1)  # (k,) -> (k*repeat,)
    if isinstance(layer, nn.Linear):
        _slice_param(layer, "weight", 1, index)
        layer.in_features = len(index)
    elif isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1:
        _slice_param(layer, "weight", 1, index)
        layer.in_channels = len(index)
    else:
        raise CompressError(f"cannot slice inputs of {type(layer).__name__}", "exclude the layer")


@dataclass
class UnitGroup:
    """Units (neurons / channels) shared by coupled layers: removing unit j removes output j of every
    `outputs` layer and input j of every `inputs` layer (with its Flatten repeat)."""

    name: str  # the layer whose outputs define the units (reported per layer)
    size: int
    outputs: list[str]
    inputs: list[tuple[str, int]]

    def slices(self, module) -> list:
        """Every weight that goes with each unit, dim 0 over units (for importance scores)."""
        out = []
        for name in self.outputs:
            layer = module.get_submodule(name)
            if hasattr(layer, "running_mean"):
                continue  # BatchNorm: its scale is not a magnitude of the unit
            out += [p for p in (layer.weight, getattr(layer, "bias", None)) if p is not None]
        for name, _ in self.inputs:
            w = module.get_submodule(name).weight  # (out, in*repeat, ...)
            w = w.transpose(0, 1).reshape(self.size, -1)  # (units, repeat * out * ...)
            out.append(w)
        return out

    def apply(self, module, index) -> None:
        for name in self.outputs:
            slice_outputs(module.get_submodule(name), index)
        for name, repeat in self.inputs:
            slice_inputs(module.get_submodule(name), index, repeat)


@register_surgery("slice_units")
def slice_units_surgery(module, groups: list[dict]) -> None:
    """Loader side of structured pruning: shrink each group to `keep` units (the weights load afterwards)."""
    import torch

    for g in groups:
        group = UnitGroup(g["name"], 0, g["outputs"], [tuple(x) for x in g["inputs"]])
        group.apply(module, torch.arange(g["keep"]))
    sync_hf_config(module)


@register_surgery("prune_heads")
def prune_heads_surgery(module, layers: dict[str, list[int]]) -> None:
    """Remove attention heads: `layers` maps an attention module name to the head indices to drop.
    Uses the module's own `prune_heads` (BERT family), which skips heads already removed (idempotent)."""
    for name, heads in layers.items():
        module.get_submodule(name).prune_heads(list(heads))


def sync_hf_config(module) -> None:
    """Keep `config.intermediate_size` true when every FFN has the same width, so config.json says what
    the weights hold (tools that read only the config then still work)."""
    config = getattr(module, "config", None)
    # DistilBERT names its FFN width `hidden_dim`; the others `intermediate_size`.
    attr = "hidden_dim" if getattr(config, "model_type", "") == "distilbert" else "intermediate_size"
    if config is None or not hasattr(config, attr):
        return
    widths = {g.size for g in ffn_groups(module)}
    if len(widths) == 1:
        setattr(config, attr, widths.pop())


# (up, down) FFN Linears: BERT/RoBERTa/ELECTRA/DeBERTa/ViT, DistilBERT, ALBERT (one shared layer), ConvNeXt.
FFN_PAIRS = (("intermediate.dense", "output.dense"), ("ffn.lin1", "ffn.lin2"), ("ffn", "ffn_output"),
             ("pwconv1", "pwconv2"))


def ffn_groups(module) -> list[UnitGroup]:
    """The feed-forward neurons of each transformer layer: BERT/RoBERTa/ELECTRA-style
    (`intermediate.dense` -> `output.dense`) and DistilBERT-style (`ffn.lin1` -> `ffn.lin2`)."""
    from torch import nn

    groups = []
    for name, layer in module.named_modules():
        for up_name, down_name in FFN_PAIRS:
            try:
                up, down = layer.get_submodule(up_name), layer.get_submodule(down_name)
            except AttributeError:
                continue
            if isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and up.out_features == down.in_features:
                groups.append(UnitGroup(f"{name}.{up_name}", up.out_features, [f"{name}.{up_name}"],
                                        [(f"{name}.{down_name}", 1)]))
    return groups


# --- low-rank factor pairs (factorize) ----------------------------------------------------------------


def factor_pair(layer, r: int):
    """Two layers computing in -> r -> out: Linear pair, or Conv(k×k, r channels) then Conv 1×1."""
    from torch import nn

    if isinstance(layer, nn.Linear):
        return (nn.Linear(layer.in_features, r, bias=False),
                nn.Linear(r, layer.out_features, bias=layer.bias is not None))
    conv = type(layer)  # Conv1d / Conv2d
    first = conv(layer.in_channels, r, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                 dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
    second = conv(r, layer.out_channels, 1, bias=layer.bias is not None)
    return first, second


@register_surgery("factorize_lowrank")
def factorize_surgery(module, layers: dict[str, int]) -> None:
    """Loader side: replace each named layer by its factor pair of the recorded rank (weights load next)."""
    from torch import nn

    for name, r in layers.items():
        first, second = factor_pair(module.get_submodule(name), int(r))
        swap_module(module, name, nn.Sequential(first, second))


# --- int8 dynamic Linear (quantize_torch) -----------------------------------------------------------------


def int8_linear_class():
    import torch
    from torch import nn

    class Int8DynamicLinear(nn.Module):
        """y = x W^T + b with W stored as int8 (out, in) and a per-output-channel scale; fbgemm/x86 kernels."""

        def __init__(self, in_features: int, out_features: int, bias: bool = True):
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("weight_scale", torch.ones(out_features))
            self.register_buffer("bias", torch.zeros(out_features) if bias else None)
            self._packed = None

        @classmethod
        def from_linear(cls, linear: nn.Linear):
            new = cls(linear.in_features, linear.out_features, linear.bias is not None)
            w = linear.weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # symmetric, per output channel
            new.weight_int8.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            new.weight_scale.copy_(scale)
            if linear.bias is not None:
                new.bias.copy_(linear.bias.detach().float())
            return new

        def _load_from_state_dict(self, *args, **kwargs):
            self._packed = None  # new weights: repack on the next call
            super()._load_from_state_dict(*args, **kwargs)

        def forward(self, x):
            if self._packed is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # quantized tensor dtypes are deprecated (pytorch #184982)
                    zero = torch.zeros(self.out_features, dtype=torch.long)
                    qweight = torch._make_per_channel_quantized_tensor(self.weight_int8, self.weight_scale.double(),
                                                                      zero, 0)
                    self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
            # reduce_range=True: 7-bit activations, so the AVX2 u8 x s8 products cannot saturate int16 (no VNNI).
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, True).to(x.dtype)

    return Int8DynamicLinear


@register_surgery("int8_dynamic_linear")
def _swap_in_empty(module, modules: list[str]) -> None:
    """Re-create the int8 modules (empty) in a freshly built model, before its weights are loaded."""
    cls = int8_linear_class()
    for name in modules:
        linear = module.get_submodule(name)
        swap_module(module, name, cls(linear.in_features, linear.out_features, linear.bias is not None))


# --- resize (channel pruning through a dependency graph) ---------------------------------------------------

# Size attributes that layers keep beside their tensors; a resized layer gets them back from the record.
SIZE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
              "normalized_shape", "num_channels")


def tensor_shapes(module) -> dict[str, dict]:
    """{module name: {"tensors": {param/buffer: shape}, "attrs": {size attr: value}}} of every submodule."""
    out = {}
    for name, sub in module.named_modules():
        tensors = {k: list(v.shape) for k, v in list(sub.named_parameters(recurse=False)) +
                   list(sub.named_buffers(recurse=False)) if v is not None}
        attrs = {a: (list(v) if isinstance(v, tuple) else v) for a in SIZE_ATTRS
                 if isinstance(v := getattr(sub, a, None), (int, tuple))}
        out[name] = {"tensors": tensors, "attrs": attrs}
    return out


def resize_record(before: dict, module) -> dict:
    """The submodules whose tensor shapes changed since `before` (a `tensor_shapes` snapshot), as recorded."""
    after = tensor_shapes(module)
    return {name: rec for name, rec in after.items() if name in before and rec["tensors"] != before[name]["tensors"]}


@register_surgery("resize")
def resize_surgery(module, modules: dict[str, dict]) -> None:
    """Loader side of graph-based channel pruning: give each recorded submodule tensors of the recorded shapes
    (values arrive with the weights) and its size attributes back."""
    import torch

    for name, rec in modules.items():
        sub = module.get_submodule(name)
        for tensor_name, shape in rec["tensors"].items():
            old = getattr(sub, tensor_name)
            new = torch.zeros(shape, dtype=old.dtype)
            if isinstance(old, torch.nn.Parameter):
                setattr(sub, tensor_name, torch.nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                setattr(sub, tensor_name, new)
        for attr, value in rec["attrs"].items():
            setattr(sub, attr, tuple(value) if isinstance(value, list) else value)
