"""Quantization of causal language models with ONNX Runtime: dynamic int8 and int4 weight-only (MatMulNBits),
with a perplexity (or KL) budget. Called by `compress.techniques.quantize.api.quantize` for `text-generation` models.

Decisions, each measured on SmolLM2-135M on our 2-core AVX2 CPU (shared/notes/causal-lm.md):
- decode is memory-bound (every token reads every weight): ORT fp32 17.5 tok/s, int8 71, int4 78 at b1;
- tied embeddings: optimum's export feeds `lm_head` a Transpose of the embedding table, a non-constant weight no
  quantizer touches, so the 28 M-parameter head (21% of SmolLM2) would stay fp32 and dominate decode. We
  "untie" it first: the transposed table becomes the head's own initializer, which the quantizers then see;
- `lm_head` is kept at 8 bits by default in int4 mode (int4 there made Phi-4-mini repeat itself, ORT PR #24384):
  MatMulNBits with bits=8, same block size;
- `accuracy_level` 4 (int8 compute) by default: over 2x decode speed on CPU in ORT's own measurements;
- the embedding Gather stays fp32 by default: it is read one row per token, so it costs size, not speed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.evaluation.causal import evaluate_causal
from compress.models.artifacts import MANIFEST_FILE, OnnxModel, TorchModel
from compress.techniques.quantize.config import QuantizeSettings
from compress.techniques.quantize.graph import count_ops, layer_of, load_graph, match_exclusions
from compress.techniques.quantize.hardware import cpu_int8_profile, resolve_int8_types
from compress.techniques.quantize.result import SETTINGS_FILE, SETTINGS_FORMAT, QuantizeResult

log = logging.getLogger(__name__)

HEAD_UNIT = "lm_head"
NBITS_OPS = ("MatMulNBits",)


def untie_head(model_proto) -> list[str]:
    """Give every MatMul fed by `Transpose(initializer)` its own transposed constant weight; returns the nodes."""
    from onnx import numpy_helper

    graph = model_proto.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    untied = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in producer:
            continue
        tr = producer[node.input[1]]
        if tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[tr.input[0]])
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), list(range(weight.ndim))[::-1])
        name = (node.name.strip("/").replace("/", "_") or "matmul") + "_untied_weight"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), name=name))
        node.input[1] = name
        untied.append(node.name)
    return untied


def weight_matmuls(model_proto) -> list[str]:
    """MatMul nodes with a constant 2-D weight (what weight quantization changes)."""
    inits = {i.name: i for i in model_proto.graph.initializer}
    return [n.name for n in model_proto.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]


def causal_unit(name: str) -> str:
    """Sensitivity unit of a decoder node: its layer ("layer.7") or the output head."""
    if "lm_head" in name:
        return HEAD_UNIT
    return layer_of([name]) or name


def make_causal_variant(src: Path, out: Path, cfg: QuantizeSettings, nodes: list[str], exclude: list[str],
                        types: dict, upgrade: list[str] | None = None) -> Path:
    """Write `src` quantized per `cfg` (dynamic int8, or MatMulNBits weight-only) with `exclude` kept fp32 and, in
    weight-only modes, `upgrade` at 8 bits instead of 4 (the budget's fallback); returns `out`."""
    import onnx

    excluded = set(exclude)
    # ORT's quantizers log every node they skip (thousands of lines) through their own INFO handlers.
    for name in ("", "onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.ERROR))
    if cfg.mode == "dynamic":
        import onnxruntime.quantization as oq

        todo = [n for n in nodes if n not in excluded]
        if cfg.head == "fp32":
            todo = [n for n in todo if causal_unit(n) != HEAD_UNIT]
        oq.quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=cfg.per_channel,
                            reduce_range=types["reduce_range"], weight_type=oq.QuantType.QInt8,
                            nodes_to_quantize=todo or ["<none>"], nodes_to_exclude=list(excluded),
                            extra_options={"MatMulConstBOnly": True})
        return out
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        KQuantWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    proto = onnx.load(str(src))
    head = [n for n in nodes if causal_unit(n) == HEAD_UNIT]
    body = [n for n in nodes if n not in head]
    head_bits = {"int4": 4, "int8": 8, "fp32": None}[cfg.head]
    body_bits = weight_bits(cfg)
    raised = set(upgrade or [])
    passes = [(body_bits, [n for n in body if n not in raised]), (8, [n for n in body if n in raised])]
    passes += [(max(head_bits, body_bits), head)] if head_bits else []
    for bits, chosen in passes:
        chosen = [n for n in chosen if n not in excluded]
        if not chosen:
            continue
        skip = [n.name for n in proto.graph.node if n.name not in chosen]
        if cfg.algorithm == "hqq" and bits == 4:
            algo = HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=bits)
        elif cfg.algorithm == "k_quant":  # llama.cpp-style k-quant scale/min search (ORT's port)
            algo = KQuantWeightOnlyQuantConfig()
        else:  # round-to-nearest (HQQ has no 8-bit path; 8 bits need no search)
            algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                                accuracy_level=cfg.accuracy_level, bits=bits)
        with contextlib.redirect_stdout(io.StringIO()):
            quantizer = MatMulNBitsQuantizer(proto, bits=bits, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                             algo_config=algo, nodes_to_exclude=skip,
                                             accuracy_level=cfg.accuracy_level)
            quantizer.process()
        proto = quantizer.model.model
    _set_accuracy_level(proto, cfg.accuracy_level)
    onnx.save(proto, str(out))
    return out


def weight_bits(cfg: QuantizeSettings) -> int:
    """Bits of the decoder weights in weight-only mode (int4 = 4; weight_only = cfg.bits)."""
    return 4 if cfg.mode == "int4" else cfg.bits


def _set_accuracy_level(proto, level: int | None) -> None:
    """HQQ's quantizer writes no accuracy_level; set it on every MatMulNBits node (the compute type matters for
    speed: 4 = int8 compute)."""
    from onnx import helper

    if not level:
        return
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(helper.make_attribute("accuracy_level", level))


class _Scorer:
    """Perplexity and KL of a variant against the fp32 ONNX model on the budget blocks."""

    def __init__(self, fp32: OnnxModel, blocks: np.ndarray):
        self.blocks, self.fp32 = blocks, fp32
        self.cache: dict = {}  # the fp32 model's log-probs per batch, computed once for every variant
        self.base = evaluate_causal(fp32, blocks)

    def __call__(self, path: Path) -> dict:
        variant = OnnxModel(path, self.fp32.task, self.fp32.tokenizer, source=str(path))
        m = evaluate_causal(variant, self.blocks, reference=self.fp32, reference_cache=self.cache)
        return {"perplexity": m["perplexity"], "kl": m["kl"], "top1_agreement": m["top1_agreement"],
                "ppl_increase": m["perplexity"] / self.base["perplexity"] - 1}


def budget_value(cfg: QuantizeSettings, m: dict) -> float:
    return m["kl"] if cfg.budget_metric == "kl" else m["ppl_increase"]


def check_causal_inputs(cfg: QuantizeSettings, eval_texts) -> None:
    """CompressError for a mode decoders do not take, or a budget without held-out text."""
    if cfg.mode not in ("dynamic", "int4", "weight_only"):
        raise CompressError(f"mode '{cfg.mode}' is not available for causal LMs",
                            "use --mode int4 or weight_only (MatMulNBits), or dynamic (int8)")
    if cfg.max_drop is not None and not eval_texts:
        raise CompressError("--max-drop needs held-out text for a causal LM", "pass --eval-data with a text field")


def quantize_causal(model: TorchModel | OnnxModel, out_dir: str | Path, cfg: QuantizeSettings, *,
                    eval_texts: list[str] | None = None, work_dir: str | Path | None = None,
                    on_progress: Callable[[str, int, int], None] | None = None, verdict: bool = False,
                    verdict_texts: list[str] | None = None, export_cache: str | Path | None = None) -> QuantizeResult:
    """Quantize a causal LM into `out_dir` (an `ORTModelForCausalLM` folder + quantization.json).

    Args:
        model: a causal TorchModel (exported first, with the KV-cache parity check) or an fp32 causal OnnxModel.
        out_dir: output folder, written atomically.
        cfg: `QuantizeSettings` with mode "dynamic" (int8) or "int4".
        eval_texts: held-out texts for the budget (`cfg.max_drop`: relative perplexity increase, or KL).
        work_dir: where temporary graphs go.
        on_progress: callback(stage, done, total).
        verdict: score the result against the unquantized ONNX model (`metrics["verdict"]`): perplexity, KL and
            top-1 agreement on `verdict_texts` (built-in sample sentences when None), greedy agreement on the
            parity prompts, and the export's parity.
        export_cache: where a TorchModel's export is kept and found again, keyed by the model's weights, config and
            tokenizer (default `$COMPRESS_CACHE/exports`): quantizing the same model twice exports it once.
    """
    import onnx

    started = time.perf_counter()
    check_causal_inputs(cfg, eval_texts)
    out_dir = Path(out_dir)
    progress = on_progress or (lambda *a: None)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp_name:
        tmp = Path(tmp_name)
        progress("prepare", 0, 1)
        fp32, export_info = _as_causal_onnx(model, export_cache)
        proto = load_graph(fp32.path)
        untied = untie_head(proto)
        src = tmp / "untied.onnx"
        onnx.save(proto, str(src))
        nodes = weight_matmuls(proto)
        matched = match_exclusions(cfg.exclude, [n.name for n in proto.graph.node], nodes)
        user_excluded = sorted({n for hits in matched.values() for n in hits})
        del proto
        cpu = cpu_int8_profile()
        types = resolve_int8_types(cfg, cpu) if cfg.mode == "dynamic" else {"reasons": {}}
        types["cpu"] = cpu
        progress("prepare", 1, 1)
        progress("quantize", 0, 1)
        chosen = make_causal_variant(src, tmp / "candidate.onnx", cfg, nodes, user_excluded, types)
        progress("quantize", 1, 1)
        metrics: dict = {}
        warnings: list[str] = []
        excluded = [{"node": n, "reason": "user --exclude"} for n in user_excluded]
        if cfg.max_drop is not None:
            from compress.data.causal import pack_blocks

            blocks = pack_blocks(fp32.tokenizer, eval_texts, cfg.block_tokens, max_blocks=cfg.eval_samples or 16)
            scorer = _Scorer(fp32, blocks)

            def interim(path: Path, step: int) -> None:
                # The best model so far is always on disk: an interrupted search still leaves a usable result.
                _stage_folder(path, fp32, tmp / f"interim_{step}", {"format": SETTINGS_FORMAT, "partial": True,
                                                                   "search_step": step, "config": cfg.model_dump(mode="json")})
                from compress.models.artifacts import publish_dir

                publish_dir(tmp / f"interim_{step}", out_dir)
                shutil.rmtree(tmp / f"interim_{step}")

            interim(chosen, 0)
            chosen, search = _budget_search(cfg, scorer, src, tmp, nodes, user_excluded, types, chosen, progress,
                                            interim)
            excluded += search.pop("excluded")
            metrics.update(search)
            if not metrics["budget_met"]:
                warnings.append(f"{cfg.budget_metric} budget {cfg.max_drop} not met: best {metrics['drop']:.4f} "
                                f"(kept {metrics['fallback']}: {', '.join(metrics['kept_units']) or 'nothing'}); the best model found is written")
        staged = _stage_folder(chosen, fp32, tmp / "out", None)
        counts = count_ops(staged / "model.onnx")
        ops = counts["ops"]
        size_fp32, size_q = fp32.size_bytes(), (staged / "model.onnx").stat().st_size
        metrics.update({
            "quantized_matmuls": counts["quantized_matmuls"] + ops.get("MatMulNBits", 0),
            "matmul_nbits": ops.get("MatMulNBits", 0), "float_matmuls": counts["float_matmuls"],
            "quantizable_nodes": len(nodes), "untied_head": untied, "excluded_nodes": len({e["node"] for e in excluded}),
            "size_fp32_mb": round(size_fp32 / 1e6, 3), "size_mb": round(size_q / 1e6, 3),
            "size_ratio": round(size_q / size_fp32, 4), "seconds": round(time.perf_counter() - started, 2)})
        resolved = {"mode": cfg.mode, "head": cfg.head, "per_channel": cfg.per_channel if cfg.mode == "dynamic" else None,
                    "format": "QOperator (MatMulInteger)" if cfg.mode == "dynamic" else
                    f"MatMulNBits ({weight_bits(cfg)}-bit weight-only)",
                    "excluded_nodes": sorted({e["node"] for e in excluded}), **types}
        if cfg.mode != "dynamic":
            resolved.update({"bits": weight_bits(cfg), "block_size": cfg.block_size, "symmetric": cfg.symmetric,
                             "algorithm": cfg.algorithm, "accuracy_level": cfg.accuracy_level,
                             "head_bits": {"int4": max(4, weight_bits(cfg)), "int8": max(8, weight_bits(cfg)),
                                           "fp32": 32}[cfg.head]})
        from importlib.metadata import version

        settings = {"format": SETTINGS_FORMAT, "config": cfg.model_dump(mode="json"), "resolved": resolved,
                    "excluded": excluded, "ops": ops, "metrics": dict(metrics), "warnings": warnings,
                    "versions": {p: version(p) for p in ("onnxruntime", "onnx")}}
        (staged / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, default=float))
        from compress.models.artifacts import publish_dir

        publish_dir(staged, out_dir)
    metrics["settings"] = resolved
    metrics["excluded"] = excluded
    metrics["export"] = export_info
    final = OnnxModel(out_dir / "model.onnx", fp32.task, fp32.tokenizer, source=fp32.source)
    if verdict:
        progress("verdict", 0, 1)
        metrics["verdict"] = quantize_verdict(final, fp32, verdict_texts, cfg.block_tokens)
        progress("verdict", 1, 1)
    return QuantizeResult(final, settings, metrics, warnings)


def quantize_verdict(quantized: OnnxModel, fp32: OnnxModel, texts: list[str] | None, block_tokens: int,
                     max_blocks: int = 8, new_tokens: int = 32) -> dict:
    """How close `quantized` is to `fp32`: perplexity of both, KL and top-1 agreement on up to `max_blocks` blocks of
    `texts` (built-in sample sentences when None: say so), greedy agreement on the parity prompts, sizes, and the
    parity of the export the fp32 model came from (its export_report.json, when there is one)."""
    from compress.data.causal import PROMPTS, pack_blocks, prompt_ids
    from compress.data.examples import sample_texts

    source = "the given text" if texts else "built-in sample sentences"
    texts = texts or sample_texts() * 8
    block = min(block_tokens, 128)
    blocks = pack_blocks(fp32.tokenizer, texts, block, max_blocks=max_blocks)
    if len(blocks) == 0:
        blocks = pack_blocks(fp32.tokenizer, texts * 8, 32, max_blocks=max_blocks)
    prompts = prompt_ids(fp32.tokenizer, PROMPTS)
    m = evaluate_causal(quantized, blocks, reference=fp32, prompts=prompts, max_new_tokens=new_tokens)
    out = {"text": source, "blocks": int(len(blocks)), "block_size": int(blocks.shape[1]),
           "perplexity_fp32": m["reference_perplexity"], "perplexity": m["perplexity"],
           "ppl_increase": m["perplexity"] / m["reference_perplexity"] - 1, "kl": m["kl"],
           "top1_agreement": m["top1_agreement"], "greedy_agreement": m["greedy_agreement"],
           "greedy_prompts": m["greedy_prompts"], "greedy_new_tokens": new_tokens,
           "size_fp32_mb": round(fp32.size_bytes() / 1e6, 1), "size_mb": round(quantized.size_bytes() / 1e6, 1)}
    report = fp32.folder / "export_report.json"
    if report.is_file():
        export = json.loads(report.read_text())
        parity = export.get("parity", {})
        out["export"] = {"graph": export.get("graph", "optimum"), "max_abs_diff": parity.get("max_abs_diff"),
                         "greedy_identical": f"{parity.get('greedy_identical')}/{parity.get('greedy_prompts')}"}
    return out


def _stage_folder(chosen: Path, fp32: OnnxModel, staged: Path, settings: dict | None) -> Path:
    """model.onnx + the fp32 folder's config/tokenizer + manifest (+ settings) in `staged`."""
    from compress.export.causal import copy_side_files

    staged.mkdir()
    shutil.copyfile(chosen, staged / "model.onnx")
    copy_side_files(fp32.folder, staged)
    manifest_path = staged / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"format": 1, "task": fp32.task}
    manifest["quantization"] = SETTINGS_FILE
    manifest_path.write_text(json.dumps(manifest, indent=2))
    if settings is not None:
        (staged / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    return staged


def _as_causal_onnx(model, cache: str | Path | None = None) -> tuple[OnnxModel, dict]:
    """The fp32 ONNX decoder to quantize and where it came from: an ONNX folder as given (no export), or the export
    of a TorchModel, found again in the export cache when the same weights were exported before."""
    if isinstance(model, OnnxModel):
        if model.path.suffix != ".onnx":
            raise CompressError(f"cannot quantize '{model.path}' (.ort files are already converted)", "pass the .onnx model")
        if not (model.folder / "config.json").exists():
            raise CompressError(f"'{model.folder}' has no config.json beside model.onnx",
                                "export the decoder with `compress export`")
        return model, {"exported": False, "folder": str(model.folder)}
    from compress.core.paths import cache_root
    from compress.export.causal import export_causal

    folder = Path(cache or cache_root() / "exports") / export_key(model)
    if (folder / "model.onnx").is_file() and (folder / MANIFEST_FILE).is_file():
        return OnnxModel(folder / "model.onnx", model.task, model.tokenizer, source=model.source), {
            "exported": False, "reused": True, "folder": str(folder)}
    result = export_causal(model, folder)
    return result.model, {"exported": True, "reused": False, "folder": str(folder), "graph": result.graph,
                          "seconds": round(result.seconds, 1)}


def export_key(model: TorchModel) -> str:
    """What identifies an export: the weights (bytes), the config, the tokenizer and the exporter versions."""
    import hashlib
    from importlib.metadata import version

    import torch

    from compress.export.causal import CAUSAL_ATOL

    h = hashlib.sha256()
    h.update(f"graph=auto atol={CAUSAL_ATOL}".encode())  # what export_causal is called with (its graph may fall back)
    h.update(json.dumps(model.module.config.to_dict(), sort_keys=True, default=str).encode())
    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else str(len(model.tokenizer))).encode())
    for pkg in ("onnxruntime", "onnxruntime-genai", "optimum-onnx", "transformers"):
        try:
            h.update(f"{pkg}={version(pkg)}".encode())
        except Exception:  # noqa: BLE001  (a missing package is part of the key too)
            h.update(f"{pkg}=-".encode())
    with torch.no_grad():
        for name, tensor in sorted(model.module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:20]


def _budget_search(cfg: QuantizeSettings, scorer: _Scorer, src: Path, tmp: Path, nodes, user_excluded, types, chosen,
                   progress, on_better: Callable[[Path, int], None] = lambda path, step: None):
    """Greedy: rank units (decoder layers, head) by the budget metric each costs alone (only that unit quantized),
    then move the worst to the fallback precision (8 bits for 4-bit modes, fp32 for dynamic) one at a time until
    the budget is met or `max_excluded_units` is reached. The best model so far is published after each step."""
    first = scorer(chosen)
    units: dict[str, list[str]] = {}
    for n in nodes:
        if n not in user_excluded:
            units.setdefault(causal_unit(n), []).append(n)
    steps = [{"excluded_units": [], **first}]
    if budget_value(cfg, first) <= cfg.max_drop:
        return chosen, _summary(cfg, steps, 0, [], units, scorer)
    table = []
    for i, (unit, members) in enumerate(units.items()):
        progress("sensitivity", i, len(units))
        others = [n for n in nodes if n not in members]
        path = make_causal_variant(src, tmp / "alone.onnx", cfg, nodes, user_excluded + others, types)
        table.append({"unit": unit, "nodes": len(members), **scorer(path)})
    table.sort(key=lambda r: -budget_value(cfg, r))
    for rank, row in enumerate(table, 1):
        row["rank"], row["score"] = rank, budget_value(cfg, row)
    max_units = cfg.max_excluded_units or max(1, len(units) // 2)
    kept: list[str] = []
    best, best_path = 0, chosen
    for row in table[:max_units]:
        kept.append(row["unit"])
        progress("budget", len(kept), max_units)
        held = [n for u in kept for n in units[u]]
        if fallback_bits(cfg) == 8:  # weight-only: sensitive units drop to 8 bits, not to fp32
            path = make_causal_variant(src, tmp / f"keep{len(kept)}.onnx", cfg, nodes, user_excluded, types, upgrade=held)
        else:
            path = make_causal_variant(src, tmp / f"keep{len(kept)}.onnx", cfg, nodes, user_excluded + held, types)
        m = scorer(path)
        steps.append({"excluded_units": list(kept), **m})
        if budget_value(cfg, m) < budget_value(cfg, steps[best]):
            best, best_path = len(steps) - 1, tmp / f"best{len(steps) - 1}.onnx"
            shutil.copyfile(path, best_path)
            on_better(best_path, best)
        path.unlink(missing_ok=True)  # each candidate is a whole model; keep only the best on disk
        if budget_value(cfg, m) <= cfg.max_drop:
            break
    return best_path, _summary(cfg, steps, best, table, units, scorer)


def fallback_bits(cfg: QuantizeSettings) -> int:
    """What a sensitive unit becomes in the budget search: 8-bit MatMulNBits for 4-bit weight-only, else fp32."""
    return 8 if cfg.mode != "dynamic" and weight_bits(cfg) == 4 else 32


def _summary(cfg: QuantizeSettings, steps, best, table, units, scorer) -> dict:
    pick = steps[best]
    kept_as = "8-bit" if fallback_bits(cfg) == 8 else "fp32"
    excluded = [{"node": n, "unit": u, "reason": f"kept {kept_as} to meet --max-drop {cfg.max_drop} ({cfg.budget_metric})"}
                for u in pick["excluded_units"] for n in units[u]]
    return {"perplexity_fp32": scorer.base["perplexity"], "perplexity": pick["perplexity"], "kl": pick["kl"],
            "drop": budget_value(cfg, pick), "budget_metric": cfg.budget_metric, "max_drop": cfg.max_drop,
            "budget_met": budget_value(cfg, pick) <= cfg.max_drop, "kept_units": pick["excluded_units"],
            "fallback": kept_as,
            "sensitivity": table, "search": steps, "excluded": excluded,
            "sensitivity_per_layer": {r["unit"]: r["score"] for r in table}}
