"""The architecture x pass matrix: one cell runs one pass on one tiny seeded architecture, checks what the
pass promises, saves, reloads from disk without pickle and compares outputs. Shared by
`tests/test_architectures.py` (one parametrized test per cell) and `scripts/arch_matrix.py` (the README table).

A cell either returns a short note (what was done) or, where the pass cannot handle the architecture, the
pass must raise a one-line `CompressError` naming the architecture and what is supported: `UNSUPPORTED`
lists those cells with the reason, and the cell checks that exact refusal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.core.errors import CompressError
from compress.models.architectures import TEXT, VISION, build_arch
from compress.models.artifacts import TorchModel
from compress.models.builders import register_builder
from compress.models.load import load_model

ARCHS = TEXT + VISION + ("user-residual",)
PASSES = ("distill", "prune_structured", "prune_heads", "factorize", "export_onnx", "quantize_ort")
LABELS = {"bert": "BERT", "distilbert": "DistilBERT", "roberta": "RoBERTa (XLM-R shares its classes)",
          "deberta-v2": "DeBERTa-v2", "electra": "ELECTRA", "albert": "ALBERT (one shared layer)", "vit": "ViT",
          "resnet": "ResNet (transformers)", "convnext": "ConvNeXt (transformers)",
          "user-residual": "user nn.Module with residuals (.pt + builder)"}

# (arch, pass) -> (the refusal's expected text, reason shown in the table)
UNSUPPORTED = {
    ("deberta-v2", "prune_heads"): ("DebertaV2ForSequenceClassification has no attention block with removable heads",
                                    "transformers gives DeBERTa-v2 no prune_heads"),
    ("resnet", "prune_heads"): ("ResNetForImageClassification has no attention block", "no attention heads"),
    ("convnext", "prune_heads"): ("ConvNextForImageClassification has no attention block", "no attention heads"),
    ("user-residual", "prune_heads"): ("ResidualNet has no attention block", "no attention heads"),
}
# Which structured unit each architecture prunes in the prune_structured column.
STRUCTURED_UNIT = {"resnet": "channels", "user-residual": "channels", "convnext": "channels"}


class ResidualNet(nn.Module):
    """What a user brings: a conv net with two residual blocks (BatchNorm, identity adds), not an nn.Sequential."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)) for _ in range(2)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 32), nn.ReLU(),
                                  nn.Linear(32, num_classes))

    def forward(self, x):  # (B, 1, 8, 8) -> (B, classes)
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))  # residual: every block's output channels are coupled with the stem's
        return self.head(x)


register_builder("user-residual-cnn")(ResidualNet)


def make_model(arch: str, tmp: Path) -> TorchModel:
    """The tiny model of `arch`; the user's module goes through a `.pt` state dict and its registered builder."""
    if arch != "user-residual":
        return build_arch(arch)
    torch.manual_seed(0)
    module = ResidualNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so pruning really has to carry them along
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp / "user.pt"
    torch.save(module.state_dict(), path)
    return load_model(path, arch="user-residual-cnn")


def examples(model: TorchModel):
    """Twelve labelled sentences for text models, 64 digits for vision ones."""
    from compress.data.examples import Examples, load_examples

    if model.takes_tokens:
        texts = ["good movie", "bad plot", "great acting", "awful script", "loved it", "hated it",
                 "a fine film", "a dull mess", "wonderful", "terrible", "nice", "boring"]
        return Examples(texts=texts, labels=np.array([1, 0] * 6, dtype=np.int64))
    return load_examples("builtin:digits", split="test", limit=64)


def logits(model, data) -> np.ndarray:
    from compress.data.examples import iter_batches
    from compress.runtime.predict import predict

    return predict(model, iter_batches(model, data, 16))[0]


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||a||: how far `b`'s logits moved from `a`'s."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def reload_check(model: TorchModel, data, tmp: Path, from_pretrained: bool = False) -> float:
    """Save, reload with the safe loader (no pickle) and return max |Δlogits|; with `from_pretrained`, also load
    the folder with transformers' own Auto class and require the same outputs."""
    folder = model.save(tmp / "saved")
    reloaded = load_model(folder)
    diff = float(np.abs(logits(model, data) - logits(reloaded, data)).max())
    assert diff <= 1e-5, f"reloaded model differs by {diff}"
    if from_pretrained:
        from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

        cls = AutoModelForSequenceClassification if model.takes_tokens else AutoModelForImageClassification
        hf = TorchModel(cls.from_pretrained(str(folder), attn_implementation="eager").eval(), model.task,
                        tokenizer=model.tokenizer)
        hf_diff = float(np.abs(logits(model, data) - logits(hf, data)).max())
        assert hf_diff <= 1e-5, f"from_pretrained differs by {hf_diff}"
    return diff


def _ctx(tmp: Path, teacher=None, train=None):
    from compress.passes.base import DataBundle, PassContext

    (tmp / "work").mkdir(exist_ok=True)
    return PassContext(teacher=teacher, data=DataBundle(train=train), workdir=tmp / "work", progress=False)


def _pass(name: str, model, tmp: Path, teacher=None, train=None, **options):
    from compress.passes.base import get_pass

    info = get_pass(name)
    return info.fn(model, info.config(**options), _ctx(tmp, teacher, train))


# --- the cells ------------------------------------------------------------------------------------------------


def cell_distill(arch: str, model: TorchModel, data, tmp: Path) -> str:
    from compress.techniques.distill.student import derive_student
    from compress.techniques.distill.teacher import fingerprint

    before = fingerprint(model)
    if arch in TEXT or arch == "vit":
        result = _pass("distill", model, tmp, teacher=model, train=data, student_layers=1, max_steps=2,
                       batch_size=8, max_length=16)
        student, note = result.model, "student: 1 of 2 layers (derived from the teacher)"
        assert student.module.config.num_hidden_layers == 1
        if arch == "albert":
            note = "student: 1 of 2 passes over the shared layer (same weights)"
    else:  # no list of transformer blocks to cut: the refusal names the architecture, a given student trains
        try:
            derive_student(model, 1)
        except CompressError as e:
            assert type(model.module).__name__ in str(e) and "\n" not in str(e)
        else:
            raise AssertionError("a student was derived from a model without layers")
        student = _pass("prune_structured", model, tmp, sparsity=0.5, unit="channels").model
        _pass("distill", student, tmp, teacher=model, train=data, max_steps=2, batch_size=8)
        note = "student given (channel-pruned copy); no layers to cut"
    assert fingerprint(model) == before, "the teacher changed"
    reload_check(student, data, tmp)
    return note


def cell_prune_structured(arch: str, model: TorchModel, data, tmp: Path) -> str:
    unit = STRUCTURED_UNIT.get(arch, "neurons")
    result = _pass("prune_structured", model, tmp, sparsity=0.5, unit=unit)
    m = result.metrics
    assert m["params_after"] < m["params_before"], m
    reload_check(result.model, data, tmp, from_pretrained=unit == "neurons" and arch != "convnext")
    removed = 1 - m["params_after"] / m["params_before"]
    what = {"neurons": "FFN neurons", "channels": "conv/linear channels (dependency graph)"}[unit]
    if arch == "albert":
        what = "FFN neurons of the one shared layer (all passes)"
    if arch == "convnext":
        what = "channels (dependency graph: depthwise conv, LayerNorm, MLP, layer scale)"
    return f"{what} 50%: -{removed:.0%} params"


def cell_prune_heads(arch: str, model: TorchModel, data, tmp: Path) -> str:
    result = _pass("prune_structured", model, tmp, sparsity=0.5, unit="heads")
    assert result.metrics["params_after"] < result.metrics["params_before"]
    assert result.model.module.config.pruned_heads, "config.pruned_heads not recorded"
    reload_check(result.model, data, tmp, from_pretrained=True)
    shared = " (the shared layer: every pass)" if arch == "albert" else ""
    return f"2 of 4 heads per layer{shared}; from_pretrained reloads"


def cell_factorize(arch: str, model: TorchModel, data, tmp: Path) -> str:
    result = _pass("factorize", model, tmp, rank=4, round_to=4)
    ranks = result.metrics["rank_per_layer"]
    assert ranks and all(r == 4 for r in ranks.values()), result.metrics
    reload_check(result.model, data, tmp)
    return f"{len(ranks)} layers at rank 4"


def cell_export_onnx(arch: str, model: TorchModel, data, tmp: Path) -> str:
    from compress.export.onnx import export_onnx

    result = export_onnx(model, tmp / "onnx")  # raises when parity fails (atol 1e-4, argmax agreement 100%)
    reloaded = load_model(tmp / "onnx")
    diff = float(np.abs(logits(model, data) - logits(reloaded, data)).max())
    assert diff <= 1e-4, diff
    return f"{result.exporter}, max |Δ| {diff:.0e}"


def cell_quantize_ort(arch: str, model: TorchModel, data, tmp: Path) -> str:
    result = _pass("quantize_ort", model, tmp)
    assert result.metrics["quantized_matmuls"] >= 1, result.metrics
    reloaded = load_model(result.model.path)
    err = rel_error(logits(model, data), logits(reloaded, data))
    # Measured on these tiny random models: 0.0003 (ResNet) to 0.03 (text); 0.25 leaves a wide margin while
    # still failing a wrong graph (a broken model moves logits by ~1).
    assert err < 0.25, err
    return f"int8 dynamic, {result.metrics['quantized_matmuls']} MatMul/Gemm, rel. logit error {err:.3f}"


CELLS = {"distill": cell_distill, "prune_structured": cell_prune_structured, "prune_heads": cell_prune_heads,
         "factorize": cell_factorize, "export_onnx": cell_export_onnx, "quantize_ort": cell_quantize_ort}


def run_cell(arch: str, pass_name: str, tmp: Path) -> str:
    """Run one cell; returns its note. An unsupported cell must raise the expected one-line CompressError."""
    model = make_model(arch, tmp)
    data = examples(model)
    if (arch, pass_name) in UNSUPPORTED:
        expected, reason = UNSUPPORTED[(arch, pass_name)]
        try:
            CELLS[pass_name](arch, model, data, tmp)
        except CompressError as e:
            assert expected in str(e) and "\n" not in str(e), str(e)
            return f"refused: {reason}"
        raise AssertionError(f"{pass_name} on {arch} should refuse with '{expected}'")
    return CELLS[pass_name](arch, model, data, tmp)
