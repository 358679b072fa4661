"""Quantization: ONNX Runtime int8/fp16 with an accuracy budget, decoder weight-only int4/int8, PyTorch int8."""
