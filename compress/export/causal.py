"""Causal LM -> ONNX with past key values (KV cache), checked against PyTorch on every export.

The exporter is optimum-onnx's `text-generation-with-past` (its per-architecture configs know each decoder's
cache layout, and the folder it writes is what `ORTModelForCausalLM` loads, `generate()` included). We export
from a temporary Hugging Face folder saved from the in-memory model, so a pruned or distilled decoder exports
the same way as a downloaded one. Axes are dynamic: batch, sequence and past sequence.

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
                  atol: float = 1e-3, new_tokens: int = 32) -> CausalExportResult:
    """Export a causal TorchModel to `out_dir` (model.onnx with KV cache, config, tokenizer, manifest).

    Args:
        model: the PyTorch decoder (not modified).
        out_dir: output folder, written atomically (a sibling temporary folder renamed into place).
        texts: real texts for the logits check (default: built-in sample sentences).
        opset: ONNX opset (default: optimum's choice for the architecture).
        atol: tolerance on max |Δlogits| (fp32 logits of a 49k vocabulary differ by ~1e-4 between kernels).
        new_tokens: greedy tokens compared per prompt.
    """
    if model.task != CAUSAL_TASK or not model.is_hf:
        raise CompressError(f"'{model.source}' is not a Hugging Face causal LM", "pass a decoder (e.g. smollm2)")
    from optimum.exporters.onnx import main_export

    out_dir = Path(out_dir)
    started = time.perf_counter()
    blocks = check_blocks(model, texts)
    prompts = prompt_ids(model.tokenizer, PROMPTS)
    with tempfile.TemporaryDirectory() as tmp_name:
        src, staged = Path(tmp_name) / "hf", Path(tmp_name) / "onnx"
        model.module.config.architectures = [type(model.module).__name__]
        model.module.save_pretrained(src, safe_serialization=True)
        model.tokenizer.save_pretrained(src)
        try:
            with contextlib.redirect_stdout(io.StringIO()), _quiet():
                main_export(str(src), output=str(staged), task="text-generation-with-past", opset=opset,
                            do_validation=False, device="cpu")
        except Exception as e:  # optimum raises many types for unsupported architectures
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CompressError(f"optimum cannot export {type(model.module).__name__} with a KV cache: {first}",
                                "use an architecture optimum-onnx supports (Llama, Mistral, Qwen2, GPT-2, ...)") from e
        onnx_path = staged / "model.onnx"
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False)  # one read of a model of hundreds of MB
        used_opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        input_names = [i.name for i in graph.graph.input]
        del graph
        onnx_model = OnnxModel(onnx_path, CAUSAL_TASK, tokenizer=model.tokenizer, source=model.source)
        parity = check_causal_parity(model, onnx_model, blocks, prompts, new_tokens)
        if not parity.ok(atol):
            raise CompressError(
                f"ONNX export differs from PyTorch: max |Δlogits| {parity.max_abs_diff:.2e} (atol {atol:.0e}) on "
                f"{parity.blocks} blocks of {parity.block_size} tokens, greedy decode identical on "
                f"{parity.greedy_identical} of {parity.greedy_prompts} prompts"
                + (f" (first mismatch {parity.first_mismatch})" if parity.first_mismatch else ""),
                "raise --atol if the difference is expected, or report the architecture")
        seconds = time.perf_counter() - started
        manifest = {"format": 1, "task": CAUSAL_TASK, "exporter": EXPORTER, "opset": used_opset,
                    "input_names": input_names}
        (staged / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        report = {"exporter": EXPORTER, "opset": used_opset, "parity": asdict(parity), "atol": atol,
                  "seconds": round(seconds, 2)}
        (staged / "export_report.json").write_text(json.dumps(report, indent=2))
        from compress.models.artifacts import publish_dir

        publish_dir(staged, out_dir)
    final = OnnxModel(out_dir / "model.onnx", CAUSAL_TASK, tokenizer=model.tokenizer, source=model.source)
    return CausalExportResult(final, EXPORTER, used_opset, parity, seconds)


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
