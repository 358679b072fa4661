"""Reading ONNX graphs: load them, find the quantizable nodes, count quantized ops, match exclusions, name units."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from compress.core.errors import CompressError

# Nodes that compute a matrix product in integer arithmetic (QOperator form) or float after int8 weights.
INT_MATMUL_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm",
                  "QAttention"}
FLOAT_MATMUL_OPS = {"MatMul", "Gemm", "Attention"}


def load_graph(path: Path):
    """The ONNX graph at `path`; CompressError when the file is not a model."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError / ValueError for files that are not ONNX
        raise CompressError(f"'{path}' is not an ONNX model ({type(e).__name__})",
                            "pass a model folder, a .pt with --arch, or an .onnx written by an exporter") from e
    if not model.graph.node:
        raise CompressError(f"'{path}' is not an ONNX model (empty graph)", "pass an .onnx written by an exporter")
    return model


def quantizable_nodes(model, op_types: list[str]) -> list[str]:
    """Names of nodes of `op_types` that quantization would touch: MatMul/Gemm only with a constant weight."""
    inits = {i.name for i in model.graph.initializer}
    consts = inits | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = []
    for node in model.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        if node.op_type in ("MatMul", "Gemm") and not (len(node.input) > 1 and node.input[1] in consts):
            continue  # activation x activation (attention scores): kept fp32, as MatMulConstBOnly does
        if node.op_type == "Gather" and node.input[0] not in inits:
            continue  # shape Gathers, not embedding tables
        names.append(node.name)
    return names


def count_ops(path: Path) -> dict:
    """Quantized vs float matrix products in the graph at `path`, and all op counts.

    A MatMul/Gemm fed by a DequantizeLinear weight (QDQ form) counts as quantized: ORT fuses it to QLinearMatMul.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    from collections import Counter

    ops = Counter(n.op_type for n in graph.node)
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    qdq = sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
              and n.input[0] in dq_outputs and n.input[1] in dq_outputs)
    int_mm = sum(ops[o] for o in INT_MATMUL_OPS)
    float_mm = sum(ops[o] for o in FLOAT_MATMUL_OPS) - qdq
    return {"quantized_matmuls": int_mm + qdq, "float_matmuls": float_mm, "qdq_matmuls": qdq,
            "ops": dict(sorted(ops.items()))}


def match_exclusions(patterns: list[str], node_names: list[str], examples: list[str] | None = None,
                     ) -> dict[str, list[str]]:
    """{pattern: matched node names} by exact name or glob; CompressError for a pattern that matches nothing."""
    matched = {}
    for pattern in patterns:
        hits = [n for n in node_names if n and (n == pattern or fnmatch.fnmatchcase(n, pattern))]
        if not hits:
            examples = ", ".join((examples or node_names)[:2])
            raise CompressError(f"--exclude '{pattern}' matches no node of the graph being quantized",
                                f"use node names or globs such as '*layer.0*' (nodes look like: {examples})")
        matched[pattern] = hits
    return matched


_LAYER = re.compile(r"(?:layers?|blocks?|h)[._/](\d+)(?=[./_]|$)")


def layer_of(texts) -> str | None:
    """"layer.3" for the first of `texts` (node name, inputs, outputs) that names a transformer layer, else None."""
    for text in texts:
        found = _LAYER.search(text)
        if found:
            return f"layer.{int(found.group(1))}"
    return None


def unit_of(node, granularity: str) -> str:
    """The sensitivity unit of a node: its transformer layer ("layer.3"), "embeddings", or the node itself."""
    if granularity == "node":
        return node.name
    layer = layer_of([node.name, *node.output, *node.input])
    if layer:
        return layer
    if any("embed" in t.lower() for t in [node.name, *node.output]):
        return "embeddings"
    return node.name
