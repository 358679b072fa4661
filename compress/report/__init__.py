"""Reports: `results.json` (the data), `report.md` and a self-contained `report.html`, written atomically."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Written:
    """What `write` produced."""

    folder: Path
    results: dict  # built results (with summary and verdicts)

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"

    @property
    def html(self) -> Path:
        return self.folder / "report.html"


def write(results: dict, out_dir: str | Path) -> Written:
    """Build (verdicts, Pareto front, summary) and write results.json, report.md, report.html and the plot PNGs
    into `out_dir`, replacing it as a whole: readers see the old report or the new one, never a mix."""
    from compress.report import build, html, plots, render

    out_dir = Path(out_dir)
    built = build.build(results)
    figures = plots.all_plots(built)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for stem, _title, png in figures:
        (tmp / f"{stem}.png").write_bytes(png)
    (tmp / "results.json").write_text(json.dumps(built, indent=2) + "\n")
    (tmp / "report.md").write_text(render.markdown(built, [(f"{stem}.png", title) for stem, title, _ in figures]))
    (tmp / "report.html").write_text(html.report_html(built, figures))
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return Written(out_dir, built)


def rebuild(folder: str | Path) -> Written:
    """Re-render a report folder from its results.json (e.g. after a renderer change)."""
    from compress.report.schema import load_results

    return write(load_results(folder), folder)
