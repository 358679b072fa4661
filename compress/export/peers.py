"""Write a Hugging Face decoder folder in the formats of the runtimes users deploy instead of `compress` ("peers"),
with those projects' own tools, so the bench compares our stages with what those users would really run:

- llama.cpp: `to_gguf` runs llama.cpp's converter (`convert_hf_to_gguf.py`), `quantize_gguf` its quantizer
  (`llama_model_quantize`, what `llama-quantize` calls).
- onnxruntime-genai: `to_genai` runs its model builder (`python -m onnxruntime_genai.models.builder`); for int8,
  which the 0.11 builder has no precision for, its fp32 graph (untied head) then ONNX Runtime's MatMulNBits quantizer
  (`python -m onnxruntime.quantization.matmul_nbits_quantizer --bits 8`), what later builders' `-p int8` writes.

Every tool runs in a subprocess: a converter or builder crash, an abort inside llama.cpp, or the transformers
classes the builder imports cannot break the calling process. Outputs are written beside the target and renamed
into place, so a failed run leaves no half-written model.

Where the converter comes from: llama-cpp-python wheels ship the compiled library only, but its source
distribution carries llama.cpp's tree under `vendor/llama.cpp`. `converter()` takes `convert_hf_to_gguf.py`,
`conversion/` and `gguf-py/` from the sdist of the *installed* llama-cpp-python version (the same llama.cpp
commit as the library that will read the file), downloaded once with `pip download --no-binary :all: --no-deps`
into `<cache>/llama-cpp-python/` (a copy of that sdist already placed there is used as is), and extracted
beside it. `$COMPRESS_LLAMACPP_SRC` may name a llama.cpp checkout to use instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from compress.core.errors import CompressError
from compress.core.paths import cache_root
from compress.runtime.peers import require

GGUF_OUTTYPES = ("f32", "f16", "q8_0")
# llama.cpp file types by name (llama.h `enum llama_ftype`); the bindings export the same constants.
GGUF_QUANTS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K")
GENAI_PRECISIONS = ("fp32", "int8", "int4")
LLAMACPP_SRC_ENV = "COMPRESS_LLAMACPP_SRC"

# Runs llama.cpp's converter as its own `__main__`, after putting its `conversion/` package and its own gguf-py
# on the path. With a pre-tokenizer name, the converter's table of known BPE pre-tokenizers (a hash of how the
# tokenizer splits a test string) is bypassed: for tokenizers it has not seen, whose splitting is known to match
# one llama.cpp implements (e.g. a GPT-2 style byte-level BPE -> "gpt-2").
_RUN_CONVERTER = """
import runpy, sys
from pathlib import Path
script, pre = Path(sys.argv[1]), sys.argv[2]
sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
if pre:
    import conversion.base
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [str(script)] + sys.argv[3:]
runpy.run_path(str(script), run_name="__main__")
"""

_RUN_QUANTIZER = """
import sys, llama_cpp
src, dst, ftype, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
params.nthread = threads
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
sys.exit(1 if rc else 0)
"""


def _run(cmd: list[str], what: str, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never 46 s of hub retries
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise CompressError(f"{what} ran past {timeout:.0f} s", "pass a larger timeout") from e
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise CompressError(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}")
    return proc


def _hf_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CompressError(f"'{folder}' is not a Hugging Face model folder (no config.json)",
                            "save the model first (TorchModel.save) or pass smollm2_path()")
    return folder


# --- llama.cpp ------------------------------------------------------------------------------------------------


def converter(cache: Path | None = None, timeout: float = 900) -> Path:
    """Path of llama.cpp's `convert_hf_to_gguf.py` matching the installed llama-cpp-python (fetched once)."""
    if os.environ.get(LLAMACPP_SRC_ENV):
        script = Path(os.environ[LLAMACPP_SRC_ENV]) / "convert_hf_to_gguf.py"
        if not script.is_file():
            raise CompressError(f"${LLAMACPP_SRC_ENV} has no convert_hf_to_gguf.py ({script})",
                                "point it at a llama.cpp checkout, or unset it")
        return script
    require("llamacpp")
    version = importlib.metadata.version("llama-cpp-python").split("+")[0]  # a local build tag is not on PyPI
    root = (cache or cache_root()) / "llama-cpp-python"
    target = root / version
    script = target / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
              f"llama-cpp-python=={version}", "-d", str(root)],
             f"pip download of the llama-cpp-python {version} source (for llama.cpp's converter)", timeout)
        if not sdist.is_file():
            raise CompressError(f"pip did not leave {sdist.name} in {root}",
                                f"download it there by hand, or set ${LLAMACPP_SRC_ENV} to a llama.cpp checkout")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and m.name[len(prefix):].startswith(keep) and (m.isfile() or m.isdir()):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **kwargs)
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise CompressError(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py",
                                f"set ${LLAMACPP_SRC_ENV} to a llama.cpp checkout")
        try:
            os.replace(staging, target)
        except OSError:  # another process extracted it first
            if not script.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return script


def to_gguf(hf_folder: str | Path, out_file: str | Path, outtype: str = "f32", *, pre_tokenizer: str | None = None,
            timeout: float = 1800) -> Path:
    """Convert a Hugging Face decoder folder to one GGUF file with llama.cpp's converter; returns `out_file`.

    Args:
        hf_folder: config.json, safetensors weights and tokenizer files.
        out_file: the .gguf to write.
        outtype: "f32", "f16" or "q8_0" (the converter's own Q8_0; `quantize_gguf` for the llama.cpp quantizer).
        pre_tokenizer: llama.cpp's name for the tokenizer's pre-tokenization (e.g. "gpt-2", "smollm"), only for
            a tokenizer the converter does not recognise; None lets the converter decide (the maintained path).
    """
    if outtype not in GGUF_OUTTYPES:
        raise CompressError(f"unknown GGUF outtype '{outtype}'", f"use one of {', '.join(GGUF_OUTTYPES)}")
    folder = _hf_folder(hf_folder)
    require("llamacpp")
    if importlib.util.find_spec("sentencepiece") is None:  # the converter imports it for every llama model
        raise CompressError("llama.cpp's converter needs sentencepiece", "pip install 'compress[llamacpp]'")
    script = converter()
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        try:
            _run([sys.executable, "-c", _RUN_CONVERTER, str(script), pre_tokenizer or "", str(folder),
                  "--outfile", str(tmp), "--outtype", outtype], "llama.cpp's convert_hf_to_gguf.py", timeout)
        except CompressError as e:
            if "pre-tokenizer was not recognized" in str(e):
                raise CompressError(f"llama.cpp's converter does not know the BPE pre-tokenizer of '{folder}'",
                                    "pass pre_tokenizer= the llama.cpp name it matches (e.g. 'gpt-2')") from e
            raise
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str = "Q8_0", *, threads: int = 2,
                  timeout: float = 1800) -> Path:
    """Quantize a (f32/f16) GGUF with llama.cpp's quantizer (`llama_model_quantize`, llama-quantize's defaults:
    the token embedding / output tensor get llama.cpp's own choice of type); returns `dst`."""
    qtype = qtype.upper()
    if qtype not in GGUF_QUANTS:
        raise CompressError(f"unknown llama.cpp quantization '{qtype}'", f"use one of {', '.join(GGUF_QUANTS)}")
    src = Path(src)
    if not src.is_file():
        raise CompressError(f"GGUF file '{src}' not found", "write one with to_gguf")
    require("llamacpp")
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        _run([sys.executable, "-c", _RUN_QUANTIZER, str(src), str(tmp), qtype, str(threads)],
             f"llama.cpp's quantizer ({qtype})", timeout)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# --- onnxruntime-genai -----------------------------------------------------------------------------------------


def genai_options(precision: str, *, block_size: int = 32, accuracy_level: int = 4, symmetric: bool = False,
                  head_bits: int = 8) -> dict[str, str]:
    """The builder's `--extra_options` for a precision (see shared/notes/causal-lm.md): int4 MatMulNBits with
    blocks of `block_size` along K, `accuracy_level` 4 (int8 activations), asymmetric by default, and the output
    head at 8 bits (`rtn_last`; the embedding is then not shared with the head)."""
    if precision == "fp32":
        return {}
    if head_bits not in (4, 8):
        raise CompressError(f"head_bits={head_bits} is not supported", "use 8 (int8 head) or 4")
    options = {"int4_block_size": str(block_size), "int4_accuracy_level": str(accuracy_level),
               "int4_is_symmetric": str(symmetric).lower(), "int4_algo_config": "rtn_last" if head_bits == 8 else "rtn"}
    if head_bits == 8:
        options["shared_embeddings"] = "false"
    return options


def to_genai(hf_folder: str | Path, out_dir: str | Path, precision: str = "int4", *, block_size: int = 32,
             accuracy_level: int = 4, symmetric: bool = False, head_bits: int = 8,
             extra_options: dict[str, str] | None = None, timeout: float = 1800) -> Path:
    """Build an onnxruntime-genai model folder (`model.onnx` + `genai_config.json`) for the CPU with its model
    builder, in a subprocess; returns `out_dir`.

    Args:
        precision: "int4" (MatMulNBits, options from `genai_options`), "fp32", or "int8": onnxruntime-genai 0.11 has
            no int8 precision, so its fp32 graph is quantized by ONNX Runtime's MatMulNBits quantizer (8 bits,
            `block_size`, `accuracy_level`, asymmetric unless `symmetric`), head included.
        extra_options: more builder `--extra_options` (they override the ones derived from the arguments).
    """
    if precision not in GENAI_PRECISIONS:
        raise CompressError(f"unknown onnxruntime-genai precision '{precision}'",
                            f"use one of {', '.join(GENAI_PRECISIONS)}")
    folder = _hf_folder(hf_folder)
    require("genai")
    options = {**genai_options(precision, block_size=block_size, accuracy_level=accuracy_level,
                               symmetric=symmetric, head_bits=head_bits), **(extra_options or {})}
    out = Path(out_dir).resolve()  # the builder runs in its own working folder: relative paths would land there
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as work:
        staging, cache = Path(work) / "model", Path(work) / "cache"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder.resolve()),
               "-o", str(staging), "-p", "fp32" if precision == "int8" else precision, "-e", "cpu", "-c", str(cache)]
        if options:
            cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
        _run(cmd, f"onnxruntime-genai's model builder ({precision})", timeout, cwd=Path(work))
        if not (staging / "genai_config.json").is_file():
            raise CompressError("onnxruntime-genai's model builder wrote no genai_config.json",
                                "check that the model family is one the builder supports (Llama, Mistral, Qwen, ...)")
        if precision == "int8":
            _quantize_nbits(staging, Path(work) / "int8", bits=8, block_size=block_size,
                            accuracy_level=accuracy_level, symmetric=symmetric, timeout=timeout)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    return out


def _quantize_nbits(folder: Path, scratch: Path, *, bits: int, block_size: int, accuracy_level: int,
                    symmetric: bool, timeout: float) -> None:
    """Replace `folder/model.onnx` (+ external data) by ONNX Runtime's MatMulNBits quantization of it, run as its
    users run it (the module's command line)."""
    scratch.mkdir()
    _run([sys.executable, "-m", "onnxruntime.quantization.matmul_nbits_quantizer",
          "--input_model", str(folder / "model.onnx"), "--output_model", str(scratch / "model.onnx"),
          "--bits", str(bits), "--block_size", str(block_size), "--accuracy_level", str(accuracy_level),
          "--symmetric", str(symmetric)], f"ONNX Runtime's MatMulNBits quantizer ({bits} bits)", timeout)
    for f in folder.glob("model.onnx*"):
        f.unlink()
    for f in scratch.iterdir():
        os.replace(f, folder / f.name)
