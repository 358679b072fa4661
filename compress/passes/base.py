"""The pass contract: a strict config, a function `(model, cfg, ctx) -> PassResult`, and one registration line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.core.config import StrictConfig
from compress.core.registry import Registry
from compress.models.artifacts import OnnxModel, TorchModel

# Base of every pass config: unknown keys fail loudly, configs are immutable data. It is the bottom-layer
# `StrictConfig` itself, so the training loop's settings (`compress.training.loop.TrainConfig`) are pass configs too.
PassConfig = StrictConfig


@dataclass
class DataBundle:
    """The examples a pass may use. Any of them may be None when the recipe gives none.

    Args:
        train: training examples (finetune, distill, recovery).
        eval: held-out examples (model selection, sensitivity, accuracy budgets).
        calibration: examples for static quantization ranges.
    """

    train: Any = None
    eval: Any = None
    calibration: Any = None


@dataclass
class PassContext:
    """What a pass may read besides its input model.

    Args:
        teacher: the reference model (read-only: never mutate it).
        data: train / eval / calibration examples.
        workdir: the only folder a pass may write to.
        seed: seed for anything random.
        progress: True to show progress bars (passes log; the training loop owns its bar).
        cache_dir: where distillation caches teacher outputs (None = under $COMPRESS_CACHE).
        on_progress: callback(stage, done, total) for passes that report progress (quantization searches).
        score_eval: report quality on `data.eval` even where the pass needs it only for a budget (the single-pass
            commands ask for it; a pipeline scores every stage itself).
    """

    teacher: TorchModel | None
    data: DataBundle
    workdir: Path
    seed: int = 0
    progress: bool = True
    cache_dir: Path | None = None
    on_progress: Callable[[str, int, int], None] | None = None
    score_eval: bool = False


@dataclass
class PassResult:
    """The model the next pass receives and pass-local facts (sparsity, ranks, excluded nodes...)."""

    model: TorchModel | OnnxModel
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its config class, function and the artifact kinds it takes and gives."""

    name: str
    config: type[PassConfig]
    fn: Callable[..., PassResult]
    accepts: tuple[str, ...]
    returns: str
    needs: tuple[str, ...] = ()  # data splits it needs: "train", "eval", "calibration"


PASSES = Registry("pass")


def register_pass(config: type[PassConfig], *, accepts: tuple[str, ...] | str, returns: str,
                  needs: tuple[str, ...] = ()):
    """Register `fn` under `config`'s `type` literal. Kinds are "torch" or "onnx"."""
    name = config.model_fields["type"].default
    accepts = (accepts,) if isinstance(accepts, str) else accepts

    def wrap(fn):
        PASSES.register(name, PassInfo(name, config, fn, accepts, returns, needs))
        return fn

    return wrap


def get_pass(name: str) -> PassInfo:
    import compress.passes  # noqa: F401  (the package imports every pass module: registration runs on import)

    return PASSES.lookup(name)


def list_passes() -> list[PassInfo]:
    import compress.passes  # noqa: F401

    return [PASSES[k] for k in sorted(PASSES)]
