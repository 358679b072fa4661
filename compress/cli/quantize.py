"""`compress quantize`: int8 (dynamic or calibrated static) or fp16 with ONNX Runtime, an optional accuracy budget
with per-layer sensitivity, or PyTorch int8 with `--torch`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import (
    AllowPickleOpt,
    ArchOpt,
    InputShapeOpt,
    LabelFieldOpt,
    ModelArg,
    NumLabelsOpt,
    TaskOpt,
    TextFieldOpt,
    TextPairFieldOpt,
    TrustRemoteCodeOpt,
    app,
    console,
    data_spec,
    err_console,
    json_destination,
    load_model_from_options,
    pass_config,
    write_json,
)

BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MatMulNBits takes (compress.techniques.quantize.config checks it too)


def _block_size_bound(value: int) -> int:
    """The bound of --block-size, checked as the option is parsed: one line naming the option."""
    if value not in BLOCK_SIZES:
        from compress.core.errors import CompressError

        raise CompressError(f"--block-size {value} is not a MatMulNBits block size",
                            f"pass --block-size {', '.join(map(str, BLOCK_SIZES))}")
    return value


@app.command()
def quantize(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (model.onnx + quantization.json + config/tokenizer).")],
    mode: Annotated[str | None, typer.Option(help="dynamic (int8, the default for classifiers), static (calibrated QDQ), fp16 (CUDA), weight_only (MatMulNBits with --bits; the default for causal LMs, 8 bits) or int4 (= weight_only --bits 4).")] = None,
    bits: Annotated[int, typer.Option(help="weight_only: bits per weight, 4 or 8.")] = 8,
    algorithm: Annotated[str, typer.Option(help="weight_only/int4: rtn (round to nearest), hqq or k_quant (ONNX Runtime's data-free searches).")] = "rtn",
    block_size: Annotated[int, typer.Option(callback=_block_size_bound, help="int4/weight_only: quantization block, weights per scale along the input dimension: 16, 32, 64, 128 or 256 (not tokens).")] = 32,
    symmetric: Annotated[bool, typer.Option(help="int4: symmetric blocks (no zero point).")] = False,
    accuracy_level: Annotated[int, typer.Option(min=0, max=4, help="int4: MatMulNBits compute (4 = int8, fastest on CPU; 0 = unset).")] = 4,
    head: Annotated[str, typer.Option(help="Causal LMs: lm_head precision: int8 (default), fp32 or int4.")] = "int8",
    budget_metric: Annotated[str, typer.Option(help="Causal LMs: --max-drop bounds perplexity (relative increase) or kl.")] = "perplexity",
    per_channel: Annotated[bool, typer.Option(help="One weight scale per output channel.")] = True,
    weight_type: Annotated[str, typer.Option(help="auto, qint8 or quint8.")] = "auto",
    reduce_range: Annotated[bool | None, typer.Option(help="7-bit weights (default: on without VNNI).")] = None,
    calibration_data: Annotated[str | None, typer.Option(help="Static mode: calibration data (file or folder).")] = None,
    calibration_split: Annotated[str, typer.Option(help="Split of the calibration data.")] = "train",
    calibration_samples: Annotated[int, typer.Option(min=1, help="Calibration examples (random, seeded).")] = 256,
    calibration_method: Annotated[str, typer.Option(help="minmax, entropy or percentile.")] = "minmax",
    percentile: Annotated[float, typer.Option(help="Percentile of the percentile method.")] = 99.999,
    op_types: Annotated[list[str] | None, typer.Option("--op-type", help="Op types to quantize (repeat); default transformer-safe.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Node name or glob kept in fp32 (repeat).")] = None,
    optimize: Annotated[str, typer.Option(help="auto, transformer (fuse first) or none.")] = "auto",
    max_drop: Annotated[float | None, typer.Option(min=0.0, max=0.99, help="Quality budget vs fp32: accuracy points for classifiers (0.01 = 1 pt), or relative perplexity increase for causal LMs (0.03 = +3%; see --budget-metric); needs --eval-data.")] = None,
    eval_data: Annotated[str | None, typer.Option(help="Held-out data for --max-drop (file or folder): labelled examples, or text for causal LMs.")] = None,
    eval_split: Annotated[str | None, typer.Option(help="Split of --eval-data.")] = None,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Use at most this many --eval-data examples.")] = None,
    sensitivity: Annotated[str, typer.Option(help="all_but_one or alone.")] = "all_but_one",
    granularity: Annotated[str, typer.Option(help="Sensitivity unit: layer or node.")] = "layer",
    device: Annotated[str, typer.Option(help="Target device: cpu or cuda (checks execution-provider fallback).")] = "cpu",
    ort_format: Annotated[bool, typer.Option("--ort-format", help="Also write model.ort.")] = False,
    torch_int8: Annotated[bool, typer.Option("--torch", help="PyTorch int8 (dynamic, Linear layers) instead of ONNX.")] = False,
    text_field: TextFieldOpt = "text", text_pair_field: TextPairFieldOpt = None, label_field: LabelFieldOpt = "label",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here ('-': to stdout, the tables then go to stderr).")] = None,
    task: TaskOpt = None, num_labels: NumLabelsOpt = None, arch: ArchOpt = None,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
    input_shape: InputShapeOpt = None,
) -> None:
    """Quantize MODEL (HF folder, .pt + --arch, or .onnx) and save the settings beside it; causal LMs default to
    8-bit weight-only (--mode int4 for 4 bits), with a perplexity budget through --max-drop.

    Example: compress quantize runs/teacher-sst2 -o runs/teacher-int8 --max-drop 0.01 --eval-data ../shared/data/sst2 --eval-split dev
    """
    from compress.core.errors import CompressError
    from compress.core.paths import guard_output
    from compress.data.examples import load_examples
    from compress.passes.base import DataBundle
    from compress.passes.quantize import QuantizeOrtConfig
    from compress.passes.quantize_torch import QuantizeTorchConfig
    from compress.pipeline.apply import load_check_examples
    from compress.techniques.quantize.api import check_inputs

    inputs = [model, arch, calibration_data, eval_data]
    guard_output(output, inputs)
    json_destination(json_out, inputs)
    loaded = load_model_from_options(model, task, num_labels, arch, allow_pickle, trust_remote_code, input_shape)
    if torch_int8:
        if loaded.kind != "torch":
            raise CompressError("--torch needs a PyTorch model", "pass an HF folder or .pt, or drop --torch for ONNX")
        metrics = _apply(loaded, QuantizeTorchConfig(exclude=exclude or []), output, DataBundle(), json_out)
        console.print(f"PyTorch int8 ({metrics['backend']}): {metrics['quantized_linears']} Linear layers quantized, "
                      f"{metrics['size_fp32_mb']:.1f} MB -> {metrics['size_mb']:.1f} MB, saved to {output}")
        return
    if mode is None:  # dynamic int8 is a trap for decoders (activation outliers): their default is 8-bit weight-only
        mode = "weight_only" if loaded.task == "text-generation" else "dynamic"
    cfg = pass_config(QuantizeOrtConfig, mode=mode, bits=bits, algorithm=algorithm, per_channel=per_channel, weight_type=weight_type,
                      reduce_range=reduce_range, calibration_method=calibration_method, percentile=percentile,
                      calibration_samples=calibration_samples, op_types=op_types or None, exclude=exclude or [],
                      optimize=optimize, max_drop=max_drop, sensitivity=sensitivity, granularity=granularity,
                      eval_samples=eval_limit, device=device, ort_format=ort_format, block_size=block_size,
                      symmetric=symmetric, accuracy_level=accuracy_level or None, head=head,
                      budget_metric=budget_metric)
    calibration = None
    if calibration_data:
        fields = dict(text_field=text_field, text_pair_field=text_pair_field, label_field=label_field)
        calibration = load_examples(data_spec(calibration_data, calibration_split, limit=calibration_samples, **fields)
                                    .model_copy(update={"shuffle": True}))
    examples = load_check_examples(loaded, eval_data, eval_split, text_field, text_pair_field, eval_limit,
                                   label_field=label_field, limit_texts=False)
    check_inputs(loaded, cfg, calibration, examples)  # before the progress bar: a bad input is one line, nothing else
    metrics = _run_with_progress(loaded, cfg, output, DataBundle(eval=examples, calibration=calibration), json_out)
    if "head" in metrics["settings"]:  # a decoder (weight-only or int8 with its lm_head setting)
        return _render_causal(metrics, output)
    _render(metrics, output)


def _apply(loaded, cfg, output: Path, data, json_out, on_progress=None) -> dict:
    """One pass through the shared engine (load -> pass -> atomic save); the metrics also go to --json."""
    from compress.pipeline.apply import apply_pass

    metrics = apply_pass(loaded, cfg, output, data=data, on_progress=on_progress).metrics
    write_json(json_out, metrics)
    return metrics


def _run_with_progress(loaded, cfg, output, data, json_out) -> dict:
    from compress.cli.progress import progress

    with progress(console) as on_progress:
        return _apply(loaded, cfg, output, data, json_out, on_progress=on_progress)


def _render(m: dict, output: Path) -> None:
    from rich.table import Table

    s = m["settings"]
    table = Table("", "value", title=f"quantized -> {output}")
    table.add_row("mode", f"{s['mode']} ({s['format']}), optimized: {s['optimized']}")
    if s["mode"] != "fp16":
        table.add_row("types", f"weights {s['weight_type']}, activations {s['activation_type']}, "
                      f"per-channel {s['per_channel']}, reduce_range {s['reduce_range']}")
        table.add_row("reduce_range", s["reasons"]["reduce_range"])
        table.add_row("CPU", f"{s['cpu']['cpu']} ({', '.join(s['cpu']['flags']) or 'no SIMD flags'})")
    table.add_row("quantized MatMuls", f"{m['quantized_matmuls']} (float: {m['float_matmuls']})")
    table.add_row("size", f"{m['size_fp32_mb']:.1f} MB -> {m['size_mb']:.1f} MB ({m['size_ratio']:.2f}x)")
    if "accuracy" in m:
        table.add_row("accuracy", f"fp32 {m['accuracy_fp32']:.4f} -> {m['accuracy']:.4f} (drop {m['drop'] * 100:+.2f} pt)"
                      + (f", budget {m['max_drop'] * 100:.2f} pt {'met' if m['budget_met'] else 'NOT met'}" if "max_drop" in m else ""))
    table.add_row("excluded nodes", str(m["excluded_nodes"]))
    placed = m["providers"].get("nodes_per_provider")
    if placed:
        table.add_row("nodes per provider", ", ".join(f"{k}: {v}" for k, v in placed.items())
                      + f" (on {m['providers']['measured_on']})")
    table.add_row("time", f"{m['seconds']:.1f} s")
    console.print(table)
    if "sensitivity" in m:
        sens = Table("rank", "unit", "nodes", "score KL", "score pt", "drop pt", "SQNR dB",
                     title=f"sensitivity ({m['sensitivity_method']}: "
                     + ("everything quantized except the unit; score = error removed by keeping it fp32"
                        if m["sensitivity_method"] == "all_but_one" else "only the unit quantized; score = its error") + ")")
        for r in m["sensitivity"]:
            sens.add_row(str(r["rank"]), r["unit"], str(r["nodes"]), f"{r['score']:.1e}", f"{r['score_drop'] * 100:+.2f}",
                         f"{r['drop'] * 100:+.2f}", f"{r['sqnr_db']:.1f}")
        console.print(sens)
        search = Table("step", "kept fp32", "accuracy", "drop pt", "SQNR dB", title="budget search")
        for st in m["search"]:
            search.add_row(str(st["step"]), st["kept_fp32"] or "-", f"{st['accuracy']:.4f}", f"{st['drop'] * 100:+.2f}",
                           f"{st['sqnr_db']:.1f}")
        console.print(search)
    if m["excluded"]:
        excl = Table("node", "why", title="kept in fp32")
        for e in m["excluded"]:
            excl.add_row(e["node"], e["reason"])
        console.print(excl)
    for w in m["warnings"]:
        err_console.print(f"[yellow]warning:[/] {w}")


def _render_causal(m: dict, output: Path) -> None:
    from rich.table import Table

    s = m["settings"]
    table = Table("", "value", title=f"quantized -> {output}")
    table.add_row("mode", f"{s['mode']} ({s['format']}), lm_head {s['head']}")
    if s["mode"] in ("int4", "weight_only"):
        table.add_row("weights", f"{s['bits']}-bit {s['algorithm']}, block {s['block_size']}, "
                      f"{'symmetric' if s['symmetric'] else 'asymmetric'}, accuracy_level {s['accuracy_level']}, "
                      f"lm_head {s['head_bits']}-bit")
    else:
        table.add_row("types", f"weights qint8, per-channel {s['per_channel']}, reduce_range {s['reduce_range']}")
    table.add_row("quantized MatMuls", f"{m['quantized_matmuls']} (float: {m['float_matmuls']})")
    table.add_row("size", f"{m['size_fp32_mb']:.1f} MB -> {m['size_mb']:.1f} MB ({m['size_ratio']:.2f}x)")
    if "perplexity" in m:
        table.add_row("perplexity", f"fp32 {m['perplexity_fp32']:.3f} -> {m['perplexity']:.3f} (KL {m['kl']:.4f}); "
                      f"budget {m['budget_metric']} {m['max_drop']} {'met' if m['budget_met'] else 'NOT met'}")
    export = m.get("export") or {}
    if export.get("reused"):
        table.add_row("export", f"reused ({export['folder']}): the same weights were exported before")
    elif export.get("exported"):
        table.add_row("export", f"{export.get('graph', '')} graph in {export.get('seconds', 0):.0f} s, kept in "
                      f"{export['folder']} for the next run")
    table.add_row("time", f"{m['seconds']:.1f} s")
    console.print(table)
    if m.get("verdict"):
        _render_verdict(m["verdict"])
    if m.get("sensitivity"):
        sens = Table("rank", "unit", "perplexity", "ppl +%", "KL", title="sensitivity (only the unit quantized)")
        for r in m["sensitivity"]:
            sens.add_row(str(r["rank"]), r["unit"], f"{r['perplexity']:.3f}", f"{100 * r['ppl_increase']:+.2f}", f"{r['kl']:.2e}")
        console.print(sens)
    for w in m["warnings"]:
        err_console.print(f"[yellow]warning:[/] {w}")


def _render_verdict(v: dict) -> None:
    """The quantized decoder against the unquantized one, in one short table."""
    from rich.table import Table

    from compress.report.intervals import number

    table = Table("check", "unquantized", "quantized", "verdict",
                  title=f"verdict on {v['text']} ({v['blocks']} blocks of {v['block_size']} tokens)")
    change = 100 * v["ppl_increase"]
    table.add_row("perplexity", number(v["perplexity_fp32"], "{:.3f}"), number(v["perplexity"], "{:.3f}"),
                  number(change, "{:+.2f}", "%"))
    table.add_row("KL to unquantized (nats/token)", "0", number(v["kl"], "{:.4f}"),
                  "close" if v["kl"] < 0.02 else "drifts" if v["kl"] < 0.1 else "far")
    table.add_row("next-token top-1 agreement", "100%", f"{100 * v['top1_agreement']:.1f}%", "")
    table.add_row(f"greedy agreement ({v['greedy_prompts']} prompts x {v['greedy_new_tokens']} tokens)", "100%",
                  f"{100 * v['greedy_agreement']:.1f}%", "mean common prefix")
    table.add_row("size MB", number(v["size_fp32_mb"], "{:.1f}"), number(v["size_mb"], "{:.1f}"),
                  f"{v['size_fp32_mb'] / max(v['size_mb'], 1e-9):.2f}x smaller")
    if v.get("export"):
        e = v["export"]
        diff = f"{e['max_abs_diff']:.1e}" if e.get("max_abs_diff") is not None else "-"
        table.add_row("export parity vs PyTorch", f"{e['graph']} graph", f"max |Δlogits| {diff}",
                      f"greedy identical {e['greedy_identical']}")
    console.print(table)
