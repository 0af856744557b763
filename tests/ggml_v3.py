"""A tiny llama in the GGML v3 (``ggjt``) file layout llama-gpt's ``llama-2-*-chat.bin`` downloads use,
written from the format's specification (llama.cpp before GGUF, ``llama_file_saver``):

    uint32 magic 0x67676a74 ("ggjt"), uint32 version 3
    int32  n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype
    n_vocab x (uint32 length, the token's bytes, float32 score)
    per tensor: int32 n_dims, int32 name length, int32 ggml type, int32 ne[n_dims] (innermost first),
                the name, zero padding to a 32-byte file offset, the data

Tokens are as that era's converter wrote them: "▁" as a space, byte tokens (ids 3-258) as the one byte.
The vocabulary is a real llama one (the sdist's llama-spm GGUF), so the converted model tokenizes text.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import gguf
import numpy as np

from llamawheel.verify.portable.tiny_model import Vocabulary

GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
FTYPE = {"f16": 1, "q8_0": 7}
"""The file's ``ftype`` (mostly f16, mostly q8_0): matrices of that type, norms f32."""


def _ff_size(n_embd: int, n_mult: int) -> int:
    """llama.cpp's rule for the feed-forward width from n_mult."""
    return ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult


def _tensor(out: BinaryIO, name: str, values: np.ndarray, weight_type: str) -> None:
    """``values`` in numpy order (rows, columns); GGML lists the dimensions innermost first. GGJT v3 blocks
    are GGUF's: a q8_0 block is an f16 scale and 32 int8 values."""
    if values.ndim == 1:
        kind, data = GGML_F32, values.astype(np.float32)
    elif weight_type == "f16":
        kind, data = GGML_F16, values.astype(np.float16)
    else:
        kind, data = GGML_Q8_0, gguf.quants.quantize(values.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    encoded = name.encode()
    out.write(struct.pack("<3i", values.ndim, len(encoded), kind))
    out.write(struct.pack(f"<{values.ndim}i", *reversed(values.shape)))
    out.write(encoded)
    out.write(b"\0" * (-out.tell() % 32))
    out.write(data.tobytes())


def write_ggml_v3(path: Path, vocab_gguf: Path, *, n_embd: int = 64, n_head: int = 4, n_layer: int = 2,
                  n_mult: int = 32, seed: int = 0, weight_type: str = "q8_0") -> None:
    vocab = Vocabulary.read(vocab_gguf)
    fields = {name: value for name, value, _, _ in vocab.fields}
    tokens: list[bytes] = fields["tokenizer.ggml.tokens"]
    scores = [float(s) for s in fields["tokenizer.ggml.scores"]]
    n_vocab = len(tokens)
    n_ff = _ff_size(n_embd, n_mult)
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.02, size=shape)

    with path.open("wb") as out:
        out.write(struct.pack("<4sI", b"tjgg", 3))
        out.write(struct.pack("<7i", n_vocab, n_embd, n_mult, n_head, n_layer, n_embd // n_head, FTYPE[weight_type]))
        for i, (text, score) in enumerate(zip(tokens, scores, strict=True)):
            if 3 <= i <= 258 and text.startswith(b"<0x"):
                piece = bytes([int(text[3:5], 16)])
            else:
                piece = text.replace("▁".encode(), b" ")
            out.write(struct.pack("<I", len(piece)) + piece + struct.pack("<f", score))
        _tensor(out, "tok_embeddings.weight", weights(n_vocab, n_embd), weight_type)
        _tensor(out, "norm.weight", np.ones(n_embd), weight_type)
        _tensor(out, "output.weight", weights(n_vocab, n_embd), weight_type)
        for i in range(n_layer):
            for part in ("wq", "wk", "wv", "wo"):
                _tensor(out, f"layers.{i}.attention.{part}.weight", weights(n_embd, n_embd), weight_type)
            _tensor(out, f"layers.{i}.attention_norm.weight", np.ones(n_embd), weight_type)
            _tensor(out, f"layers.{i}.feed_forward.w1.weight", weights(n_ff, n_embd), weight_type)
            _tensor(out, f"layers.{i}.feed_forward.w2.weight", weights(n_embd, n_ff), weight_type)
            _tensor(out, f"layers.{i}.feed_forward.w3.weight", weights(n_ff, n_embd), weight_type)
            _tensor(out, f"layers.{i}.ffn_norm.weight", np.ones(n_embd), weight_type)
