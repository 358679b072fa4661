"""Running a model: ONNX Runtime sessions, the classifier predictor, and the causal decode loop (KV cache)."""
