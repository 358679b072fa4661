"""The architecture coverage matrix: one test per (architecture, pass) on tiny config-built, seeded models.
Every cell runs the pass, checks its promise, saves and reloads from disk without pickle (see
`tests/architecture_matrix.py`); cells a pass cannot handle must refuse with a one-line CompressError naming the
architecture. `scripts/arch_matrix.py` prints the same matrix as the README's table.

torchvision is not part of the matrix: no torchvision wheel installs beside torch 2.13.0 here (pip resolves
only builds pinned to other torch versions), so its ResNet-18 is skipped; transformers' ResNet covers the family.
"""

from __future__ import annotations

import pytest
from architecture_matrix import ARCHS, PASSES, run_cell

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("arch", ARCHS)
def test_cell(arch, pass_name, tmp_path):
    note = run_cell(arch, pass_name, tmp_path)
    assert note
