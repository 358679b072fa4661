"""Model size: logical parameters of ONNX graphs whatever their storage (fp32, 4/8-bit MatMulNBits, int8 QDQ)."""

from __future__ import annotations

import numpy as np
import pytest


def _matmul_graph(path, k: int = 64, n: int = 32):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("bits", [4, 8])
def test_packed_weights_count_once_and_scales_not_at_all(tmp_path, bits):
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from compress.evaluation.size import onnx_logical_params

    # setup: a 64x32 MatMul, then the same weight packed by ONNX Runtime's quantizer (block 32, zero points)
    fp32 = onnx.load(str(_matmul_graph(tmp_path / "m.onnx")))
    quantizer = MatMulNBitsQuantizer(fp32, bits=bits, block_size=32, is_symmetric=False,
                                     algo_config=DefaultWeightOnlyQuantConfig(block_size=32, bits=bits))
    quantizer.process()
    packed = quantizer.model.model
    # execute
    before, after = onnx_logical_params(fp32.graph)[0], onnx_logical_params(packed.graph)[0]
    # assert: the quantized graph holds packed bytes, scales and zero points, yet the same 2,048 parameters
    assert [n.op_type for n in packed.graph.node] == ["MatMulNBits"]
    assert before == after == 64 * 32
