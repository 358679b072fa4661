"""Peer runtimes in a recipe: the teacher converted once per peer, scored on the same documents through the peer's
own log-probabilities, timed in the same bench, reported as rows of their own and never picked as the best stage.
The runtime is a fake backed by the teacher itself (so its KL to the teacher is 0), so this runs without the extras;
tests/runtime/test_peers.py runs the real runtimes when installed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

RTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rte"


class TeacherPeer:
    """A 'runtime' that is the tiny teacher in PyTorch: log-probs from it, fixed 5 ms per decoded token."""

    def __init__(self, path, threads=2):
        from compress.models.load import load_model

        self.model, self.tokens = load_model("tiny:llama"), []

    def prefill(self, prompt_ids, max_new_tokens=128):
        time.sleep(0.01)
        return 0.01

    def decode(self, n):
        time.sleep(0.005 * n)
        return 0.005 * n

    def log_probs(self, ids):
        import torch

        with torch.no_grad():
            logits = self.model.module(input_ids=torch.tensor([list(ids)])).logits[0, :-1]
        return torch.log_softmax(logits.float(), -1).numpy()

    def info(self):
        return {"runtime": "fake"}

    def close(self):
        pass


@pytest.mark.skipif(not RTE.exists(), reason="../shared/data is not beside the checkout")
def test_a_recipe_peer_is_built_once_scored_and_timed(tmp_path, monkeypatch):
    import yaml

    import compress.pipeline.peers as pipeline_peers
    import compress.runtime.peers as peers
    from compress.pipeline.recipe import parse_recipe
    from compress.pipeline.runner import run
    from compress.report import write

    # setup: the tiny decoder recipe with one llama.cpp peer; conversion and runtime replaced by fakes
    builds = []

    def fake_build(spec, hf, folder):
        builds.append(spec.name)
        folder.mkdir(parents=True)
        (folder / "model.gguf").write_bytes(b"GGUF" + bytes(1000))
        (folder / "done.json").write_text("{}")

    monkeypatch.setattr(pipeline_peers, "_build", fake_build)
    monkeypatch.setattr(peers, "require", lambda kind: None)
    monkeypatch.setattr(peers, "open_peer", lambda kind, path, threads=2: TeacherPeer(path, threads))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    data = yaml.safe_load(Path("tests/recipes/tiny-llama.yaml").read_text())
    data["stages"] = data["stages"][:1]
    data["baselines"] = []
    data["eval"].update({"peers": [{"name": "llama.cpp-q8_0", "runtime": "llamacpp", "precision": "Q8_0"}],
                         "tasks": []})
    data["eval"]["latency"].update({"isolate": False, "busy": "ignore"})
    recipe = parse_recipe(data)
    # execute
    results = run(recipe, runs_dir=tmp_path / "runs", progress=False)
    again = run(recipe, runs_dir=tmp_path / "runs", progress=False)
    built = write(results, tmp_path / "report").results
    # assert: one build for two runs; the peer row scores the teacher's own log-probs (same perplexity, KL 0),
    # its bench row is its own loop (200 tok/s), and it is reported but never the best stage
    assert builds == ["llama.cpp-q8_0"]
    rows = {s["name"]: s for s in built["stages"]}
    peer, teacher = rows["llama.cpp-q8_0"], rows["teacher"]
    assert peer["is_peer"] and peer["backend"] == "llama.cpp" and peer["pass"] == "peer"
    for name in ("rte", "sst2"):
        assert peer["metrics"]["domains"][name]["perplexity"] == pytest.approx(
            teacher["metrics"]["domains"][name]["perplexity"], rel=1e-4)
    assert peer["agreement"]["kl"] == pytest.approx(0, abs=1e-6)
    assert peer["decode_tokens_per_s"] == pytest.approx(200, rel=0.1)
    assert built["summary"]["best"] != "llama.cpp-q8_0"
    assert [s["perplexity"] for s in again["stages"]] == [s["perplexity"] for s in results["stages"]]
    assert np.isfinite(peer["size_mb"])
