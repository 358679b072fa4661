"""Causal LM -> ONNX with past key values (KV cache), checked against PyTorch on every export.

Two graphs, both exported from a temporary Hugging Face folder saved from the in-memory model (so a pruned or
distilled decoder exports the same way as a downloaded one):
- "fused" (the default where it applies): onnxruntime-genai's model builder, fp32. About 11 nodes per layer
  (GroupQueryAttention with the rotary embedding inside, SkipSimplifiedLayerNormalization, packed QKV), a KV cache
  the generator keeps in one preallocated buffer, and `genai_config.json`, so the folder runs in
  `onnxruntime_genai`'s generator (our bench times decode there) as well as in our `CausalRunner`. Decode on it is
  about 1.7x the optimum graph's on the same MatMulNBits kernels (shared/notes/causal-lm.md). The builder is the
  maintained tool for this graph; we do not write fusions by hand.
- "optimum": optimum-onnx's `text-generation-with-past` (~100 nodes per layer, the cache concatenated each step):
  the folder `ORTModelForCausalLM` loads (`generate()` included), and the fallback for a family the builder does
  not write (GPT-2, ...), with a one-line warning naming the family.
Axes are dynamic: batch, sequence and past sequence.

Parity, both checked, both must pass:
- full-sequence logits on real text blocks: max |Δlogits| <= atol (empty cache: the prefill path);
- greedy decoding with the cache (the decode path): the continuations of 8 prompts, `new_tokens` each,
  identical token for token to PyTorch's.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.data.causal import PROMPTS, pack_blocks, prompt_ids
from compress.models.artifacts import MANIFEST_FILE, OnnxModel, TorchModel
from compress.models.causal import CAUSAL_TASK
from compress.runtime.causal import CausalRunner

log = logging.getLogger(__name__)

EXPORTER = "optimum-onnx text-generation-with-past"
# Default tolerance on max |Δlogits| for decoders. fp32 logits over a large vocabulary (SmolLM2: 49k, logits up to ~30)
# differ between kernels that sum in another order: optimum's graph ~1e-4 from PyTorch's SDPA, the fused graph's
# GroupQueryAttention 1.1e-3 on SmolLM2 (greedy decoding identical). A wrong mask, rotary or cache is off by whole
# logits, so 5e-3 still catches every broken export; greedy decoding must match token for token in any case.
CAUSAL_ATOL = 5e-3
FUSED_EXPORTER = "onnxruntime-genai model builder (fp32)"
GRAPHS = ("auto", "fused", "optimum")
# Families onnxruntime-genai 0.11's builder writes (its `create_model` dispatch) whose HF config alone describes the
# weights (uniform layers): what `graph="auto"` sends to it. Anything else is exported by optimum.
FUSED_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM",
    "GemmaForCausalLM", "Gemma2ForCausalLM", "GraniteForCausalLM", "OlmoForCausalLM", "SmolLM3ForCausalLM"})


@dataclass
class CausalParity:
    """How close the exported decoder is to PyTorch."""

    max_abs_diff: float
    blocks: int
    block_size: int
    greedy_identical: int
    greedy_prompts: int
    greedy_new_tokens: int
    first_mismatch: dict | None = None

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.greedy_identical == self.greedy_prompts


@dataclass
class CausalExportResult:
    model: OnnxModel
    exporter: str
    opset: int
    parity: CausalParity
    seconds: float
    graph: str = "optimum"
    warnings: list[str] | None = None


def fused_unavailable(model: TorchModel) -> str | None:
    """Why the fused graph cannot be written for `model` (one line), or None when it can."""
    import importlib.util

    arch = type(model.module).__name__
    if arch not in FUSED_ARCHITECTURES:
        return f"{arch} is not a family onnxruntime-genai's model builder writes"
    config = model.module.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 16:  # GroupQueryAttention's CPU kernel
        return f"{arch} has heads of {head_dim} dimensions (ONNX Runtime's GroupQueryAttention needs a multiple of 16)"
    missing = [m for m in ("onnxruntime_genai", "onnx_ir") if importlib.util.find_spec(m) is None]
    if missing:
        return f"onnxruntime-genai's model builder is not installed ({', '.join(missing)} missing)"
    return None


def check_blocks(model: TorchModel, texts: list[str] | None = None, blocks: int = 4, block_size: int = 64) -> np.ndarray:
    """Real text blocks for the logits check (sample sentences when no texts are given)."""
    from compress.data.examples import sample_texts

    texts = texts or sample_texts() * 8
    return pack_blocks(model.tokenizer, texts, block_size, max_blocks=blocks)


def check_causal_parity(reference: TorchModel, onnx_model: OnnxModel, blocks: np.ndarray,
                        prompts: list[list[int]], new_tokens: int = 32) -> CausalParity:
    """Max |Δlogits| on `blocks` and greedy agreement on `prompts` between PyTorch and ONNX Runtime."""
    from compress.runtime.causal import generate_greedy

    torch_run, ort_run = CausalRunner(reference), CausalRunner(onnx_model)
    diff = 0.0
    for i in range(0, len(blocks), 2):
        a, _ = torch_run.forward(blocks[i:i + 2])
        b, _ = ort_run.forward(blocks[i:i + 2])
        diff = max(diff, float(np.abs(a - b).max()))
    ga, gb = generate_greedy(torch_run, prompts, new_tokens), generate_greedy(ort_run, prompts, new_tokens)
    same = (ga == gb).all(1)
    mismatch = None
    if not same.all():
        row = int(np.argmin(same))
        col = int(np.argmin(ga[row] == gb[row]))
        mismatch = {"prompt": row, "position": col, "torch": int(ga[row, col]), "onnx": int(gb[row, col])}
    return CausalParity(diff, len(blocks), blocks.shape[1], int(same.sum()), len(prompts), new_tokens, mismatch)


def export_causal(model: TorchModel, out_dir: str | Path, *, texts: list[str] | None = None, opset: int | None = None,
                  atol: float = CAUSAL_ATOL, new_tokens: int = 32, graph: str = "auto",
                  on_progress=None) -> CausalExportResult:
    """Export a causal TorchModel to `out_dir` (model.onnx with KV cache, config, tokenizer, manifest; the fused
    graph adds genai_config.json).

    Args:
        model: the PyTorch decoder (not modified).
        out_dir: output folder, written atomically (a sibling temporary folder renamed into place).
        texts: real texts for the logits check (default: built-in sample sentences).
        opset: ONNX opset of the optimum graph (default: optimum's choice; the builder picks its own).
        atol: tolerance on max |Δlogits| (`CAUSAL_ATOL`: kernels that sum in another order differ by up to ~1e-3).
        new_tokens: greedy tokens compared per prompt.
        graph: "fused" (onnxruntime-genai's builder), "optimum", or "auto": fused where the family and the installed
            packages allow it, else optimum with a warning; a fused graph that fails the parity check also falls
            back (warned) under "auto".
        on_progress: callback(stage, done, total): the graph build (total None), then the parity check.
    """
    if model.task != CAUSAL_TASK or not model.is_hf:
        raise CompressError(f"'{model.source}' is not a Hugging Face causal LM", "pass a decoder (e.g. smollm2)")
    if graph not in GRAPHS:
        raise CompressError(f"unknown decoder graph '{graph}'", f"use one of: {', '.join(GRAPHS)}")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    # A short-context decoder gets shorter checks: blocks and prompt + new tokens always fit its context.
    from compress.models.causal import context_length

    context = context_length(model) or 4096
    if context < 8:
        raise CompressError(f"'{model.source}' has a context of {context} tokens, too short to check an export",
                            "export a decoder whose max_position_embeddings is at least 8")
    blocks = check_blocks(model, texts, block_size=min(64, context))
    prompts = [p[-(context // 2):] for p in prompt_ids(model.tokenizer, PROMPTS)]
    new_tokens = min(new_tokens, context - max(len(p) for p in prompts))
    warnings: list[str] = []
    why_not = fused_unavailable(model) if graph != "optimum" else None
    if graph == "fused" and why_not:
        raise CompressError(f"cannot write the fused graph: {why_not}",
                            "use --graph optimum (or auto), or pip install 'compress[genai]'")
    use_fused = graph != "optimum" and why_not is None
    if graph == "auto" and why_not:
        warnings.append(f"{why_not}: exported with optimum's text-generation-with-past graph instead (slower decode)")
        log.warning(warnings[-1])
    with tempfile.TemporaryDirectory() as tmp_name:
        src = Path(tmp_name) / "hf"
        model.module.config.architectures = [type(model.module).__name__]
        model.module.save_pretrained(src, safe_serialization=True)
        model.tokenizer.save_pretrained(src)
        attempt = None
        if use_fused:
            attempt = _try_export(model, src, Path(tmp_name) / "fused", "fused", opset, blocks, prompts, new_tokens,
                                  atol, strict=graph == "fused", on_progress=on_progress)
            if isinstance(attempt, str):
                warnings.append(f"the fused graph of {type(model.module).__name__} {attempt}: exported with "
                                "optimum's text-generation-with-past graph instead (slower decode)")
                log.warning(warnings[-1])
        if attempt is None or isinstance(attempt, str):
            attempt = _try_export(model, src, Path(tmp_name) / "optimum", "optimum", opset, blocks, prompts,
                                  new_tokens, atol, strict=True, on_progress=on_progress)
        staged, kind, used_opset, input_names, parity = attempt
        exporter = FUSED_EXPORTER if kind == "fused" else EXPORTER
        seconds = time.perf_counter() - started
        manifest = {"format": 1, "task": CAUSAL_TASK, "exporter": exporter, "graph": kind, "opset": used_opset,
                    "input_names": input_names}
        (staged / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        report = {"exporter": exporter, "graph": kind, "opset": used_opset, "parity": asdict(parity), "atol": atol,
                  "seconds": round(seconds, 2), "warnings": warnings}
        (staged / "export_report.json").write_text(json.dumps(report, indent=2))
        from compress.models.artifacts import publish_dir

        publish_dir(staged, out_dir)
    final = OnnxModel(out_dir / "model.onnx", CAUSAL_TASK, tokenizer=model.tokenizer, source=model.source)
    return CausalExportResult(final, exporter, used_opset, parity, seconds, kind, warnings)


def _try_export(model: TorchModel, src: Path, staged: Path, kind: str, opset, blocks, prompts, new_tokens: int,
                atol: float, strict: bool, on_progress=None):
    """Write graph `kind` of the HF folder `src` into `staged` and check it; (staged, kind, opset, input names,
    parity), or, when `strict` is False, a one-line reason why the fused graph cannot be used (the caller falls
    back)."""
    import onnx

    progress = on_progress or (lambda *a: None)
    progress(f"export ({kind} graph)", 0, None)
    if kind == "fused":
        from compress.export.peers import to_genai

        try:
            to_genai(src, staged, "fp32")
        except CompressError as e:
            if strict:
                raise
            progress(f"export ({kind} graph)", 1, 1)
            return f"could not be built ({e.problem})"
        shutil.copyfile(src / "config.json", staged / "config.json")  # context length, and what the model is
        if (src / "generation_config.json").is_file():
            shutil.copyfile(src / "generation_config.json", staged / "generation_config.json")
    else:
        _optimum_export(model, src, staged, opset)
    onnx_path = staged / "model.onnx"
    proto = onnx.load(str(onnx_path), load_external_data=False)  # one read of a model of hundreds of MB
    used_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    input_names = [i.name for i in proto.graph.input]
    del proto
    onnx_model = OnnxModel(onnx_path, CAUSAL_TASK, tokenizer=model.tokenizer, source=model.source)
    progress(f"export ({kind} graph)", 1, 1)
    progress(f"parity check ({kind} graph)", 0, None)
    parity = check_causal_parity(model, onnx_model, blocks, prompts, new_tokens)
    progress(f"parity check ({kind} graph)", 1, 1)
    if not parity.ok(atol):
        if not strict:
            return (f"failed the parity check (max |Δlogits| {parity.max_abs_diff:.2e}, greedy identical on "
                    f"{parity.greedy_identical} of {parity.greedy_prompts} prompts)")
        raise CompressError(
            f"ONNX export ({kind} graph) differs from PyTorch: max |Δlogits| {parity.max_abs_diff:.2e} (atol {atol:.0e}) "
            f"on {parity.blocks} blocks of {parity.block_size} tokens, greedy decode identical on "
            f"{parity.greedy_identical} of {parity.greedy_prompts} prompts"
            + (f" (first mismatch {parity.first_mismatch})" if parity.first_mismatch else ""),
            "raise --atol if the difference is expected, or report the architecture")
    return staged, kind, used_opset, input_names, parity


def _optimum_export(model: TorchModel, src: Path, staged: Path, opset) -> None:
    from optimum.exporters.onnx import main_export

    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet():
            main_export(str(src), output=str(staged), task="text-generation-with-past", opset=opset,
                        do_validation=False, device="cpu")
    except Exception as e:  # optimum raises many types for unsupported architectures
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CompressError(f"optimum cannot export {type(model.module).__name__} with a KV cache: {first}",
                            "use an architecture optimum-onnx supports (Llama, Mistral, Qwen2, GPT-2, ...)") from e


@contextlib.contextmanager
def _quiet():
    """optimum and torch.onnx print TracerWarnings and notes about tied weights; keep the CLI readable."""
    import warnings

    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def copy_side_files(src: Path, dst: Path) -> None:
    """Everything beside model.onnx that ORTModelForCausalLM and our loader read (config, tokenizer, manifest)."""
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".onnx" and not f.name.endswith(".onnx.data") and f.name != "quantization.json":
            shutil.copyfile(f, dst / f.name)
