"""The quantization entry point: the one place where classifiers and causal LMs part ways."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compress.core.errors import CompressError
from compress.models.artifacts import OnnxModel, TorchModel
from compress.models.causal import is_causal
from compress.techniques.quantize.causal import check_causal_inputs, quantize_causal
from compress.techniques.quantize.config import QuantizeSettings
from compress.techniques.quantize.config import check_inputs as check_settings_inputs
from compress.techniques.quantize.ort import quantize as quantize_classifier
from compress.techniques.quantize.result import QuantizeResult


def quantize(model: TorchModel | OnnxModel, out_dir: str | Path, cfg: QuantizeSettings, *, calibration=None,
             eval_data=None, work_dir: str | Path | None = None,
             on_progress: Callable[[str, int, int], None] | None = None, verdict: bool = False) -> QuantizeResult:
    """Quantize `model` into `out_dir` (model.onnx + quantization.json + config/tokenizer), written atomically.

    Args:
        model: a TorchModel (exported first, with parity checks) or an fp32 OnnxModel; a classifier, an encoder,
            an image model or a causal LM.
        out_dir: the output folder.
        cfg: the quantization settings (mode, types, calibration, exclusions, budget...).
        calibration: `Examples` for static mode (classifiers).
        eval_data: `Examples`. Classifiers: labelled examples for the accuracy budget (`cfg.max_drop`) and, when
            given, the reported accuracy. Causal LMs: their texts are the held-out text of the budget (read only
            when `cfg.max_drop` is set).
        work_dir: where temporary graphs go (default: system temp).
        on_progress: callback(stage, done, total) for progress bars.
        verdict: causal LMs: score the result against the unquantized model (perplexity, KL, greedy agreement) on
            `eval_data`'s texts, or built-in sample sentences without them (`metrics["verdict"]`).
    """
    if is_causal(model):
        return quantize_causal(model, out_dir, cfg, eval_texts=_budget_texts(cfg, eval_data), work_dir=work_dir,
                               on_progress=on_progress, verdict=verdict,
                               verdict_texts=eval_data.texts if verdict and eval_data is not None else None)
    check_inputs(model, cfg, calibration, eval_data)
    return quantize_classifier(model, out_dir, cfg, calibration=calibration, eval_examples=eval_data,
                               work_dir=work_dir, on_progress=on_progress)


def check_inputs(model: TorchModel | OnnxModel, cfg: QuantizeSettings, calibration=None, eval_data=None) -> None:
    """CompressError, before any work, for inputs `cfg` cannot use on `model`: int4 on a classifier, static mode
    without calibration data, a budget without (labelled) eval data, a mode decoders do not take."""
    if is_causal(model):
        return check_causal_inputs(cfg, _budget_texts(cfg, eval_data))
    if cfg.mode == "int4":
        raise CompressError("--mode int4 (weight-only MatMulNBits) is for causal LMs",
                            "use --mode dynamic for this model")
    check_settings_inputs(cfg, calibration, eval_data)


def _budget_texts(cfg: QuantizeSettings, eval_data) -> list[str] | None:
    """A decoder reads its held-out texts only under a budget."""
    return eval_data.texts if cfg.max_drop is not None and eval_data is not None else None
