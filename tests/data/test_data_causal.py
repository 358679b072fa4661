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


def _word_tokenizer(words, *, bos=None, eos=None, add_bos=False):
    """A word-level fast tokenizer over `words` (ids in order), adding `bos` to texts when asked."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, words.index(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=words[0])


def test_document_separator_given_or_inferred(llama):
    from compress.data.causal import document_separator

    # the tiny decoder's vocabulary has <|endoftext|> (id 0): the pretraining separator wins
    assert document_separator(llama.tokenizer) == 0
    assert document_separator(llama.tokenizer, "<|endoftext|>") == 0
    assert document_separator(llama.tokenizer, "a") == llama.tokenizer.get_vocab()["a"]
    with pytest.raises(CompressError, match="not a token of the model's vocabulary"):
        document_separator(llama.tokenizer, "<|no such token|>")
    words = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|endoftext|>", "hello", "world"]
    # <|endoftext|> over a chat-role EOS (what the converted SmolLM2 tokenizer said)
    assert document_separator(_word_tokenizer(words, bos="<s>", eos="<|im_start|>")) == 4
    rest = [w for w in words if w != "<|endoftext|>"]
    assert document_separator(_word_tokenizer(rest, bos="<s>", eos="</s>", add_bos=True)) == 1  # BOS when added
    assert document_separator(_word_tokenizer(rest, bos="<s>", eos="</s>")) == 2  # else EOS
    with pytest.raises(CompressError, match="pass a separator token") as e:
        document_separator(_word_tokenizer(rest))
    assert "\n" not in str(e.value)


def test_pack_blocks_joins_documents_with_the_separator():
    from compress.data.causal import pack_blocks

    words = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|endoftext|>", "hello", "world"]
    tok = _word_tokenizer(words, bos="<s>", eos="<|im_start|>", add_bos=True)
    texts = ["hello world", "world", "hello hello"]
    # default: <|endoftext|> (4), not the EOS (3), and no BOS inside blocks
    assert pack_blocks(tok, texts, 4).flatten().tolist() == [5, 6, 4, 6, 4, 5, 5, 4]
    assert pack_blocks(tok, texts, 3, 2, separator=2).flatten().tolist() == [5, 6, 2, 6, 2, 5]


def test_deduplicate_drops_eval_documents_seen_in_training():
    from compress.data.causal import deduplicate

    train = ["The cat sat on the mat.", "  A   Dog\tbarked. "]
    eval_texts = ["the CAT sat on  the mat.", "A dog barked.", "A dog barked!", "Something new.", "a dog\nbarked."]
    kept, dropped = deduplicate(eval_texts, train)
    assert kept == ["A dog barked!", "Something new."]
    assert dropped == ["the CAT sat on  the mat.", "A dog barked.", "a dog\nbarked."]
    assert deduplicate(eval_texts, []) == (eval_texts, [])
