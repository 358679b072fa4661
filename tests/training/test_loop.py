"""The shared training loop: batch plan, schedule, determinism, resume, best epoch and early stopping, outputs,
and the distributed path (two CPU processes under `accelerate launch`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.passes.finetune import FinetuneConfig, run_finetune
from compress.training.loop import CHECKPOINT_FILE, batch_plan, save_trained

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def digits():
    from compress.data.examples import load_examples

    return load_examples("builtin:digits", split="train", limit=192)


def _mlp():
    from compress.models.builders import build_tiny

    return build_tiny("mlp")  # seeded: the same weights every call


def _weights(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _same(a, b, atol=1e-6):
    return all(torch.allclose(a[k], b[k], atol=atol) for k in a)


def test_batch_plan_covers_each_example_once_and_is_seeded(text_examples):
    # execute
    plan = batch_plan(text_examples, 5, seed=3, epoch=0)

    # assert
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(text_examples)))
    assert [len(b) for b in sorted(plan, key=len)] == [2, 5, 5]
    assert all((a == b).all() for a, b in zip(plan, batch_plan(text_examples, 5, seed=3, epoch=0), strict=False))
    assert any((a != b).any() for a, b in zip(plan, batch_plan(text_examples, 5, seed=3, epoch=1), strict=False) if len(a) == len(b))


def test_warmup_then_linear_decay(tmp_path, digits):
    # setup
    events = []
    cfg = FinetuneConfig(max_steps=8, batch_size=16, lr=1e-3, warmup_ratio=0.25)

    # execute
    run_finetune(_mlp(), digits, cfg, tmp_path, callback=events.append)

    # assert: lr after each step rises for the 2 warm-up steps, peaks at 1e-3, then falls linearly to 0
    lrs = [e["lr"] for e in events if e["event"] == "step"]
    assert lrs[0] < lrs[1] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[-1] == pytest.approx(0.0) and lrs[3] == pytest.approx(1e-3 * 4 / 6)


def test_same_seed_same_weights(tmp_path, digits):
    # execute
    runs = []
    for seed in (0, 0, 1):
        model = _mlp()
        run_finetune(model, digits, FinetuneConfig(max_steps=5, batch_size=16, lr=1e-2, seed=seed), tmp_path / str(len(runs)),
                     progress=False)
        runs.append(_weights(model))

    # assert
    assert _same(runs[0], runs[1], atol=0)
    assert not _same(runs[0], runs[2])


def test_resume_continues_from_the_saved_step(tmp_path, digits):
    # setup: an uninterrupted run, and a run interrupted at step 4 with a checkpoint every 3 steps
    cfg = FinetuneConfig(max_steps=6, batch_size=16, lr=1e-2, checkpoint_every=3)
    full = _mlp()
    run_finetune(full, digits, cfg, tmp_path / "full", progress=False)

    def interrupt(event):
        if event["event"] == "step" and event["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(_mlp(), digits, cfg, tmp_path / "cut", callback=interrupt)
    assert (tmp_path / "cut" / CHECKPOINT_FILE).exists()
    import torch

    assert torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=False)["elapsed"] > 0

    # execute
    resumed = _mlp()
    events = []
    metrics = run_finetune(resumed, digits, cfg.model_copy(update={"resume": True}), tmp_path / "cut", callback=events.append)

    # assert: it restarted at step 3, ran steps 4..6 only, and ended where the uninterrupted run ended
    assert metrics["resumed_from_step"] == 3 and metrics["steps"] == 6
    assert [e["step"] for e in events if e["event"] == "step"] == [4, 5, 6]
    # the wall time counts the steps before the checkpoint too (the checkpoint carries them)
    assert metrics["seconds_total"] >= metrics["seconds"] > 0
    assert _same(_weights(resumed), _weights(full))
    assert not (tmp_path / "cut" / CHECKPOINT_FILE).exists()  # a finished run cleans up


def test_resume_refuses_other_settings(tmp_path, digits):
    from compress.core.errors import CompressError

    cfg = FinetuneConfig(max_steps=4, batch_size=16, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(_mlp(), digits, cfg, tmp_path, callback=lambda e: (_ for _ in ()).throw(KeyboardInterrupt)
                     if e["event"] == "step" and e["step"] == 3 else None)
    with pytest.raises(CompressError, match="batch_size"):
        run_finetune(_mlp(), digits, cfg.model_copy(update={"resume": True, "batch_size": 8}), tmp_path, progress=False)


def test_best_epoch_kept_and_early_stopping(tmp_path, digits, monkeypatch):
    # setup: scripted eval accuracies 0.5, 0.9, 0.6, 0.4 -> best is epoch 2, patience 2 stops after epoch 4
    import compress.evaluation.accuracy as accuracy

    scripted = iter([0.5, 0.9, 0.6, 0.4, 0.3, 0.2])
    monkeypatch.setattr(accuracy, "score", lambda logits, labels, n=None: {"accuracy": next(scripted)})
    model, snapshots = _mlp(), {}

    def remember(event):
        if event["event"] == "eval":
            snapshots[event["epoch"]] = _weights(model)

    # execute
    metrics = run_finetune(model, digits, FinetuneConfig(epochs=6, batch_size=64, lr=1e-2, patience=2), tmp_path,
                           eval_examples=digits, callback=remember)

    # assert
    assert metrics["early_stopped"] and metrics["epochs_run"] == 4
    assert metrics["best_epoch"] == 2 and metrics["best_eval_accuracy"] == 0.9
    assert _same(_weights(model), snapshots[2], atol=0) and not _same(snapshots[2], snapshots[4])


def test_save_trained_hf_folder_loads_with_from_pretrained(tmp_path, tiny_bert):
    # setup
    from transformers import AutoModelForSequenceClassification

    from compress.models.load import load_model

    # execute
    out = save_trained(tiny_bert, tmp_path / "m", {"accuracy": [0.5]})

    # assert
    hf = AutoModelForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
    ours = load_model(out)
    batch = dict(tiny_bert.tokenizer(["a b c", "d"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        ref = tiny_bert.module.eval()(**batch).logits
        assert torch.allclose(hf(**batch).logits, ref, atol=1e-6) and torch.allclose(ours.module(**batch).logits, ref, atol=1e-6)
    assert json.loads((out / "metrics.json").read_text()) == {"accuracy": [0.5]}
    assert not list(tmp_path.glob(".m.tmp*"))


def test_save_trained_plain_module_writes_a_state_dict(tmp_path):
    from compress.models.load import load_model

    mlp = _mlp()
    out = save_trained(mlp, tmp_path / "mlp", {})
    from_folder, from_pt = load_model(out), load_model(out / "model.pt", arch="mlp")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(from_folder.module(x), mlp.module(x)) and torch.equal(from_pt.module(x), mlp.module(x))


SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    from compress.data.examples import load_examples
    from compress.models.builders import build_tiny
    from compress.passes.distill import DistillConfig
    from compress.techniques.distill.run import run_distillation
    from compress.training.loop import process_state

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    train = load_examples("builtin:digits", split="train", limit=128)
    teacher, student = build_tiny("cnn"), build_tiny("mlp")
    cfg = DistillConfig(max_steps=3, batch_size=16, lr=1e-2, checkpoint_every=2)
    metrics = run_distillation(student, teacher, train, cfg, out / "work", progress=False)
    rank = process_state().process_index
    weights = torch.cat([p.detach().flatten() for p in student.module.parameters()])
    (out / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "weights": weights.tolist()}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_in_lockstep(tmp_path):
    # setup
    script = tmp_path / "train2.py"
    script.write_text(SCRIPT)
    # torchrun sets RANK / WORLD_SIZE / MASTER_* exactly as `accelerate launch --multi_gpu` does on GPUs
    # (`accelerate launch --cpu` starts one process unless MPI is configured).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COMPRESS_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), str(tmp_path)]

    # execute
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)

    # assert: both processes ran 3 steps of one 2-process job and hold the same weights (gradients were averaged)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["metrics"]["world_size"] == 2 and r["metrics"]["steps"] == 3 for r in ranks)
    assert np.allclose(ranks[0]["weights"], ranks[1]["weights"], atol=1e-6)
    # one teacher pass, written once by the first process into the shared cache, read by the other
    assert len(list((tmp_path / "cache" / "teacher-logits").glob("teacher-logits-*.npy"))) == 1
    assert Path(tmp_path / "work").exists()


@pytest.mark.gpu
def test_mixed_precision_on_gpu(tmp_path, tiny_bert, text_examples):
    # execute: "auto" picks bf16 (or fp16) on a GPU; the model comes back on the CPU in fp32
    metrics = run_finetune(tiny_bert, text_examples, FinetuneConfig(max_steps=2, batch_size=4), tmp_path, progress=False)

    # assert
    assert metrics["mixed_precision"] in ("bf16", "fp16")
    assert all(np.isfinite(loss) for _, loss in metrics["train_loss"])
    assert next(tiny_bert.module.parameters()).device.type == "cpu"
    assert next(tiny_bert.module.parameters()).dtype == torch.float32


def test_teacher_logits_in_length_order_match_the_natural_order(tmp_path, tiny_bert, text_examples):
    # setup: the cache runs the teacher shortest-first (less padding) and must put each row back in place
    from compress.data.examples import iter_batches, text_lengths
    from compress.runtime import predict as inference
    from compress.techniques.distill.teacher import teacher_logits

    # execute
    cached = teacher_logits(tiny_bert, text_examples, 32, tmp_path, batch_size=4)
    plain, _ = inference.predict(tiny_bert, iter_batches(tiny_bert, text_examples, 4, 32))

    # assert: the order really changes, and rows differ, so a row put back in the wrong place would show
    order = np.argsort(text_lengths(text_examples), kind="stable")
    assert not np.array_equal(order, np.arange(len(text_examples)))
    assert not np.allclose(plain[order], plain, atol=1e-5)
    np.testing.assert_allclose(cached, plain, atol=1e-5)
