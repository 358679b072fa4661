"""The decode-step profile: ONNX Runtime's profiler summed per operator type."""

from __future__ import annotations


def test_decode_profile_sums_the_fused_graphs_operators(llama_onnx):
    from compress.evaluation.latency.profile import decode_profile

    p = decode_profile(llama_onnx.model, prompt_len=16, steps=4, threads=1)
    ops = {r["op"]: r for r in p["decode_ops"]}
    # the fused graph's decode step: 2 GroupQueryAttention nodes, the weight MatMuls, shares that add up to one
    assert ops["GroupQueryAttention"]["nodes"] == 2 and "MatMul" in ops
    assert abs(sum(r["share"] for r in p["decode_ops"]) - 1) < 0.01
    assert 0 < p["decode_kernel_ms"] <= p["decode_wall_ms"] and p["prefill_kernel_ms"] > 0


def test_bench_profile_prints_the_operators_of_a_decode_step(cli, llama_onnx, tmp_path):
    import json

    folder = llama_onnx.model.folder
    r = cli(["bench", folder, "-b", "1", "-s", "8", "--new-tokens", "4", "--rounds", "1", "--profile",
             "--json", tmp_path / "b.json"])
    assert r.exit_code == 0, r.output
    assert "GroupQueryAttention" in r.output
    ops = {o["op"] for o in json.loads((tmp_path / "b.json").read_text())["profiles"][str(folder)]["decode_ops"]}
    assert "GroupQueryAttention" in ops
