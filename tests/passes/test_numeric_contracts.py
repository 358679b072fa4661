"""Numeric contracts of the lossy passes: how far the logits move (relative error ||z' - z|| / ||z||, i.e.
SQNR = -20 log10 of it) at a lossy setting, on fixed inputs and seeded models.

Each bound comes from a measurement (2026-12-02, torch 2.13.0 CPU, `tests/architecture_matrix.py` helpers):
the upper bound is the measured value x1.5, so a change that makes a pass damage the model more fails while
float noise across machines does not; the lower bound (measured / 3) makes sure the setting really is lossy,
so a pass that silently did nothing fails too.
"""

from __future__ import annotations

import pytest
from architecture_matrix import _pass, examples, logits, make_model, rel_error

pytestmark = pytest.mark.usefixtures("one_thread")

# (model, pass, options, measured relative logit error)
CONTRACTS = [
    # tiny BERT on twelve fixed sentences: LayerNorm after every block keeps its logits stable
    ("bert", "prune_magnitude", {"sparsity": 0.5}, 0.0141),  # 37.0 dB
    ("bert", "prune_structured", {"sparsity": 0.5, "unit": "neurons"}, 0.0103),  # 39.7 dB
    ("bert", "prune_structured", {"sparsity": 0.5, "unit": "heads"}, 0.0112),  # 39.0 dB
    ("bert", "factorize", {"rank_ratio": 0.5}, 0.0275),  # 31.2 dB
    # digits CNN on 64 fixed test images
    ("tiny:cnn", "prune_magnitude", {"sparsity": 0.5}, 0.0667),  # 23.5 dB
    ("tiny:cnn", "prune_structured", {"sparsity": 0.5, "unit": "channels"}, 0.1121),  # 19.0 dB
    ("tiny:cnn", "factorize", {"rank_ratio": 0.5}, 0.0646),  # 23.8 dB
    # the user's residual net (BatchNorm, identity adds) through the dependency graph
    ("user-residual", "prune_magnitude", {"sparsity": 0.5}, 0.1755),  # 15.1 dB
    ("user-residual", "prune_structured", {"sparsity": 0.5, "unit": "channels"}, 0.3443),  # 9.3 dB
    ("user-residual", "factorize", {"rank_ratio": 0.5}, 0.1453),  # 16.8 dB
]


def _model(name, tmp_path):
    from compress.data.examples import load_examples
    from compress.models.builders import build_tiny

    if name == "tiny:cnn":
        return build_tiny("cnn"), load_examples("builtin:digits", split="test", limit=64)
    model = make_model(name, tmp_path)
    return model, examples(model)


@pytest.mark.parametrize(("name", "pass_name", "options", "measured"), CONTRACTS,
                         ids=[f"{c[0]}-{c[1]}-{'-'.join(map(str, c[2].values()))}" for c in CONTRACTS])
def test_logits_move_within_the_measured_bound(name, pass_name, options, measured, tmp_path):
    # setup
    model, data = _model(name, tmp_path)
    before = logits(model, data)
    # execute
    after = logits(_pass(pass_name, model, tmp_path, **options).model, data)
    # assert
    err = rel_error(before, after)
    assert measured / 3 <= err <= measured * 1.5, f"relative logit error {err:.4f} (measured {measured})"
