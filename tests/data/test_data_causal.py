"""Text for causal LMs on a tiny decoder's tokenizer: block packing, the hash split, .txt sources."""

from __future__ import annotations

import json

import pytest

from compress.core.errors import CompressError


def test_pack_blocks_keeps_every_token(llama):
    from compress.data.causal import pack_blocks

    texts = ["one two three", "four five", "six"]
    ids = [t for text in texts for t in llama.tokenizer(text, add_special_tokens=False)["input_ids"] + [0]]
    got = pack_blocks(llama.tokenizer, texts, 4)
    assert got.shape == (len(ids) // 4, 4)
    assert got.flatten().tolist() == ids[: got.size]  # texts joined with EOS (id 0), the partial tail dropped
    with pytest.raises(CompressError, match="fewer than one block"):
        pack_blocks(llama.tokenizer, ["hi"], 64)


def test_hash_split_is_deterministic_disjoint_and_order_free(tmp_path):
    from compress.data.causal import TextSource, load_texts

    rows = [{"text": f"sentence number {i} about something"} for i in range(200)]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train = load_texts(TextSource(str(path), part="train", heldout_fraction=0.2))
    held = load_texts(TextSource(str(path), part="heldout", heldout_fraction=0.2))
    assert not set(train) & set(held) and len(train) + len(held) == 200 and 20 <= len(held) <= 60
    path.write_text("\n".join(json.dumps(r) for r in reversed(rows)))
    assert set(load_texts(TextSource(str(path), part="heldout", heldout_fraction=0.2))) == set(held)


def test_txt_files_and_empty_text(tmp_path):
    from compress.data.causal import TextSource, load_texts

    txt = tmp_path / "a.txt"
    txt.write_text("First paragraph\nwraps here.\n\nSecond one.\n")
    assert load_texts(TextSource(str(txt))) == ["First paragraph wraps here.", "Second one."]
    txt.write_text("\n\n  \n")
    with pytest.raises(CompressError, match="no text in"):
        load_texts(TextSource(str(txt)))
