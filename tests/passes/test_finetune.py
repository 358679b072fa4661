"""Fine-tuning: a model learns a real task, labels are checked, and the pass follows the contract."""

from __future__ import annotations

import pytest
import torch

from compress.core.errors import CompressError
from compress.passes.finetune import FinetuneConfig, run_finetune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_finetune_learns_digits(tmp_path):
    # setup
    from compress.data.examples import load_examples
    from compress.evaluation.accuracy import evaluate
    from compress.models.builders import build_tiny

    train, val = load_examples("builtin:digits", split="train"), load_examples("builtin:digits", split="validation")
    model = build_tiny("mlp")
    before = evaluate(model, val)["accuracy"]

    # execute
    metrics = run_finetune(model, train, FinetuneConfig(epochs=3, lr=1e-2, batch_size=32), tmp_path,
                           eval_examples=val, progress=False)

    # assert: far above chance (0.1), the reported best epoch is the model we hold, the loss went down
    after = evaluate(model, val)["accuracy"]
    assert before < 0.3 and after > 0.85
    assert metrics["best_eval_accuracy"] == pytest.approx(after)
    assert metrics["epoch_loss"][-1] < metrics["epoch_loss"][0]


def test_labels_are_checked(tmp_path, text_examples, tiny_bert):
    unlabelled = text_examples.subset(range(4))
    unlabelled.labels = None
    with pytest.raises(CompressError, match="no labels"):
        run_finetune(tiny_bert, unlabelled, FinetuneConfig(max_steps=1), tmp_path)
    too_many = text_examples.subset(range(4))
    too_many.labels = too_many.labels + 3
    with pytest.raises(CompressError, match="2 outputs"):
        run_finetune(tiny_bert, too_many, FinetuneConfig(max_steps=1), tmp_path)


def test_finetune_pass_contract(tmp_path, text_examples, tiny_bert):
    # setup
    from compress.passes.base import DataBundle, PassContext, get_pass

    info = get_pass("finetune")
    ctx = PassContext(teacher=None, data=DataBundle(train=text_examples, eval=text_examples), workdir=tmp_path,
                      progress=False)
    before = {k: v.clone() for k, v in tiny_bert.module.state_dict().items()}

    # execute
    result = info.fn(tiny_bert, FinetuneConfig(max_steps=3, batch_size=4, lr=1e-3), ctx)

    # assert: trained in place, evaluated each epoch, wrote only under the workdir
    assert info.accepts == ("torch",) and info.returns == "torch" and info.needs == ("train",)
    assert result.model is tiny_bert and result.metrics["steps"] == 3 and result.metrics["eval"]
    assert any(not torch.equal(v, before[k]) for k, v in tiny_bert.module.state_dict().items())
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        FinetuneConfig(epochs=1, bogus=1)
