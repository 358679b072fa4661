"""Progress of the long steps (export, quantize, eval, bench, run), and quiet third-party libraries.

`progress(console)` gives the library's callback shape, `on_progress(stage, done, total)`:
- in a terminal, one rich bar per stage with its elapsed time (transient: the results replace them);
- otherwise (CI logs, `| tee`, tests) plain lines `stage: done/total (elapsed s)`, at most one per stage every
  `every` seconds, plus the final line of each stage. A stage without a total (a spinner-only step) prints a start
  line and an end line (`stage: done (elapsed s)`) when it reaches `done == total` or when the block ends. The
  lines of the block's first `every` seconds are held back and dropped if the block fails in that time, so a bad
  input found early stays one `error:` line.
Plain lines go where the console goes: stdout with the results, or stderr under `--json -` (stdout then holds only
the JSON).

`quiet_third_party()` silences what transformers, huggingface_hub, datasets, optimum, torch.onnx and ONNX Runtime
print on their own (tqdm bars, advisory warnings, TracerWarnings, C++ log lines). The app callback calls it once as
a command starts unless `--verbose` or COMPRESS_VERBOSE=1; it never imports a heavy library itself (environment
variables reach the ones imported later, and the bench's worker processes), and `progress` applies it again to the
libraries imported since.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PLAIN_EVERY_S = 5.0  # at most one plain line per stage this often (CI logs stay short)

_quiet = False  # set by `quiet_third_party`; `progress` re-applies it to libraries imported in between


@dataclass
class _Stage:
    started: float
    done: int = 0
    total: int | None = None
    spinner: bool = False  # first seen without a total: start and end lines only
    printed_at: float = 0.0
    printed: tuple = ()  # the (done, total) of the last plain line
    finished: bool = False
    task: object = None  # the rich task id (terminal)
    detail: str = ""  # what the stage works on now (e.g. the model being evaluated)


class Progress:
    """The `on_progress(stage, done, total)` callback of `progress(console)`; see the module docstring."""

    def __init__(self, console, every: float = PLAIN_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.every = every
        self.clock = clock
        self.stages: dict[str, _Stage] = {}
        self.bars = None  # rich Progress, started at the first update (a pass's own live bar may come before)
        self.terminal = console.is_terminal
        self.opened = clock()
        self.held: list[str] | None = []  # plain lines of the first `every` seconds; None once they are out
        self.lock = threading.Lock()
        self.timer = None
        if not self.terminal:  # a step quiet for longer than `every` (a spinner) still shows its start line then
            self.timer = threading.Timer(every, self._flush)
            self.timer.daemon = True
            self.timer.start()

    def __call__(self, stage: str, done: int, total: int | None = None, *, detail: str = "") -> None:
        now = self.clock()
        st = self.stages.get(stage)
        if st is None:
            st = self.stages[stage] = _Stage(started=now, spinner=total is None)
        st.done, st.total, st.detail = done, total, detail
        st.finished = total is not None and done >= total
        if total is not None and not st.finished:  # a count arrived (the bench's first timed slice): a bar now
            st.spinner = False
        if self.terminal:
            self._bar(stage, st)
        elif not st.printed:  # the first line of a stage, always
            self._line(stage, st, now)
        elif st.finished or (not st.spinner and now - st.printed_at >= self.every):
            if (done, total) != st.printed:
                self._line(stage, st, now)

    def close(self, failed: bool = False) -> None:
        """End of the block: the last state of every stage (unless the command failed), then the bars go."""
        if self.bars is not None:
            for st in self.stages.values():
                if st.spinner and not failed:
                    self.bars.update(st.task, total=1, completed=1)
            self.bars.stop()
            self.bars = None
            return
        if self.timer is not None:
            self.timer.cancel()
        if failed:  # lines held back stay unsaid: the error is what the user needs
            with self.lock:
                self.held = None
            return
        now = self.clock()
        for stage, st in self.stages.items():
            if (st.done, st.total) != st.printed or (st.spinner and not st.finished):
                st.finished = True
                self._line(stage, st, now)
        self._flush()

    def _line(self, stage: str, st: _Stage, now: float) -> None:
        elapsed = now - st.started
        if st.spinner:
            text = f"{stage}: done ({elapsed:.1f} s)" if st.finished else f"{stage}: started"
        else:
            text = f"{stage}: {st.done}/{st.total if st.total is not None else '?'} ({elapsed:.1f} s)"
        if st.detail and not st.finished:
            text += f" {st.detail}"
        st.printed, st.printed_at = (st.done, st.total), now
        with self.lock:
            if self.held is not None and now - self.opened < self.every:
                self.held.append(text)
                return
        self._flush()
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _flush(self) -> None:
        with self.lock:
            held, self.held = self.held or [], None
        for text in held:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _bar(self, stage: str, st: _Stage) -> None:
        if self.bars is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True)
            self.bars.start()
        if st.task is None:
            st.task = self.bars.add_task(stage, total=st.total)
        self.bars.update(st.task, completed=st.done, total=st.total,
                         description=f"{stage} {st.detail}" if st.detail else stage)
        if all(s.finished for s in self.stages.values()):
            # Nothing left to draw: give the terminal back (a training loop's own live bar may follow).
            self.bars.stop()
            self.bars = None
            for s in self.stages.values():
                s.task = None


@contextlib.contextmanager
def progress(console, every: float = PLAIN_EVERY_S, clock: Callable[[], float] = time.monotonic) -> Iterator[Progress]:
    """`with progress(console) as on_progress: library_step(..., on_progress=on_progress)`."""
    if _quiet:
        quiet_third_party(load_ort=True)  # the libraries imported since the command started; ORT's log (0.15 s)
    bar = Progress(console, every, clock)
    try:
        yield bar
    except BaseException:
        bar.close(failed=True)
        raise
    bar.close()


# --- third-party output ------------------------------------------------------------------------------------------

QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",  # read when transformers is imported
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's tqdm bars, and transformers' (it asks the hub)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
# Where optimum / torch.onnx / ONNX Runtime warn from (TracerWarnings name the traced module: transformers').
QUIET_WARNING_MODULES = r"(optimum|onnx|onnxruntime|onnxscript|onnxruntime_genai|torch\.onnx|torch\.jit|transformers|huggingface_hub|datasets)(\.|$)"
QUIET_LOGGERS = ("optimum", "onnxruntime", "torch.onnx", "onnxscript", "huggingface_hub", "datasets")
ORT_ERROR = 3  # ONNX Runtime's C++ log severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def verbose_requested() -> bool:
    """COMPRESS_VERBOSE=1 (or true/yes) keeps every third-party message, like `--verbose`."""
    return os.environ.get("COMPRESS_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def quiet_third_party(load_ort: bool = False) -> None:
    """Silence third-party progress bars, warnings and log chatter (see the module docstring). Idempotent.
    `load_ort` imports ONNX Runtime to raise its C++ log severity (it has no environment variable for it)."""
    global _quiet
    _quiet = True
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", module=QUIET_WARNING_MODULES)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    mods = sys.modules
    if "torch" in mods:
        with contextlib.suppress(Exception):
            warnings.filterwarnings("ignore", category=mods["torch"].jit.TracerWarning)
    if "transformers" in mods:
        with contextlib.suppress(Exception):
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
    if "huggingface_hub" in mods:
        with contextlib.suppress(Exception):
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
    if "datasets" in mods:
        with contextlib.suppress(Exception):
            mods["datasets"].disable_progress_bars()
    if "optimum" in mods:
        with contextlib.suppress(Exception):
            from optimum.utils import logging as optimum_logging

            optimum_logging.set_verbosity_error()
    if load_ort or "onnxruntime" in mods:
        with contextlib.suppress(Exception):
            import onnxruntime

            onnxruntime.set_default_logger_severity(ORT_ERROR)
