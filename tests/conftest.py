"""Shared fixtures: offline mode, tiny config-built models, the shared real datasets, CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (SST-2, emotion, RTE); tests that need it skip without it."""
    if not (SHARED_DATA / "sst2" / "dev.jsonl").exists():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA


@pytest.fixture
def tiny_bert():
    from compress.models.builders import build_tiny

    return build_tiny("bert")


@pytest.fixture
def tiny_cnn():
    from compress.models.builders import build_tiny

    return build_tiny("cnn")


@pytest.fixture
def text_examples():
    """Twelve short labelled sentences (real text, tiny)."""
    import numpy as np

    from compress.data.examples import Examples

    texts = ["good movie", "bad plot", "great acting", "awful script", "loved it", "hated it",
             "a fine film", "a dull mess", "wonderful", "terrible", "nice", "boring"]
    return Examples(texts=texts, labels=np.array([1, 0] * 6, dtype=np.int64), label_names=["negative", "positive"])


@pytest.fixture
def digits_examples():
    from compress.data.examples import load_examples

    return load_examples("builtin:digits", split="test", limit=64)


@pytest.fixture
def one_thread():
    """Tiny models train ~10x faster on one thread than on two busy cores (no OpenMP barrier spinning)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli():
    """Invoke the real CLI in-process: cli(["export", ...]) -> click Result."""
    from typer.testing import CliRunner

    from compress.cli.app import app

    runner = CliRunner()
    return lambda args: runner.invoke(app, [str(a) for a in args])


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- a tiny decoder, its KV-cache ONNX export and text blocks (shared by the causal tests) ---


@pytest.fixture(scope="session")
def llama():
    from compress.models.load import load_model

    return load_model("tiny:llama")


@pytest.fixture(scope="session")
def llama_onnx(llama, tmp_path_factory):
    from compress.export.causal import export_causal

    return export_causal(llama, tmp_path_factory.mktemp("x") / "onnx")


@pytest.fixture(scope="session")
def blocks(llama):
    from compress.data.causal import pack_blocks
    from compress.data.examples import sample_texts

    return pack_blocks(llama.tokenizer, sample_texts() * 6, 32, max_blocks=6)
