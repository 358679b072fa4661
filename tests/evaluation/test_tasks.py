"""Zero-shot task accuracy by answer log-likelihood (lm-eval's multiple_choice method): scores by hand, PyTorch vs
ONNX, the Wilson interval, a planted task, the errors and the CLI table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.core.errors import CompressError

PROMPT = "a fine film\nQuestion: Is this sentence positive or negative?\nAnswer:"
SENTENCES = ["a fine film", "a dull mess", "loved it", "hated it", "wonderful acting", "a boring plot"]


def _write(root, folder, split, rows):
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def sst2_root(tmp_path):
    """A data root holding a six-sentence sst2/dev.jsonl."""
    return _write(tmp_path / "data", "sst2", "dev", [{"text": t, "label": i % 2} for i, t in enumerate(SENTENCES)])


def test_encode_pair_makes_the_continuation_the_tail(llama):
    from compress.evaluation.tasks import encode_pair

    tok = llama.tokenizer
    ctx, cont = encode_pair(tok, PROMPT, " positive")
    assert ctx + cont == tok.encode(PROMPT + " positive") and ctx == tok.encode(PROMPT)
    assert len(cont) > 1  # several byte-level tokens: the sum runs over all of them
    # lm-eval moves a trailing space of the context onto the continuation
    assert encode_pair(tok, PROMPT + " ", "positive") == (ctx, cont)


def test_choice_score_equals_hand_computation(llama):
    import torch

    from compress.evaluation.tasks import encode_pair, loglikelihoods
    from compress.runtime.causal import CausalRunner

    # setup: two choices and a longer prompt, so the batch is right-padded
    requests = [encode_pair(llama.tokenizer, PROMPT, c) for c in (" positive", " negative")]
    requests.append(encode_pair(llama.tokenizer, "one long string of cliches .\n" + PROMPT, " negative"))
    # execute
    scores = loglikelihoods(CausalRunner(llama), requests, batch_size=8)
    # assert: each equals sum_j log p(cont_j | ctx, cont_<j) from one plain forward pass of that request alone
    for (ctx, cont), (score, greedy) in zip(requests, scores, strict=True):
        with torch.no_grad():
            logits = llama.module(torch.tensor([ctx + cont])).logits[0]
        lp = torch.log_softmax(logits.float(), -1)
        by_hand = sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert score == pytest.approx(by_hand, abs=1e-4)
        assert greedy == all(int(lp[len(ctx) - 1 + j].argmax()) == t for j, t in enumerate(cont))


def test_pytorch_and_onnx_agree(llama, llama_onnx, sst2_root):
    from compress.evaluation.tasks import encode_pair, loglikelihoods, zero_shot
    from compress.runtime.causal import CausalRunner

    onnx = llama_onnx.model
    requests = [encode_pair(llama.tokenizer, s + PROMPT[11:], c) for s in SENTENCES for c in (" negative", " positive")]
    torch_scores = loglikelihoods(CausalRunner(llama), requests, batch_size=4)
    onnx_scores = loglikelihoods(CausalRunner(onnx), requests, batch_size=3)
    assert np.allclose([s for s, _ in torch_scores], [s for s, _ in onnx_scores], atol=1e-3)
    a, b = zero_shot(llama, "sst2", data_root=sst2_root), zero_shot(onnx, "sst2", data_root=sst2_root)
    for key in ("examples", "accuracy", "accuracy_norm", "per_choice"):
        assert a[key] == b[key]


def test_wilson_interval_known_values():
    from scipy.stats import binomtest

    from compress.evaluation.tasks import wilson_interval

    # textbook values (Newcombe 1998 / Agresti-Coull): 5 of 10, 0 of 10, 10 of 10
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    for k, n in [(81, 263), (1, 50), (43, 50)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_planted_task_gives_accuracy_one(tmp_path):
    import torch

    from compress.evaluation.tasks import ZeroShotTask, encode_pair, zero_shot
    from compress.models.load import load_model

    # setup: a fresh tiny llama whose output head pushes up the tokens of the answer " yes" only
    model = load_model("tiny:llama")
    tok, module = model.tokenizer, model.module
    yes = set(encode_pair(tok, "x\nAnswer:", " yes")[1]) - set(encode_pair(tok, "x\nAnswer:", " nah")[1])
    head = torch.nn.Linear(module.config.hidden_size, module.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(module.lm_head.weight)
        head.bias.zero_()
        head.bias[sorted(yes)] = 30.0
    module.lm_head = head
    task = ZeroShotTask(name="planted", folder="planted", split="dev", fields=("text",), template="{text}\nAnswer:",
                        choices=("nah", "yes"), labels={"n": 0, "y": 1})
    _write(tmp_path, "planted", "dev", [{"text": t, "label": "y"} for t in SENTENCES])
    # execute
    m = zero_shot(model, task, data_root=tmp_path, batch_size=4)
    # assert: every answer is the planted one, and the interval is Wilson's for 6 of 6
    assert m["examples"] == 6 and m["accuracy"] == 1.0 and m["accuracy_norm"] == 1.0
    assert m["correct"] == [1] * 6  # per example, in order: what paired comparisons between models read
    assert m["per_choice"]["yes"] == {"gold": 6, "predicted": 6, "predicted_norm": 6, "correct": 6, "correct_norm": 6}
    assert m["ci95"]["accuracy"][0] == pytest.approx(0.6097, abs=1e-4)
    # the same model on flipped labels: never right, so the label mapping is read, not assumed
    _write(tmp_path, "planted", "dev", [{"text": t, "label": "n"} for t in SENTENCES])
    assert zero_shot(model, task, data_root=tmp_path, limit=4)["accuracy"] == 0.0


def test_unknown_task_and_missing_data_are_one_line_errors(llama, tmp_path):
    from compress.evaluation.tasks import zero_shot

    with pytest.raises(CompressError, match="unknown zero-shot task 'nope'.*rte, sst2") as e:
        zero_shot(llama, "nope", data_root=tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(CompressError, match=r"no data file .*sst2/dev\.jsonl; pass --data-root") as e:
        zero_shot(llama, "sst2", data_root=tmp_path)
    assert "\n" not in str(e.value)


def test_cli_prints_the_table_and_writes_json(cli, sst2_root, tmp_path):
    # execute
    result = cli(["eval", "tiny:llama", "--zero-shot", "sst2", "--data-root", sst2_root, "--limit", 4,
                  "--json", tmp_path / "m.json"])
    # assert
    assert result.exit_code == 0, result.output
    assert "accuracy [95% CI]" in result.output and "sst2" in result.output and "tiny:llama" in result.output
    metrics = json.loads((tmp_path / "m.json").read_text())["zero_shot"]["sst2"]
    assert metrics["examples"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (["--zero-shot", "nope"], "unknown zero-shot task 'nope'"),
    (["--zero-shot", "rte"], "no data file"),
])
def test_cli_errors_exit_2_without_traceback(cli, tmp_path, args, message):
    result = cli(["eval", "tiny:llama", *args, "--data-root", tmp_path])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_lm_eval_scores_the_same(llama, tmp_path):
    """lm-eval's own evaluator (the `eval` extra) on our task config: through our adapter, and through its HFLM
    reading the same model from a folder, it gives our per-choice log-likelihoods and our acc / acc_norm."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    from compress.evaluation import tasks
    from compress.runtime.causal import CausalRunner

    # setup: an rte-shaped file with alternating labels, and the tiny llama saved as a HF folder
    root = _write(tmp_path / "data", "rte", "validation",
                  [{"text": t, "text_pair": "It is a film.", "label": i % 2} for i, t in enumerate(SENTENCES)])
    llama.module.save_pretrained(tmp_path / "hf")
    llama.tokenizer.save_pretrained(tmp_path / "hf")
    docs = tasks.load_documents(tasks.TASKS["rte"], root)
    ours = np.array([s for s, _ in tasks.loglikelihoods(CausalRunner(llama), [
        tasks.encode_pair(llama.tokenizer, p, " " + c) for p, _ in docs for c in ("True", "False")])]).reshape(6, 2)
    for lm in (tasks.harness_lm(llama), HFLM(pretrained=str(tmp_path / "hf"), device="cpu", batch_size=4, dtype="float32")):
        # execute
        res = lm_eval.simple_evaluate(model=lm, tasks=[tasks.harness_task("rte", root)], bootstrap_iters=0)
        # assert
        theirs = np.array([[float(r[0]) for r in d["filtered_resps"]] for d in res["samples"]["compress_rte"]])
        assert np.allclose(theirs, ours, atol=1e-4)
        gold = np.array([g for _, g in docs])
        assert res["results"]["compress_rte"]["acc,none"] == pytest.approx(float((ours.argmax(1) == gold).mean()))


@pytest.mark.slow
def test_smollm2_sst2_is_above_chance():
    from compress.evaluation.tasks import zero_shot
    from compress.models.load import load_model

    model = load_model("smollm2")
    m = zero_shot(model, "sst2", limit=50)
    print(f"SmolLM2 sst2 first 50: acc {m['accuracy']:.2f} {m['ci95']['accuracy']}, acc_norm {m['accuracy_norm']:.2f}, "
          f"majority {m['majority']:.2f}, per choice {m['per_choice']}")
    # measured 2026-12-07 (torch 2.13 CPU, fp32): acc = acc_norm = 0.66 (33/50, Wilson [0.52, 0.78]); the first 50
    # are 60% negative, and the model answers " positive" 35 times: a small model, barely above the majority
    assert m["examples"] == 50
    assert 0.56 <= m["accuracy"] <= 0.80 and 0.56 <= m["accuracy_norm"] <= 0.80
    assert all(c["predicted"] >= 5 for c in m["per_choice"].values())  # it reads the sentence: both answers occur
