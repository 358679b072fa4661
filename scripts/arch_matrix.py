"""Run the architecture x pass matrix (the cells of `tests/test_architectures.py`) and print the README's
supported-architecture table as markdown.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/arch_matrix.py            # ~1 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/arch_matrix.py --notes    # and a line per cell with what it did

A cell is "✓" when the pass ran, kept its promise and the saved model reloaded without pickle with the same
outputs; "refused" when the pass cannot handle the architecture and says so in one line (the reason is given);
"✗" when it failed (the test fails too).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from architecture_matrix import ARCHS, LABELS, PASSES, STRUCTURED_UNIT, run_cell  # noqa: E402


def _ok(arch: str, pass_name: str) -> str:
    """A passed cell, with what it did where architectures differ."""
    layered = arch not in ("resnet", "convnext", "user-residual")
    if pass_name == "distill":
        if arch == "albert":
            return "✓ student: 1 of 2 passes of the shared layer"
        return "✓ student: 1 of 2 layers" if layered else "✓ given student (no layers to cut)"
    if pass_name == "prune_structured":
        unit = STRUCTURED_UNIT.get(arch, "neurons")
        return "✓ FFN neurons of the shared layer" if arch == "albert" else f"✓ {unit}"
    if pass_name == "prune_heads":
        return "✓ shared layer; from_pretrained" if arch == "albert" else "✓ from_pretrained reloads"
    return "✓"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", action="store_true", help="Also print what each cell did.")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    results, failed = {}, 0
    for arch in ARCHS:
        for pass_name in PASSES:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    note = run_cell(arch, pass_name, Path(tmp))
                    mark = f"refused ({note.removeprefix('refused: ')})" if note.startswith("refused") else _ok(arch, pass_name)
                except Exception as e:  # noqa: BLE001  a failed cell is reported, the others still run
                    note, mark, failed = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", "✗", failed + 1
            results[arch, pass_name] = (mark, note)
    print("| architecture | " + " | ".join(PASSES) + " |")
    print("|---|" + "---|" * len(PASSES))
    for arch in ARCHS:
        print(f"| {LABELS[arch]} | " + " | ".join(results[arch, p][0] for p in PASSES) + " |")
    if args.notes:
        print()
        for (arch, pass_name), (_, note) in results.items():
            print(f"- {arch} / {pass_name}: {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
