"""Real architectures to tune and to test with, built from configs (no weights
are downloaded), usable as ``--model`` factories.  They need the optional
``transformers`` package (the ``aoe`` extra).

=================== ============================================= ==========================
factory             architecture                                  inputs
=================== ============================================= ==========================
``bert_encoder``    Hugging Face ``BertModel``: 4 layers, width   ``input_ids`` int64 8x128,
                    384, 6 heads, FFN 1536, vocab 30522           range 0..30522
``gpt2_decoder``    Hugging Face ``GPT2Model``: 4 layers, width   ``input_ids`` int64 8x128,
                    384, 6 heads, vocab 50257                     range 0..50257
``resnet18``        ResNet-18 (basic blocks 2-2-2-2, widths       ``pixel_values`` 8x3x224x224
                    64-512, 1000 classes: 11,689,512 parameters)
``bert_tiny``,      the same architectures, tiny (2 layers of     ``input_ids`` 2x16, range
``gpt2_tiny``,      width 32; a 2-stage ResNet of width 8-16), so  0..256; ``pixel_values``
``resnet_tiny``     tests stay fast                               2x3x32x32
=================== ============================================= ==========================

ResNet-18 is Hugging Face's ``ResNetForImageClassification`` with the
configuration of ``microsoft/resnet-18``: the same layers and parameter count as
torchvision's ``resnet18`` (torchvision's PyPI wheels are CUDA builds that do not
import beside a CPU-only torch, so it is not used here).

Dropout is off in every configuration: in scene train a candidate is checked
against the default on the same inputs, and dropout draws different masks in
each implementation.  KV caching is off in GPT-2 (its cache object is no
tensor output).  Weights come from a fixed seed, so every call returns the same
model.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["bert_encoder", "gpt2_decoder", "resnet18", "bert_tiny", "gpt2_tiny", "resnet_tiny",
           "REAL_MODELS"]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("these models need the optional transformers package "
                          "(pip install 'gdat[aoe]')") from None
    return transformers


def _bert(hidden: int, layers: int, heads: int, ffn: int, vocab: int, positions: int) -> torch.nn.Module:
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, vocab_size=vocab, max_position_embeddings=positions,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return tf.BertModel(cfg)


def _gpt2(hidden: int, layers: int, heads: int, vocab: int, positions: int) -> torch.nn.Module:
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=vocab,
                        n_positions=positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        use_cache=False, bos_token_id=0, eos_token_id=0)
    return tf.GPT2Model(cfg)


def _resnet(depths: list[int], widths: list[int], stem: int, labels: int) -> torch.nn.Module:
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.ResNetConfig(layer_type="basic", depths=depths, hidden_sizes=widths,
                          embedding_size=stem, num_labels=labels)
    return tf.ResNetForImageClassification(cfg)


def bert_encoder() -> torch.nn.Module:
    """BERT-style encoder, 4 layers of width 384 (input ``input_ids`` 8x128)."""
    return _bert(384, 4, 6, 1536, 30522, 512)


def gpt2_decoder() -> torch.nn.Module:
    """GPT-2-style decoder, 4 layers of width 384 (input ``input_ids`` 8x128)."""
    return _gpt2(384, 4, 6, 50257, 1024)


def resnet18() -> torch.nn.Module:
    """ResNet-18 with a 1000-class head (input ``pixel_values`` 8x3x224x224)."""
    return _resnet([2, 2, 2, 2], [64, 128, 256, 512], 64, 1000)


def bert_tiny() -> torch.nn.Module:
    """BERT, 2 layers of width 32 (input ``input_ids`` 2x16, ids below 256)."""
    return _bert(32, 2, 2, 64, 256, 64)


def gpt2_tiny() -> torch.nn.Module:
    """GPT-2, 2 layers of width 32 (input ``input_ids`` 2x16, ids below 256)."""
    return _gpt2(32, 2, 2, 256, 64)


def resnet_tiny() -> torch.nn.Module:
    """A 2-stage ResNet of basic blocks, widths 8 and 16 (input 2x3x32x32)."""
    return _resnet([1, 1], [8, 16], 8, 10)


#: name -> (factory, ``--input_shape``, ``--input_dtype``, ``--input_range``) at the
#: benchmark's realistic shapes.
REAL_MODELS: dict[str, tuple[Any, str, str | None, str | None]] = {
    "bert_encoder": (bert_encoder, "input_ids:8,128", "input_ids:int64", "input_ids:0,30522"),
    "gpt2_decoder": (gpt2_decoder, "input_ids:8,128", "input_ids:int64", "input_ids:0,50257"),
    "resnet18": (resnet18, "pixel_values:8,3,224,224", None, None),
}
