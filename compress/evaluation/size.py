"""Size of a model: parameters, nonzero fraction, bytes on disk (raw and zipped, which shows sparsity)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from compress.models.artifacts import OnnxModel, TorchModel


def model_size(model: TorchModel | OnnxModel) -> dict:
    """{"params", "nonzero_fraction", "size_mb", "zipped_mb"} for a TorchModel (safetensors) or OnnxModel.

    `params` counts logical parameters: a weight packed into 4 or 8 bits counts once per weight (K x N of a
    MatMulNBits), and quantization scales and zero points are not parameters."""
    if isinstance(model, OnnxModel):
        import onnx

        graph = onnx.load(str(model.path)).graph if model.path.suffix == ".onnx" else None
        params, nonzero = onnx_logical_params(graph) if graph is not None else (0, 0)
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


# Inputs of quantization ops that hold quantization metadata (scales, zero points, group indices), by position.
QUANT_METADATA_INPUTS = {
    "MatMulNBits": (2, 3, 4),  # A, B (packed), scales, zero_points, g_idx, bias
    "DequantizeLinear": (1, 2), "QuantizeLinear": (1, 2), "DynamicQuantizeLinear": (),
    "MatMulInteger": (2, 3), "QLinearMatMul": (1, 2, 4, 5, 6, 7), "DynamicQuantizeMatMul": (2, 3),
    "MatMulIntegerToFloat": (2, 3, 4, 5), "QGemm": (1, 2, 4, 5, 7, 8), "GatherBlockQuantized": (2, 3),
}


def onnx_logical_params(graph) -> tuple[int, int]:
    """(parameters, nonzero) of an ONNX graph, counting each weight once whatever its storage: MatMulNBits' packed
    B counts K x N, scales and zero points of quantization ops not at all, small integer constants neither."""
    from onnx import numpy_helper

    metadata, packed = set(), {}
    for node in graph.node:
        for index in QUANT_METADATA_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                metadata.add(node.input[index])
        if node.op_type == "MatMulNBits" and len(node.input) > 1:
            attrs = {a.name: a.i for a in node.attribute}
            packed[node.input[1]] = attrs["K"] * attrs["N"]
    params = nonzero = 0
    for init in graph.initializer:
        if init.name in metadata:
            continue
        arr = numpy_helper.to_array(init)
        if init.name in packed:  # every packed weight is a parameter (zeros cannot be told from the bytes)
            params += packed[init.name]
            nonzero += packed[init.name]
        elif arr.dtype.kind == "f" or arr.dtype.kind in "iu" and arr.size > 16:
            params += arr.size
            nonzero += int((arr != 0).sum())
    return params, nonzero


def _zipped_size(files: list[Path]) -> int:
    """Bytes after DEFLATE: what unstructured sparsity buys on disk (dense kernels gain no speed from it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for f in files:
            z.write(f, f.name)
    return buf.tell()
