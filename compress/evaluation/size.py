"""Size of a model: parameters, nonzero fraction, bytes on disk (raw and zipped, which shows sparsity)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from compress.models.artifacts import OnnxModel, TorchModel


def model_size(model: TorchModel | OnnxModel) -> dict:
    """{"params", "nonzero_fraction", "size_mb", "zipped_mb"} for a TorchModel (safetensors) or OnnxModel."""
    if isinstance(model, OnnxModel):
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(model.path)).graph if model.path.suffix == ".onnx" else None
        params = nonzero = 0
        if graph is not None:
            for init in graph.initializer:
                arr = numpy_helper.to_array(init)
                if arr.dtype.kind == "f" or arr.dtype.kind in "iu" and arr.size > 16:
                    params += arr.size
                    nonzero += int((arr != 0).sum())
        files = [model.path] + [p for p in [model.path.with_name(model.path.name + ".data")] if p.exists()]
        raw = sum(p.stat().st_size for p in files)
        return {"params": params, "nonzero_fraction": nonzero / max(params, 1), "size_mb": raw / 1e6,
                "zipped_mb": _zipped_size(files) / 1e6}
    import tempfile

    params = sum(p.numel() for p in model.module.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.module.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        path = Path(tmp) / "model.safetensors"
        state, seen = {}, set()
        for k, v in model.module.state_dict().items():
            # Tied weights (lm_head = embeddings) are one tensor: count them once, as an HF checkpoint stores them.
            key = (v.data_ptr(), v.numel(), tuple(v.shape))
            if v.numel() and key in seen:
                continue
            seen.add(key)
            state[k] = v.detach().contiguous().clone()
        save_file(state, str(path))
        raw, zipped = path.stat().st_size, _zipped_size([path])
    return {"params": params, "nonzero_fraction": nonzero / max(params, 1), "size_mb": raw / 1e6,
            "zipped_mb": zipped / 1e6}


def _zipped_size(files: list[Path]) -> int:
    """Bytes after DEFLATE: what unstructured sparsity buys on disk (dense kernels gain no speed from it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for f in files:
            z.write(f, f.name)
    return buf.tell()
