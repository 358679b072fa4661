"""Distillation: the loss against a hand computation, students derived from teachers, cached teacher logits,
a student reaching its teacher on a tiny task, and the bad pairs that must fail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.core.errors import CompressError
from compress.passes.distill import DistillConfig
from compress.techniques.distill.losses import attention_loss, distillation_loss, hidden_state_loss
from compress.techniques.distill.run import run_distillation
from compress.techniques.distill.student import derive_student, select_layers
from compress.techniques.distill.teacher import teacher_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(x):
    e = [math.exp(v) for v in x]
    return [v / sum(e) for v in e]


def test_loss_equals_hand_computation():
    # setup: one example, three classes, label 1
    s, t, y, temp, alpha = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], 1, 2.0, 0.3
    p_t = _softmax([v / temp for v in t])
    p_s = _softmax([v / temp for v in s])
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=False))
    ce = -math.log(_softmax(s)[y])
    expected = alpha * temp**2 * kl + (1 - alpha) * ce

    # execute
    loss, parts = distillation_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), temp, alpha)

    # assert
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["kd"].item() == pytest.approx(temp**2 * kl, rel=1e-6)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)


def test_temperature_squared_scaling_and_alpha_mixing():
    # setup
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    y = torch.randint(0, 4, (8,), generator=g)

    # execute
    kd_only, _ = distillation_loss(s, t, None, 3.0, 1.0)
    ce_only, _ = distillation_loss(s, t, y, 3.0, 0.0)
    mixed, _ = distillation_loss(s, t, y, 3.0, 0.25)
    kl_plain = torch.nn.functional.kl_div(torch.log_softmax(s / 3, -1), torch.softmax(t / 3, -1), reduction="batchmean")

    # assert: KL is scaled by exactly T², α mixes linearly, and the loss of identical logits is CE alone
    assert kd_only.item() == pytest.approx(9.0 * kl_plain.item(), rel=1e-5)
    assert ce_only.item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)
    assert mixed.item() == pytest.approx(0.25 * kd_only.item() + 0.75 * ce_only.item(), rel=1e-6)
    assert distillation_loss(t, t, None, 2.0, 1.0)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_and_attention_losses_ignore_padding():
    # setup: two layers of hidden states that differ only on a padded token
    h_t = torch.randn(2, 5, 8)
    h_s = h_t.clone()
    h_s[1, 4] += 10.0
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 4] = 0
    a_t = torch.softmax(torch.randn(2, 4, 5, 5), -1)

    # execute / assert
    assert hidden_state_loss([h_s, h_s], [h_t, h_t], mask).item() == pytest.approx(0.0, abs=1e-7)
    assert hidden_state_loss([h_s], [h_t], torch.ones(2, 5)).item() > 1.0
    assert attention_loss([a_t], [a_t], mask).item() == pytest.approx(0.0, abs=1e-9)
    assert attention_loss([a_t[:, :2]], [a_t], mask).item() >= 0.0  # head counts differ: compared head-averaged


def test_select_layers_keeps_the_last():
    assert select_layers(6, 3) == [1, 3, 5]
    assert select_layers(6, 2) == [2, 5]
    assert select_layers(6, 1) == [5]
    assert select_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(CompressError):
        select_layers(6, 7)


def _bert(layers=4, hidden=32, heads=4, num_labels=2, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    from compress.models.artifacts import TorchModel
    from compress.models.builders import _tiny_tokenizer

    torch.manual_seed(seed)
    tok = _tiny_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=num_labels,
                        attn_implementation="eager")
    return TorchModel(BertForSequenceClassification(config).eval(), "text-classification", tokenizer=tok, source="test")


def test_derive_student_copies_embeddings_and_spaced_layers(tmp_path):
    # setup
    from transformers import AutoModelForSequenceClassification

    teacher = _bert(layers=4)
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}

    # execute
    student = derive_student(teacher, 2)
    student.module.config.architectures = ["BertForSequenceClassification"]
    student.save(tmp_path / "s")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s", attn_implementation="eager").eval()

    # assert: layers 1 and 3 of the teacher became 0 and 1; embeddings and head copied; teacher untouched
    sd = student.module.state_dict()
    assert len(student.module.bert.encoder.layer) == 2 and student.module.config.num_hidden_layers == 2
    for new, old in ((0, 1), (1, 3)):
        key = f"bert.encoder.layer.{new}.attention.self.query.weight"
        assert torch.equal(sd[key], before[key.replace(f"layer.{new}.", f"layer.{old}.")])
    assert torch.equal(sd["bert.embeddings.word_embeddings.weight"], before["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(sd["classifier.weight"], before["classifier.weight"])
    assert all(torch.equal(v, before[k]) for k, v in teacher.module.state_dict().items())
    batch = dict(student.tokenizer(["a good film", "bad"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, student.module.eval()(**batch).logits, atol=1e-6)


def _digits(split, limit=None):
    from compress.data.examples import load_examples

    return load_examples("builtin:digits", split=split, limit=limit)


def test_student_reaches_teacher_accuracy_on_digits(tmp_path):
    # setup: an MLP teacher fine-tuned on digits, a 4x narrower MLP student from scratch
    from compress.evaluation.accuracy import evaluate
    from compress.models.artifacts import TorchModel
    from compress.models.builders import build_mlp, build_tiny
    from compress.passes.finetune import FinetuneConfig, run_finetune

    train, test = _digits("train"), _digits("test")
    teacher = build_tiny("mlp")
    run_finetune(teacher, train, FinetuneConfig(epochs=4, lr=1e-2, batch_size=32), tmp_path / "t", progress=False)
    teacher_acc = evaluate(teacher, test)["accuracy"]
    torch.manual_seed(1)
    student = TorchModel(build_mlp(hidden=16, depth=1), "image-classification", builder="mlp",
                         builder_kwargs={"hidden": 16, "depth": 1})

    # execute
    metrics = run_distillation(student, teacher, train, DistillConfig(epochs=6, lr=1e-2, batch_size=32, alpha=0.5),
                               tmp_path / "s", eval_examples=test, progress=False)

    # assert
    student_acc = evaluate(student, test)["accuracy"]
    assert teacher_acc > 0.85
    assert student_acc >= teacher_acc - 0.03, (student_acc, teacher_acc)
    assert metrics["best_eval_accuracy"] == pytest.approx(student_acc)


def test_teacher_logits_are_cached_on_disk(tmp_path, monkeypatch, tiny_cnn):
    # setup
    examples = _digits("test", limit=20)
    first = teacher_logits(tiny_cnn, examples, 128, tmp_path)

    # execute: a second call must not run the teacher again
    import compress.runtime.predict

    monkeypatch.setattr(compress.runtime.predict, "predict", lambda *a, **k: pytest.fail("teacher ran twice"))
    second = teacher_logits(tiny_cnn, examples, 128, tmp_path)

    # assert
    assert len(list(tmp_path.glob("teacher-logits-*.npy"))) == 1
    np.testing.assert_array_equal(first, second)
    assert first.shape == (20, 10)


def test_hidden_matching_learns_a_projection_when_widths_differ(tmp_path, text_examples):
    # setup: teacher width 32 and 2 layers, student width 16 and 1 layer
    teacher, student = _bert(layers=2, hidden=32), _bert(layers=1, hidden=16, heads=2, seed=1)
    cfg = DistillConfig(max_steps=2, batch_size=6, hidden_weight=1.0, attention_weight=1.0, max_length=16)
    events = []

    # execute
    metrics = run_distillation(student, teacher, text_examples, cfg, tmp_path, callback=events.append)

    # assert
    parts = [e["parts"] for e in events if e["event"] == "step"]
    assert metrics["steps"] == 2 and metrics["layer_map"] == [1]
    assert all(p["hidden"] > 0 and p["attention"] > 0 and p["kd"] >= 0 for p in parts)


def test_bad_pairs_fail_with_one_line(tmp_path, text_examples):
    teacher = _bert(layers=2)
    with pytest.raises(CompressError, match="labels"):
        run_distillation(_bert(layers=1, num_labels=3), teacher, text_examples, DistillConfig(max_steps=1), tmp_path)
    with pytest.raises(CompressError, match="no labels"):
        unlabelled = text_examples.subset(range(4))
        unlabelled.labels = None
        run_distillation(_bert(layers=1), teacher, unlabelled, DistillConfig(max_steps=1, alpha=0.5), tmp_path)
    with pytest.raises(CompressError, match="wider than the teacher"):
        cfg = DistillConfig(max_steps=1, hidden_weight=1.0, projection=False)
        run_distillation(_bert(layers=1, hidden=64), teacher, text_examples, cfg, tmp_path)
    other_vocab = _bert(layers=1)
    other_vocab.tokenizer.add_tokens(["zzzword"])
    with pytest.raises(CompressError, match="vocabularies"):
        run_distillation(other_vocab, teacher, text_examples, DistillConfig(max_steps=1), tmp_path)


def test_distill_pass_derives_the_student_from_its_input(tmp_path, text_examples):
    # setup
    from compress.passes.base import DataBundle, PassContext, get_pass

    info = get_pass("distill")
    teacher = _bert(layers=4)
    ctx = PassContext(teacher=teacher, data=DataBundle(train=text_examples), workdir=tmp_path, progress=False)

    # execute
    result = info.fn(_bert(layers=4), DistillConfig(student_layers=2, max_steps=2, batch_size=4), ctx)

    # assert
    assert info.accepts == ("torch",) and info.returns == "torch" and info.needs == ("train",)
    assert result.model.module.config.num_hidden_layers == 2
    assert result.metrics["steps"] == 2 and result.metrics["student_params"] < result.metrics["teacher_params"]
