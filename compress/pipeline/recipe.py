"""Recipes: one YAML file naming a base model, data, named stages (one pass each), evaluation and goals.

A recipe is data, validated completely before any model is loaded: unknown keys and wrong types fail with the
YAML path of the offending value, each stage's pass config is resolved through the pass registry by its
`type` (a new pass needs no change here), and the chain of artifact kinds (`torch` / `onnx`) is checked so
that, e.g., a PyTorch-only pass placed after an ONNX export is rejected.

    name: quickstart
    model: builder:digits-cnn          # input of the first stage
    data: {source: builtin:digits, train: train, validation: validation, eval: test}
    stages:
      - {name: teacher, pass: {type: finetune, epochs: 5}}
      - {name: student-onnx, from: teacher, pass: {type: export_onnx}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from compress.core.errors import CompressError
from compress.data.causal import MixSource
from compress.evaluation.latency.bench import BenchSpec
from compress.passes.base import PassConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
MODEL_REF = "model"  # `from: model` is the recipe's base model
TEACHER_REF = "teacher"  # `from: teacher` is the teacher, whatever produced it
ONNX_SUFFIXES = (".onnx", ".ort")


class _Strict(BaseModel):
    # Typos in YAML fail loudly; `from`/`pass` are Python keywords, so those fields use aliases.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SplitSpec(_Strict):
    """One data split. In YAML a bare string is a split name: `eval: test` = `eval: {split: test}`."""

    source: str | None = Field(None, description="Dataset source for this split; default: `data.source`.")
    split: str | None = Field(None, description="Split name: file stem in a folder (`dev`), or dataset split.")
    limit: int | None = Field(None, gt=0, description="Keep at most this many examples.")
    shuffle: bool = Field(False, description="Shuffle (with `seed`) before `limit`.")
    seed: int = Field(0, description="Seed of the shuffle.")
    part: Literal["all", "train", "heldout"] = Field(
        "all", description="all, or one side of a deterministic split by a hash of each text (e.g. train on "
        "`part: train` and select on `part: heldout` of the same file).")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of texts on the heldout side of `part`.")
    mix: list[MixSource] | None = Field(None, min_length=1, description="data.train of a causal LM only: several "
                                        "text sources instead of `source`/`split`, their documents interleaved "
                                        "(shuffled together with `seed`; `limit` caps the total).")
    dedup_against_eval: bool | None = Field(None, description="With `mix`: drop every training document also in "
                                            "data.eval or an eval.domains source (exact match after case and "
                                            "whitespace folding). Default: true.")

    @model_validator(mode="after")
    def _check_mix(self) -> SplitSpec:
        if self.mix is None:
            if self.dedup_against_eval is not None:
                raise ValueError("dedup_against_eval applies to a mix; drop it or give the split a mix")
            return self
        per_source = [name for name, off in (("source", self.source is None), ("split", self.split is None),
                                             ("part", self.part == "all"), ("shuffle", not self.shuffle),
                                             ("heldout_fraction", self.heldout_fraction == 0.1)) if not off]
        if per_source:
            raise ValueError(f"a mix takes no {' or '.join(per_source)} of its own (the documents are always "
                             "shuffled together); set them on each mix source")
        return self


class DataConfig(_Strict):
    """Where examples come from. Relative paths are relative to the folder `compress run` starts in."""

    source: str | None = Field(None, description="Default source of every split: a folder of split files "
                                                 "(`../shared/data/sst2`), a file, `builtin:digits` or a hub name.")
    text_field: str = Field("text", description="Field holding the text.")
    text_pair_field: str | None = Field(None, description="Field holding the second text of a pair.")
    label_field: str = Field("label", description="Field holding the integer label.")
    train: SplitSpec | None = Field(None, description="Training examples (finetune, distill, recovery).")
    validation: SplitSpec | None = Field(None, description="Held-out examples the passes use for model selection "
                                                           "and sensitivity (default: none; never the eval split).")
    eval: SplitSpec = Field(description="Examples every stage is scored on in the report.")
    calibration: SplitSpec | None = Field(None, description="Examples for static quantization ranges.")

    @field_validator("train", "validation", "eval", "calibration", mode="before")
    @classmethod
    def _split_shorthand(cls, value: Any) -> Any:
        return {"split": value} if isinstance(value, str) else value

    def spec(self, which: str):
        """The `compress.data.examples.DataSpec` of split `which`, a `compress.data.causal.MixSpec` when the split is
        a mix (each data file source reading `text_field`, plus `text_pair_field`, unless it lists its fields), or
        None when the recipe gives none."""
        from compress.data.examples import DataSpec

        split: SplitSpec | None = getattr(self, which)
        if split is None:
            return None
        if split.mix is not None:
            from compress.data.causal import CORPUS_PREFIX, MixSpec

            default = [self.text_field] + ([self.text_pair_field] if self.text_pair_field else [])
            sources = [s if s.fields is not None or s.source.startswith(CORPUS_PREFIX) or Path(s.source).suffix == ".txt"
                       else s.model_copy(update={"fields": default}) for s in split.mix]
            return MixSpec(sources=sources, seed=split.seed, limit=split.limit,
                           dedup_against_eval=split.dedup_against_eval is not False)
        source = split.source or self.source
        if source is None:
            raise CompressError(f"data.{which} has no source", "set data.source or data.{which}.source")
        return DataSpec(source=source, split=split.split, text_field=self.text_field,
                        text_pair_field=self.text_pair_field, label_field=self.label_field, limit=split.limit,
                        shuffle=split.shuffle, seed=split.seed, part=split.part,
                        heldout_fraction=split.heldout_fraction)


class Shape(_Strict):
    """The latency shape the goals and the headline numbers use."""

    device: str = Field("cpu", description="Device of the headline latency.")
    batch_size: int = Field(1, ge=1, description="Batch size of the headline latency.")
    seq_len: int = Field(128, ge=1, description="Sequence length of the headline latency (text models).")


class DomainSpec(_Strict):
    """A text domain a causal LM is scored on, document by document (perplexity and bits per byte)."""

    name: str = Field(pattern=NAME_PATTERN, description="Name of the domain in the report (e.g. rte, sst2, tweets).")
    source: str = Field(description="File, folder of split files or saved dataset holding the documents; .txt too.")
    split: str | None = Field(None, description="Split of `source` (file stem in a folder).")
    text_field: str = Field("text", description="Field holding a document.")
    max_documents: int | None = Field(None, ge=1, description="Score at most this many documents (default: all).")


class PeerSpec(_Strict):
    """A runtime users deploy instead of `compress`, run on the teacher's weights, timed in the same bench and scored
    on the same documents (perplexity, KL to the teacher): llama.cpp through llama-cpp-python (`llamacpp` extra) or
    onnxruntime-genai's model builder and generator (`genai` extra)."""

    name: str = Field(pattern=NAME_PATTERN, description="Name of the row in the report (e.g. llama.cpp-q8_0).")
    runtime: Literal["llamacpp", "genai"] = Field(description="llamacpp or genai.")
    precision: str = Field("f32", description="llamacpp: f32, f16 (llama.cpp's converter) or a llama.cpp quantization "
                           "of the f32 file (Q8_0, Q4_0, Q4_K_M...); genai: fp32, int4 (its model builder) "
                           "or int8 (its fp32 graph through ONNX Runtime's 8-bit MatMulNBits quantizer).")
    file: str | None = Field(None, description="llamacpp: run this GGUF as it is instead of converting the teacher "
                             "(`packaged`: the GGUF the packaged model came from, e.g. SmolLM2's Q4_1 file).")


class EvalConfig(_Strict):
    """How every stage is scored: accuracy on `data.eval`, agreement with the teacher, size, latency."""

    batch_size: int = Field(64, ge=1, description="Batch size of the accuracy evaluation.")
    max_length: int = Field(128, ge=2, description="Token truncation length of the accuracy evaluation.")
    threads: int | None = Field(None, ge=1, description="Threads of the accuracy evaluation (default: all).")
    block_size: int = Field(128, ge=2, description="Causal LMs: tokens per held-out block for perplexity and KL.")
    max_blocks: int = Field(32, ge=1, description="Causal LMs: blocks of `data.eval` scored per stage.")
    new_tokens: int = Field(32, ge=1, description="Causal LMs: greedy tokens per prompt for generation agreement.")
    domains: list[DomainSpec] = Field(default_factory=list, description="Causal LMs: text domains scored per "
                                      "document (perplexity, bits per byte), each against the teacher; empty = the "
                                      "eval split alone. Documents also in the training text are dropped (counted).")
    window: int = Field(128, ge=8, description="Causal LMs: tokens per scoring window (longer documents roll).")
    separator: str | None = Field(None, description="Causal LMs: the document separator token (default: inferred "
                                  "from the tokenizer, e.g. <|endoftext|>).")
    tasks: list[str] = Field(default_factory=list, description="Causal LMs: zero-shot tasks scored by answer "
                             "log-likelihood (e.g. sst2, rte; see `compress.evaluation.tasks`).")
    task_limit: int | None = Field(None, ge=1, description="Causal LMs: at most this many examples per task.")
    task_data: str = Field("../shared/data", description="Causal LMs: folder holding the tasks' datasets.")
    peers: list[PeerSpec] = Field(default_factory=list, description="Causal LMs: peer runtimes timed and scored "
                                  "beside the stages, on the teacher's weights.")
    prompts: str | None = Field(None, description="Causal LMs: a text file of greedy-agreement prompts, one per "
                                "line (default: a fixed English set; instruct models get them in their chat template).")
    latency: BenchSpec | None = Field(default_factory=BenchSpec,
                                      description="Latency protocol (`compress bench` options); null skips timing.")
    primary: Shape | None = Field(None, description="Headline shape for speedups and goals; default: the first "
                                                    "device, batch size and sequence length of `latency`.")

    def primary_shape(self) -> Shape | None:
        if self.latency is None:
            return None
        return self.primary or Shape(device=self.latency.devices[0], batch_size=self.latency.batch_sizes[0],
                                     seq_len=self.latency.seq_lens[0])


class Goals(_Strict):
    """What counts as success; the report gives each stage a verdict per goal."""

    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="Largest accepted drop in accuracy "
                                            "versus the teacher, as a fraction (0.01 = 1 point).")
    max_perplexity_increase: float | None = Field(None, ge=0, description="Causal LMs: largest accepted relative "
                                                  "perplexity increase versus the teacher (0.03 = +3%).")
    max_task_drop: float | None = Field(None, ge=0, le=1, description="Causal LMs: largest accepted drop in "
                                        "zero-shot accuracy versus the teacher on each of eval.tasks, as a fraction "
                                        "(0.02 = 2 points).")
    min_speedup: float | None = Field(None, gt=0, description="Smallest accepted speedup (reference p50 / stage "
                                      "p50 at the primary shape).")
    speedup_vs: str = Field(TEACHER_REF, description="Stage or peer (eval.peers name) whose latency is the speedup "
                            "reference (default: the teacher).")


class SearchFidelity(_Strict):
    """Cheap first: every trial is scored at low fidelity, and only a trial that can still be chosen (within the
    budget plus `slack`, and faster or smaller than the best full-fidelity trial so far) is run at full fidelity."""

    validation_limit: int | None = Field(None, gt=0, description="Low fidelity scores on the first N validation "
                                         "examples (causal LMs: blocks of them) instead of all of them.")
    overrides: dict[str, Any] = Field({}, description="Stage options set to cheap values at low fidelity, as dotted "
                                      "paths like the space (`prune-ffn.recover.epochs: 1`, `distill.epochs: 1`).")
    slack: float = Field(0.01, ge=0, description="A low-fidelity trial goes on while its accuracy drop is at most "
                         "the budget plus this (1 pt = 0.01; causal LMs: relative perplexity).")
    pruner: Literal["front", "halving", "none"] = Field("front", description="front: stop trials that cannot be "
                                                        "chosen (over budget + slack, or no better than the best so "
                                                        "far); halving: also Optuna's SuccessiveHalvingPruner on the "
                                                        "low-fidelity objective; none: every trial runs at full fidelity.")


class SearchConfig(_Strict):
    """`compress search`: which stage options vary, what is minimized, under which accuracy budget, for how long."""

    space: dict[str, list[Any]] = Field(min_length=1, description="Stage options that vary, `<stage>.<option>: "
                                        "[values]` (nested: `prune-ffn.recover.epochs`); `<stage>.enabled: [true, "
                                        "false]` runs or skips a stage (its consumers then take its input).")
    candidate: str | None = Field(None, description="Stage whose output is the candidate model (default: the last "
                                                    "stage that is not a baseline).")
    objective: Literal["latency", "size"] = Field("latency", description="Minimized: p50 latency at the primary "
                                                  "shape (eval.primary), or size on disk in MB.")
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="Budget: largest accuracy drop versus the "
                                            "teacher on data.validation, as a fraction (0.01 = 1 pt).")
    max_perplexity_increase: float | None = Field(None, ge=0, description="Causal LMs: budget on the relative "
                                                  "perplexity increase versus the teacher on data.validation.")
    trials: int = Field(20, ge=1, description="Trials in the study (finished ones count after a resume).")
    max_hours: float | None = Field(None, gt=0, description="Time budget of the trials in hours, summed over "
                                    "resumes (and over terminals sharing the study).")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="Optuna sampler (tpe is constrained by the "
                                                      "budget; grid walks the whole space).")
    seed: int = Field(0, description="Seed of the sampler.")
    fidelity: SearchFidelity | None = Field(None, description="Low-fidelity first pass (default: every trial runs "
                                                              "at full fidelity).")
    finalists: int = Field(3, ge=1, description="Best full-fidelity trials re-timed together (with the teacher and "
                                                "the baselines) in one interleaved bench before the choice.")
    trial_latency: BenchSpec | None = Field(None, description="Latency protocol of each trial (default: eval.latency "
                                                              "at the primary shape only, one round).")

    @model_validator(mode="after")
    def _one_budget(self) -> SearchConfig:
        if (self.max_accuracy_drop is None) == (self.max_perplexity_increase is None):
            raise ValueError("give exactly one budget: max_accuracy_drop (classifiers) or max_perplexity_increase "
                             "(causal LMs)")
        return self


class Stage(_Strict):
    """One named step: a pass applied to the output of `from`."""

    name: str = Field(pattern=NAME_PATTERN, description="Stage name, saying which pass made it: distill-3l, int8...")
    from_: str | None = Field(None, alias="from", description="Input: an earlier stage, `teacher` or `model` "
                                                              "(default: the previous stage; the first: `model`).")
    pass_: SerializeAsAny[PassConfig] = Field(alias="pass", description="The pass config; `type` picks the pass "
                                                                       "(see `compress passes`).")
    evaluate: bool = Field(True, description="Score and time this stage in the report (false for intermediates).")
    note: str | None = Field(None, description="One line shown in the report.")

    @field_validator("pass_", mode="before")
    @classmethod
    def _resolve_pass(cls, value: Any) -> Any:
        """Validate the pass config with the class its `type` registered (pydantic keeps the nested YAML path)."""
        if isinstance(value, PassConfig):
            return value
        if not isinstance(value, dict) or "type" not in value:
            raise ValueError("a pass needs a 'type' (see `compress passes`)")
        from compress.passes.base import get_pass

        try:
            info = get_pass(str(value["type"]))
        except CompressError as e:
            raise ValueError(str(e)) from None
        return info.config.model_validate(value)

    @property
    def type(self) -> str:
        return self.pass_.type  # type: ignore[attr-defined]


class Recipe(_Strict):
    """A whole compression experiment: base model, data, stages, evaluation and goals."""

    name: str = Field(pattern=NAME_PATTERN, description="Recipe name: names `runs/<name>/` and `reports/<name>/`.")
    description: str | None = Field(None, description="What the recipe tries and what it should reach.")
    model: str = Field(description="Base model, the input of the first stage: anything `load_model` takes "
                                   "(`minilm`, an HF folder or hub id, `builder:digits-cnn`, a .onnx file...).")
    task: Literal["text-classification", "feature-extraction", "image-classification", "text-generation"] | None = Field(
        None, description="Task (default: from the model).")
    num_labels: int | None = Field(None, ge=2, description="Classes of a new classification head.")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the hub.")
    teacher: str | None = Field(None, description="The reference model: a stage name, or a model source. Default: "
                                                  "the stage named `teacher` if any, else `model`.")
    baselines: list[str] = Field([], description="Stages that are comparison baselines (e.g. `baseline-int8`), "
                                                 "never picked as the best stage.")
    seed: int = Field(0, description="Seed given to every pass.")
    data: DataConfig = Field(description="Train / validation / eval / calibration splits.")
    stages: list[Stage] = Field(min_length=1, description="The stages, run in order.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    goals: Goals | None = Field(None, description="Optional goals; the report gives verdicts.")
    search: SearchConfig | None = Field(None, description="`compress search`: the space, objective, budget and "
                                                          "fidelity (ignored by `compress run`).")

    @model_validator(mode="after")
    def _check_graph(self) -> Recipe:
        for which in ("validation", "eval", "calibration"):
            if (split := getattr(self.data, which)) is not None and split.mix is not None:
                raise ValueError(f"data.{which}.mix: only data.train can be a mix; give data.{which} a source or "
                                 "split")
        if self.data.train is not None and self.data.train.mix is not None and self.task != "text-generation":
            raise ValueError("data.train.mix: a mix is unlabelled text for causal LMs; set task: text-generation "
                             "(or give data.train a source or split)")
        plan(self)  # raises ValueError naming the YAML path
        if self.search is not None:
            check_search(self)
        return self

    # --- derived facts --------------------------------------------------------------------------------------

    def teacher_stage(self) -> str | None:
        """Name of the stage that produces the teacher, or None when the teacher is a model source."""
        names = [s.name for s in self.stages]
        if self.teacher is None:
            return TEACHER_REF if TEACHER_REF in names else None
        return self.teacher if self.teacher in names else None

    def teacher_source(self) -> str | None:
        """Model source of the teacher when no stage produces it."""
        if self.teacher_stage() is not None:
            return None
        return self.teacher or self.model

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def inputs(self) -> dict[str, str]:
        """Stage name -> resolved input: an earlier stage name, `model`, or `teacher` (a model source)."""
        out, previous = {}, MODEL_REF
        teacher_stage = self.teacher_stage()
        for s in self.stages:
            ref = s.from_ or previous
            if ref == TEACHER_REF and teacher_stage is not None and s.name != teacher_stage:
                ref = teacher_stage
            out[s.name] = ref
            previous = s.name
        return out


@dataclass(frozen=True)
class PlanStep:
    """One stage as the runner will execute it."""

    name: str
    input: str
    pass_type: str
    input_kind: str
    output_kind: str
    needs: tuple[str, ...]
    evaluate: bool


def source_kind(source: str) -> str:
    """`onnx` for .onnx/.ort files and ONNX folders, else `torch` (decided without loading anything)."""
    path = Path(source).expanduser()
    if path.suffix in ONNX_SUFFIXES or (path.is_dir() and (path / "model.onnx").exists()):
        return "onnx"
    return "torch"


def plan(recipe: Recipe) -> list[PlanStep]:
    """Resolve inputs and artifact kinds of every stage; raise ValueError with the YAML path on any mismatch."""
    from compress.passes.base import get_pass

    names = [s.name for s in recipe.stages]
    for i, s in enumerate(recipe.stages):
        if s.name in (MODEL_REF,) or names.index(s.name) != i:
            raise ValueError(f"stages[{i}].name: '{s.name}' is {'reserved' if s.name == MODEL_REF else 'used twice'}; "
                             "give every stage its own name")
    teacher_stage = recipe.teacher_stage()
    if teacher_stage is None and recipe.teacher is not None and recipe.teacher != recipe.model:
        if not Path(recipe.teacher).expanduser().exists() and ":" not in recipe.teacher and "/" not in recipe.teacher \
                and recipe.teacher != "minilm":
            raise ValueError(f"teacher: '{recipe.teacher}' is neither a stage ({', '.join(names)}) nor a model source")
    kinds = {MODEL_REF: source_kind(recipe.model)}
    if teacher_stage is None:
        kinds[TEACHER_REF] = source_kind(recipe.teacher_source() or recipe.model)
    done: set[str] = {MODEL_REF, TEACHER_REF} if teacher_stage is None else {MODEL_REF}
    steps = []
    inputs = recipe.inputs()
    for i, s in enumerate(recipe.stages):
        ref = inputs[s.name]
        if ref not in done:
            later = ref in names
            raise ValueError(f"stages[{i}].from: '{s.from_}' is {'a later stage' if later else 'not a stage'}; "
                             f"use an earlier stage, '{TEACHER_REF}' or '{MODEL_REF}'")
        info = get_pass(s.type)
        kind = kinds[ref]
        if kind not in info.accepts:
            raise ValueError(f"stages[{i}].pass: '{s.type}' takes a {' or '.join(info.accepts)} model but its input "
                             f"'{ref}' is {kind}; reorder the stages or start from a {info.accepts[0]} stage")
        for need in info.needs:
            if need == "teacher":
                if teacher_stage is not None and teacher_stage not in done:
                    raise ValueError(f"stages[{i}].pass: '{s.type}' needs the teacher, which stage '{teacher_stage}' "
                                     "makes later; move it after the teacher stage")
                continue
            split = "validation" if need == "eval" else need
            if getattr(recipe.data, split, None) is None:
                raise ValueError(f"stages[{i}].pass: '{s.type}' needs data.{split}; add it to the recipe")
        kinds[s.name] = info.returns
        done.add(s.name)
        steps.append(PlanStep(s.name, ref, s.type, kind, info.returns, info.needs, s.evaluate))
    for key in recipe.baselines:
        if key not in names:
            raise ValueError(f"baselines: '{key}' is not a stage; name one of: {', '.join(names)}")
    peers = [p.name for p in recipe.eval.peers]
    if recipe.goals is not None and recipe.goals.speedup_vs not in names + peers + [TEACHER_REF]:
        raise ValueError(f"goals.speedup_vs: '{recipe.goals.speedup_vs}' is not a stage or a peer")
    if recipe.goals is not None and recipe.goals.max_task_drop is not None and not recipe.eval.tasks:
        raise ValueError("goals.max_task_drop: eval.tasks names no zero-shot task; add one (e.g. [sst2, rte])")
    if teacher_stage is not None and kinds[teacher_stage] != "torch":
        raise ValueError(f"teacher: stage '{teacher_stage}' makes an ONNX model; the teacher must be PyTorch")
    return steps


# --- the search space: settings applied to a recipe ----------------------------------------------------------

ENABLED = "enabled"  # `<stage>.enabled: [true, false]` runs or skips a stage


def split_setting(recipe: Recipe, key: str) -> tuple[str, list[str]]:
    """`prune-ffn.recover.epochs` -> ('prune-ffn', ['recover', 'epochs']); the longest stage name wins (names may
    hold dots). Raises ValueError when no stage starts the key."""
    names = sorted((s.name for s in recipe.stages), key=len, reverse=True)
    for name in names:
        if key.startswith(name + ".") and len(key) > len(name) + 1:
            return name, key[len(name) + 1:].split(".")
    raise ValueError(f"'{key}' does not start with a stage name ({', '.join(s.name for s in recipe.stages)}); "
                     "write <stage>.<option>")


def apply_settings(recipe: Recipe, settings: dict[str, Any]) -> dict:
    """The recipe as plain data with `settings` ({dotted key: value}) applied and no search block; every stage's
    `from` is written out, so skipping a stage (`<stage>.enabled: false`) hands its input to its consumers."""
    import copy

    data = copy.deepcopy(recipe_dict(recipe))
    data.pop("search", None)
    inputs = recipe.inputs()
    stages = {s["name"]: s for s in data["stages"]}
    for s in data["stages"]:
        s["from"] = inputs[s["name"]]
    skipped = []
    for key, value in settings.items():
        name, path = split_setting(recipe, key)
        if path == [ENABLED]:
            if not isinstance(value, bool):
                raise ValueError(f"'{key}' takes true or false (got {value!r})")
            if not value:
                skipped.append(name)
            continue
        node = stages[name]["pass"]
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # e.g. `recover.epochs` on a stage without recovery: recovery with defaults
            node = node[part]
        node[path[-1]] = value
    for name in skipped:
        source = stages[name]["from"]
        for s in data["stages"]:
            if s["from"] == name:
                s["from"] = source
        data["stages"].remove(stages[name])
        data["baselines"] = [b for b in data["baselines"] if b != name]
    return data


def search_candidate(recipe: Recipe) -> str:
    """The stage whose output a search judges: `search.candidate`, else the last stage that is not a baseline."""
    if recipe.search is not None and recipe.search.candidate is not None:
        return recipe.search.candidate
    return [s.name for s in recipe.stages if s.name not in recipe.baselines][-1]


def ancestors(recipe: Recipe, name: str) -> list[str]:
    """`name` and every stage it is made from (the teacher stage included), in recipe order."""
    inputs, teacher = recipe.inputs(), recipe.teacher_stage()
    needed, todo = set(), [name] + ([teacher] if teacher else [])
    while todo:
        current = todo.pop()
        if current in needed or current not in inputs:
            continue
        needed.add(current)
        todo.append(inputs[current])
    return [s.name for s in recipe.stages if s.name in needed]


def check_search(recipe: Recipe) -> None:
    """Every key of the space (and of the low-fidelity overrides) names an option of a stage the candidate is made
    from, and every value validates in that stage's pass; raise ValueError with the `search.` path otherwise."""
    search = recipe.search
    names = [s.name for s in recipe.stages]
    candidate = search_candidate(recipe)
    if candidate not in names:
        raise ValueError(f"search.candidate: '{candidate}' is not a stage; name one of: {', '.join(names)}")
    if candidate in recipe.baselines or candidate == recipe.teacher_stage():
        raise ValueError(f"search.candidate: '{candidate}' is {'a baseline' if candidate in recipe.baselines else 'the teacher'}; "
                         "name the stage the search should improve")
    if recipe.data.validation is None:
        raise ValueError("search: candidates are chosen on data.validation (the eval split is scored once, at the "
                         "end); add data.validation")
    if recipe.data.validation == recipe.data.eval:
        raise ValueError("search: data.validation is the eval split; choose on a held-out split of its own")
    causal = recipe.task == "text-generation"
    if causal and search.max_accuracy_drop is not None:
        raise ValueError("search.max_accuracy_drop: a causal LM has no accuracy; use max_perplexity_increase")
    if recipe.task not in (None, "text-generation") and search.max_perplexity_increase is not None:
        raise ValueError("search.max_perplexity_increase: only causal LMs have a perplexity; use max_accuracy_drop")
    on_path = set(ancestors(recipe, candidate))
    groups = [("space", k, v) for k, v in search.space.items()]
    if search.fidelity is not None:
        groups += [("fidelity.overrides", k, [v]) for k, v in search.fidelity.overrides.items()]
    for where, key, values in groups:
        try:
            name, path = split_setting(recipe, key)
        except ValueError as e:
            raise ValueError(f"search.{where}.{key}: {e}") from None
        if name not in on_path:
            raise ValueError(f"search.{where}.{key}: stage '{name}' does not lead to the candidate '{candidate}'")
        if path == [ENABLED] and name in (candidate, recipe.teacher_stage()):
            raise ValueError(f"search.{where}.{key}: the {'candidate' if name == candidate else 'teacher'} stage "
                             "cannot be skipped")
        if not values:
            raise ValueError(f"search.{where}.{key}: give at least one value")
        for i, value in enumerate(values):
            at = f"search.{where}.{key}" + (f"[{i}]" if where == "space" else "")
            try:
                Recipe.model_validate(apply_settings(recipe, {key: value}))
            except ValidationError as e:
                inner = format_error(e, "").removeprefix(": ")
                raise ValueError(f"{at}: {value!r} does not fit stage '{name}' ({inner})") from None
            except ValueError as e:
                raise ValueError(f"{at}: {e}") from None


def space_size(search: SearchConfig) -> int:
    """Number of settings the space spans (the grid size)."""
    size = 1
    for values in search.space.values():
        size *= len(values)
    return size


def expand_space(search: SearchConfig) -> list[dict[str, Any]]:
    """Every setting of the space, in declaration order (what `sampler: grid` walks)."""
    import itertools

    keys = list(search.space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*search.space.values())]


# --- YAML in and out ------------------------------------------------------------------------------------------


def yaml_path(loc: tuple) -> str:
    """('stages', 2, 'pass', 'sparsity') -> 'stages[2].pass.sparsity'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_error(error: ValidationError, where: str = "recipe") -> str:
    """The first validation problem as one line, with its YAML path."""
    errors = error.errors(include_url=False)
    first = errors[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], (dict, list)):
        msg += f" (got {first['input']!r})"
    path = yaml_path(loc)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {path + ': ' if path else ''}{msg}{more}"


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    """Validate a recipe given as plain data (the parsed YAML)."""
    if not isinstance(data, dict):
        raise CompressError(f"{where}: a recipe is a YAML mapping", "start from recipes/quickstart.yaml")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise CompressError(format_error(e, where)) from None
    except (TypeError, RuntimeError, OSError, RecursionError) as e:  # e.g. a path like '~nosuchuser/x'
        first = (str(e).strip().splitlines() or [""])[0]
        raise CompressError(f"{where}: not a usable recipe ({type(e).__name__}: {first})", "fix the recipe") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file; any problem raises CompressError naming the YAML path."""

    path = Path(path)
    if not path.is_file():
        raise CompressError(f"recipe '{path}' not found", "pass an existing YAML file, e.g. recipes/quickstart.yaml")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise CompressError(f"{path}: {size:,} bytes is too large for a recipe "
                            f"(at most {MAX_RECIPE_BYTES:,})", "pass the recipe YAML, not a data or model file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CompressError(f"{path}: not UTF-8 text (byte {e.start})", "save the recipe as UTF-8 YAML") from None
    return parse_recipe(safe_yaml(text, str(path)), str(path))


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; anything bigger is the wrong file
MAX_YAML_DEPTH = 64  # nesting of mappings and lists (a recipe needs about 6)
MAX_YAML_ALIASES = 100  # `*alias` uses: bounds the expansion of nested aliases ("billion laughs")
MAX_YAML_NODES = 100_000


def safe_yaml(text: str, where: str = "recipe") -> Any:
    """`yaml.safe_load` with bounded nesting, aliases and size; any problem is one CompressError line."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = aliases = nodes = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise _Bound(f"more than {MAX_YAML_ALIASES} YAML aliases", self.peek_event().start_mark)
            self.nodes += 1
            if self.nodes > MAX_YAML_NODES:
                raise _Bound(f"more than {MAX_YAML_NODES:,} YAML values", self.peek_event().start_mark)
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise _Bound(f"YAML nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    class _Bound(yaml.YAMLError):
        def __init__(self, problem, mark):
            super().__init__(problem)
            self.problem, self.problem_mark = problem, mark

    loader = None
    try:
        loader = BoundedLoader(text)  # the reader rejects unprintable characters already here
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = f" ({e.problem})" if getattr(e, "problem", None) else ""
        raise CompressError(f"{where}: not valid YAML{at}{problem}", "fix the YAML (a recipe is a plain mapping)") from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as e:
        raise CompressError(f"{where}: not a usable YAML recipe ({type(e).__name__})", "fix the YAML") from None
    finally:
        if loader is not None:
            loader.dispose()


def recipe_dict(recipe: Recipe) -> dict:
    """The recipe as plain JSON-able data with YAML key names (`from`, `pass`), every default filled in."""
    return recipe.model_dump(mode="json", by_alias=True)


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML; `parse_recipe(yaml.safe_load(dump_recipe(r))) == r`."""
    import yaml

    return yaml.safe_dump(recipe_dict(recipe), sort_keys=False, allow_unicode=True)
