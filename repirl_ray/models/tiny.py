"""The built-in world's tokenizer and tiny model, built offline in HF format (DESIGN.md s4).

A character-level vocabulary of 20 tokens (3 specials + the 17 characters of the arithmetic
world) and a Qwen2-style decoder. Both are saved with `save_pretrained`, so vLLM and
transformers load them like any hub checkpoint. For real text (GSM8K, MATH, HumanEval in
tests), a byte-level tokenizer: one token per UTF-8 byte, so any text round-trips.
"""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIALS = ["<pad>", "<s>", "</s>"]
WORLD_CHARS = "0123456789+-*=;#:"


def build_char_tokenizer(chars: str = WORLD_CHARS) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    # One token per character; decoding concatenates them back without spaces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # Every prompt starts with <s>, as with the hub models vLLM usually serves.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<pad>"
    )


# A minimal chat template, so that data.chat_template=true can be tested without a hub model.
BYTE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """3 specials + 256 byte tokens (byte b is token 3 + b; a byte-level BPE without merges): every UTF-8
    text encodes to one token per byte and decodes back to itself. The specials' own strings
    ("<pad>", "<s>", "</s>") in a text are read as the special tokens, as with any HF tokenizer."""
    # GPT-2's printable stand-in for each byte (what the ByteLevel pre-tokenizer emits); byte b is token 3 + b.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    stand_in = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [stand_in[b] for b in range(256)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token=None
    )
    out.chat_template = BYTE_CHAT_TEMPLATE
    return out


def build_tiny_qwen2(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 3,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_positions: int = 128,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)
