"""`compress generate`: try a causal LM, PyTorch or an ONNX folder from `compress export` / `quantize`, on one
prompt; the text streams to stdout, the summary goes to stderr."""

from __future__ import annotations

from typing import Annotated

import typer

from compress.cli.app import ModelArg, SeedOpt, TrustRemoteCodeOpt, app, err_console, load_model_from_options


@app.command("generate")
def generate(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="The text to continue, or the question for an instruct model.")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate (fewer when the context fills).")] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy decoding; above 0 samples.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(min=1, help="Sample among the K most likely tokens only.")] = None,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Sample from the most likely tokens "
                                                "holding this probability mass (nucleus).")] = None,
    seed: SeedOpt = 0,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Send the prompt through the chat template "
                                              "(default: when the tokenizer has one).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (default: the runtime's own).")] = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Generate text from PROMPT with MODEL (a causal LM: PyTorch, or ONNX with the KV cache).

    Example: compress generate smollm2 "What is the capital of France?"
    """
    from compress.runtime.generate import check_prompt

    check_prompt(prompt)  # before loading a model
    loaded = load_model_from_options(model, trust_remote_code=trust_remote_code)
    if threads is not None and loaded.kind == "torch":
        import torch

        torch.set_num_threads(threads)
    from compress.runtime.causal import CausalRunner
    from compress.runtime.generate import generate as run_generate

    result = run_generate(CausalRunner(loaded, threads=threads), prompt, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, chat=chat,
                          on_token=lambda _, piece: typer.echo(piece, nl=False))
    typer.echo()
    rate = f"{result.tokens_per_second:.1f} tok/s" if result.tokens_per_second else "- tok/s"
    err_console.print(f"[dim]{len(result.token_ids)} tokens ({result.stop_reason}) | prompt {result.prompt_tokens} "
                      f"tokens | TTFT {result.ttft_seconds * 1000:.0f} ms | {rate} decode[/dim]")
