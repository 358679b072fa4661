"""Models built from code: registered builders (digits-cnn, mlp) and seeded tiny models for tests."""

from __future__ import annotations

from pathlib import Path

from compress.core.errors import CompressError
from compress.core.registry import Registry
from compress.models.artifacts import CAUSAL_TASK, TorchModel

# Builders rebuild plain modules by name (no pickle); surgeries (compress.models.surgery) re-apply structural edits.
BUILDERS = Registry("builder", "register one with compress.models.builders.register_builder")


register_builder = BUILDERS.register  # `@register_builder(name)` over `fn(**kwargs) -> nn.Module`


@register_builder("digits-cnn")
def build_digits_cnn(num_classes: int = 10, width: int = 32, in_channels: int = 1, hidden: int = 64):
    """A small CNN for 8x8 images (sklearn digits): conv-conv-pool-fc-fc."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),  # (B, 1, 8, 8) -> (B, w, 8, 8)
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),  # -> (B, 2w, 8, 8)
        nn.MaxPool2d(2),  # -> (B, 2w, 4, 4)
        nn.Flatten(),
        nn.Linear(2 * width * 16, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@register_builder("mlp")
def build_mlp(in_features: int = 64, hidden: int = 64, num_classes: int = 10, depth: int = 2):
    """A plain MLP on flattened inputs."""
    from torch import nn

    layers: list = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_tiny(name: str, *, task: str | None = None, num_labels: int | None = None, seed: int = 0) -> TorchModel:
    """Small deterministic config-built models for tests: `bert` (text), `cnn` and `mlp` (digits)."""
    import torch

    torch.manual_seed(seed)
    if name == "bert":
        from transformers import BertConfig, BertForSequenceClassification, BertModel

        tokenizer = _tiny_tokenizer()
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=128, num_labels=num_labels or 2,
            attn_implementation="eager",
        )
        task = task or "text-classification"
        cls = BertModel if task == "feature-extraction" else BertForSequenceClassification
        return TorchModel(cls(config).eval(), task, tokenizer=tokenizer, source="tiny:bert")
    if name in ("cnn", "mlp"):
        builder = "digits-cnn" if name == "cnn" else "mlp"
        kwargs = {"num_classes": num_labels or 10}
        if name == "cnn":
            kwargs.update(width=8, hidden=32)
        return TorchModel(BUILDERS[builder](**kwargs).eval(), "image-classification", builder=builder,
                          builder_kwargs=kwargs, source=f"tiny:{name}")
    raise CompressError(f"unknown tiny model '{name}'", "use tiny:bert, tiny:cnn or tiny:mlp")


def build_fresh(name: str, *, task: str | None = None, num_labels: int | None = None, seed: int = 0) -> TorchModel:
    """A new, randomly initialised (seeded) model from a registered builder; `num_labels` sets `num_classes`."""
    import torch

    if name not in BUILDERS:
        raise CompressError(f"unknown builder '{name}'", f"use one of: {', '.join(sorted(BUILDERS))}")
    kwargs = {"num_classes": num_labels} if num_labels else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = BUILDERS[name](**kwargs).eval()
    return TorchModel(module, task or "image-classification", builder=name, builder_kwargs=kwargs,
                      source=f"builder:{name}")


def _tiny_tokenizer():
    """A word-level BERT tokenizer over a small vocabulary, built in memory (no download)."""
    import tempfile

    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)]
    words += [str(d) for d in range(10)] + list(".,!?'-") + [f"##{chr(c)}" for c in range(97, 123)]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=128)


def byte_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style, 256 bytes + a few merges) built in memory: any text, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from compress.data.examples import sample_texts

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
    """`tiny:llama` (GQA: 4 query heads sharing 2 KV heads, tied embeddings, like SmolLM2; heads of 16 dimensions,
    the smallest ONNX Runtime's GroupQueryAttention takes, so the fused export applies) or `tiny:gpt2`."""
    import torch

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name == "llama":
            from transformers import LlamaConfig, LlamaForCausalLM

            config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
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
