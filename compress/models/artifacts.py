"""The two things passed between passes: a PyTorch model (`TorchModel`) and an ONNX model (`OnnxModel`)."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.models.modules import infer_input_shape

log = logging.getLogger(__name__)

# Written beside a saved model: what the loader needs to rebuild it without pickle.
MANIFEST_FILE = "compress_model.json"
TEXT_TASKS = ("text-classification", "feature-extraction")
CAUSAL_TASK = "text-generation"  # causal LMs (decoders); `compress.models.causal` holds what else is special about them


@dataclass
class TorchModel:
    """A PyTorch model with what is needed to feed it and to save it without pickle.

    Args:
        module: the `nn.Module`. Hugging Face models are `PreTrainedModel`s; plain modules take one tensor.
        task: "text-classification", "feature-extraction" or "image-classification".
        tokenizer: the Hugging Face tokenizer for text models, else None.
        builder: for plain modules, the registered builder name that rebuilds the architecture.
        builder_kwargs: keyword arguments of that builder.
        surgery: structural edits applied after building from config (pruning, factorization), in order;
            the loader re-applies them before loading the weights, so a changed model reloads without pickle.
        source: where the model came from (for reports).
        input_shape: shape of one input example (no batch dim) of a vision or plain module, when given
            (`--input-shape`); None = read from the config or inferred from the first layer (`example_shape`).
    """

    module: Any
    task: str
    tokenizer: Any = None
    builder: str | None = None
    builder_kwargs: dict = field(default_factory=dict)
    surgery: list[dict] = field(default_factory=list)
    source: str = ""
    input_shape: tuple | None = None

    kind = "torch"

    @property
    def is_hf(self) -> bool:
        return self.builder is None

    @property
    def takes_tokens(self) -> bool:
        """True for Hugging Face text models (tokenizer inputs); vision and plain modules take one float tensor."""
        return self.is_hf and self.task != "image-classification"

    def example_shape(self) -> tuple[tuple[int, ...], str]:
        """Shape of one input example of a vision/plain model (no batch dim), and where it came from."""
        if self.input_shape:
            return tuple(self.input_shape), "given (--input-shape)"
        if self.is_hf:
            config = self.module.config
            size = getattr(config, "image_size", None)
            if size is None:  # ResNet's config has no image size: try sizes
                return infer_input_shape(self.module, config.num_channels, lambda m, x: m(pixel_values=x))
            size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
            return (config.num_channels, *size), "from the config (num_channels, image_size)"
        return infer_input_shape(self.module)

    @property
    def num_labels(self) -> int | None:
        if self.is_hf:
            return getattr(self.module.config, "num_labels", None) if self.task != "feature-extraction" else None
        return self.builder_kwargs.get("num_classes")

    @property
    def input_names(self) -> list[str]:
        """Names of the model inputs, in the order the ONNX graph takes them."""
        if not self.takes_tokens:
            return ["inputs"]
        names = ["input_ids", "attention_mask"]
        if self.tokenizer is not None and "token_type_ids" in self.tokenizer.model_input_names:
            if getattr(self.module.config, "type_vocab_size", 0) > 0:
                names.append("token_type_ids")
        return names

    def logits(self, batch: dict) -> Any:
        """Forward a batch from `compress.data.examples` and return the logits (or, for encoders, the pooled output)."""
        if not self.is_hf:
            return self.module(batch["inputs"])
        if not self.takes_tokens:  # Hugging Face vision models: (B, C, H, W) pixel values
            return self.module(pixel_values=batch["inputs"]).logits
        out = self.module(**{k: batch[k] for k in self.input_names if k in batch})
        if self.task == "feature-extraction":
            return mean_pool(out.last_hidden_state, batch["attention_mask"])
        return out.logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def save(self, out_dir: str | Path) -> Path:
        """Write weights (safetensors), config, tokenizer and manifest into `out_dir`; returns `out_dir`."""
        return save_torch_model(self, Path(out_dir))


@dataclass
class OnnxModel:
    """An ONNX model file, with the tokenizer and task needed to feed it.

    Args:
        path: the `.onnx` (or `.ort`) file.
        task: as for `TorchModel`.
        tokenizer: the Hugging Face tokenizer for text models, else None.
        input_names: the graph's input names.
        source: where the model came from.
    """

    path: Path
    task: str
    tokenizer: Any = None
    input_names: list[str] = field(default_factory=list)
    source: str = ""

    kind = "onnx"

    @property
    def folder(self) -> Path:
        return self.path.parent

    def size_bytes(self) -> int:
        """Bytes on disk of the graph and its external data."""
        total = self.path.stat().st_size
        data = self.path.with_name(self.path.name + ".data")
        return total + (data.stat().st_size if data.exists() else 0)

    def manifest(self) -> dict:
        path = self.folder / MANIFEST_FILE
        return json.loads(path.read_text()) if path.exists() else {}


Artifact = TorchModel | OnnxModel


def save_torch_model(model: TorchModel, out_dir: Path) -> Path:
    """Save without pickle: safetensors weights, HF config/tokenizer or builder manifest, and surgery list."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"format": 1, "task": model.task, "builder": model.builder,
                "builder_kwargs": model.builder_kwargs, "surgery": model.surgery}
    if model.input_shape:
        manifest["input_shape"] = list(model.input_shape)
    if model.is_hf:
        # `architectures` lets transformers' Auto classes (and our task inference) pick the right head.
        model.module.config.architectures = [type(model.module).__name__]
        model.module.config.save_pretrained(out_dir)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(out_dir)
        manifest["hf_class"] = type(model.module).__name__
    # safetensors refuses tensors that share memory (tied embeddings); clone makes each one its own.
    state = {k: v.detach().contiguous().clone() for k, v in model.module.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return out_dir


def publish_dir(staging: Path, out_dir: Path) -> Path:
    """Copy a finished `staging` folder to `out_dir` atomically: a sibling temp folder, then one rename."""
    import shutil

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    final_tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(final_tmp, ignore_errors=True)
    shutil.copytree(staging, final_tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    final_tmp.rename(out_dir)
    return out_dir


def mean_pool(hidden, attention_mask):
    """Mean of token vectors over real tokens: (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def copy_model(model: TorchModel) -> TorchModel:
    """A deep copy of the module (the tokenizer is shared), so a pass never modifies its input."""
    return TorchModel(copy.deepcopy(model.module), model.task, tokenizer=model.tokenizer, builder=model.builder,
                      builder_kwargs=dict(model.builder_kwargs), surgery=list(model.surgery), source=model.source)
