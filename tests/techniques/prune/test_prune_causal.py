"""Causal LMs part 2: the token-level KD loss against a hand computation, decoder pruning (layers, FFN neurons,
GQA groups) on a tiny config-built Llama, reload and export after pruning, recovery, and bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from compress.core.errors import CompressError


@pytest.fixture(scope="module")
def llama():
    from compress.models.load import load_model

    return load_model("tiny:llama")


@pytest.fixture(scope="module")
def blocks(llama):
    from compress.data.causal import pack_blocks
    from compress.data.examples import sample_texts

    return pack_blocks(llama.tokenizer, sample_texts() * 6, 32, max_blocks=6)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# --- the loss ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.7), (4.0, 1.0), (2.0, 0.0)])
def test_token_kd_loss_matches_a_hand_computation(temperature, alpha):
    import torch

    from compress.techniques.distill.causal import token_kd_loss

    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 5, 7)) * 2, rng.normal(size=(2, 5, 7)) * 2
    targets = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # the second row is padded
    log_ps, log_pt = _log_softmax(s / temperature), _log_softmax(t / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)
    ce = -np.take_along_axis(_log_softmax(s), targets[..., None], -1)[..., 0]
    real = mask.astype(bool)
    expected = alpha * temperature**2 * kl[real].mean() + (1 - alpha) * ce[real].mean()
    loss, parts = token_kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(targets), torch.tensor(mask),
                                temperature, alpha)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(parts["ce"]) == pytest.approx(ce[real].mean(), rel=1e-5)
    # Padded positions do not count: changing their logits and targets changes nothing.
    s2, t2, y2 = s.copy(), t.copy(), targets.copy()
    s2[1, 3:], t2[1, 3:], y2[1, 3:] = 50.0, -50.0, 0
    loss2, _ = token_kd_loss(torch.tensor(s2), torch.tensor(t2), torch.tensor(y2), torch.tensor(mask), temperature, alpha)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


def test_topk_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_with_less():
    import torch

    from compress.techniques.distill.causal import token_kd_loss, topk_kd_loss

    rng = np.random.default_rng(1)
    s, t = torch.tensor(rng.normal(size=(2, 4, 50))), torch.tensor(rng.normal(size=(2, 4, 50)) * 3)
    y, mask = torch.tensor(rng.integers(0, 50, (2, 4))), torch.ones(2, 4)
    _, full = token_kd_loss(s, t, y, mask, 2.0, 1.0)
    for k, exact in ((50, True), (8, False)):
        values, idx = torch.log_softmax(t / 2.0, -1).topk(k, -1)
        _, part = topk_kd_loss(s, values, idx, y, mask, 2.0, 1.0)
        if exact:
            assert float(part["kd"]) == pytest.approx(float(full["kd"]), rel=1e-5)
        else:  # merging the tail into one outcome can only lose information (data processing inequality)
            assert 0 < float(part["kd"]) < float(full["kd"])


def test_shift_counts_only_real_next_tokens():
    import torch

    from compress.techniques.distill.causal import shift_for_next_token

    logits = torch.zeros(1, 4, 3)
    _, targets, mask = shift_for_next_token(logits, torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]]))
    assert targets.tolist() == [[6, 7, 0]] and mask.tolist() == [[1, 1, 0]]


# --- pruning ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit,kwargs", [("layers", {"depth": 2}), ("neurons", {"sparsity": 0.0}),
                                         ("heads", {"sparsity": 0.0}), ("layers", {"sparsity": 0.0}),
                                         ("layers", {"depth": 2, "selection": "perplexity"})])
def test_pruning_nothing_is_an_exact_no_op(llama, blocks, unit, kwargs):
    import torch

    from compress.models.artifacts import copy_model
    from compress.techniques.prune.causal import prune_decoder

    pruned = copy_model(llama)
    prune_decoder(pruned, unit, blocks, **kwargs)
    before, after = llama.module.state_dict(), pruned.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert pruned.module.config.to_dict() == llama.module.config.to_dict()
    ids = torch.from_numpy(blocks[:2])
    with torch.no_grad():
        assert torch.equal(llama.module(input_ids=ids).logits, pruned.module(input_ids=ids).logits)


def test_scores_rank_layers_and_units(llama, blocks):
    from compress.techniques.prune.causal import calibration_scores

    scores = calibration_scores(llama, blocks)
    config = llama.module.config
    assert scores["layers"].shape == (config.num_hidden_layers,) and (scores["layers"] > 0).all()
    assert [s.shape for s in scores["neurons"]] == [(config.intermediate_size,)] * config.num_hidden_layers
    assert [s.shape for s in scores["groups"]] == [(config.num_key_value_heads,)] * config.num_hidden_layers
    assert scores["tokens"] == blocks.size


def test_pruned_gqa_llama_reloads_and_exports_with_parity(llama, blocks, tmp_path):
    """Depth, FFN and a GQA group removed: the saved folder rebuilds from its config, and the ONNX export with
    the KV cache passes its parity check (logits and greedy tokens)."""
    import torch

    from compress.export.causal import export_causal
    from compress.models.artifacts import copy_model
    from compress.models.load import load_model
    from compress.techniques.prune.causal import prune_decoder

    pruned = copy_model(llama)
    config = llama.module.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    prune_decoder(pruned, "layers", blocks, depth=1)
    prune_decoder(pruned, "neurons", blocks, sparsity=0.5)
    info = prune_decoder(pruned, "heads", blocks, sparsity=0.5)
    c = pruned.module.config
    assert (c.num_hidden_layers, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads) == \
        (1, config.intermediate_size // 2, 2, 1)
    assert info["query_heads_after"] == 2 and len(info["kept_groups"][0]) == 1
    assert pruned.num_parameters() < llama.num_parameters()
    pruned.save(tmp_path / "pruned")
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert saved["num_key_value_heads"] == 1 and saved["head_dim"] == config.head_dim
    reloaded = load_model(str(tmp_path / "pruned"))
    ids = torch.from_numpy(blocks[:2])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.module(input_ids=ids).logits, pruned.module(input_ids=ids).logits)
    result = export_causal(reloaded, tmp_path / "onnx")
    # export_causal raises when parity fails; these are the figures it checked.
    assert result.parity.max_abs_diff <= 5e-3
    assert result.parity.greedy_identical == result.parity.greedy_prompts


def test_greedy_depth_drops_the_layer_that_costs_nothing(llama, blocks):
    import torch

    from compress.models.artifacts import copy_model
    from compress.techniques.prune.causal import greedy_layers, prune_decoder

    # arrange: layer 0 writes nothing to the residual stream, so dropping it changes no output; layer 1's writes
    # are scaled up (at init every layer is near-identity) and the text is the model's own greedy continuation,
    # so dropping layer 1 costs loss
    model = copy_model(llama)
    inner = model.module.model
    with torch.no_grad():
        for lin in (inner.layers[0].self_attn.o_proj, inner.layers[0].mlp.down_proj):
            lin.weight.zero_()
        for lin in (inner.layers[1].self_attn.o_proj, inner.layers[1].mlp.down_proj):
            lin.weight.mul_(30.0)
        inner.norm.weight.mul_(20.0)
        prompt = torch.from_numpy(blocks[:4, :4])
        text = model.module.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=28,
                                     do_sample=False, pad_token_id=0).numpy()
        reference = model.module(input_ids=torch.from_numpy(text[:2])).logits
    # act
    keep, trace = greedy_layers(model, text, 1)
    pruned = copy_model(model)
    info = prune_decoder(pruned, "layers", text, depth=1, selection="perplexity")
    # assert: layer 1 kept, the model left whole by the search, and the pruned one computes the same function
    assert keep == [1] and [t["dropped"] for t in trace] == [0] and len(model.module.model.layers) == 2
    assert info["kept_layers"] == [1] and pruned.module.config.num_hidden_layers == 1
    with torch.no_grad():
        torch.testing.assert_close(pruned.module(input_ids=torch.from_numpy(text[:2])).logits, reference,
                                   atol=1e-4, rtol=1e-4)


def test_depth_keeps_the_most_influential_layers():
    from compress.techniques.prune.causal import layers_to_keep

    assert layers_to_keep(np.array([0.9, 0.1, 0.5, 0.2]), 4, 2, "importance") == [0, 2]
    assert layers_to_keep(None, 6, 3, "even") == [1, 3, 5]
    with pytest.raises(CompressError, match="cannot keep 5 decoder layers: the model has 4"):
        layers_to_keep(None, 4, 5, "even")


def test_recovery_by_kd_lowers_heldout_perplexity(llama, tmp_path):
    """A real (short) recovery: the depth-pruned tiny Llama trained by token-level KD from the unpruned one."""
    from compress.data.causal import pack_blocks
    from compress.data.examples import sample_texts
    from compress.models.artifacts import copy_model
    from compress.techniques.distill.causal import run_causal_distillation
    from compress.techniques.distill.config import DistillSettings
    from compress.techniques.prune.causal import prune_decoder

    texts = sample_texts() * 20
    student = copy_model(llama)
    prune_decoder(student, "layers", pack_blocks(llama.tokenizer, texts, 32, 4), depth=1)
    cfg = DistillSettings(max_steps=12, batch_size=4, block_size=32, lr=3e-3, alpha=0.5, temperature=1.0, top_k=8,
                          eval_blocks=4, warmup_ratio=0.0)
    m = run_causal_distillation(student, llama, texts, cfg, tmp_path / "w", eval_texts=texts, progress=False,
                                cache_dir=tmp_path / "cache")
    assert m["steps"] == 12 and m["teacher_logits"] == "top-8" and m["token_budget"] == 12 * 4 * 32
    assert m["heldout_perplexity_after"] < m["heldout_perplexity_before"]
    assert 0 < m["topk_check"]["teacher_mass_in_topk"] <= 1
    assert list((tmp_path / "cache").glob("topk-*-logp.npy"))  # the teacher's top-k is cached for the next student


def test_mismatched_tokenizers_are_refused(llama, tmp_path):
    from compress.models.artifacts import copy_model
    from compress.techniques.distill.causal import run_causal_distillation
    from compress.techniques.distill.config import DistillSettings

    student = copy_model(llama)
    student.tokenizer = copy.deepcopy(llama.tokenizer)
    student.tokenizer.add_tokens(["<an-extra-token>"])
    with pytest.raises(CompressError, match="different tokenizers"):
        run_causal_distillation(student, llama, ["some text"] * 10, DistillSettings(), tmp_path, progress=False)


@pytest.mark.parametrize("args,message", [
    (["prune", "tiny:llama", "-o", "{tmp}/p", "--structured", "layers", "--depth", "9"],
     "cannot keep 9 decoder layers: the model has 2"),
    (["prune", "tiny:llama", "-o", "{tmp}/p", "--structured", "channels", "--sparsity", "0.5"],
     "prune decoders by layers, neurons or heads"),
    (["prune", "tiny:bert", "-o", "{tmp}/p", "--structured", "layers", "--depth", "1"], "decoder layers of causal LMs"),
    (["prune", "tiny:llama", "-o", "{tmp}/p", "--structured", "layers", "--depth", "1", "--layer-selection", "best"],
     "unknown layer-selection"),
    (["distill", "tiny:llama", "{tmp}/other-tokenizer", "-o", "{tmp}/s", "--data", "{txt}"], "different tokenizers"),
])
def test_bad_decoder_input_is_one_line(cli, tmp_path, llama, args, message):
    from compress.models.artifacts import copy_model

    other = copy_model(llama)
    other.tokenizer = copy.deepcopy(llama.tokenizer)
    other.tokenizer.add_tokens(["<an-extra-token>"])
    other.save(tmp_path / "other-tokenizer")
    txt = tmp_path / "a.jsonl"
    txt.write_text("".join(json.dumps({"text": f"A sentence of real English number {i} about the sea."}) + "\n"
                           for i in range(40)))
    r = cli([a.format(tmp=tmp_path, txt=txt) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_cli_prunes_and_distills_a_decoder(cli, tmp_path):
    txt = tmp_path / "a.jsonl"
    txt.write_text("".join(json.dumps({"text": f"A sentence of real English number {i} about the sea."}) + "\n"
                           for i in range(60)))
    r = cli(["prune", "tiny:llama", "-o", str(tmp_path / "p"), "--structured", "layers", "--depth", "1",
             "--layer-selection", "perplexity", "--calibration-blocks", "2", "--data", str(txt)])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "p" / "compress_pass.json").read_text())
    assert record["config"]["layer_selection"] == "perplexity" and record["config"]["calibration_blocks"] == 2
    trace = record["metrics"]["decoder"]["greedy_trace"]
    assert len(trace) == 1 and trace[0]["dropped"] in (0, 1)  # 2 -> 1 layers: one greedy step
    r = cli(["distill", "tiny:llama", str(tmp_path / "p"), "-o", str(tmp_path / "s"), "--data", str(txt),
             "--block-size", "32", "--max-steps", "2", "--batch-size", "2", "--top-k", "8",
             "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["objective"] == "kd"
    from compress.models.load import load_model

    assert load_model(str(tmp_path / "s")).module.config.num_hidden_layers == 1


@pytest.mark.slow
@pytest.mark.skipif(not (Path(__file__).resolve().parents[4] / "shared" / "data" / "rte").exists(),
                    reason="../shared/data is not beside the checkout")
def test_prune_then_distill_recipe_reports_the_ablation(tmp_path, monkeypatch):
    """The flagship's shape on the tiny Llama: one depth-pruned stage trained twice (KD and CE) by `distill`
    stages, a width chain recovered inside `prune_structured`; the report's recovery table follows `from`."""
    from compress import load_recipe, run_recipe
    from compress.report import write
    from compress.report.causal import recovery_rows

    monkeypatch.chdir(Path(__file__).resolve().parents[3])
    results = run_recipe(load_recipe("tests/recipes/tiny-llama-prune.yaml"), runs_dir=tmp_path / "runs", progress=False)
    written = write(results, tmp_path / "report")
    rows = {row[0]: row for row in recovery_rows(written.results)}
    assert set(rows) == {"depth-kd", "depth-ce", "width-kd"}
    assert rows["depth-kd"][1] == rows["depth-ce"][1] == "layers 2→1"
    assert rows["width-kd"][1].startswith("FFN 64→32, KV groups 2→1")
    assert rows["depth-kd"][3].startswith("KD") and rows["depth-ce"][3] == "CE (next token)"
    # the same token budget, and the tokens the kept checkpoint saw (the best epoch, within it)
    assert rows["depth-kd"][5].endswith(f"of {3 * 4 * 32:,}") and rows["depth-ce"][5].endswith(f"of {3 * 4 * 32:,}")
    assert rows["depth-kd"][8] == rows["depth-ce"][8]  # the same student before training
    assert "## Pruning and recovery" in written.markdown.read_text()
