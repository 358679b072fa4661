"""The training loop's progress bar."""

from __future__ import annotations


class RichProgress:
    """A rich progress bar for `fit` events: step / total, loss, examples per second, eval accuracy.

    When the output is not a terminal (a log file), prints one line every ~5% of the steps instead."""

    def __init__(self, description: str = "training", tokens: bool = False):
        self.description = description
        self.tokens = tokens  # show tokens/s (language models) instead of examples/s
        self.progress = None
        self.task = None
        self.console = None
        self.every = 1

    def __call__(self, event: dict) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        kind = event["event"]
        if kind == "start":
            self.console = Console()
            self.every = max(1, event["total_steps"] // 20)
            if event.get("resumed_from_step"):
                self.console.print(f"resumed from step {event['resumed_from_step']}")
            if self.console.is_terminal:
                self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                         console=self.console)
                self.progress.start()
                self.task = self.progress.add_task(self.description, total=event["total_steps"],
                                                   completed=event["step"], info="")
        elif kind == "step":
            rate = (f"{event['tokens_per_s']:.0f} tok/s" if event.get("tokens_per_s") and self.tokens
                    else f"{event['examples_per_s']:.0f} ex/s")
            info = f"loss {event['loss']:.4f}  {rate}"
            if self.progress:
                self.progress.update(self.task, completed=event["step"], info=info)
            elif self.console and (event["step"] % self.every == 0 or event["step"] == event["total_steps"]):
                self.console.print(f"{self.description} step {event['step']}/{event['total_steps']}  {info}")
        elif kind == "eval" and self.console and "accuracy" in event:
            self.console.print(f"epoch {event['epoch']}: eval accuracy {event['accuracy']:.4f}")
        elif kind == "eval" and self.console and "perplexity" in event:
            self.console.print(f"epoch {event['epoch']}: held-out perplexity {event['perplexity']:.2f}")
        elif kind == "end" and self.progress:
            self.progress.stop()
            self.progress = None
