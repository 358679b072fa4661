"""Special tokens from a GGUF's metadata (`compress.models.gguf`), on tiny metadata-only GGUF files written with
`gguf.GGUFWriter`: read, applied to a tokenizer that says otherwise (what transformers' conversion does), any model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from compress.core.errors import CompressError

pytest.importorskip("gguf")

WORDS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "hello", "world"]


def _write_gguf(path, **meta):
    """A GGUF with only tokenizer metadata (no tensor): `WORDS` as the vocabulary plus the given ids and flags."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(WORDS)
    for key in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        if key in meta:
            getattr(w, f"add_{key}")(meta[key])
    for key in ("add_bos_token", "add_eos_token"):
        if key in meta:
            getattr(w, f"add_{key}")(meta[key])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tokenizer(kind: str, words=WORDS):
    """The tokenizer transformers builds from SmolLM2's GGUF, in miniature: EOS = BOS = <|im_start|>, BOS added."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "llama":
        return LlamaTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_start|>",
                                  unk_token=words[0], add_bos_token=True, legacy=True)
    tok.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_start|>",
                                   unk_token=words[0])


def test_reads_the_special_tokens(tmp_path):
    from compress.models.gguf import gguf_special_tokens

    # setup: SmolLM2's metadata (EOS <|im_end|>, BOS <|im_start|> not added, PAD = EOS, UNK <|endoftext|>)
    path = _write_gguf(tmp_path / "m.gguf", bos_token_id=1, eos_token_id=2, unk_token_id=0, pad_token_id=2,
                       add_bos_token=False)
    # execute
    meta = gguf_special_tokens(path)
    # assert
    assert meta == {"bos_token_id": 1, "bos_token": "<|im_start|>", "eos_token_id": 2, "eos_token": "<|im_end|>",
                    "unk_token_id": 0, "unk_token": "<|endoftext|>", "pad_token_id": 2, "pad_token": "<|im_end|>",
                    "add_bos_token": False, "add_eos_token": None}
    bare = gguf_special_tokens(_write_gguf(tmp_path / "bare.gguf"))
    assert set(bare.values()) == {None}  # a file that says nothing: every entry None


@pytest.mark.parametrize("kind", ["llama", "plain"])
def test_the_tokenizer_follows_the_file(tmp_path, kind):
    from compress.data.causal import document_separator
    from compress.models.gguf import apply_gguf_special_tokens, gguf_special_tokens

    # setup
    meta = gguf_special_tokens(_write_gguf(tmp_path / "m.gguf", bos_token_id=1, eos_token_id=2, pad_token_id=2,
                                           add_bos_token=False))
    tokenizer = _tokenizer(kind)
    assert tokenizer.eos_token_id == 1 and tokenizer("hello world")["input_ids"] == [1, 3, 4]  # the wrong start
    model = SimpleNamespace(config=SimpleNamespace(bos_token_id=None, eos_token_id=1, pad_token_id=None),
                            generation_config=SimpleNamespace(bos_token_id=None, eos_token_id=1, pad_token_id=None))
    # execute
    apply_gguf_special_tokens(tokenizer, meta, model=model)
    # assert: EOS / PAD ids from the file, no BOS added, and the model's configs agree
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("<|im_end|>", 2, 2)
    assert tokenizer.bos_token_id == 1 and tokenizer("hello world")["input_ids"] == [3, 4]
    assert document_separator(tokenizer) == 0  # <|endoftext|>, never the chat-role token
    for cfg in (model.config, model.generation_config):
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 2)


def test_add_bos_and_eos_when_the_file_says_so(tmp_path):
    from compress.models.gguf import apply_gguf_special_tokens, gguf_special_tokens

    meta = gguf_special_tokens(_write_gguf(tmp_path / "m.gguf", bos_token_id=0, eos_token_id=2, add_bos_token=True,
                                           add_eos_token=True))
    for kind in ("llama", "plain"):
        tokenizer = apply_gguf_special_tokens(_tokenizer(kind), meta)
        assert tokenizer("hello")["input_ids"] == [0, 3, 2]
    # a flag the file does not state is left as the tokenizer has it
    silent = gguf_special_tokens(_write_gguf(tmp_path / "s.gguf", eos_token_id=2))
    assert apply_gguf_special_tokens(_tokenizer("plain"), silent)("hello")["input_ids"] == [1, 3]


def test_a_tokenizer_from_another_file_is_refused(tmp_path):
    from compress.models.gguf import apply_gguf_special_tokens, gguf_special_tokens

    meta = gguf_special_tokens(_write_gguf(tmp_path / "m.gguf", eos_token_id=2))
    with pytest.raises(CompressError, match="same GGUF file"):
        apply_gguf_special_tokens(_tokenizer("plain", words=WORDS[1:] + WORDS[:1]), meta)
    with pytest.raises(CompressError, match="not found"):
        gguf_special_tokens(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(CompressError, match="not a readable GGUF"):
        gguf_special_tokens(tmp_path / "junk.gguf")
