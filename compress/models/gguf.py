"""Special tokens of a GGUF file, read from its metadata and applied to the tokenizer transformers converts from it.

transformers (4.57) builds a GGUF's tokenizer with its own defaults: for SmolLM2 it says EOS = `<|im_start|>` (it
reads the BOS id for both) and adds BOS to every text, while the file says EOS `<|im_end|>` (id 2) and no BOS. The
file is the truth llama.cpp runs with, so the conversion takes EOS / BOS / UNK / PAD and the add-BOS / add-EOS
flags from the `tokenizer.ggml.*` keys, for any GGUF (never by model name). `convert_gguf` writes a GGUF as a plain
Hugging Face folder that way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from compress.core.errors import CompressError

# GGUF key (after `tokenizer.ggml.`) -> the name of the special token in transformers.
TOKEN_KEYS = {"bos_token_id": "bos", "eos_token_id": "eos", "unknown_token_id": "unk", "padding_token_id": "pad"}
FLAG_KEYS = ("add_bos_token", "add_eos_token")


def _scalar(field):
    """The value of a scalar GGUF field: numbers and booleans as Python values, strings decoded (works with every
    gguf release since 0.10: `parts[data[0]]` holds the value)."""
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return value.tobytes().decode("utf-8")
    return value.tolist()[0]


REFETCH = "copy or download the GGUF file again"


def _read_error(path: Path, error: BaseException, fix: str | None) -> CompressError:
    """A GGUF that cannot be read: truncated or corrupt when it starts with the GGUF magic, else not a GGUF."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""
    if magic == b"GGUF":
        return CompressError(f"'{path}' is truncated or corrupt ({path.stat().st_size:,} bytes; {first})", fix or REFETCH)
    return CompressError(f"'{path}' is not a readable GGUF file ({first})", fix or "pass a GGUF v2/v3 file")


def gguf_special_tokens(path: str | Path, *, fix: str | None = None) -> dict:
    """The special tokens a GGUF file declares, from its metadata alone (no tensor is read).

    Args:
        path: the .gguf file.
        fix: the fix named when the file is truncated or unreadable (default: copy or download it again).
    Returns: {"bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id": id or None,
              "bos_token", "eos_token", "unk_token", "pad_token": the token's text or None,
              "add_bos_token", "add_eos_token": bool or None (None: the file does not say)}.
    """
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise CompressError("reading GGUF metadata needs the gguf package", "pip install gguf") from e
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"GGUF file '{path}' not found", "pass an existing .gguf file")
    try:
        fields = GGUFReader(str(path)).fields
    except Exception as e:  # noqa: BLE001  (a short file fails in numpy: ValueError, IndexError, struct errors)
        raise _read_error(path, e, fix) from e
    tokens = fields.get("tokenizer.ggml.tokens")
    out: dict = {}
    for key, name in TOKEN_KEYS.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        token_id = None if field is None else int(_scalar(field))
        text = None
        if token_id is not None and tokens is not None:
            if not 0 <= token_id < len(tokens.data):
                raise CompressError(f"'{path}' declares {name} id {token_id} outside its vocabulary of "
                                    f"{len(tokens.data)} tokens", "fix the file's tokenizer.ggml metadata")
            text = tokens.parts[tokens.data[token_id]].tobytes().decode("utf-8")
        out[f"{name}_token_id"], out[f"{name}_token"] = token_id, text
    for key in FLAG_KEYS:
        field = fields.get(f"tokenizer.ggml.{key}")
        out[key] = None if field is None else bool(_scalar(field))
    return out


def apply_gguf_special_tokens(tokenizer, meta: dict, model=None):
    """Make `tokenizer` (and `model`'s config and generation config, when given) follow the GGUF metadata `meta`
    (`gguf_special_tokens`): the same special-token ids, and BOS / EOS added to texts exactly when the file says.

    A token the file does not name keeps the tokenizer's own; a flag the file does not state is left as is.
    Returns the tokenizer (changed in place).

    Args:
        tokenizer: the (fast) tokenizer transformers converted from the same file.
        meta: `gguf_special_tokens(path)`.
        model: the converted PyTorch model, whose `config` / `generation_config` ids are aligned too.
    """
    vocab = tokenizer.get_vocab()
    for name in TOKEN_KEYS.values():
        token, token_id = meta.get(f"{name}_token"), meta.get(f"{name}_token_id")
        if token is None:
            continue
        if vocab.get(token) != token_id:
            raise CompressError(f"the GGUF's {name} token {token!r} (id {token_id}) is id {vocab.get(token)} in the "
                                "converted tokenizer", "convert the tokenizer from the same GGUF file")
        setattr(tokenizer, f"{name}_token", token)
    for flag in FLAG_KEYS:
        if meta.get(flag) is not None:
            _set_flag(tokenizer, flag, meta[flag])
    if model is not None:
        for cfg in (model.config, getattr(model, "generation_config", None)):
            for name in ("bos", "eos", "pad"):
                if cfg is not None and meta.get(f"{name}_token_id") is not None:
                    setattr(cfg, f"{name}_token_id", meta[f"{name}_token_id"])
    return tokenizer


def _set_flag(tokenizer, flag: str, value: bool) -> None:
    """Set add_bos_token / add_eos_token: through the tokenizer's own property where it has one (Llama, Gemma...:
    they rebuild the post-processor), else by rebuilding the post-processor of a plain fast tokenizer (the other
    flag keeps what the tokenizer does today, read from an encoding)."""
    if isinstance(getattr(type(tokenizer), flag, None), property):
        setattr(tokenizer, flag, value)
        return
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise CompressError(f"cannot set {flag} on a {type(tokenizer).__name__}", "use a fast tokenizer")
    from tokenizers import processors

    ids = tokenizer("a")["input_ids"]
    adds = {"add_bos_token": tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id],
            "add_eos_token": tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id]}
    adds[flag] = value
    bos = tokenizer.bos_token if adds["add_bos_token"] else None
    eos = tokenizer.eos_token if adds["add_eos_token"] else None
    single = " ".join([f"{bos}:0"] * bool(bos) + ["$A:0"] + [f"{eos}:0"] * bool(eos))
    pair = " ".join([single] + [f"{bos}:1"] * bool(bos) + ["$B:1"] + [f"{eos}:1"] * bool(eos))
    special = [(t, tokenizer.convert_tokens_to_ids(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def convert_gguf(path: str | Path, out: str | Path, *, note: str | None = None, fix: str | None = None) -> Path:
    """Convert a GGUF file into a plain Hugging Face folder (fp32 safetensors + tokenizer + `SOURCE.json`), with
    the special tokens of the file's metadata; written atomically (a temporary folder renamed into place).

    Args:
        path: the .gguf file (an architecture transformers can read from GGUF).
        out: the folder to write; left as is when another process wrote it first.
        note: a line kept in `SOURCE.json` (where the weights come from, caveats).
        fix: the fix named when the file is truncated or unreadable (e.g. how to reinstall the package that ships it).
    Returns: `out`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, out = Path(path), Path(out)
    special = gguf_special_tokens(path, fix=fix)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001  (a damaged tensor fails deep inside transformers' dequantization)
        raise _read_error(path, e, fix) from e
    apply_gguf_special_tokens(tokenizer, special, model=model)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    source = {"gguf": path.name, "special_tokens": special, **({"note": note} if note else {})}
    (tmp / "SOURCE.json").write_text(json.dumps(source, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
