"""`compress bench`: the project's latency protocol over one or more models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import NumLabelsOpt, TaskOpt, app, console, json_destination, pass_config, write_json


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(help="Models to time (PyTorch and/or ONNX), interleaved.")],
    batch_size: Annotated[list[int], typer.Option("--batch-size", "-b", min=1, help="Batch sizes (repeat).")] = [1, 8],
    seq_len: Annotated[list[int], typer.Option("--seq-len", "-s", min=2, help="Sequence lengths (repeat; causal LMs: prompt lengths).")] = [128],
    device: Annotated[list[str], typer.Option(help="cpu and/or cuda (cuda skipped without a GPU).")] = ["cpu"],
    threads: Annotated[int | None, typer.Option(min=1, help="Threads (default: physical cores).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs per shape.")] = 10,
    iters: Annotated[int, typer.Option(min=1, help="Timed runs per shape.")] = 60,
    rounds: Annotated[int, typer.Option(min=1, help="Round-robin rounds across models.")] = 3,
    isolate: Annotated[bool, typer.Option(help="One worker process per model (recommended).")] = True,
    new_tokens: Annotated[int, typer.Option(min=1, help="Causal LMs: greedy tokens decoded after each prompt (-s = prompt length).")] = 32,
    profile: Annotated[bool, typer.Option("--profile", help="Causal LMs in ONNX: also profile one decode step (ONNX Runtime's profiler, time per operator type; after the timing, so it never perturbs it).")] = False,
    decoder_loop: Annotated[str, typer.Option(help="Causal LMs in ONNX: auto (onnxruntime-genai's Generator for fused folders on CPU at batch 1, else compress's runner), generator or runner.")] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results and environment here ('-': to stdout, the tables then go to stderr).")] = None,
    task: TaskOpt = None, num_labels: NumLabelsOpt = None,
) -> None:
    """Time MODELS: warm-up, then p50/p90/p99 and throughput per batch size x sequence length (causal LMs: prefill,
    time to first token and decode tokens/s).

    Example: compress bench runs/teacher-sst2 runs/student-int8/model.onnx -b 1 -b 8 -s 128 --json bench.json
    """
    from rich.table import Table

    from compress.cli.progress import progress
    from compress.core.errors import CompressError
    from compress.evaluation.latency.bench import BenchSpec
    from compress.evaluation.latency.bench import bench as run_bench

    json_destination(json_out, models)
    bad = [d for d in device if d not in ("cpu", "cuda")]
    if bad:
        raise CompressError(f"unknown device '{bad[0]}'", "use --device cpu or --device cuda")
    spec = pass_config(BenchSpec, batch_sizes=batch_size, seq_lens=seq_len, devices=device, threads=threads, warmup=warmup,
                     iters=iters, rounds=rounds, isolate=isolate, new_tokens=new_tokens, decoder_loop=decoder_loop)
    load_kwargs = {k: v for k, v in {"task": task, "num_labels": num_labels}.items() if v is not None}
    with progress(console) as on_progress:
        # The first line comes with the first timed slice: a model that fails to load in its worker (before any
        # slice) leaves the one-line error alone.
        result = run_bench(models, spec, load_kwargs=load_kwargs,
                           on_progress=lambda done, total: on_progress("timing", done, total))
    env = result["environment"]
    console.print(f"[dim]{env['cpu']} | flags {','.join(env['cpu_flags']) or '-'} | threads {env['threads']} | "
                  + " ".join(f"{k} {v}" for k, v in env["versions"].items()) + (f" | GPU {env['gpu']}" if "gpu" in env else "") + "[/]")
    causal = [r for r in result["results"] if "decode_tokens_per_s" in r]
    plain = [r for r in result["results"] if "decode_tokens_per_s" not in r]
    if plain:
        table = Table("model", "backend", "device", "provider nodes", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "samples/s")
        for r in plain:
            table.add_row(r["model"], r["backend"], r["device"], _nodes(r), str(r["batch_size"]), str(r["seq_len"]),
                          f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['throughput_per_s']:.1f}")
        console.print(table)
    if causal:
        table = Table("model", "backend", "device", "provider nodes", "batch", "prompt", "prefill tok/s", "TTFT ms",
                      "decode tok/s", "ms/token p50", "p90", "peak RSS MB",
                      title=f"causal LM: prefill of the prompt, then {causal[0]['new_tokens']} greedy tokens with the KV cache")
        for r in causal:
            table.add_row(r["model"], r["backend"], r["device"], _nodes(r), str(r["batch_size"]), str(r["seq_len"]),
                          f"{r['prefill_tokens_per_s']:.0f}", f"{r['ttft_ms']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
                          f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r.get('peak_rss_mb', 0):.0f}")
        console.print(table)
    for r in result["results"]:
        if "warning" in r:
            console.print(f"[yellow]warning[/]: {r['model']}: {r['warning']}")
    if profile:
        result["profiles"] = _profiles(models, spec)
    write_json(json_out, result)


def _nodes(row: dict) -> str:
    return ", ".join(f"{k.replace('ExecutionProvider', '')}:{v}" for k, v in row["nodes_per_provider"].items()) or "-"


def _profiles(models: list[str], spec) -> dict:
    """Per ONNX decoder: where one decode step spends its time, as a table and in the JSON."""
    from rich.table import Table

    from compress.evaluation.latency.profile import decode_profile
    from compress.models.causal import is_causal
    from compress.models.load import load_model

    profiles = {}
    for source in models:
        model = load_model(source)
        if model.kind != "onnx" or not is_causal(model):
            continue
        p = decode_profile(model, prompt_len=spec.seq_lens[0], steps=spec.new_tokens, threads=spec.threads or 2)
        profiles[source] = p
        table = Table("operator", "nodes", "ms per step", "share",
                      title=f"{source}: one decode step after {p['prompt_len']} tokens, kernels "
                            f"{p['decode_kernel_ms']:.2f} of {p['decode_wall_ms']:.2f} ms (profiled)")
        for r in p["decode_ops"][:8]:
            table.add_row(r["op"], str(r["nodes"]), f"{r['ms']:.3f}", f"{100 * r['share']:.1f}%")
        console.print(table)
    return profiles
