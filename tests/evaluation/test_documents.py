"""Per-document perplexity on a tiny decoder (`score_documents`): lm-eval's rolling windows, a hand computation
with plain torch, padding and batching invariance, PyTorch vs ONNX Runtime, bits per byte and word perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress.core.errors import CompressError

DOCS = ["The cat sat on the mat and looked at the rain.", "Rivers run to the sea.",
        "A long afternoon of reading old letters by the window, while the kettle sang and the clock ticked on.",
        "Café naïve: déjà vu!", "Yes."]


def _ids(model, text):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def _hand_nll(model, docs, sep, window):
    """Total nats and the (doc, position) count, document by document with plain torch: lm-eval's rolling windows
    re-derived here (target chunks of `window` tokens; the first after the separator, each later one after the
    `window` tokens before its end)."""
    import torch
    from torch.nn import functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for text in docs:
            t = _ids(model, text)
            for begin in range(0, len(t), window):
                end = min(begin + window, len(t))
                seq = [sep] + t[:end] if begin == 0 else t[end - window - 1:end]
                logits = model.module(torch.tensor([seq[:-1]])).logits[0]
                k = end - begin  # targets: the last k tokens, predicted by the last k positions
                total += float(F.cross_entropy(logits[-k:], torch.tensor(seq[-k:]), reduction="sum"))
                count += k
    return total, count


def test_rolling_windows_are_lm_eval_s():
    from compress.evaluation.causal import rolling_windows

    # lm-evaluation-harness's own test (test_get_rolling_token_windows_v1): 34 tokens, max_seq_len 10, prefix -100;
    # its (context, continuation) pairs are our (sequence, targets): the model reads sequence[:-1]
    gold = [([-100] + list(range(0, 9)), list(range(0, 10))), (list(range(9, 19)), list(range(10, 20))),
            (list(range(19, 29)), list(range(20, 30))), (list(range(23, 33)), list(range(30, 34)))]
    got = rolling_windows(list(range(34)), -100, 10)
    assert [(seq[:-1], seq[-k:]) for seq, k in got] == gold
    assert rolling_windows([5, 6], 0, 10) == [([0, 5, 6], 2)] and rolling_windows([], 0, 10) == []


@pytest.mark.parametrize("window", [256, 7])
def test_matches_a_hand_computation(llama, one_thread, window):
    from compress.evaluation.causal import score_documents

    # execute
    m = score_documents(llama, DOCS, window=window, separator_id=0, batch_size=3)
    # assert: every document token is a target exactly once, the separator never is
    total, count = _hand_nll(llama, DOCS, 0, window)
    assert m["tokens"] == count == sum(len(_ids(llama, d)) for d in DOCS) and m["documents"] == len(DOCS)
    assert m["nll"] * m["tokens"] == pytest.approx(total, rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert (m["windows"] == len(DOCS)) == (window == 256)


def test_rolling_equals_one_pass_when_the_window_covers_each_document(llama, one_thread):
    from compress.evaluation.causal import score_documents

    longest = max(len(_ids(llama, d)) for d in DOCS)
    exact = score_documents(llama, DOCS, window=longest, separator_id=0)
    wide = score_documents(llama, DOCS, window=256, separator_id=0)
    assert exact["windows"] == wide["windows"] == len(DOCS)
    assert exact["nll"] == pytest.approx(wide["nll"], rel=1e-6)
    narrow = score_documents(llama, DOCS, window=longest - 1, separator_id=0)
    assert narrow["windows"] == len(DOCS) + 1 and narrow["tokens"] == exact["tokens"]


def test_padding_and_batching_do_not_change_a_document_score(llama, one_thread):
    from compress.evaluation.causal import score_documents

    def total(docs, batch_size):
        m = score_documents(llama, docs, window=256, separator_id=0, batch_size=batch_size)
        return m["nll"] * m["tokens"]

    # the short document padded up to the long one in one batch scores what it scores alone
    short, long = DOCS[4], DOCS[2]
    assert total([short, long], 2) == pytest.approx(total([short], 1) + total([long], 1), rel=1e-5)
    assert total(DOCS, 8) == pytest.approx(total(DOCS, 1), rel=1e-5)


def test_pytorch_and_onnx_runtime_agree(llama, llama_onnx, one_thread):
    from compress.evaluation.causal import score_documents

    a = score_documents(llama, DOCS, window=9, separator_id=0, batch_size=4)
    b = score_documents(llama_onnx.model, DOCS, window=9, separator_id=0, batch_size=4)
    assert a["tokens"] == b["tokens"] and a["windows"] == b["windows"]
    assert abs(a["nll"] - b["nll"]) < 1e-3 and b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-3)
    assert b["bits_per_byte"] == pytest.approx(a["bits_per_byte"], rel=1e-3)


def test_bits_per_byte_and_word_perplexity_follow_from_the_nll(llama, one_thread):
    from compress.evaluation.causal import score_documents

    m = score_documents(llama, DOCS + ["", "   "], window=16, separator_id=0)
    total = m["nll"] * m["tokens"]
    assert m["documents"] == len(DOCS)  # empty texts are skipped
    assert m["bytes"] == sum(len(d.encode("utf-8")) for d in DOCS) > sum(len(d) for d in DOCS)  # UTF-8, not chars
    assert m["words"] == sum(len(d.split()) for d in DOCS)
    assert m["bits_per_byte"] == pytest.approx(total / math.log(2) / m["bytes"], rel=1e-9)
    assert m["byte_perplexity"] == pytest.approx(2 ** m["bits_per_byte"], rel=1e-9)
    assert m["word_perplexity"] == pytest.approx(math.exp(total / m["words"]), rel=1e-9)


def test_kl_and_top1_against_a_reference(llama, one_thread):
    import torch

    from compress.evaluation.causal import score_documents
    from compress.models.builders import build_tiny_decoder

    other = build_tiny_decoder("llama", seed=1)
    same = score_documents(llama, DOCS, window=256, separator_id=0, reference=llama)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0
    m = score_documents(llama, DOCS, window=256, separator_id=0, reference=other)
    # by hand: KL(reference ‖ model) and argmax agreement at every target position, document by document
    kl, agree, count = 0.0, 0, 0
    with torch.no_grad():
        for text in DOCS:
            ids = torch.tensor([[0] + _ids(llama, text)[:-1]])
            p = torch.log_softmax(other.module(ids).logits[0], -1)
            q = torch.log_softmax(llama.module(ids).logits[0], -1)
            kl += float((p.exp() * (p - q)).sum())
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            count += ids.shape[1]
    assert m["kl"] == pytest.approx(kl / count, rel=1e-4) and m["kl"] > 0
    assert m["top1_agreement"] == pytest.approx(agree / count)


def test_bad_input_is_one_line(llama):
    from compress.evaluation.causal import score_documents

    with pytest.raises(CompressError, match="longer than the model's context of 256"):
        score_documents(llama, DOCS, window=300, separator_id=0)
    with pytest.raises(CompressError, match="no document to score"):
        score_documents(llama, ["", " "], window=16, separator_id=0)


def test_progress_counts_documents(llama, one_thread):
    from compress.evaluation.causal import score_documents

    seen = []
    score_documents(llama, DOCS, window=5, separator_id=0, batch_size=2, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(DOCS), len(DOCS)) and all(t == len(DOCS) for _, t in seen)
    assert np.all(np.diff([d for d, _ in seen]) >= 0)
