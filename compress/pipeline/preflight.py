"""Preflight: what a recipe needs from its data and its model, checked before the first stage runs.

`recipe.py` validates a recipe as data (types, stage graph, artifact kinds) without reading anything. What only
the files and the model can tell is checked here, in seconds, so that a run does not stop after an hour of
stages: every data split holds examples, every eval domain exists and holds at least one window of tokens, and
every token window (`eval.window`, a stage's training or calibration blocks) fits the model's context. Each
problem is one `CompressError` naming the recipe field and the fix. `compress.pipeline.runner.run` calls
`validate_recipe` before the first stage; `compress run --dry-run` calls it too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compress.core.errors import CompressError
from compress.pipeline.recipe import Recipe

SPLITS = ("train", "validation", "eval", "calibration")
# Pass options that are token windows of a causal LM. `block_size` of a quantize pass is the quantization group
# (weights per MatMulNBits block), not a window, and is left out; `block_tokens` counts only with a budget.
WINDOW_FIELDS = ("block_size", "calibration_block_size", "block_tokens")


def validate_recipe(recipe: Recipe, model=None, *, examples: Callable[[str], object] | None = None) -> None:
    """Raise CompressError (one line, naming the recipe field and the fix) on the first problem that would stop
    `recipe` after it started: an empty data split, a missing or empty eval domain, a domain (or the eval split,
    when there are none) with fewer tokens than one `eval.window`, or a token window longer than the context.

    Args:
        recipe: a validated recipe.
        model: the loaded base model (for its context and tokenizer); None loads it when the recipe may be a
            causal LM (a recipe with a classifier `task` needs no model).
        examples: `split -> Examples | None` (the runner's cached loader), default `load_examples` of the split.
    """
    check_paths(recipe)
    loaded = {split: _split_examples(recipe, split, examples) for split in SPLITS}
    if recipe.task not in (None, "text-generation"):
        return  # a classifier: windows, domains and tokens do not apply
    if model is None:
        from compress.models.load import load_model

        kwargs = {k: v for k, v in {"task": recipe.task, "num_labels": recipe.num_labels}.items() if v}
        model = load_model(recipe.model, trust_remote_code=recipe.trust_remote_code, **kwargs)
    from compress.models.causal import is_causal

    if not is_causal(model):
        if recipe.data.train is not None and recipe.data.train.mix is not None:
            raise CompressError(f"data.train.mix: '{recipe.model}' is not a causal LM; a mix is text for causal LMs",
                                "give data.train a source or split, or use a causal LM")
        return
    check_windows(recipe, model)
    _check_domains(recipe, model, loaded)


def check_paths(recipe: Recipe) -> None:
    """Every local data split and eval domain exists (read nothing yet)."""
    from compress.data.causal import MixSpec

    for split in SPLITS:
        spec = recipe.data.spec(split)
        if isinstance(spec, MixSpec):
            check_mix(spec, f"data.{split}.mix")
        elif spec is not None and _missing(spec.source):
            raise CompressError(f"data.{split}: '{spec.source}' not found",
                                "paths are relative to the folder you run from (the repository root)")
    for i, domain in enumerate(recipe.eval.domains):
        if _missing(domain.source):
            raise CompressError(f"eval.domains[{i}].source: '{domain.source}' (domain '{domain.name}') not found",
                                "fix the path (relative to the folder you run from) or drop the domain")


def check_mix(spec, where: str = "mix") -> None:
    """Every source of a training mix (`compress.data.causal.MixSpec`) can be read, without reading much: a corpus
    is registered (not downloaded here: the run fetches it once), a file or folder exists and is not blank."""
    from compress.data.causal import CORPUS_PREFIX
    from compress.data.corpora import get_corpus

    for i, src in enumerate(spec.sources):
        field = f"{where}[{i}].source"
        if src.source.startswith(CORPUS_PREFIX):
            try:
                get_corpus(src.source)
            except CompressError as e:
                raise CompressError(f"{field}: {e.problem}", e.fix) from None
        elif _missing(src.source):
            raise CompressError(f"{field}: '{src.source}' not found",
                                "paths are relative to the folder you run from (the repository root)")
        elif _is_blank(_data_file(src.source, src.split)):
            raise CompressError(f"{field}: '{src.source}'" + (f" (split {src.split})" if src.split else "")
                                + " is empty (0 documents)", "point the mix source at a file with text, or drop it")


def check_window(window: int, model, field: str) -> None:
    """A token window fits `model`'s context. `field` is a recipe path (`eval.window`) or a CLI option
    (`--window`); the message names it and the largest value that fits."""
    from compress.models.causal import context_length

    limit = context_length(model)
    if limit is not None and window > limit:
        fix = f"pass {field} {limit} or less" if field.startswith("--") else f"set {field} to {limit} or less"
        raise CompressError(f"{field} {window} is longer than the model's context of {limit} tokens", fix)


def check_windows(recipe: Recipe, model) -> None:
    """`eval.window` (and `eval.block_size` when set) and every stage's token windows fit the model's context."""
    check_window(recipe.eval.window, model, "eval.window")
    if "block_size" in recipe.eval.model_fields_set:
        check_window(recipe.eval.block_size, model, "eval.block_size")
    for i, stage in enumerate(recipe.stages):
        for field, value in _stage_windows(stage.pass_, f"stages[{i}].pass", stage.type.startswith("quantize")):
            check_window(value, model, field)


def _stage_windows(config, path: str, quantize: bool):
    """(recipe path, value) of every token window in a pass config, nested configs (`recover`) included."""
    from pydantic import BaseModel

    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            yield from _stage_windows(value, f"{path}.{name}", quantize)
        elif name in WINDOW_FIELDS and isinstance(value, int):
            if name == "block_size" and quantize:
                continue  # the quantization group, not tokens
            if name == "block_tokens" and getattr(config, "max_drop", None) is None:
                continue  # only the budget search reads held-out blocks
            yield f"{path}.{name}", value


# --- data ------------------------------------------------------------------------------------------------------


def _missing(source: str) -> bool:
    """A local path (by its look: a suffix or a leading ., / or ~) that does not exist; hub names pass."""
    if source.startswith("builtin:"):
        return False
    path = Path(source).expanduser()
    return bool(source.startswith((".", "/", "~")) or path.suffix) and not path.exists()


def _data_file(source: str, split: str | None) -> Path | None:
    """The file a split reads (a file source, or `<split>.<ext>` in a folder of split files); None otherwise."""
    from compress.data.examples import FILE_BUILDERS

    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for suffix in FILE_BUILDERS:
            if (path / f"{split or 'train'}{suffix}").is_file():
                return path / f"{split or 'train'}{suffix}"
    return None


def _is_blank(path: Path | None) -> bool:
    """A file with nothing but whitespace (read only when small: a big file is not empty)."""
    if path is None or path.stat().st_size > 4096:
        return False
    return not path.read_bytes().strip()


def _split_examples(recipe: Recipe, split: str, examples):
    """The split's examples, refusing one that holds none (or only empty texts)."""
    from compress.data.causal import CORPUS_PREFIX, MixSpec, mix_source_texts

    spec = recipe.data.spec(split)
    if spec is None:
        return None
    if isinstance(spec, MixSpec):
        if examples is not None:  # a run: the mix is read now (corpora fetched once), empty sources refused
            return examples(split)
        for i, src in enumerate(spec.sources):  # a dry run reads the local files only: a corpus may need a download
            if not src.source.startswith(CORPUS_PREFIX):
                try:
                    mix_source_texts(src)
                except CompressError as e:
                    raise CompressError(f"data.{split}.mix[{i}] ({src.source}): {e.problem}", e.fix) from None
        return None
    where = f"'{spec.source}'" + (f" (split {spec.split})" if spec.split else "")
    fix = f"point data.{split} at a file or split with examples" + ("" if split == "eval" else f", or drop data.{split}")
    if _is_blank(_data_file(spec.source, spec.split)):
        raise CompressError(f"data.{split}: {where} is empty (0 examples)", fix)
    try:
        if examples is not None:
            found = examples(split)
        else:
            from compress.data.examples import load_examples

            found = load_examples(spec)
    except CompressError as e:
        raise CompressError(f"data.{split}: {e.problem}", e.fix) from None
    if found is None or len(found) == 0:
        part = f", part {spec.part}" if spec.part != "all" else ""
        raise CompressError(f"data.{split}: {where}{part} has 0 examples", fix)
    if found.texts is not None and not any(t and t.strip() for t in found.texts):
        raise CompressError(f"data.{split}: {where} has 0 documents (every text is empty)",
                            f"point data.{split} at text data, or check data.text_field ('{recipe.data.text_field}')")
    return found


def _check_domains(recipe: Recipe, model, loaded: dict) -> None:
    """Every eval domain (the eval split when there are none) holds documents after those also in the training
    text are dropped (as the scorer does), and at least one `eval.window` of tokens."""
    from compress.data.causal import TextSource, causal_texts, deduplicate, load_texts

    train = loaded.get("train")
    train_texts = causal_texts(train) if train is not None and train.texts is not None else []
    found = []
    for i, d in enumerate(recipe.eval.domains):
        field = f"eval.domains[{i}]"
        if _is_blank(_data_file(d.source, d.split)):
            raise CompressError(f"{field}: '{d.source}' (domain '{d.name}') is empty (0 documents)",
                                "point the domain at a file with text, or drop it")
        try:
            texts = load_texts(TextSource(d.source, split=d.split, text_field=d.text_field))
        except CompressError as e:
            raise CompressError(f"{field} (domain '{d.name}'): {e.problem}", e.fix) from None
        found.append((field, d.name, texts[: d.max_documents] if d.max_documents else texts))
    if not recipe.eval.domains and loaded.get("eval") is not None:
        found.append(("data.eval", "eval", [t for t in loaded["eval"].texts or [] if t and t.strip()]))
    window = recipe.eval.window
    for field, name, texts in found:
        kept, _ = deduplicate(texts, train_texts)
        if not kept:
            raise CompressError(f"{field}: every document of '{name}' is also in the training text (data.train), "
                                "so none is left to score", "score a held-out source, or split data.train with part")
        if model.tokenizer is None:
            continue
        tokens = _tokens_up_to(model.tokenizer, kept, window)
        if tokens < window:
            smaller = f", or set eval.window to {tokens} or less" if tokens >= 8 else ""  # (eval.window >= 8)
            raise CompressError(f"{field}: '{name}' has {tokens} tokens, fewer than one eval.window ({window})",
                                f"add documents{smaller}")


def _tokens_up_to(tokenizer, texts: list[str], enough: int) -> int:
    """Tokens in `texts` (no special tokens), counted until `enough` is reached."""
    total = 0
    for text in texts:
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if total >= enough:
            break
    return total
