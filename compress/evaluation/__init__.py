"""Evaluation: accuracy and agreement (one scoring path for PyTorch and ONNX), latency, size."""
