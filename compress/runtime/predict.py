"""Run a batch through a `TorchModel` or an `OnnxModel` and get logits as numpy: the one forward path for
evaluation, export parity, quantization sensitivity and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from compress.models.artifacts import OnnxModel, TorchModel, mean_pool


class Predictor:
    """Callable `batch -> logits (np.ndarray)` for either kind of model.

    Args:
        model: a TorchModel or OnnxModel.
        device: "cpu" or "cuda".
        threads: intra-op threads for ONNX Runtime (torch threads are set by the caller).
    """

    def __init__(self, model: TorchModel | OnnxModel, device: str = "cpu", threads: int | None = None):
        self.model = model
        self.device = device
        if isinstance(model, OnnxModel):
            from compress.runtime.ort import make_session

            self.session = make_session(model.path, device=device, threads=threads)
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.output_name = self.session.get_outputs()[0].name
        else:
            self.session = None
            model.module.to(device).eval()

    def feed(self, batch: dict) -> dict:
        """ONNX inputs for `batch`: only the names the graph takes, as int64/float32 numpy arrays."""
        return {name: batch[name].cpu().numpy() for name in self.input_names}

    def __call__(self, batch: dict) -> np.ndarray:
        if self.session is not None:
            out = self.session.run([self.output_name], self.feed(batch))[0]
            if self.model.task == "feature-extraction" and out.ndim == 3:
                import torch

                out = mean_pool(torch.from_numpy(out), batch["attention_mask"]).numpy()
            return out
        import torch

        with torch.inference_mode():
            batch = {k: v.to(self.device) for k, v in batch.items()}
            return self.model.logits(batch).float().cpu().numpy()


def predict(model, batches: Iterable[dict], device: str = "cpu", threads: int | None = None):
    """Logits and labels over all batches: (N, C) float32, (N,) int64 or None."""
    run = Predictor(model, device=device, threads=threads)
    logits, labels = [], []
    for batch in batches:
        logits.append(run(batch))
        if "labels" in batch:
            labels.append(batch["labels"].numpy())
    return np.concatenate(logits), (np.concatenate(labels) if labels else None)
