"""Export PyTorch models to ONNX / ORT format, always checked for parity, and make ONNX Runtime sessions."""
